//! Who is calling: API keys (SHA-256 hashes compared in constant time), JWTs verified
//! offline (HS256, RS256, ES256), headers set by a trusted proxy, and an identity the host
//! asserts through the API. The result is a [`Principal`] (or none: anonymous), and the
//! route's [`Access`] rules decide whether it may use the route.
//!
//! Never from a request header unless the policy says a trusted proxy sets it: a client can
//! send any header, so `trustedHeaders` only counts when the peer is in its `from` networks
//! (or the policy accepts any peer, for hosts that strip the header themselves).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{CompileError, CompileErrorKind};
use crate::request::Request;

/// How a principal was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalSource {
    /// An API key from the policy's key table.
    ApiKey,
    /// A JWT verified against one of the policy's issuers.
    Jwt,
    /// The host passed an identity it verified itself (mTLS, its own auth).
    Host,
    /// Headers set by a trusted proxy.
    TrustedHeader,
}

/// An identified caller. Never holds the credential itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The principal's id (from the key table, the JWT's id claim, the host or the header).
    pub id: Arc<str>,
    /// Its tenant, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Arc<str>>,
    /// Its tier (the principal class the per-tier settings and limits use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Arc<str>>,
    /// Its tags.
    #[serde(skip_serializing_if = "<[Arc<str>]>::is_empty")]
    pub tags: Arc<[Arc<str>]>,
    /// How it was identified.
    pub source: PrincipalSource,
}

/// The `identity` section of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityPolicy {
    /// API keys, stored as SHA-256 hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// JWT issuers whose tokens are verified offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtPolicy>,
    /// Headers a trusted proxy in front of the host sets after its own authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_headers: Option<TrustedHeaders>,
    /// Known principals by id: what tenant, tier and tags an identity asserted by the host
    /// (or a trusted header naming only an id) has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<PrincipalEntry>,
    /// Whether requests without credentials may use routes. Unset: denied on inference
    /// routes when API keys or JWT issuers are configured, allowed otherwise. Routes
    /// override it with `access.anonymous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<Anonymous>,
}

/// Whether anonymous requests are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Anonymous {
    /// Accepted (limited per client IP by the limits that name it).
    Allow,
    /// Refused with 401.
    Deny,
}

/// A principal's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrincipalEntry {
    /// The principal's id.
    pub id: String,
    /// Its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// API keys: where they are read and the table of their hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeys {
    /// Headers a key is read from, in order; `authorization` takes `Bearer <key>`.
    /// Default: `authorization`, `x-api-key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// The keys: the SHA-256 of each key (hex) with the principal it identifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ApiKeyEntry>,
    /// Key files (YAML or JSON, `keys: [...]` as above), relative to the policy file. They
    /// are read when the policy is loaded, and the loaded policy (and a bundle) carries
    /// their entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// One API key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeyEntry {
    /// SHA-256 of the key, 64 hex digits (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The principal's id.
    pub id: String,
    /// Its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A key file's content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<ApiKeyEntry>,
}

/// JWT verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtPolicy {
    /// Headers a token is read from (`Bearer <token>` in `authorization`). Default:
    /// `authorization`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Accepted issuers.
    pub issuers: Vec<JwtIssuer>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u64>,
}

/// Signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl JwtAlgorithm {
    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

/// One issuer: its keys, what its tokens must say and how their claims map to a principal.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtIssuer {
    /// The `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (one must be in the token).
    pub audiences: Vec<String>,
    /// Accepted algorithms (each key also has one).
    pub algorithms: Vec<JwtAlgorithm>,
    /// Verification keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<JwtKey>,
    /// A JWKS document (JSON), inline; `jwksFile` is read into it when the policy is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// A JWKS file, relative to the policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// Which claims give the principal's fields.
    #[serde(default)]
    pub claims: ClaimMap,
}

/// A verification key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtKey {
    /// The key id a token's header names (`kid`). A token with a `kid` is checked against
    /// the keys with that id; a token without one against every key of its algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The key's algorithm.
    pub algorithm: Option<JwtAlgorithm>,
    /// HS256: the shared secret (UTF-8 as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256 / ES256: the public key in PEM (`-----BEGIN PUBLIC KEY-----`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// A file holding the secret or the PEM, relative to the policy file; read into
    /// `secret` (HS256) or `pem` when the policy is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Claim names for the principal's fields. `tags` may be a string array or a
/// space-separated string (OAuth `scope`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimMap {
    /// The id claim. Default `sub`.
    #[serde(default = "default_sub")]
    pub id: String,
    /// The tenant claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tier claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The tags claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
}

fn default_sub() -> String {
    "sub".into()
}

impl Default for ClaimMap {
    fn default() -> Self {
        ClaimMap {
            id: default_sub(),
            tenant: None,
            tier: None,
            tags: None,
        }
    }
}

/// Headers set by a trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustedHeaders {
    /// The header with the principal's id.
    pub principal: String,
    /// The header with its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The header with its tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The header with its tags, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// Networks (CIDR) the proxy connects from; the headers of any other peer are ignored.
    /// Required: use `["0.0.0.0/0", "::/0"]` only when the host itself removes these headers
    /// from client requests.
    pub from: Vec<String>,
}

/// A route's access rules.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Access {
    /// Whether anonymous requests may use the route (overrides `identity.anonymous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<Anonymous>,
    /// Identified principals admitted: one rule matching is enough; within a rule every
    /// listed field must match one of its values. Empty: every identified principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AccessRule>,
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    /// Principal ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Tiers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Tags (the principal has at least one of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl AccessRule {
    fn admits(&self, p: &Principal) -> bool {
        let any = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
        };
        any(&self.principals, Some(&p.id))
            && any(&self.tenants, p.tenant.as_deref())
            && any(&self.tiers, p.tier.as_deref())
            && (self.tags.is_empty() || p.tags.iter().any(|t| self.tags.iter().any(|x| **x == **t)))
    }
}

impl Access {
    /// Whether an identified principal may use the route.
    pub fn admits(&self, p: &Principal) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|r| r.admits(p))
    }
}

impl IdentityPolicy {
    /// Whether the policy authenticates callers itself (keys or JWT issuers), which makes
    /// anonymous requests to inference routes a refusal unless the policy says otherwise.
    pub fn authenticates(&self) -> bool {
        // A key section whose files hold no key still means "callers need keys": failing
        // closed beats opening every route because a key file came out empty.
        self.api_keys.is_some() || self.jwt.as_ref().is_some_and(|j| !j.issuers.is_empty())
    }

    /// Reads the files the section references (key files, JWKS files, key files of JWT
    /// keys) into it, relative to `base`, so that the policy and its bundle carry them.
    pub(crate) fn load_files(&mut self, base: Option<&Path>) -> Result<(), (CompileError, String)> {
        let read = |f: &str, what: &str, at: String| {
            crate::policy::read_referenced(base, f, what)
                .map(|(_, text)| text)
                .map_err(|e| (e, at))
        };
        if let Some(keys) = &mut self.api_keys {
            for (i, f) in std::mem::take(&mut keys.files).into_iter().enumerate() {
                let at = format!("spec.identity.apiKeys.files[{i}]");
                let text = read(&f, "key file", at.clone())?;
                let parsed: KeyFile = serde_saphyr::from_str(&text).map_err(|e| {
                    (
                        CompileError::new(CompileErrorKind::Syntax, format!("key file {f}: {e}")),
                        at.clone(),
                    )
                })?;
                keys.keys.extend(parsed.keys);
            }
        }
        if let Some(jwt) = &mut self.jwt {
            for (i, iss) in jwt.issuers.iter_mut().enumerate() {
                if let Some(f) = iss.jwks_file.take() {
                    let at = format!("spec.identity.jwt.issuers[{i}].jwksFile");
                    iss.jwks = Some(read(&f, "JWKS file", at)?);
                }
                for (k, key) in iss.keys.iter_mut().enumerate() {
                    if let Some(f) = key.file.take() {
                        let at = format!("spec.identity.jwt.issuers[{i}].keys[{k}].file");
                        let text = read(&f, "key file", at)?;
                        if key.algorithm == Some(JwtAlgorithm::HS256) {
                            key.secret = Some(text.trim_end_matches(['\n', '\r']).to_string());
                        } else {
                            key.pem = Some(text);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Why credentials were refused; the `why` of [`crate::Reason::InvalidCredentials`].
pub(crate) fn jwt_why(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad_signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm_not_allowed",
        K::InvalidIssuer => "wrong_issuer",
        K::InvalidAudience => "wrong_audience",
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not_yet_valid",
        K::MissingRequiredClaim(_) => "missing_claim",
        _ => "malformed_token",
    }
}

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a host route).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = a.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (net, _) = crate::request::network(self.net, self.prefix, self.prefix);
        let (ip, _) = crate::request::network(ip, self.prefix, self.prefix);
        // A network written as IPv4-mapped IPv6 matches nothing, as no address is compared
        // in that form.
        net.is_ipv4() == self.net.is_ipv4() && net == ip
    }
}

/// The outcome of identification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identified {
    /// No credentials.
    Anonymous,
    /// A principal.
    Principal(Principal),
    /// Credentials were presented and refused (`why` is a stable code).
    Invalid(&'static str),
    /// A token needed a signature check and the gate refused it (the caller is over the
    /// limits failed attempts count against).
    Throttled,
}

#[derive(Debug)]
struct CompiledIssuer {
    issuer: String,
    /// One validation per accepted algorithm: jsonwebtoken refuses a key when the
    /// validation lists algorithms of another key family, so an issuer accepting RS256 and
    /// ES256 needs one for each.
    validations: Vec<(jsonwebtoken::Algorithm, jsonwebtoken::Validation)>,
    /// (kid, algorithm, key).
    keys: Vec<(
        Option<String>,
        jsonwebtoken::Algorithm,
        jsonwebtoken::DecodingKey,
    )>,
    claims: ClaimMap,
}

/// The identity section compiled: digests indexed for lookup, JWT keys decoded, networks
/// parsed.
#[derive(Debug, Default)]
pub(crate) struct CompiledIdentity {
    /// Header names, lowercase (`bearer` tells `authorization` by its name).
    key_headers: Vec<String>,
    /// Key digests and their principals.
    keys: Vec<([u8; 32], Principal)>,
    /// Digest prefix → indices into `keys`. The prefix only narrows the candidates; the
    /// full digests are compared in constant time.
    key_index: HashMap<u64, Vec<u32>>,
    jwt_headers: Vec<String>,
    issuers: Vec<CompiledIssuer>,
    leeway: u64,
    trusted: Option<(TrustedHeaders, Vec<Cidr>)>,
    directory: HashMap<String, Principal>,
    /// Whether keys or JWT issuers are configured.
    pub(crate) authenticates: bool,
    /// The policy's default for anonymous requests.
    pub(crate) anonymous: Option<Anonymous>,
}

fn arc_tags(tags: &[String]) -> Arc<[Arc<str>]> {
    tags.iter().map(|t| Arc::from(t.as_str())).collect()
}

fn principal(
    id: &str,
    tenant: Option<&str>,
    tier: Option<&str>,
    tags: &[String],
    source: PrincipalSource,
) -> Principal {
    Principal {
        id: Arc::from(id),
        tenant: tenant.map(Arc::from),
        tier: tier.map(Arc::from),
        tags: arc_tags(tags),
        source,
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn prefix(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn lower(v: &[String], default: &[&str]) -> Vec<String> {
    if v.is_empty() {
        default.iter().map(|h| h.to_string()).collect()
    } else {
        v.iter().map(|h| h.to_ascii_lowercase()).collect()
    }
}

impl CompiledIdentity {
    /// Compiles the section; `Err` holds the message and the key path.
    pub(crate) fn new(p: &IdentityPolicy) -> Result<CompiledIdentity, (String, String)> {
        let mut c = CompiledIdentity {
            authenticates: p.authenticates(),
            anonymous: p.anonymous,
            leeway: 60,
            ..CompiledIdentity::default()
        };
        if let Some(k) = &p.api_keys {
            c.key_headers = lower(&k.headers, &["authorization", "x-api-key"]);
            for (i, e) in k.keys.iter().enumerate() {
                let at = format!("spec.identity.apiKeys.keys[{i}].sha256");
                let d = hex32(&e.sha256)
                    .ok_or_else(|| ("not a SHA-256 in hex (64 digits)".to_string(), at.clone()))?;
                let same = c
                    .key_index
                    .get(&prefix(&d))
                    .is_some_and(|cands| cands.iter().any(|&i| c.keys[i as usize].0 == d));
                if same {
                    return Err(("the same key is listed twice".into(), at));
                }
                c.key_index
                    .entry(prefix(&d))
                    .or_default()
                    .push(c.keys.len() as u32);
                c.keys.push((
                    d,
                    principal(
                        &e.id,
                        e.tenant.as_deref(),
                        e.tier.as_deref(),
                        &e.tags,
                        PrincipalSource::ApiKey,
                    ),
                ));
            }
        }
        if let Some(j) = &p.jwt {
            c.jwt_headers = lower(&j.headers, &["authorization"]);
            c.leeway = j.leeway_seconds.unwrap_or(60);
            for (i, iss) in j.issuers.iter().enumerate() {
                if c.issuers.iter().any(|x| x.issuer == iss.issuer) {
                    return Err((
                        "the issuer is listed twice".into(),
                        format!("spec.identity.jwt.issuers[{i}].issuer"),
                    ));
                }
                c.issuers.push(compile_issuer(iss, i)?);
            }
        }
        if let Some(t) = &p.trusted_headers {
            let mut nets = Vec::new();
            for (i, f) in t.from.iter().enumerate() {
                nets.push(Cidr::parse(f).ok_or_else(|| {
                    (
                        format!("{f:?} is not a network (CIDR, e.g. 10.0.0.0/8)"),
                        format!("spec.identity.trustedHeaders.from[{i}]"),
                    )
                })?);
            }
            if nets.is_empty() {
                return Err((
                    "name the networks the trusted proxy connects from".into(),
                    "spec.identity.trustedHeaders.from".into(),
                ));
            }
            c.trusted = Some((t.clone(), nets));
        }
        for e in &p.principals {
            c.directory.insert(
                e.id.clone(),
                principal(
                    &e.id,
                    e.tenant.as_deref(),
                    e.tier.as_deref(),
                    &e.tags,
                    PrincipalSource::Host,
                ),
            );
        }
        Ok(c)
    }

    /// Identifies the caller of `req`; `now` is Unix seconds (for `exp` / `nbf`). Verified
    /// tokens are remembered in `cache` (per worker) until they expire. `gate` is asked
    /// before a signature check (hundreds of microseconds for RS256 / ES256), so a flood of
    /// made-up tokens can be refused before it costs that.
    pub(crate) fn identify(
        &self,
        req: &Request<'_>,
        now: u64,
        cache: &mut JwtCache,
        gate: &mut dyn FnMut() -> bool,
    ) -> Identified {
        if let Some(id) = req.identity {
            return Identified::Principal(self.lookup(id, PrincipalSource::Host));
        }
        if let Some((t, nets)) = &self.trusted {
            if req
                .peer
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip)))
            {
                // Several values of a trusted header mean a proxy that appends instead of
                // replacing: the client could have sent the first one.
                let names = [
                    Some(&t.principal),
                    t.tenant.as_ref(),
                    t.tier.as_ref(),
                    t.tags.as_ref(),
                ];
                if names.iter().flatten().any(|n| req.header_count(n) > 1) {
                    return Identified::Invalid("ambiguous_header");
                }
                // An empty value is no identity (proxies send it empty for anonymous users).
                if let Some(id) = header(req, &t.principal).filter(|v| !v.is_empty()) {
                    return Identified::Principal(self.trusted_principal(req, t, id));
                }
            }
        }
        if !self.issuers.is_empty() {
            for h in &self.jwt_headers {
                if let Some(tok) = header(req, h).map(|v| bearer(h, v)) {
                    if tok.len() > MAX_TOKEN_BYTES {
                        return Identified::Invalid("malformed_token");
                    }
                    if looks_like_jwt(tok) {
                        if let Some(hit) = cache.get(tok, now, self.leeway) {
                            return Identified::Principal(hit);
                        }
                        if !gate() {
                            return Identified::Throttled;
                        }
                        let (result, window) = self.verify_jwt(tok, now);
                        if let (Identified::Principal(p), Some((nbf, exp))) = (&result, window) {
                            cache.insert(tok, p, nbf, exp);
                        }
                        return result;
                    }
                }
            }
        }
        if !self.keys.is_empty() {
            for h in &self.key_headers {
                if let Some(key) = header(req, h).map(|v| bearer(h, v)) {
                    if key.is_empty() {
                        continue;
                    }
                    return self.api_key(key);
                }
            }
        }
        Identified::Anonymous
    }

    /// Whether any JWT issuer is configured.
    pub(crate) fn verifies_jwt(&self) -> bool {
        !self.issuers.is_empty()
    }

    fn lookup(&self, id: &str, source: PrincipalSource) -> Principal {
        match self.directory.get(id) {
            Some(p) => Principal {
                source,
                ..p.clone()
            },
            None => principal(id, None, None, &[], source),
        }
    }

    fn trusted_principal(&self, req: &Request<'_>, t: &TrustedHeaders, id: &[u8]) -> Principal {
        let text = |v: &[u8]| String::from_utf8_lossy(v).trim().to_string();
        let mut p = self.lookup(&text(id), PrincipalSource::TrustedHeader);
        let get = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| header(req, n))
                .filter(|v| !v.is_empty())
                .map(|v| Arc::<str>::from(text(v)))
        };
        // What the policy's directory says about a principal wins: a proxy that only sets
        // the principal header may pass the client's own tenant or tier header through.
        if p.tenant.is_none() {
            p.tenant = get(&t.tenant);
        }
        if p.tier.is_none() {
            p.tier = get(&t.tier);
        }
        if !p.tags.is_empty() {
            return p;
        }
        if let Some(v) = get(&t.tags) {
            p.tags = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Arc::from)
                .collect();
        }
        p
    }

    fn api_key(&self, key: &[u8]) -> Identified {
        let d: [u8; 32] = Sha256::digest(key).into();
        let mut found: Option<&Principal> = None;
        if let Some(cands) = self.key_index.get(&prefix(&d)) {
            for &i in cands {
                let (k, p) = &self.keys[i as usize];
                if bool::from(k.ct_eq(&d)) {
                    found = Some(p);
                }
            }
        }
        match found {
            Some(p) => Identified::Principal(p.clone()),
            None => Identified::Invalid("unknown_key"),
        }
    }

    /// Verifies a token; for a valid one also its validity window (`nbf`, `exp`).
    fn verify_jwt(&self, tok: &[u8], now: u64) -> (Identified, Option<(u64, u64)>) {
        let invalid = |why| (Identified::Invalid(why), None);
        let Ok(header) = jsonwebtoken::decode_header(tok) else {
            return invalid("malformed_token");
        };
        // The issuer is read before verification only to pick its keys; the signature and
        // the issuer are then checked with those keys.
        let Some(iss) = unverified_issuer(tok) else {
            return invalid("malformed_token");
        };
        let Some(issuer) = self.issuers.iter().find(|i| i.issuer == iss) else {
            return invalid("wrong_issuer");
        };
        let Some((_, validation)) = issuer.validations.iter().find(|(a, _)| *a == header.alg)
        else {
            return invalid("algorithm_not_allowed");
        };
        let mut keys = issuer
            .keys
            .iter()
            .filter(|(kid, alg, _)| {
                *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
            .peekable();
        if keys.peek().is_none() {
            return invalid("unknown_key_id");
        }
        let mut last = "bad_signature";
        for (_, _, key) in keys {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                tok, key, validation,
            ) {
                Ok(data) => return self.claims(issuer, &data.claims, now),
                Err(e) => {
                    last = jwt_why(&e);
                    if last != "bad_signature" {
                        break;
                    }
                }
            }
        }
        invalid(last)
    }

    fn claims(
        &self,
        issuer: &CompiledIssuer,
        c: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> (Identified, Option<(u64, u64)>) {
        let invalid = |why| (Identified::Invalid(why), None);
        // NumericDate may be fractional (RFC 7519 §2); negative values count as 0.
        let num = |k: &str| {
            c.get(k)
                .and_then(serde_json::Value::as_f64)
                .filter(|v| v.is_finite())
                .map(|v| v.max(0.0) as u64)
        };
        // `exp` is required: a token that never expires is a credential that cannot be
        // revoked.
        let Some(exp) = num("exp") else {
            return invalid("missing_claim");
        };
        let nbf = num("nbf").unwrap_or(0);
        if let Some(why) = window_error(nbf, exp, now, self.leeway) {
            return invalid(why);
        }
        let s = |k: &Option<String>| {
            k.as_ref()
                .and_then(|k| c.get(k))
                .and_then(serde_json::Value::as_str)
        };
        let Some(id) = c.get(&issuer.claims.id).and_then(serde_json::Value::as_str) else {
            return invalid("missing_claim");
        };
        let tags: Vec<String> = match issuer.claims.tags.as_ref().and_then(|k| c.get(k)) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(serde_json::Value::as_str)
                .map(String::from)
                .collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        };
        let mut p = principal(
            id,
            s(&issuer.claims.tenant),
            s(&issuer.claims.tier),
            &tags,
            PrincipalSource::Jwt,
        );
        // A principal listed in the directory keeps the attributes the token does not set.
        if let Some(d) = self.directory.get(id) {
            p.tenant = p.tenant.or_else(|| d.tenant.clone());
            p.tier = p.tier.or_else(|| d.tier.clone());
            if p.tags.is_empty() {
                p.tags = d.tags.clone();
            }
        }
        (Identified::Principal(p), Some((nbf, exp)))
    }
}

/// Why a token is outside its validity window at `now` (with `leeway` either side).
fn window_error(nbf: u64, exp: u64, now: u64, leeway: u64) -> Option<&'static str> {
    if exp.saturating_add(leeway) < now {
        Some("expired")
    } else if nbf > now.saturating_add(leeway) {
        Some("not_yet_valid")
    } else {
        None
    }
}

/// Verified tokens of one worker, so a client reusing its token (the common case) pays
/// the signature check once: RS256 and ES256 verification take hundreds of microseconds
/// with the pure-Rust backends (`benches/RESULTS.md`). Two ways per set, keyed by a
/// randomly seeded hash and compared on the full token; an entry is used only inside its
/// token's validity window, which is checked again on every hit. Refused tokens are not
/// remembered (a flood of distinct bad tokens is a job for the limits).
#[derive(Debug, Clone)]
pub(crate) struct JwtCache {
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<CachedToken>>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Box<[u8]>,
    principal: Principal,
    nbf: u64,
    exp: u64,
}

impl JwtCache {
    /// A cache of `slots` entries (rounded to an even number; 0 disables it).
    pub(crate) fn new(slots: usize) -> JwtCache {
        JwtCache {
            hasher: foldhash::fast::RandomState::default(),
            slots: vec![None; slots & !1],
        }
    }

    fn set(&self, tok: &[u8]) -> Option<usize> {
        let sets = self.slots.len() / 2;
        (sets > 0).then(|| {
            2 * (std::hash::BuildHasher::hash_one(&self.hasher, tok) % sets as u64) as usize
        })
    }

    fn get(&self, tok: &[u8], now: u64, leeway: u64) -> Option<Principal> {
        let set = self.set(tok)?;
        self.slots[set..set + 2].iter().flatten().find_map(|e| {
            (*e.token == *tok && window_error(e.nbf, e.exp, now, leeway).is_none())
                .then(|| e.principal.clone())
        })
    }

    fn insert(&mut self, tok: &[u8], p: &Principal, nbf: u64, exp: u64) {
        let Some(set) = self.set(tok) else { return };
        // An empty way, else the one whose token expires first.
        let expiry = |i: usize| self.slots[i].as_ref().map_or(0, |e| e.exp);
        let slot = if expiry(set) <= expiry(set + 1) {
            set
        } else {
            set + 1
        };
        self.slots[slot] = Some(CachedToken {
            token: tok.into(),
            principal: p.clone(),
            nbf,
            exp,
        });
    }
}

fn compile_issuer(iss: &JwtIssuer, i: usize) -> Result<CompiledIssuer, (String, String)> {
    let at = |k: &str| format!("spec.identity.jwt.issuers[{i}].{k}");
    if iss.algorithms.is_empty() {
        return Err(("name the accepted algorithms".into(), at("algorithms")));
    }
    if iss.audiences.is_empty() {
        return Err((
            "name the accepted audiences: a token for another service must not pass".into(),
            at("audiences"),
        ));
    }
    let algs: Vec<jsonwebtoken::Algorithm> = iss.algorithms.iter().map(|a| a.to_jwt()).collect();
    let validations = algs
        .iter()
        .map(|&alg| {
            let mut v = jsonwebtoken::Validation::new(alg);
            v.set_issuer(&[&iss.issuer]);
            v.set_audience(&iss.audiences);
            // Time claims are checked by the engine against its own clock (testable, and
            // the same clock the limits use); the crate checks signature, algorithm, issuer
            // and audience.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.set_required_spec_claims(&["iss", "aud"]);
            (alg, v)
        })
        .collect();
    let mut keys = Vec::new();
    for (k, key) in iss.keys.iter().enumerate() {
        let at = at(&format!("keys[{k}]"));
        let Some(alg) = key.algorithm else {
            return Err(("name the key's algorithm".into(), at));
        };
        if !iss.algorithms.contains(&alg) {
            return Err((format!("{alg:?} is not among the issuer's algorithms"), at));
        }
        let decoded = match (alg, &key.secret, &key.pem) {
            (JwtAlgorithm::HS256, Some(s), None) => {
                if s.len() < 32 {
                    return Err((
                        "an HS256 secret needs at least 32 bytes (RFC 7518 §3.2)".into(),
                        at,
                    ));
                }
                jsonwebtoken::DecodingKey::from_secret(s.as_bytes())
            }
            (JwtAlgorithm::RS256, None, Some(p)) => {
                jsonwebtoken::DecodingKey::from_rsa_pem(p.as_bytes())
                    .map_err(|e| (format!("not an RSA public key in PEM: {e}"), at.clone()))?
            }
            (JwtAlgorithm::ES256, None, Some(p)) => {
                jsonwebtoken::DecodingKey::from_ec_pem(p.as_bytes())
                    .map_err(|e| (format!("not an EC public key in PEM: {e}"), at.clone()))?
            }
            (JwtAlgorithm::HS256, ..) => {
                return Err((
                    "an HS256 key needs `secret` (or `file`) and no `pem`".into(),
                    at,
                ))
            }
            _ => {
                return Err((
                    "an RS256/ES256 key needs `pem` (or `file`) and no `secret`".into(),
                    at,
                ))
            }
        };
        keys.push((key.kid.clone(), alg.to_jwt(), decoded));
    }
    if let Some(jwks) = &iss.jwks {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks)
            .map_err(|e| (format!("not a JWKS document: {e}"), at("jwks")))?;
        for (k, jwk) in set.keys.iter().enumerate() {
            let at = at(&format!("jwks.keys[{k}]"));
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => a.to_string().parse::<jsonwebtoken::Algorithm>().ok(),
                (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => {
                    Some(jsonwebtoken::Algorithm::RS256)
                }
                (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)) => {
                    Some(jsonwebtoken::Algorithm::ES256)
                }
                _ => None,
            };
            // Keys for algorithms the issuer does not accept (or encryption keys) are
            // skipped, not refused: a provider's JWKS often lists more than one use.
            let Some(alg) = alg.filter(|a| algs.contains(a)) else {
                continue;
            };
            // Encryption keys are not for signatures, and a shared secret has no place in a
            // key set (HS256 secrets go in `keys`, where their length is checked).
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) || matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            let decoded = jsonwebtoken::DecodingKey::from_jwk(jwk)
                .map_err(|e| (format!("unusable key: {e}"), at))?;
            keys.push((jwk.common.key_id.clone(), alg, decoded));
        }
    }
    if keys.is_empty() {
        return Err(("the issuer has no usable key".into(), at("keys")));
    }
    Ok(CompiledIssuer {
        issuer: iss.issuer.clone(),
        validations,
        keys,
        claims: iss.claims.clone(),
    })
}

/// The longest token looked at: real JWTs are well under 2 KiB, and a longer one is not
/// base64-decoded and parsed (twice) before the size limits could refuse it.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The first value of header `name`, trimmed.
fn header<'a>(req: &Request<'a>, name: &str) -> Option<&'a [u8]> {
    req.header(name).map(<[u8]>::trim_ascii)
}

/// The credential in a header value: `Bearer <x>` in `authorization`, the value elsewhere.
fn bearer<'a>(name: &str, v: &'a [u8]) -> &'a [u8] {
    if name == "authorization" {
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return v[7..].trim_ascii();
        }
        return b"";
    }
    v
}

/// Three base64url segments with a JSON header (`eyJ` is `{"` encoded).
fn looks_like_jwt(t: &[u8]) -> bool {
    t.starts_with(b"eyJ") && t.iter().filter(|&&b| b == b'.').count() == 2
}

/// The `iss` of a token's payload, before verification (to pick the issuer's keys).
fn unverified_issuer(tok: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let payload = tok.split(|&b| b == b'.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(String::from)
}

/// Per-tier settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierPolicy {
    /// Parameter policy for the tier's principals on inference routes: overrides the
    /// route's settings key by key, except `models`, which must allow the model as well as
    /// the route's allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<crate::cost::params::ParamPolicy>,
}

/// Tiers by name.
pub type Tiers = BTreeMap<String, TierPolicy>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        assert!(!host.contains("192.0.2.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "::/129", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bearer_and_jwt_shape() {
        assert_eq!(bearer("authorization", b"Bearer abc"), b"abc");
        assert_eq!(bearer("authorization", b"bearer   abc "), b"abc");
        assert_eq!(bearer("authorization", b"Basic abc"), b"");
        assert_eq!(bearer("x-api-key", b"abc"), b"abc");
        assert!(looks_like_jwt(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig"));
        assert!(!looks_like_jwt(b"sk-live-123"));
    }
}
