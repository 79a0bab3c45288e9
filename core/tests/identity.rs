//! Identity and access: API keys, JWTs (HS256, RS256, ES256, JWKS), trusted proxy headers,
//! host-asserted identities, route access rules, anonymous callers and per-tier parameters.

use std::net::IpAddr;
use std::path::Path;

use edgeward::{Engine, Policy, PrincipalSource, Reason, Request, Stage};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
mod common;

const HS_SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

fn data(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/identity")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

use common::key_sha256 as sha;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A policy with API keys, three JWT issuers, a trusted proxy, tiers and access rules.
fn policy_text() -> String {
    let indent = |pem: String| pem.trim_end().replace('\n', "\n                ");
    format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: identity}}
spec:
  rules: {{builtin: true}}
  identity:
    apiKeys:
      keys:
        - {{sha256: "{alice}", id: alice, tenant: acme, tier: pro, tags: [internal]}}
        - {{sha256: "{bob}", id: bob, tenant: globex, tier: free}}
    jwt:
      issuers:
        - issuer: https://hs.example.com
          audiences: [edgeward]
          algorithms: [HS256]
          keys: [{{algorithm: HS256, secret: "{HS_SECRET}"}}]
          claims: {{id: sub, tenant: org, tier: plan, tags: groups}}
        - issuer: https://rs.example.com
          audiences: [edgeward, other]
          algorithms: [RS256]
          keys:
            - algorithm: RS256
              kid: pem-1
              pem: |
                {rsa}
        - issuer: https://es.example.com
          audiences: [edgeward]
          algorithms: [ES256]
          keys:
            - algorithm: ES256
              pem: |
                {ec}
          claims: {{id: sub, tags: scope}}
    trustedHeaders:
      principal: x-auth-user
      tenant: x-auth-tenant
      tags: x-auth-groups
      from: ["10.0.0.0/8"]
    principals:
      - {{id: svc-batch, tenant: acme, tier: batch, tags: [service]}}
  tiers:
    free:
      params: {{maxOutputTokens: 100, models: ["gpt-4o-mini*", "gpt-4o"]}}
    pro:
      params: {{maxOutputTokens: 8000}}
  defaults:
    params: {{maxOutputTokens: 1000, models: ["gpt-4o-mini*"]}}
  routes:
    - name: chat
      match: {{paths: ["/v1/chat/completions"]}}
      schema: openai-chat
    - name: admin
      match: {{paths: ["/admin/*"]}}
      schema: openai-chat
      access:
        allow:
          - {{tenants: [acme], tags: [internal, service]}}
          - {{principals: [carol]}}
    - name: public
      match: {{paths: ["/public/**"]}}
      schema: openai-chat
      access: {{anonymous: allow}}
    - name: watch
      match: {{paths: ["/watch/*"]}}
      schema: openai-chat
      mode: monitor
    - name: health
      match: {{paths: ["/health"]}}
      access: {{anonymous: allow}}
"#,
        alice = sha("sk-alice-0123456789"),
        bob = sha("sk-bob-9876543210"),
        rsa = indent(data("rsa_public.pem")),
        ec = indent(data("ec_public.pem")),
    )
}

fn engine() -> Engine {
    let policy = Policy::from_text(&policy_text()).expect("policy parses");
    Engine::new(&policy).expect("policy compiles")
}

const BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there."}]}"#;

fn post(
    e: &Engine,
    path: &str,
    headers: &[(&str, &str)],
    peer: Option<&str>,
) -> edgeward::Decision {
    post_body(e, path, headers, peer, BODY)
}

fn post_body(
    e: &Engine,
    path: &str,
    headers: &[(&str, &str)],
    peer: Option<&str>,
    body: &str,
) -> edgeward::Decision {
    let mut hs: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"application/json")];
    hs.extend(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut req = Request::new(b"POST", path.as_bytes())
        .with_headers(&hs)
        .with_body(body.as_bytes());
    if let Some(p) = peer {
        req = req.with_peer(p.parse::<IpAddr>().unwrap());
    }
    e.inspect(&req)
}

fn denied(d: &edgeward::Decision) -> (u16, Reason, Stage) {
    (
        d.status()
            .unwrap_or_else(|| panic!("allowed: {}", d.to_json())),
        d.reason().unwrap().clone(),
        d.stage,
    )
}

fn hs_token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn api_keys_identify_and_unknown_keys_are_refused() {
    let e = engine();
    for (name, value) in [
        ("authorization", "Bearer sk-alice-0123456789"),
        ("x-api-key", "sk-alice-0123456789"),
        ("Authorization", "bearer   sk-alice-0123456789 "),
    ] {
        let d = post(&e, "/v1/chat/completions", &[(name, value)], None);
        assert!(d.is_allowed(), "{name}: {}", d.to_json());
        let p = d.principal.as_ref().expect("principal");
        assert_eq!(&*p.id, "alice");
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert_eq!(p.tier.as_deref(), Some("pro"));
        assert_eq!(p.tags.len(), 1);
        assert_eq!(p.source, PrincipalSource::ApiKey);
        // The decision names the principal, never the key.
        let json = d.to_json();
        assert!(json.contains(r#""id":"alice""#), "{json}");
        assert!(!json.contains("sk-alice"), "{json}");
    }
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("x-api-key", "sk-alice-012345678")],
        None,
    );
    assert_eq!(
        denied(&d),
        (
            401,
            Reason::InvalidCredentials { why: "unknown_key" },
            Stage::Identity
        )
    );
    assert!(!d.to_json().contains("sk-alice"));
}

#[test]
fn anonymous_callers() {
    let e = engine();
    // Inference route of a policy with keys: refused.
    let d = post(&e, "/v1/chat/completions", &[], None);
    assert_eq!(denied(&d), (401, Reason::Unauthenticated, Stage::Identity));
    assert!(d.matches.is_empty(), "nothing inspected: {}", d.to_json());
    // `Basic` credentials are not ours: still anonymous.
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", "Basic YTpi")],
        None,
    );
    assert_eq!(denied(&d).1, Reason::Unauthenticated);
    // A route that allows them, and a route without an inference schema.
    let d = post(&e, "/public/v1/chat/completions", &[], None);
    assert!(d.is_allowed(), "{}", d.to_json());
    assert!(d.principal.is_none());
    let d = post(&e, "/health", &[], None);
    assert!(d.is_allowed(), "{}", d.to_json());
    // A path no route matches falls to `default`, which refuses anonymous callers too:
    // variants of an inference path are no way around the keys.
    for path in [
        "/v1/chat/completions/",
        "/v1//chat/completions",
        "/v1/chat/completions;a",
        "/nothing",
    ] {
        let d = post(&e, path, &[], None);
        assert_eq!(denied(&d).1, Reason::Unauthenticated, "{path}");
        assert_eq!(
            d.headers,
            vec![("www-authenticate", "Bearer".to_string())],
            "{path}"
        );
    }
    // Wrong credentials are refused even where anonymous callers are welcome.
    let d = post(&e, "/public/x", &[("x-api-key", "nope")], None);
    assert_eq!(
        denied(&d).1,
        Reason::InvalidCredentials { why: "unknown_key" }
    );
    // Monitor mode reports what it would have done.
    let d = post(&e, "/watch/x", &[], None);
    assert!(d.is_allowed(), "{}", d.to_json());
    assert_eq!(d.would_deny, Some(Reason::Unauthenticated));
}

#[test]
fn policies_without_credentials_stay_open() {
    // The embedded default policy knows no keys: callers are anonymous and allowed.
    let e = Engine::default_engine();
    let d = post(&e, "/v1/chat/completions", &[], None);
    assert!(d.is_allowed(), "{}", d.to_json());
    assert!(d.principal.is_none());
    // A header naming a user means nothing without trustedHeaders.
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("x-auth-user", "root")],
        Some("10.0.0.1"),
    );
    assert!(d.principal.is_none());
}

#[test]
fn jwt_hs256_claims_map_to_the_principal() {
    let e = engine();
    let t = hs_token(json!({
        "iss": "https://hs.example.com", "aud": "edgeward", "sub": "u-42",
        "org": "initech", "plan": "pro", "groups": ["eng", "oncall"],
        "exp": now() + 600, "nbf": now() - 10,
    }));
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&t))],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    let p = d.principal.unwrap();
    assert_eq!(&*p.id, "u-42");
    assert_eq!(p.tenant.as_deref(), Some("initech"));
    assert_eq!(p.tier.as_deref(), Some("pro"));
    assert_eq!(
        p.tags.iter().map(|t| &**t).collect::<Vec<_>>(),
        ["eng", "oncall"]
    );
    assert_eq!(p.source, PrincipalSource::Jwt);
    // `aud` as an array with one accepted value.
    let t = hs_token(json!({
        "iss": "https://hs.example.com", "aud": ["x", "edgeward"], "sub": "u-1", "exp": now() + 60,
    }));
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&t))],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
}

#[test]
fn jwt_refusals_say_why() {
    let e = engine();
    let base = || json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "u-1", "exp": now() + 600});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let forged = {
        let t = hs_token(base());
        let (head, _) = t.rsplit_once('.').unwrap();
        let other = encode(
            &Header::new(Algorithm::HS256),
            &base(),
            &EncodingKey::from_secret(b"another-secret-of-at-least-thirty-two-b"),
        )
        .unwrap();
        format!("{head}.{}", other.rsplit_once('.').unwrap().1)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs_token(with("exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "not yet valid",
            hs_token(with("nbf", json!(now() + 3600))),
            "not_yet_valid",
        ),
        ("no exp", hs_token(without("exp")), "missing_claim"),
        ("no sub", hs_token(without("sub")), "missing_claim"),
        (
            "wrong audience",
            hs_token(with("aud", json!("billing"))),
            "wrong_audience",
        ),
        (
            "unknown issuer",
            hs_token(with("iss", json!("https://evil.example"))),
            "wrong_issuer",
        ),
        ("forged signature", forged, "bad_signature"),
        (
            "garbage",
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln".into(),
            "malformed_token",
        ),
        (
            "bad header",
            "eyJub3QganNvbg.e30.c2ln".into(),
            "malformed_token",
        ),
    ];
    for (name, tok, why) in cases {
        let d = post(
            &e,
            "/v1/chat/completions",
            &[("authorization", &bearer(&tok))],
            None,
        );
        assert_eq!(
            denied(&d),
            (401, Reason::InvalidCredentials { why }, Stage::Identity),
            "{name}"
        );
    }
    // Within the leeway (60 s) an expired token still passes.
    let t = hs_token(with("exp", json!(now() - 30)));
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&t))],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    // An HS256 token (signed with the RSA issuer's *public key* as the HMAC secret: the
    // classic algorithm confusion) for the RS256 issuer is refused.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &with("iss", json!("https://rs.example.com")),
        &EncodingKey::from_secret(data("rsa_public.pem").as_bytes()),
    )
    .unwrap();
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&confused))],
        None,
    );
    assert_eq!(
        denied(&d).1,
        Reason::InvalidCredentials {
            why: "algorithm_not_allowed"
        }
    );
    // `alg: none` is never accepted.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64_url(&serde_json::to_vec(&base()).unwrap())
    );
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&none))],
        None,
    );
    assert_eq!(denied(&d).0, 401, "{}", d.to_json());
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn jwt_rs256_and_es256() {
    let e = engine();
    let claims = |iss: &str| json!({"iss": iss, "aud": "other", "sub": "svc", "exp": now() + 60, "scope": "read write"});
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("pem-1".into());
    let rs = encode(
        &h,
        &claims("https://rs.example.com"),
        &EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&rs))],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    assert_eq!(&*d.principal.unwrap().id, "svc");
    // A kid the issuer does not have.
    h.kid = Some("pem-9".into());
    let rs9 = encode(
        &h,
        &claims("https://rs.example.com"),
        &EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&rs9))],
        None,
    );
    assert_eq!(
        denied(&d).1,
        Reason::InvalidCredentials {
            why: "unknown_key_id"
        }
    );
    let mut c = claims("https://es.example.com");
    c["aud"] = json!("edgeward");
    let es = encode(
        &Header::new(Algorithm::ES256),
        &c,
        &EncodingKey::from_ec_pem(data("ec_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&es))],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    let p = d.principal.unwrap();
    // `scope` is a space-separated string.
    assert_eq!(
        p.tags.iter().map(|t| &**t).collect::<Vec<_>>(),
        ["read", "write"]
    );
}

#[test]
fn jwks_files_and_key_files_are_loaded_with_the_policy_and_kept_in_bundles() {
    let dir = std::env::temp_dir().join(format!("edgeward-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks.json"), data("jwks.json")).unwrap();
    std::fs::write(
        dir.join("keys.yaml"),
        format!(
            "keys:\n  - {{sha256: \"{}\", id: dave, tier: free}}\n",
            sha("sk-dave-from-a-file")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {name: files}
spec:
  identity:
    apiKeys: {files: [keys.yaml]}
    jwt:
      issuers:
        - {issuer: "https://rs.example.com", audiences: [edgeward], algorithms: [RS256], jwksFile: jwks.json}
  routes:
    - {name: chat, match: {paths: ["/v1/chat/completions"]}, schema: openai-chat}
"#,
    )
    .unwrap();
    let policy = Policy::from_file(dir.join("policy.yaml")).expect("policy loads");
    let e = Engine::new(&policy).expect("compiles");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    let tok = encode(
        &h,
        &json!({"iss": "https://rs.example.com", "aud": "edgeward", "sub": "j", "exp": now() + 60}),
        &EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    // The encryption key of the same JWKS is skipped, not used for signatures.
    let mut h_enc = h.clone();
    h_enc.kid = Some("enc-1".into());
    let tok_enc = encode(
        &h_enc,
        &json!({"iss": "https://rs.example.com", "aud": "edgeward", "sub": "j", "exp": now() + 60}),
        &EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // From a bundle, without the files.
    let from_bundle = Engine::from_bundle(&e.to_bundle()).expect("bundle loads");
    for e in [&e, &from_bundle] {
        let d = post(
            e,
            "/v1/chat/completions",
            &[("x-api-key", "sk-dave-from-a-file")],
            None,
        );
        assert_eq!(&*d.principal.unwrap().id, "dave");
        let d = post(
            e,
            "/v1/chat/completions",
            &[("authorization", &bearer(&tok))],
            None,
        );
        assert!(d.is_allowed(), "{}", d.to_json());
        let d = post(
            e,
            "/v1/chat/completions",
            &[("authorization", &bearer(&tok_enc))],
            None,
        );
        assert_eq!(
            denied(&d).1,
            Reason::InvalidCredentials {
                why: "unknown_key_id"
            }
        );
    }
}

#[test]
fn trusted_headers_only_from_the_proxy_and_host_identity_only_from_the_host() {
    let e = engine();
    let hs = [
        ("x-auth-user", "erin"),
        ("x-auth-tenant", "acme"),
        ("x-auth-groups", "internal, ops"),
    ];
    let d = post(&e, "/v1/chat/completions", &hs, Some("10.1.2.3"));
    assert!(d.is_allowed(), "{}", d.to_json());
    let p = d.principal.unwrap();
    assert_eq!((&*p.id, p.tenant.as_deref()), ("erin", Some("acme")));
    assert_eq!(
        p.tags.iter().map(|t| &**t).collect::<Vec<_>>(),
        ["internal", "ops"]
    );
    assert_eq!(p.source, PrincipalSource::TrustedHeader);
    // IPv4-mapped IPv6 peers count as their IPv4 address.
    let d = post(&e, "/v1/chat/completions", &hs, Some("::ffff:10.9.9.9"));
    assert!(d.principal.is_some());
    // From anyone else (or an unknown peer) the headers are ignored.
    for peer in [Some("192.0.2.1"), None] {
        let d = post(&e, "/v1/chat/completions", &hs, peer);
        assert_eq!(denied(&d).1, Reason::Unauthenticated, "{peer:?}");
    }
    // A host-asserted identity takes the directory's attributes.
    let hs2: Vec<(&[u8], &[u8])> = vec![(b"x-auth-user", b"root")];
    let req = Request::new(b"POST", b"/admin/v1/chat/completions")
        .with_headers(&hs2)
        .with_body(BODY.as_bytes())
        .with_peer("10.0.0.1".parse().unwrap())
        .with_identity("svc-batch");
    let d = e.inspect(&req);
    assert!(d.is_allowed(), "{}", d.to_json());
    let p = d.principal.unwrap();
    assert_eq!(&*p.id, "svc-batch");
    assert_eq!(p.tier.as_deref(), Some("batch"));
    assert_eq!(p.source, PrincipalSource::Host);
}

#[test]
fn access_rules() {
    let e = engine();
    // alice: tenant acme, tag internal → admitted by the first rule.
    let d = post(
        &e,
        "/admin/x",
        &[("x-api-key", "sk-alice-0123456789")],
        None,
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    // bob: tenant globex → no rule.
    let d = post(&e, "/admin/x", &[("x-api-key", "sk-bob-9876543210")], None);
    assert_eq!(denied(&d), (403, Reason::AccessDenied, Stage::Access));
    assert_eq!(&*d.principal.unwrap().id, "bob");
    // carol by id (JWT), and acme without the tag.
    let t = hs_token(
        json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "carol", "exp": now() + 60}),
    );
    let d = post(&e, "/admin/x", &[("authorization", &bearer(&t))], None);
    assert!(d.is_allowed(), "{}", d.to_json());
    let t = hs_token(
        json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "dan", "org": "acme", "exp": now() + 60}),
    );
    let d = post(&e, "/admin/x", &[("authorization", &bearer(&t))], None);
    assert_eq!(denied(&d).1, Reason::AccessDenied);
}

#[test]
fn tiers_have_their_own_parameter_policy() {
    let e = engine();
    let body = |model: &str, max: u32| {
        format!(
            r#"{{"model":"{model}","max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    let alice = [("x-api-key", "sk-alice-0123456789")]; // pro: 8000
    let bob = [("x-api-key", "sk-bob-9876543210")]; // free: 100
    let d = post_body(
        &e,
        "/v1/chat/completions",
        &alice,
        None,
        &body("gpt-4o-mini", 5000),
    );
    assert!(d.is_allowed(), "{}", d.to_json());
    let d = post_body(
        &e,
        "/v1/chat/completions",
        &bob,
        None,
        &body("gpt-4o-mini", 500),
    );
    assert_eq!(
        denied(&d),
        (
            400,
            Reason::ParameterRejected {
                param: "max_tokens",
                why: "above_limit",
                limit: Some(100)
            },
            Stage::Params
        )
    );
    // The free tier lists gpt-4o, but the route's allowlist (gpt-4o-mini*) still applies.
    let d = post_body(&e, "/v1/chat/completions", &bob, None, &body("gpt-4o", 50));
    assert_eq!(
        denied(&d).1,
        Reason::ModelNotAllowed {
            model: "gpt-4o".into()
        }
    );
    // A principal without a tier gets the route's policy (1000).
    let t = hs_token(
        json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "x", "exp": now() + 60}),
    );
    let d = post_body(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&t))],
        None,
        &body("gpt-4o-mini", 1001),
    );
    assert_eq!(denied(&d).0, 400);
}

#[test]
fn identity_policy_errors() {
    let base = |identity: &str| {
        format!(
            "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {{name: x}}\nspec:\n  identity:\n{identity}\n"
        )
    };
    let key = sha("k");
    for (name, identity) in [
        ("short hash", "    apiKeys: {keys: [{sha256: abc, id: a}]}".to_string()),
        (
            "duplicate key",
            format!("    apiKeys: {{keys: [{{sha256: \"{key}\", id: a}}, {{sha256: \"{key}\", id: b}}]}}"),
        ),
        (
            "short secret",
            "    jwt: {issuers: [{issuer: i, audiences: [a], algorithms: [HS256], keys: [{algorithm: HS256, secret: short}]}]}".into(),
        ),
        (
            "no audience",
            format!("    jwt: {{issuers: [{{issuer: i, audiences: [], algorithms: [HS256], keys: [{{algorithm: HS256, secret: \"{HS_SECRET}\"}}]}}]}}"),
        ),
        (
            "key algorithm not accepted",
            format!("    jwt: {{issuers: [{{issuer: i, audiences: [a], algorithms: [RS256], keys: [{{algorithm: HS256, secret: \"{HS_SECRET}\"}}]}}]}}"),
        ),
        (
            "not a PEM",
            "    jwt: {issuers: [{issuer: i, audiences: [a], algorithms: [RS256], keys: [{algorithm: RS256, pem: nope}]}]}".into(),
        ),
        (
            "no keys",
            "    jwt: {issuers: [{issuer: i, audiences: [a], algorithms: [RS256]}]}".into(),
        ),
        ("no networks", "    trustedHeaders: {principal: x-user, from: []}".into()),
        ("bad network", "    trustedHeaders: {principal: x-user, from: [10.0.0.0/40]}".into()),
    ] {
        let err = Policy::from_text(&base(&identity))
            .and_then(|p| Engine::new(&p))
            .expect_err(name);
        assert_eq!(err.code(), "policy.invalid_value", "{name}: {err}");
    }
    // Unknown keys are refused by the schema, and files need a policy file.
    let err = Policy::from_text(&base("    apiKeys: {keyz: []}")).expect_err("unknown field");
    assert_eq!(err.code(), "policy.unknown_field", "{err}");
    let err = Policy::from_str_named(&base("    apiKeys: {files: [k.yaml]}"), "x", None)
        .expect_err("files without a base");
    assert_eq!(err.code(), "policy.unknown_reference", "{err}");
}

/// The per-worker token cache changes speed, never a decision: a remembered token is
/// compared in full (a forged signature on the same header and payload is still refused),
/// and the cache off gives the same answers.
#[test]
fn the_token_cache_changes_speed_not_decisions() {
    let policy = Policy::from_text(&policy_text()).unwrap();
    let cached = Engine::new(&policy).unwrap();
    let uncached = Engine::builder()
        .config(edgeward::Config {
            jwt_cache: 0,
            ..edgeward::Config::default()
        })
        .build(&policy)
        .unwrap();
    let claims = json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "u-7", "exp": now() + 600});
    let good = hs_token(claims.clone());
    let forged = {
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another-secret-of-at-least-thirty-two-b"),
        )
        .unwrap();
        assert_eq!(
            good.rsplit_once('.').unwrap().0,
            other.rsplit_once('.').unwrap().0
        );
        other
    };
    for e in [&cached, &uncached] {
        let mut scratch = e.new_scratch();
        for _ in 0..3 {
            for (tok, ok) in [(&good, true), (&forged, false)] {
                let auth = bearer(tok);
                let hs: Vec<(&[u8], &[u8])> = vec![(b"authorization", auth.as_bytes())];
                let req = Request::new(b"POST", b"/v1/chat/completions")
                    .with_headers(&hs)
                    .with_body(BODY.as_bytes());
                let d = e.inspect_with(&mut scratch, &req);
                assert_eq!(d.is_allowed(), ok, "{}", d.to_json());
                if ok {
                    assert_eq!(&*d.principal.unwrap().id, "u-7");
                } else {
                    assert_eq!(
                        d.reason(),
                        Some(&Reason::InvalidCredentials {
                            why: "bad_signature"
                        })
                    );
                }
            }
        }
    }
}

/// Review findings: an allow list is not passed by dropping one's key; issuers accepting
/// two key families verify both; trusted headers that are empty, repeated or contradict
/// the directory; cached tokens expire on the engine's clock.
#[test]
fn anonymous_callers_cannot_pass_an_allow_list() {
    let text = policy_text().replace("    principals:", "    anonymous: allow\n    principals:");
    let e = Engine::new(&Policy::from_text(&text).unwrap()).unwrap();
    // Anonymous callers are welcome in general now...
    assert!(post(&e, "/v1/chat/completions", &[], None).is_allowed());
    // ...but not on a route that lists who may use it.
    let d = post(&e, "/admin/x", &[], None);
    assert_eq!(denied(&d).1, Reason::Unauthenticated);
}

#[test]
fn an_issuer_can_accept_two_key_families() {
    let indent = |pem: String| pem.trim_end().replace('\n', "\n                ");
    let text = format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: mixed}}
spec:
  identity:
    jwt:
      issuers:
        - issuer: mixed
          audiences: [a]
          algorithms: [RS256, ES256, HS256]
          keys:
            - algorithm: RS256
              pem: |
                {rsa}
            - algorithm: ES256
              pem: |
                {ec}
            - {{algorithm: HS256, secret: "{HS_SECRET}"}}
  routes:
    - {{name: chat, match: {{paths: ["/v1/chat/completions"]}}, schema: openai-chat}}
"#,
        rsa = indent(data("rsa_public.pem")),
        ec = indent(data("ec_public.pem")),
    );
    let e = Engine::new(&Policy::from_text(&text).unwrap()).unwrap();
    let claims = json!({"iss": "mixed", "aud": "a", "sub": "m", "exp": now() + 60});
    for (alg, key) in [
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(data("ec_private.pem").as_bytes()).unwrap(),
        ),
        (
            Algorithm::HS256,
            EncodingKey::from_secret(HS_SECRET.as_bytes()),
        ),
    ] {
        let t = encode(&Header::new(alg), &claims, &key).unwrap();
        let d = post(
            &e,
            "/v1/chat/completions",
            &[("authorization", &bearer(&t))],
            None,
        );
        assert!(d.is_allowed(), "{alg:?}: {}", d.to_json());
    }
    // Still no algorithm confusion: an HS256 token keyed with the RSA public key.
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(data("rsa_public.pem").as_bytes()),
    )
    .unwrap();
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("authorization", &bearer(&t))],
        None,
    );
    assert_eq!(
        denied(&d).1,
        Reason::InvalidCredentials {
            why: "bad_signature"
        }
    );
}

#[test]
fn trusted_headers_that_are_empty_repeated_or_contradict_the_directory() {
    let e = engine();
    // Empty: no identity.
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("x-auth-user", "")],
        Some("10.0.0.2"),
    );
    assert_eq!(denied(&d).1, Reason::Unauthenticated);
    // Repeated: the client may have sent one of them.
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("x-auth-user", "admin"), ("x-auth-user", "bob")],
        Some("10.0.0.2"),
    );
    assert_eq!(
        denied(&d).1,
        Reason::InvalidCredentials {
            why: "ambiguous_header"
        }
    );
    let d = post(
        &e,
        "/v1/chat/completions",
        &[
            ("x-auth-user", "erin"),
            ("x-auth-tenant", "a"),
            ("x-auth-tenant", "b"),
        ],
        Some("10.0.0.2"),
    );
    assert_eq!(denied(&d).0, 401);
    // The directory's tenant wins over a tenant header.
    let d = post(
        &e,
        "/v1/chat/completions",
        &[("x-auth-user", "svc-batch"), ("x-auth-tenant", "evil")],
        Some("10.0.0.2"),
    );
    assert_eq!(d.principal.unwrap().tenant.as_deref(), Some("acme"));
}

#[test]
fn cached_tokens_expire_on_the_engine_clock() {
    let start = now() * 1_000_000_000;
    let clock = edgeward::limits::FakeClock::new(start);
    let e = Engine::builder()
        .clock(std::sync::Arc::new(clock.clone()))
        .build(&Policy::from_text(&policy_text()).unwrap())
        .unwrap();
    let t = hs_token(
        json!({"iss": "https://hs.example.com", "aud": "edgeward", "sub": "c", "exp": now() + 100}),
    );
    let auth = bearer(&t);
    let hs: Vec<(&[u8], &[u8])> = vec![(b"authorization", auth.as_bytes())];
    let req = Request::new(b"POST", b"/v1/chat/completions")
        .with_headers(&hs)
        .with_body(BODY.as_bytes());
    let mut scratch = e.new_scratch();
    assert!(e.inspect_with(&mut scratch, &req).is_allowed());
    assert!(e.inspect_with(&mut scratch, &req).is_allowed(), "cached");
    // Past exp + leeway (60 s): refused although the token is in the cache.
    clock.advance(200 * 1_000_000_000);
    let d = e.inspect_with(&mut scratch, &req);
    assert_eq!(denied(&d).1, Reason::InvalidCredentials { why: "expired" });
}
