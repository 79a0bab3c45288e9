//! The limits stage through the engine: rates, budgets and concurrency per principal,
//! tenant, client network or header; reserve then settle; shadow and monitor modes; store
//! failures; response headers. Time is a `FakeClock`.

use std::net::IpAddr;
use std::sync::Arc;

use edgeward::limits::{
    Charge, FakeClock, LimitState, LimitStore, Outcome, ReservationId, Settled, StoreError,
    StoreErrorKind,
};
use edgeward::{Decision, Engine, Policy, Reason, Request, Stage, Usage};
mod common;

const S: u64 = 1_000_000_000;
/// 2026-11-27 12:00:00 UTC.
const NOON: u64 = 1_795_780_800 * S;

use common::key_sha256 as sha;

fn policy(limits: &str) -> Policy {
    let text = format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: limits}}
spec:
  rules: {{builtin: false}}
  identity:
    apiKeys:
      keys:
        - {{sha256: "{a}", id: alice, tenant: acme, tier: pro}}
        - {{sha256: "{b}", id: bob, tenant: acme, tier: free}}
        - {{sha256: "{c}", id: carol, tenant: globex, tier: free}}
    anonymous: allow
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {{input: 0.15, output: 0.60}}
  defaults:
    params: {{defaultOutputTokens: 100}}
  routes:
    - name: chat
      match: {{paths: ["/v1/chat/completions"]}}
      schema: openai-chat
    - name: watch
      match: {{paths: ["/watch/*"]}}
      schema: openai-chat
      mode: monitor
  limits:
{limits}
"#,
        a = sha("key-alice"),
        b = sha("key-bob"),
        c = sha("key-carol"),
    );
    Policy::from_text(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn engine(limits: &str, clock: &FakeClock) -> Engine {
    Engine::builder()
        .clock(Arc::new(clock.clone()))
        .build(&policy(limits))
        .unwrap_or_else(|e| panic!("{e}"))
}

const BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"Hello there, how are you today?"}]}"#;

fn call(
    e: &Engine,
    path: &str,
    key: Option<&str>,
    peer: Option<&str>,
    extra: &[(&str, &str)],
) -> Decision {
    let mut hs: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"application/json")];
    let k;
    if let Some(key) = key {
        k = key.to_string();
        hs.push((b"x-api-key", k.as_bytes()));
    }
    hs.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut req = Request::new(b"POST", path.as_bytes())
        .with_headers(&hs)
        .with_body(BODY.as_bytes());
    if let Some(p) = peer {
        req = req.with_peer(p.parse::<IpAddr>().unwrap());
    }
    e.inspect(&req)
}

fn alice(e: &Engine) -> Decision {
    call(e, "/v1/chat/completions", Some("key-alice"), None, &[])
}

fn header<'d>(d: &'d Decision, name: &str) -> Option<&'d str> {
    d.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn rate_limited(d: &Decision) -> (&str, Option<u64>) {
    match d.reason() {
        Some(Reason::RateLimited {
            limit,
            retry_after_seconds,
        }) => {
            assert_eq!((d.status(), d.stage), (Some(429), Stage::Limits));
            (limit, *retry_after_seconds)
        }
        other => panic!("not rate limited: {other:?} {}", d.to_json()),
    }
}

#[test]
fn request_rate_per_principal_with_headers_and_retry_after() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: rpm, key: [principal], unit: requests, rate: {limit: 3, per: 1m}}",
        &clock,
    );
    for left in [2u64, 1, 0] {
        let d = alice(&e);
        assert!(d.is_allowed(), "{}", d.to_json());
        assert_eq!(d.limits.len(), 1);
        assert_eq!(d.limits[0].remaining, left);
        assert_eq!(header(&d, "x-ratelimit-limit"), Some("3"));
        assert_eq!(
            header(&d, "x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
        assert_eq!(header(&d, "ratelimit-policy"), Some(r#""rpm";q=3;w=60"#));
        assert!(header(&d, "ratelimit")
            .unwrap()
            .starts_with(&format!("\"rpm\";r={left};t=")));
        // Request counters are final at admission: nothing to settle.
        assert!(d.reservation.is_none());
    }
    let d = alice(&e);
    let (name, retry) = rate_limited(&d);
    assert_eq!((name, retry), ("rpm", Some(20)));
    assert_eq!(header(&d, "retry-after"), Some("20"));
    assert!(d.limits[0].exceeded);
    // Another principal has its own counter.
    let d = call(&e, "/v1/chat/completions", Some("key-bob"), None, &[]);
    assert!(d.is_allowed(), "{}", d.to_json());
    // One emission interval later, one more fits.
    clock.advance(20 * S);
    assert!(alice(&e).is_allowed());
    assert!(!alice(&e).is_allowed());
}

#[test]
fn token_budget_per_tenant_reserves_then_settles() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: daily-tokens, key: [tenant], unit: totalTokens, budget: {limit: 400, per: day}}",
        &clock,
    );
    let d = alice(&e);
    assert!(d.is_allowed(), "{}", d.to_json());
    let c = d.cost.clone().unwrap();
    let reserved = c.prompt_tokens + c.output_tokens_reserved;
    assert_eq!(c.output_tokens_reserved, 50);
    assert_eq!(d.limits[0].remaining, 400 - reserved);
    let r = d.reservation.clone().expect("token limits need settling");
    // The response used fewer tokens than reserved: the difference comes back.
    let usage = Usage {
        prompt_tokens: c.prompt_tokens,
        output_tokens: 10,
        ..Usage::default()
    };
    assert_eq!(e.settle(&r, &usage).unwrap(), Settled::Settled);
    assert_eq!(
        e.settle(&r, &usage).unwrap(),
        Settled::Unknown,
        "settling twice"
    );
    let used = c.prompt_tokens + 10;
    // bob is in the same tenant: he sees what alice left.
    let d = call(&e, "/v1/chat/completions", Some("key-bob"), None, &[]);
    assert_eq!(
        d.limits[0].remaining,
        400 - used - reserved,
        "{}",
        d.to_json()
    );
    // Exhaust the tenant's day; carol (another tenant) is not affected.
    let mut n = 0;
    while call(&e, "/v1/chat/completions", Some("key-bob"), None, &[]).is_allowed() {
        n += 1;
        assert!(n < 100);
    }
    let d = alice(&e);
    let (name, retry) = rate_limited(&d);
    assert_eq!(name, "daily-tokens");
    // The next window starts at midnight UTC: 12 hours away.
    assert_eq!(retry, Some(12 * 3600));
    assert!(call(&e, "/v1/chat/completions", Some("key-carol"), None, &[]).is_allowed());
    clock.advance(12 * 3600 * S);
    assert!(alice(&e).is_allowed(), "a new day");
}

#[test]
fn micro_usd_budgets_settle_at_the_model_price() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: spend, key: [principal], unit: microUsd, budget: {limit: 1000000, per: month}}",
        &clock,
    );
    let d = alice(&e);
    let c = d.cost.clone().unwrap();
    assert_eq!(d.limits[0].remaining, 1_000_000 - c.micro_usd);
    // 1M input tokens at $0.15 and 100k output at $0.60: 150,000 + 60,000 µ$.
    let usage = Usage {
        prompt_tokens: 1_000_000,
        output_tokens: 100_000,
        ..Usage::default()
    };
    e.settle(d.reservation.as_ref().unwrap(), &usage).unwrap();
    let d = alice(&e);
    assert_eq!(d.limits[0].remaining, 1_000_000 - 210_000 - c.micro_usd);
}

#[test]
fn concurrency_is_released_by_settle_or_by_lease_expiry() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: inflight, key: [principal], unit: concurrency, max: 2}",
        &clock,
    );
    let a = alice(&e);
    let b = alice(&e);
    assert!(a.is_allowed() && b.is_allowed());
    let d = alice(&e);
    assert_eq!(rate_limited(&d).0, "inflight");
    // No Retry-After for concurrency: it frees up when a request finishes.
    e.settle(a.reservation.as_ref().unwrap(), &Usage::default())
        .unwrap();
    assert!(alice(&e).is_allowed());
    assert!(!alice(&e).is_allowed());
    // Unsettled reservations expire after the lease (600 s by default).
    clock.advance(601 * S);
    assert!(alice(&e).is_allowed());
    // Settling an expired one changes nothing.
    assert_eq!(
        e.settle(b.reservation.as_ref().unwrap(), &Usage::default())
            .unwrap(),
        Settled::Unknown
    );
}

#[test]
fn all_or_nothing_across_limits() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: tenant-rpm, key: [tenant], unit: requests, rate: {limit: 100, per: 1m}}
    - {name: free-rpm, match: {tiers: [free]}, key: [principal], unit: requests, rate: {limit: 1, per: 1m}}",
        &clock,
    );
    let bob = || call(&e, "/v1/chat/completions", Some("key-bob"), None, &[]);
    let d = bob();
    assert!(d.is_allowed());
    assert_eq!(d.limits.len(), 2);
    assert_eq!(d.limits[0].remaining, 99);
    // Refused by free-rpm: tenant-rpm is not charged for it.
    for _ in 0..5 {
        let d = bob();
        assert_eq!(rate_limited(&d).0, "free-rpm");
    }
    let d = alice(&e); // pro: only tenant-rpm applies
    assert_eq!(d.limits.len(), 1);
    assert_eq!(d.limits[0].remaining, 98, "{}", d.to_json());
}

#[test]
fn shadow_limits_and_monitor_mode_report_without_refusing() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: trial, key: [principal], unit: requests, rate: {limit: 1, per: 1h}, shadow: true}",
        &clock,
    );
    for i in 0..3 {
        let d = alice(&e);
        assert!(d.is_allowed(), "{}", d.to_json());
        assert!(d.limits[0].shadow);
        assert_eq!(d.limits[0].exceeded, i > 0);
    }
    let e = engine(
        "    - {name: rpm, key: [principal], unit: requests, rate: {limit: 1, per: 1h}}
    - {name: trial, key: [principal], unit: requests, rate: {limit: 1, per: 1h}, shadow: true}",
        &clock,
    );
    // Monitor routes only look: they never use up what enforcing routes share with them.
    let watch = || call(&e, "/watch/x", Some("key-alice"), None, &[]);
    for _ in 0..3 {
        let d = watch();
        assert!(d.is_allowed() && d.would_deny.is_none(), "{}", d.to_json());
        assert!(d.reservation.is_none());
    }
    assert!(alice(&e).is_allowed());
    // Now `rpm` is used up: monitor reports what enforce would do, naming `rpm`, never
    // the shadow limit `trial` (enforce mode would not refuse on it either).
    let d = watch();
    assert!(d.is_allowed(), "{}", d.to_json());
    assert_eq!(
        d.would_deny,
        Some(Reason::RateLimited {
            limit: "rpm".into(),
            retry_after_seconds: Some(3600)
        }),
        "{}",
        d.to_json()
    );
    let e = engine(
        "    - {name: trial, key: [principal], unit: requests, rate: {limit: 1, per: 1h}, shadow: true}",
        &clock,
    );
    assert!(alice(&e).is_allowed());
    let d = call(&e, "/watch/x", Some("key-alice"), None, &[]);
    assert!(
        d.limits[0].exceeded && d.would_deny.is_none(),
        "{}",
        d.to_json()
    );
}

#[test]
fn anonymous_callers_are_limited_per_client_network() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: anon, match: {anonymous: true}, key: [client_ip/24], unit: requests, rate: {limit: 2, per: 1m}}",
        &clock,
    );
    let anon = |peer: Option<&str>| call(&e, "/v1/chat/completions", None, peer, &[]);
    assert!(anon(Some("203.0.113.5")).is_allowed());
    assert!(anon(Some("203.0.113.200")).is_allowed(), "same /24");
    assert_eq!(rate_limited(&anon(Some("203.0.113.77"))).0, "anon");
    assert!(anon(Some("203.0.114.1")).is_allowed(), "another /24");
    // IPv4-mapped IPv6 is the same network.
    assert!(!anon(Some("::ffff:203.0.113.9")).is_allowed());
    // Identified callers are not in this limit, and without an address it does not apply.
    assert!(call(
        &e,
        "/v1/chat/completions",
        Some("key-alice"),
        Some("203.0.113.5"),
        &[]
    )
    .limits
    .is_empty());
    assert!(anon(None).limits.is_empty());
}

#[test]
fn header_model_and_label_keys() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: per-app, key: [header:x-app, model, label:v1], unit: requests, rate: {limit: 1, per: 1m}}",
        &clock,
    );
    let app = |v: &str| {
        call(
            &e,
            "/v1/chat/completions",
            Some("key-alice"),
            None,
            &[("x-app", v)],
        )
    };
    assert!(app("a").is_allowed());
    assert!(!app("a").is_allowed());
    assert!(app("b").is_allowed());
    // Separators and long values: `missing_parts_separators_and_client_addresses`.
}

/// A store that always fails, for the failure paths.
#[derive(Debug)]
struct Down;

impl LimitStore for Down {
    fn acquire(
        &self,
        _: ReservationId,
        _: &[Charge],
        _: u64,
        _: u64,
        _: &mut Vec<LimitState>,
    ) -> Result<Outcome, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    }
    fn settle(&self, _: ReservationId, _: &[u64], _: u64) -> Result<Settled, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    }
    fn peek(&self, _: &[Charge], _: u64, _: &mut Vec<LimitState>) -> Result<(), StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    }
}

#[test]
fn store_failures_follow_on_store_error() {
    for (mode, allowed) in [("open", true), ("closed", false)] {
        let e = Engine::builder()
            .store(Arc::new(Down))
            .build(&policy(&format!(
                "    - {{name: rpm, key: [principal], unit: requests, rate: {{limit: 10, per: 1m}}, onStoreError: {mode}}}"
            )))
            .unwrap();
        let d = alice(&e);
        assert_eq!(d.is_allowed(), allowed, "{mode}: {}", d.to_json());
        let f = d.store_error.as_ref().expect("recorded");
        assert_eq!((f.code, f.failed_open), ("store.unavailable", allowed));
        if !allowed {
            assert_eq!(d.status(), Some(503));
            assert_eq!(d.reason().unwrap().code(), "limit_store_unavailable");
        }
    }
}

#[test]
fn limit_policy_errors() {
    for (name, limits) in [
        ("bad period", "    - {name: a, unit: requests, rate: {limit: 1, per: 1w}}"),
        ("zero limit", "    - {name: a, unit: requests, rate: {limit: 0, per: 1s}}"),
        ("both", "    - {name: a, unit: requests, rate: {limit: 1, per: 1s}, budget: {limit: 1, per: day}}"),
        ("neither", "    - {name: a, unit: requests}"),
        ("concurrency without max", "    - {name: a, unit: concurrency}"),
        ("bad key", "    - {name: a, key: [user], unit: requests, rate: {limit: 1, per: 1s}}"),
        ("unknown route", "    - {name: a, match: {routes: [nope]}, unit: requests, rate: {limit: 1, per: 1s}}"),
        ("bad offset", "    - {name: a, unit: requests, budget: {limit: 1, per: day, utcOffset: '2h'}}"),
        (
            "duplicate name",
            "    - {name: a, unit: requests, rate: {limit: 1, per: 1s}}\n    - {name: a, unit: requests, rate: {limit: 2, per: 1s}}",
        ),
    ] {
        let text = format!(
            "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {{name: x}}\nspec:\n  limits:\n{limits}\n"
        );
        let err = Policy::from_text(&text).expect_err(name);
        assert_eq!(err.code(), "policy.invalid_value", "{name}: {err}");
    }
}

/// The embedded default policy limits anonymous callers per client address instead of
/// refusing them.
#[test]
fn the_default_policy_limits_anonymous_callers_per_address() {
    let clock = FakeClock::new(NOON);
    let e = Engine::builder()
        .clock(Arc::new(clock.clone()))
        .build(&Policy::default_policy())
        .unwrap();
    let d = call(&e, "/v1/chat/completions", None, Some("198.51.100.7"), &[]);
    assert!(d.is_allowed(), "{}", d.to_json());
    let names: Vec<&str> = d.limits.iter().map(|l| &*l.name).collect();
    assert_eq!(
        names,
        [
            "anonymous-requests",
            "anonymous-tokens",
            "anonymous-in-flight"
        ]
    );
    let first = d
        .reservation
        .clone()
        .expect("tokens and concurrency need settling");
    assert_eq!(header(&d, "x-ratelimit-limit"), Some("600"));
    // 32 in flight at once from one address.
    let mut open = vec![first];
    loop {
        let d = call(&e, "/v1/chat/completions", None, Some("198.51.100.7"), &[]);
        if !d.is_allowed() {
            assert_eq!(rate_limited(&d).0, "anonymous-in-flight");
            break;
        }
        open.push(d.reservation.unwrap());
    }
    assert_eq!(open.len(), 32);
    for r in &open {
        e.settle(r, &Usage::default()).unwrap();
    }
    // Requests settled as they finish: the burst of 120 requests is what stops them.
    let mut allowed = open.len();
    loop {
        let d = call(&e, "/v1/chat/completions", None, Some("198.51.100.7"), &[]);
        if !d.is_allowed() {
            assert_eq!(rate_limited(&d), ("anonymous-requests", Some(1)));
            break;
        }
        allowed += 1;
        e.settle(d.reservation.as_ref().unwrap(), &Usage::default())
            .unwrap();
    }
    assert_eq!(allowed, 120);
    // Another address is not affected.
    assert!(call(&e, "/v1/chat/completions", None, Some("198.51.100.8"), &[]).is_allowed());
    // Without an address, nothing applies (eval and demo keep working).
    let d = call(&e, "/v1/chat/completions", None, None, &[]);
    assert!(d.is_allowed() && d.limits.is_empty(), "{}", d.to_json());
}

/// A token budget that the estimate would exceed but the exact count fits: the prompt is
/// counted exactly before refusing, so no refusal is the estimate's error.
#[test]
fn budgets_count_exactly_before_refusing_on_an_estimate() {
    if !edgeward::cost::tokens::exact_available() {
        eprintln!("note: built without the `tiktoken` feature; exact recount not checked");
        return;
    }
    // Runs of newlines: the estimator counts them high (a run merges into few tokens).
    let text = format!("{}x", "\n".repeat(100)).repeat(20);
    let body = format!(
        r#"{{"model":"gpt-4o-mini","max_tokens":1,"messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::to_string(&text).unwrap()
    );
    let probe = Engine::default_engine();
    let req = Request::new(b"POST", b"/v1/chat/completions").with_body(body.as_bytes());
    let est = probe.inspect(&req).cost.unwrap();
    assert!(!est.exact);
    let exact =
        edgeward::cost::tokens::count_exact(edgeward::cost::tokens::Encoding::O200kBase, &text)
            .unwrap()
            + 6;
    assert!(exact < est.prompt_tokens, "{exact} vs {est:?}");
    for (budget, admitted) in [(exact + 1, true), (exact - 1, false)] {
        let clock = FakeClock::new(NOON);
        let e = engine(
            &format!(
                "    - {{name: b, key: [principal], unit: promptTokens, budget: {{limit: {budget}, per: day}}}}"
            ),
            &clock,
        );
        let hs: Vec<(&[u8], &[u8])> = vec![(b"x-api-key", b"key-alice")];
        let d = e.inspect(
            &Request::new(b"POST", b"/v1/chat/completions")
                .with_headers(&hs)
                .with_body(body.as_bytes()),
        );
        assert_eq!(d.is_allowed(), admitted, "budget {budget}: {}", d.to_json());
        let c = d.cost.as_ref().unwrap();
        assert!(c.exact, "{}", d.to_json());
        assert_eq!(c.prompt_tokens, exact);
        if admitted {
            assert_eq!(d.limits[0].remaining, budget - exact);
        }
    }
}

/// Many threads through one engine: the admitted requests never exceed the limits, and the
/// tokens charged never exceed the budget.
#[test]
fn concurrent_callers_never_exceed_a_limit() {
    let clock = FakeClock::new(NOON);
    let e = engine(
        "    - {name: rpm, key: [tenant], unit: requests, rate: {limit: 50, per: 1h}}
    - {name: tokens, key: [principal], unit: totalTokens, budget: {limit: 2000, per: day}}",
        &clock,
    );
    let admitted = std::sync::atomic::AtomicU64::new(0);
    let tokens: Vec<std::sync::atomic::AtomicU64> = (0..3)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (e, admitted, tokens) = (&e, &admitted, &tokens);
            s.spawn(move || {
                let keys = ["key-alice", "key-bob", "key-carol"];
                for i in 0..40 {
                    let k = (t + i) % 3;
                    let d = call(e, "/v1/chat/completions", Some(keys[k]), None, &[]);
                    if d.is_allowed() {
                        let c = d.cost.unwrap();
                        if k < 2 {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        tokens[k].fetch_add(
                            c.prompt_tokens + c.output_tokens_reserved,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    } else {
                        assert_eq!(d.status(), Some(429), "{}", d.to_json());
                    }
                }
            });
        }
    });
    // alice and bob share tenant acme's 50 requests; each principal has 2000 tokens.
    // Exactly 50: refusals by the token budget charge nothing (all or nothing).
    assert_eq!(admitted.into_inner(), 50);
    for t in tokens {
        assert!(t.into_inner() <= 2000);
    }
}

/// Review findings: tenant-less principals share a bucket instead of escaping the limit;
/// separators in values cannot forge keys; `client_ip` keys use the client address the host
/// resolved; leases of 0 are refused.
#[test]
fn missing_parts_separators_and_client_addresses() {
    let clock = FakeClock::new(NOON);
    // A principal without a tenant (from a JWT-less directory: the host identity).
    let e = engine(
        "    - {name: t, key: [tenant], unit: requests, rate: {limit: 1, per: 1h}}",
        &clock,
    );
    let host = |id: &str| {
        let hs: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"application/json")];
        e.inspect(
            &Request::new(b"POST", b"/v1/chat/completions")
                .with_headers(&hs)
                .with_body(BODY.as_bytes())
                .with_identity(id),
        )
    };
    assert!(host("x").is_allowed());
    assert_eq!(
        rate_limited(&host("y")).0,
        "t",
        "both have no tenant: one bucket"
    );
    // Two header parts: ("a|b", "c") and ("a", "b|c") are different keys.
    let e = engine(
        "    - {name: h, key: [header:x-one, header:x-two], unit: requests, rate: {limit: 1, per: 1h}}",
        &clock,
    );
    let two = |a: &str, b: &str| {
        call(
            &e,
            "/v1/chat/completions",
            Some("key-alice"),
            None,
            &[("x-one", a), ("x-two", b)],
        )
    };
    assert!(two("a|b", "c").is_allowed());
    assert!(two("a", "b|c").is_allowed());
    assert!(!two("a|b", "c").is_allowed());
    // A value that spells the hash of a long value is not that value's key.
    let long = "v".repeat(300);
    assert!(two(&long, "c").is_allowed());
    assert!(
        !two(&long, "c").is_allowed(),
        "long values are keyed (by hash)"
    );
    // client_ip keys use the address the host resolved, not the proxy's socket.
    let e = engine(
        "    - {name: ip, key: [client_ip], unit: requests, rate: {limit: 1, per: 1h}}",
        &clock,
    );
    let via_proxy = |client: &str| {
        let hs: Vec<(&[u8], &[u8])> = vec![(b"x-api-key", b"key-alice")];
        e.inspect(
            &Request::new(b"POST", b"/v1/chat/completions")
                .with_headers(&hs)
                .with_body(BODY.as_bytes())
                .with_peer("10.0.0.1".parse().unwrap())
                .with_client_ip(client.parse().unwrap()),
        )
    };
    assert!(via_proxy("198.51.100.1").is_allowed());
    assert!(
        via_proxy("198.51.100.2").is_allowed(),
        "another client behind the same proxy"
    );
    assert!(!via_proxy("198.51.100.1").is_allowed());
    // Leases of 0 would release concurrency at once.
    let err = Policy::from_text(
        "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  reservations: {leaseSeconds: 0}\n",
    )
    .expect_err("lease 0");
    assert_eq!(err.code(), "policy.invalid_value");
}

/// Failed authentications count as anonymous requests: a caller guessing keys or sending
/// made-up tokens is limited like any anonymous caller, and once over the limit its tokens
/// are refused before the signature check.
#[test]
fn failed_authentications_count_against_anonymous_limits() {
    let clock = FakeClock::new(NOON);
    let secret = "a-shared-secret-of-at-least-32-bytes!!";
    let text = format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: x}}
spec:
  identity:
    apiKeys:
      keys: [{{sha256: "{a}", id: alice}}]
    jwt:
      issuers:
        - {{issuer: i, audiences: [a], algorithms: [HS256], keys: [{{algorithm: HS256, secret: "{secret}"}}]}}
  routes:
    - {{name: chat, match: {{paths: ["/v1/chat/completions"]}}, schema: openai-chat}}
  limits:
    - {{name: anon, match: {{anonymous: true}}, key: [client_ip], unit: requests, rate: {{limit: 2, per: 1h}}}}
"#,
        a = sha("key-alice")
    );
    let e = Engine::builder()
        .clock(Arc::new(clock.clone()))
        .build(&Policy::from_text(&text).unwrap())
        .unwrap();
    let guess = |header: &str, value: &str, peer: &str| {
        let hs: Vec<(&[u8], &[u8])> = vec![(header.as_bytes(), value.as_bytes())];
        e.inspect(
            &Request::new(b"POST", b"/v1/chat/completions")
                .with_headers(&hs)
                .with_body(BODY.as_bytes())
                .with_peer(peer.parse().unwrap()),
        )
    };
    // Two wrong keys: 401 each, and each counts.
    for k in ["key-x", "key-y"] {
        assert_eq!(guess("x-api-key", k, "198.51.100.9").status(), Some(401));
    }
    // The third attempt is over the limit: 429, with Retry-After.
    let d = guess("x-api-key", "key-z", "198.51.100.9");
    assert_eq!(rate_limited(&d).0, "anon");
    assert_eq!(header(&d, "retry-after"), Some("1800"));
    // A made-up token from that address is refused before its signature is checked.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJpIiwiYXVkIjoiYSIsInN1YiI6InMiLCJleHAiOjk5OTk5OTk5OTl9.c2ln";
    let d = guess("authorization", &format!("Bearer {forged}"), "198.51.100.9");
    assert_eq!(rate_limited(&d).0, "anon");
    // Another address is unaffected, and a valid key still works from the first one.
    assert_eq!(
        guess("x-api-key", "key-x", "198.51.100.10").status(),
        Some(401)
    );
    assert!(guess("x-api-key", "key-alice", "198.51.100.9").is_allowed());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: &str =
        "    - {name: tokens, key: [tenant], unit: totalTokens, budget: {limit: 3000, per: hour}}
    - {name: spend, key: [principal], unit: microUsd, budget: {limit: 2000, per: day}}
    - {name: inflight, key: [principal], unit: concurrency, max: 3}";

    /// What a caller sees of the limits: per limit, its name and what remains.
    fn seen(d: &Decision) -> Vec<(String, u64)> {
        d.limits
            .iter()
            .map(|l| (l.name.to_string(), l.remaining))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Settling is idempotent: a host that settles every reservation up to three times
        /// (retries, a duplicate callback) leaves exactly the budgets of one that settles
        /// each once, whatever the usage, the order and the time between calls.
        #[test]
        fn settle_is_idempotent(
            steps in proptest::collection::vec((0u64..400, 0u64..80, 1usize..4, any::<bool>()), 1..24)
        ) {
            let (c1, c2) = (FakeClock::new(NOON), FakeClock::new(NOON));
            let (once, many) = (engine(LIMITS, &c1), engine(LIMITS, &c2));
            for (secs, output, repeats, settle) in steps {
                let (d1, d2) = (alice(&once), alice(&many));
                prop_assert_eq!(seen(&d1), seen(&d2));
                prop_assert_eq!(d1.is_allowed(), d2.is_allowed());
                if let (Some(r1), Some(r2)) = (d1.reservation.clone(), d2.reservation.clone()) {
                    if settle {
                        let u = Usage {
                            prompt_tokens: d1.cost.as_ref().map_or(0, |c| c.prompt_tokens),
                            output_tokens: output,
                            ..Usage::default()
                        };
                        prop_assert_eq!(once.settle(&r1, &u).unwrap(), Settled::Settled);
                        prop_assert_eq!(many.settle(&r2, &u).unwrap(), Settled::Settled);
                        for _ in 1..repeats {
                            prop_assert_eq!(many.settle(&r2, &u).unwrap(), Settled::Unknown);
                        }
                    }
                }
                c1.advance(secs * S);
                c2.advance(secs * S);
            }
            prop_assert_eq!(seen(&alice(&once)), seen(&alice(&many)));
        }
    }
}
