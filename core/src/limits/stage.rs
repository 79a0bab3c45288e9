//! The limits stage: which of the policy's limits a request is charged against, under what
//! keys and amounts, and what the host is told (refusal, `Retry-After`, `RateLimit`
//! headers). The store ([`super::LimitStore`]) does the counting.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Calendar, Charge, LimitKind, LimitState, Period, ReservationId, Unit, Verdict};
use crate::identity::Principal;
use crate::request::Request;

/// One limit of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitRule {
    /// A unique name, reported in decisions and `RateLimit` headers.
    pub name: String,
    /// Which requests the limit applies to (all when empty).
    #[serde(rename = "match", default)]
    pub applies: LimitMatch,
    /// What the limit is counted per: any of `principal`, `tenant`, `tier`, `route`,
    /// `model`, `client_ip` (with prefixes for aggregation: `client_ip/24` for IPv4,
    /// `client_ip/24/56` for IPv4 and IPv6), `header:NAME`, and fixed `label:TEXT`. Empty:
    /// one counter for every request the limit applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// What is counted.
    pub unit: Unit,
    /// A rate: `limit` units per `per`, with bursts (GCRA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// A budget per calendar window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// For `unit: concurrency`: the most requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Reported in the decision, never enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// What happens when the store cannot be reached.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

/// Which requests a limit applies to. All given conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitMatch {
    /// Route names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Tiers of the principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Tenants of the principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// `true`: only anonymous requests; `false`: only identified ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
}

/// A rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateSpec {
    /// Units per period.
    pub limit: u64,
    /// The period: `500ms`, `1s`, `10m`, `1h`, `1d`.
    pub per: String,
    /// The most units at once (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetSpec {
    /// Units per window.
    pub limit: u64,
    /// The calendar window: `minute`, `hour`, `day` or `month`.
    pub per: BudgetPeriod,
    /// The window's time zone as a fixed offset from UTC (`+02:00`, `-05:30`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
}

/// Calendar windows for budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetPeriod {
    /// Calendar minutes.
    Minute,
    /// Calendar hours.
    Hour,
    /// Calendar days.
    Day,
    /// Calendar months.
    Month,
}

/// What a limit does when its store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnStoreError {
    /// Let the request through (the decision records the failure).
    #[default]
    Open,
    /// Refuse with 503.
    Closed,
}

/// How long reservations live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Reservations {
    /// Seconds after which a reservation that was never settled expires: its concurrency is
    /// released and its estimate becomes final. Default 600.
    pub lease_seconds: u64,
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations { lease_seconds: 600 }
    }
}

/// Where the policy's limits are counted. Absent: in process (a `MemoryStore` per engine),
/// unless the host passes a store of its own (which wins over this section).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreSettings {
    /// Redis (7+) or Valkey, shared by every replica that uses the same server and hash tag.
    /// Needs edgeward built with the `redis` feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSettings>,
}

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An environment variable holding the URL, read when the engine is built; it wins over
    /// `url` when set, so passwords stay out of policy files and bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The hash tag every key carries (Redis Cluster puts all of them in its slot).
    /// Default `edgeward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_tag: Option<String>,
    /// Connections per engine, shared by all its callers. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// How long a connect may take, e.g. `250ms` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// How long one call may take, e.g. `100ms` (the default); then `onStoreError` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_timeout: Option<String>,
    /// After a failed connect, how long calls fail at once. Default `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<String>,
    /// Decide in process and sync to Redis in batches (for very high rates; limits may
    /// overshoot by what other replicas admit between syncs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_first: Option<LocalFirstSettings>,
}

/// Local-first syncing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalFirstSettings {
    /// Time between syncs, e.g. `20ms` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<String>,
}

impl StoreSettings {
    /// The store these settings name, if any (`Err` with a message on bad values).
    #[cfg(feature = "redis")]
    pub(crate) fn build(
        &self,
        clock: &std::sync::Arc<dyn crate::limits::Clock>,
    ) -> Result<Option<std::sync::Arc<dyn crate::limits::LimitStore>>, String> {
        use std::time::Duration;
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        let url = r
            .url_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .or_else(|| r.url.clone())
            .ok_or("redis: give `url`, or `urlEnv` naming a variable that is set")?;
        let dur = |field: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(text) => parse_duration(text)
                .map(Duration::from_nanos)
                .ok_or(format!(
                    "redis.{field}: `{text}` is not a duration like 100ms"
                )),
        };
        let mut cfg = crate::limits::RedisStoreConfig::new(url);
        if let Some(t) = &r.hash_tag {
            cfg.hash_tag = t.clone();
        }
        if let Some(n) = r.connections {
            cfg.connections = n.clamp(1, 64) as usize;
        }
        cfg.connect_timeout = dur("connectTimeout", &r.connect_timeout, cfg.connect_timeout)?;
        cfg.command_timeout = dur("commandTimeout", &r.command_timeout, cfg.command_timeout)?;
        cfg.retry_backoff = dur("retryBackoff", &r.retry_backoff, cfg.retry_backoff)?;
        let store = crate::limits::RedisStore::new(cfg).map_err(|e| e.message().to_string())?;
        Ok(Some(match &r.local_first {
            None => std::sync::Arc::new(store),
            Some(lf) => {
                let every = dur(
                    "localFirst.syncInterval",
                    &lf.sync_interval,
                    Duration::from_millis(20),
                )?;
                std::sync::Arc::new(crate::limits::LocalFirstStore::new(
                    store,
                    crate::limits::LocalFirstConfig {
                        interval: Some(every),
                        clock: std::sync::Arc::clone(clock),
                        ..crate::limits::LocalFirstConfig::default()
                    },
                ))
            }
        }))
    }

    /// Without the `redis` feature a policy that names Redis does not compile.
    #[cfg(not(feature = "redis"))]
    pub(crate) fn build(
        &self,
        _clock: &std::sync::Arc<dyn crate::limits::Clock>,
    ) -> Result<Option<std::sync::Arc<dyn crate::limits::LimitStore>>, String> {
        match self.redis {
            None => Ok(None),
            Some(_) => Err("redis: this build of edgeward has no `redis` feature".into()),
        }
    }
}

/// Parses `500ms`, `1s`, `10m`, `1h`, `1d` (a number and a unit) into nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&ns| ns > 0)
}

/// Parses `+02:00` / `-05:30` / `Z` into minutes east of UTC.
fn parse_offset(s: &str) -> Option<i16> {
    let s = s.trim();
    if s == "Z" || s == "+00:00" || s == "-00:00" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i16, i16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Principal,
    Tenant,
    Tier,
    Route,
    Model,
    ClientIp { v4: u8, v6: u8 },
    Header(String),
    Label(String),
}

impl KeyPart {
    fn parse(s: &str) -> Option<KeyPart> {
        let s = s.trim();
        if let Some(h) = s.strip_prefix("header:") {
            let h = h.trim();
            return (!h.is_empty()).then(|| KeyPart::Header(h.to_ascii_lowercase()));
        }
        if let Some(l) = s.strip_prefix("label:") {
            return Some(KeyPart::Label(l.to_string()));
        }
        if let Some(rest) = s.strip_prefix("client_ip") {
            let mut prefixes = rest.split('/').skip(1);
            let v4 = match prefixes.next() {
                Some(p) => p.parse::<u8>().ok().filter(|&p| p <= 32)?,
                None => 32,
            };
            let v6 = match prefixes.next() {
                Some(p) => p.parse::<u8>().ok().filter(|&p| p <= 128)?,
                // Without an IPv6 prefix: /64, a subnet usually given to one customer, since
                // a single host can hold billions of /128 addresses.
                None if rest.is_empty() => 64,
                None => 64,
            };
            if prefixes.next().is_some() || !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            return Some(KeyPart::ClientIp { v4, v6 });
        }
        Some(match s {
            "principal" => KeyPart::Principal,
            "tenant" => KeyPart::Tenant,
            "tier" => KeyPart::Tier,
            "route" => KeyPart::Route,
            "model" => KeyPart::Model,
            _ => return None,
        })
    }
}

/// A limit compiled: its parts parsed, its math constructed.
#[derive(Debug, Clone)]
pub(crate) struct CompiledLimit {
    pub name: Arc<str>,
    applies: LimitMatch,
    parts: Vec<KeyPart>,
    pub unit: Unit,
    pub kind: LimitKind,
    pub shadow: bool,
    pub on_store_error: OnStoreError,
}

/// Compiles the policy's limits; `Err` holds the message and the key path.
pub(crate) fn compile_limits(
    rules: &[LimitRule],
    route_names: &[&str],
) -> Result<Vec<CompiledLimit>, (String, String)> {
    let mut out: Vec<CompiledLimit> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = |k: &str| format!("spec.limits[{i}]{k}");
        if r.name.is_empty() || out.iter().any(|l| *l.name == *r.name) {
            return Err((
                "limit names must be unique and not empty".into(),
                at(".name"),
            ));
        }
        for (j, route) in r.applies.routes.iter().enumerate() {
            if !route_names.contains(&route.as_str()) {
                return Err((
                    format!("no route named `{route}`"),
                    at(&format!(".match.routes[{j}]")),
                ));
            }
        }
        let mut parts = Vec::new();
        for (j, p) in r.key.iter().enumerate() {
            parts.push(KeyPart::parse(p).ok_or_else(|| {
                (
                    format!(
                        "{p:?} is not a key part (principal, tenant, tier, route, model, \
                         client_ip[/v4[/v6]], header:NAME, label:TEXT)"
                    ),
                    at(&format!(".key[{j}]")),
                )
            })?);
        }
        let kind = match (r.unit, &r.rate, &r.budget, r.max) {
            (Unit::Concurrency, None, None, Some(max)) if max > 0 => LimitKind::Concurrency { max },
            (Unit::Concurrency, ..) => {
                return Err((
                    "a concurrency limit has `max` (above 0) and no rate or budget".into(),
                    at(""),
                ))
            }
            (_, Some(rate), None, None) => {
                let per = parse_duration(&rate.per).ok_or_else(|| {
                    (
                        format!("{:?} is not a period (500ms, 1s, 10m, 1h, 1d)", rate.per),
                        at(".rate.per"),
                    )
                })?;
                LimitKind::rate(rate.limit, per, rate.burst.unwrap_or(rate.limit))
                    .map_err(|e| (format!("invalid rate: {e:?}"), at(".rate")))?
            }
            (_, None, Some(b), None) => {
                let period = match b.per {
                    BudgetPeriod::Minute => Period::Minute,
                    BudgetPeriod::Hour => Period::Hour,
                    BudgetPeriod::Day => Period::Day,
                    BudgetPeriod::Month => Period::Month,
                };
                let calendar = match &b.utc_offset {
                    None => Calendar::utc(period),
                    Some(o) => Calendar::with_offset(
                        period,
                        parse_offset(o).ok_or_else(|| {
                            (
                                format!("{o:?} is not a UTC offset (+02:00)"),
                                at(".budget.utcOffset"),
                            )
                        })?,
                    ),
                };
                LimitKind::budget(b.limit, calendar)
                    .map_err(|e| (format!("invalid budget: {e:?}"), at(".budget")))?
            }
            _ => {
                return Err((
                    "a limit has exactly one of `rate` and `budget` (or `max` for concurrency)"
                        .into(),
                    at(""),
                ))
            }
        };
        out.push(CompiledLimit {
            name: Arc::from(r.name.as_str()),
            applies: r.applies.clone(),
            parts,
            unit: r.unit,
            kind,
            shadow: r.shadow,
            on_store_error: r.on_store_error,
        });
    }
    Ok(out)
}

/// What a request brings to the limits stage.
pub(crate) struct Subject<'a> {
    pub req: &'a Request<'a>,
    pub route: &'a str,
    pub principal: Option<&'a Principal>,
    /// The model-table row the request's model matched (its name), if any.
    pub model: Option<&'a str>,
}

impl CompiledLimit {
    fn applies_to(&self, s: &Subject<'_>) -> bool {
        let m = &self.applies;
        let one_of = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
        };
        one_of(&m.routes, Some(s.route))
            && one_of(&m.tiers, s.principal.and_then(|p| p.tier.as_deref()))
            && one_of(&m.tenants, s.principal.and_then(|p| p.tenant.as_deref()))
            && m.anonymous.is_none_or(|a| a == s.principal.is_none())
    }

    /// The limit's key for `s`, or `None` when the request lacks a part the key needs (a
    /// principal part on an anonymous request, a client address the host did not pass).
    fn key(&self, s: &Subject<'_>, out: &mut String) -> Option<()> {
        // Parts the request lacks first, before any of the key is written: most requests
        // skip most limits (anonymous-only limits for identified callers, no address).
        for p in &self.parts {
            let present = match p {
                KeyPart::Principal | KeyPart::Tenant | KeyPart::Tier => s.principal.is_some(),
                KeyPart::ClientIp { .. } => s.req.client_ip().is_some(),
                _ => true,
            };
            if !present {
                return None;
            }
        }
        out.clear();
        push_value(out, self.name.as_bytes());
        for p in &self.parts {
            out.push('|');
            match p {
                KeyPart::Principal => push_value(out, s.principal?.id.as_bytes()),
                // A principal without a tenant or tier shares the `%` bucket rather than
                // escaping the limit.
                KeyPart::Tenant => match s.principal?.tenant.as_deref() {
                    Some(t) => push_value(out, t.as_bytes()),
                    None => out.push_str(ABSENT),
                },
                KeyPart::Tier => match s.principal?.tier.as_deref() {
                    Some(t) => push_value(out, t.as_bytes()),
                    None => out.push_str(ABSENT),
                },
                KeyPart::Route => push_value(out, s.route.as_bytes()),
                KeyPart::Model => match s.model {
                    Some(m) => push_value(out, m.as_bytes()),
                    None => out.push_str(ABSENT),
                },
                KeyPart::ClientIp { v4, v6 } => {
                    // Digits, dots, colons and a slash: nothing to escape, so written as is.
                    let (net, bits) = crate::request::network(s.req.client_ip()?, *v4, *v6);
                    let _ = write!(out, "{net}/{bits}");
                }
                KeyPart::Header(h) => match s.req.header(h).map(<[u8]>::trim_ascii) {
                    Some(v) => push_value(out, v),
                    None => out.push_str(ABSENT),
                },
                KeyPart::Label(l) => push_value(out, l.as_bytes()),
            }
        }
        Some(())
    }
}

/// A key part the request does not have. A lone `%` is never the escape of a value (every
/// `%` of a value is escaped), so it cannot collide with one.
const ABSENT: &str = "%";

/// Appends a key value: printable ASCII except the separators as is, every other byte
/// escaped (raw bytes, so two invalid UTF-8 values never share a key); values longer than
/// 96 bytes (client-chosen header values) as a hash behind `%#`, which no escaped value can
/// start with.
fn push_value(out: &mut String, v: &[u8]) {
    if v.len() > 96 {
        out.push_str("%#");
        for b in &Sha256::digest(v)[..16] {
            let _ = write!(out, "{b:02x}");
        }
        return;
    }
    for &b in v {
        // `{}` are escaped so a value cannot name a Redis Cluster hash tag.
        if b.is_ascii_graphic() && !matches!(b, b'|' | b'%' | b'{' | b'}' | b'#') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The amounts a request is charged, per unit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Amounts {
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub micro_usd: u64,
}

impl Amounts {
    pub fn of(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Requests | Unit::Concurrency => 1,
            Unit::PromptTokens => self.prompt_tokens,
            Unit::OutputTokens => self.output_tokens,
            Unit::TotalTokens => self.prompt_tokens.saturating_add(self.output_tokens),
            Unit::MicroUsd => self.micro_usd,
        }
    }
}

/// The charges for a request (of the limits `keep` selects) into `out`, and the index of
/// each charge's limit into `limit_of`: two lists, so `out` is what the store takes.
pub(crate) fn charges(
    limits: &[CompiledLimit],
    s: &Subject<'_>,
    amounts: &Amounts,
    keep: impl Fn(&CompiledLimit) -> bool,
    key: &mut String,
    limit_of: &mut Vec<usize>,
    out: &mut Vec<Charge>,
) {
    limit_of.clear();
    out.clear();
    for (i, l) in limits.iter().enumerate() {
        if !keep(l) || !l.applies_to(s) || l.key(s, key).is_none() {
            continue;
        }
        let mut c = Charge::new(key.as_str(), l.kind, amounts.of(l.unit));
        if l.shadow {
            c = c.shadow();
        }
        limit_of.push(i);
        out.push(c);
    }
}

/// Whether every charge is final at admission (request counters without concurrency), so
/// the reservation needs no bookkeeping.
pub(crate) fn final_at_admission(limits: &[CompiledLimit], limit_of: &[usize]) -> bool {
    limit_of.iter().all(|&i| limits[i].unit == Unit::Requests)
}

/// A fresh reservation id: a per-process random half and a counter, so ids never repeat in
/// a process and differ between processes sharing a store.
pub(crate) fn reservation_id() -> ReservationId {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8)
    });
    ReservationId((u128::from(seed) << 64) | u128::from(NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// What one limit said about a request, for the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitOutcome {
    /// The limit's name.
    pub name: Arc<str>,
    /// What it counts.
    pub unit: Unit,
    /// Its limit (per period, per window, or in flight).
    pub limit: u64,
    /// What is left after this request.
    pub remaining: u64,
    /// Seconds until it is fully available again.
    pub reset_seconds: u64,
    /// Whether this limit alone would refuse the request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exceeded: bool,
    /// Seconds after which it would admit the request, when it refuses (absent when the
    /// request can never fit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Reported only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

const NS: u64 = 1_000_000_000;

fn ceil_s(ns: u64) -> u64 {
    ns.div_ceil(NS)
}

/// The decision's view of a limit's state.
pub(crate) fn outcome(l: &CompiledLimit, c: &Charge, st: &LimitState) -> LimitOutcome {
    let exceeded = st.verdict != Verdict::Allowed;
    LimitOutcome {
        name: l.name.clone(),
        unit: l.unit,
        limit: st.limit,
        remaining: st.remaining,
        reset_seconds: ceil_s(st.reset_after_ns),
        exceeded,
        retry_after_seconds: st.retry_after_ns().map(ceil_s),
        shadow: c.shadow,
    }
}

/// Response headers for the most constrained enforced limit: the IETF `RateLimit` /
/// `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers) and the common
/// `X-RateLimit-*` ones, plus `Retry-After` when refused.
pub(crate) fn headers(
    limits: &[CompiledLimit],
    outcomes: &[(usize, LimitOutcome)],
    refusing: Option<usize>,
    retry_after: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some(s) = retry_after {
        h.push(("retry-after", s.max(1).to_string()));
    }
    let windowed = |i: usize| !matches!(limits[i].kind, LimitKind::Concurrency { .. });
    // The refusing limit when there is one (if it has a window); else the enforced limit
    // with the least left relative to its size. Concurrency limits have no window and are
    // left out of the rate headers.
    let pick = refusing
        .and_then(|c| outcomes.get(c))
        .filter(|(i, _)| windowed(*i))
        .or_else(|| {
            outcomes
                .iter()
                .filter(|(i, o)| !o.shadow && windowed(*i))
                .min_by(|(_, a), (_, b)| {
                    (u128::from(a.remaining) * u128::from(b.limit.max(1)))
                        .cmp(&(u128::from(b.remaining) * u128::from(a.limit.max(1))))
                })
        });
    if let Some((i, o)) = pick {
        let w = ceil_s(limits[*i].kind.window_ns());
        let name = sf_string(&o.name);
        h.push(("ratelimit-policy", format!("{name};q={};w={w}", o.limit)));
        h.push((
            "ratelimit",
            format!("{name};r={};t={}", o.remaining, o.reset_seconds),
        ));
        h.push(("x-ratelimit-limit", o.limit.to_string()));
        h.push(("x-ratelimit-remaining", o.remaining.to_string()));
        h.push(("x-ratelimit-reset", o.reset_seconds.to_string()));
    }
    h
}

/// A structured-field string (RFC 8941): quoted, with `"` and `\` escaped, printable ASCII
/// only.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `redis` feature a policy that counts limits in Redis does not compile,
    /// rather than silently counting in process.
    #[cfg(not(feature = "redis"))]
    #[test]
    fn a_redis_store_needs_the_feature() {
        let p = crate::Policy::from_text(
            "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {name: s}\nspec:\n  store:\n    redis: {url: 'redis://127.0.0.1/'}\n",
        )
        .unwrap();
        let e = crate::Engine::new(&p).unwrap_err();
        assert_eq!(e.code(), "policy.invalid_value");
        assert!(e.to_string().contains("redis"), "{e}");
    }

    #[test]
    fn durations_and_offsets() {
        assert_eq!(parse_duration("1s"), Some(NS));
        assert_eq!(parse_duration("500ms"), Some(NS / 2));
        assert_eq!(parse_duration("10m"), Some(600 * NS));
        assert_eq!(parse_duration("1h"), Some(3600 * NS));
        assert_eq!(parse_duration("2d"), Some(2 * 86_400 * NS));
        for bad in ["", "s", "1", "0s", "1w", "-1s", "1.5s", "99999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_offset("+02:00"), Some(120));
        assert_eq!(parse_offset("-05:30"), Some(-330));
        assert_eq!(parse_offset("Z"), Some(0));
        for bad in ["2:00", "+25:00", "+02:60", "+0200"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    fn net(ip: &str, v4: u8, v6: u8) -> String {
        let (n, bits) = crate::request::network(ip.parse().unwrap(), v4, v6);
        format!("{n}/{bits}")
    }

    #[test]
    fn key_parts() {
        assert_eq!(
            KeyPart::parse("client_ip"),
            Some(KeyPart::ClientIp { v4: 32, v6: 64 })
        );
        assert_eq!(
            KeyPart::parse("client_ip/24"),
            Some(KeyPart::ClientIp { v4: 24, v6: 64 })
        );
        assert_eq!(
            KeyPart::parse("client_ip/16/48"),
            Some(KeyPart::ClientIp { v4: 16, v6: 48 })
        );
        assert_eq!(
            KeyPart::parse("header:X-Team"),
            Some(KeyPart::Header("x-team".into()))
        );
        for bad in [
            "client_ip/33",
            "client_ip/24/129",
            "client_ip/1/2/3",
            "client_ipx",
            "header:",
            "user",
        ] {
            assert_eq!(KeyPart::parse(bad), None, "{bad}");
        }
        assert_eq!(net("203.0.113.77", 24, 64), "203.0.113.0/24");
        assert_eq!(net("::ffff:203.0.113.77", 24, 64), "203.0.113.0/24");
        assert_eq!(net("2001:db8:1:2:3::9", 24, 64), "2001:db8:1:2::/64");
    }

    #[test]
    fn values_are_escaped_and_bounded() {
        let mut s = String::new();
        push_value(&mut s, b"a|b c%{x}#");
        assert_eq!(s, "a%7Cb%20c%25%7Bx%7D%23");
        s.clear();
        push_value(&mut s, "x".repeat(200).as_bytes());
        assert!(s.starts_with("%#") && s.len() == 2 + 32, "{s}");
        // Distinct invalid UTF-8 stays distinct.
        let (mut a, mut b) = (String::new(), String::new());
        push_value(&mut a, b"\xff");
        push_value(&mut b, b"\xfe");
        assert_ne!(a, b);
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c?\"");
    }
}
