//! The Redis store against a real `redis-server` on a loopback port: the store conformance
//! suite, many threads and two processes on one limit, engines on two "replicas" sharing
//! limits, and outages (a stopped server, a paused one) with recovery.
#![cfg(feature = "redis")]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeward::limits::redis_server::{RedisCluster, RedisServer};
use edgeward::limits::{
    conformance, Calendar, Charge, LimitKind, LimitStore, LocalFirstConfig, LocalFirstStore,
    Period, RedisStore, RedisStoreConfig, ReservationId, Settled,
};
use edgeward::{Engine, Policy, Request, Usage};

const S: u64 = 1_000_000_000;
/// 2026-11-27 12:00:00 UTC.
const NOON: u64 = 1_795_780_800 * S;

/// A store on `url` whose keys no other store in this run shares.
fn store_with(url: &str, tune: impl FnOnce(&mut RedisStoreConfig)) -> RedisStore {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut cfg = RedisStoreConfig::new(url);
    cfg.hash_tag = format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    tune(&mut cfg);
    RedisStore::new(cfg).expect("valid config")
}

#[test]
fn conformance_suite_against_real_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    conformance::run_all(&|| Box::new(store_with(&url, |_| {})));
    conformance::concurrent_never_exceeds(&|| Box::new(store_with(&url, |_| {})));
}

#[test]
fn configuration_errors_and_an_unreachable_server() {
    let e = RedisStore::new(RedisStoreConfig::new("not a url")).unwrap_err();
    assert_eq!(e.code(), "store.config");
    let mut cfg = RedisStoreConfig::new("redis://127.0.0.1:1/");
    cfg.hash_tag = "a}b".into();
    assert_eq!(RedisStore::new(cfg).unwrap_err().code(), "store.config");

    // Nothing listens on port 1: refused at once, then answered from the back-off.
    let s = RedisStore::new(RedisStoreConfig::new("redis://127.0.0.1:1/")).unwrap();
    assert_eq!(s.check().unwrap_err().code(), "store.unavailable");
    let c = [Charge::new("k", LimitKind::rate(10, S, 10).unwrap(), 1)];
    let t = Instant::now();
    let e = s
        .acquire(ReservationId(1), &c, NOON, S, &mut vec![])
        .unwrap_err();
    assert_eq!(e.code(), "store.unavailable");
    assert!(e.message().contains("backing off"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(200));
    assert_eq!(s.reservation_count(), 0, "a failed acquire keeps nothing");
}

/// A child process of this test binary hammering the limits of `two_processes_…`.
#[test]
#[ignore = "run by two_processes_never_exceed_a_limit as a child process"]
fn redis_worker_process() {
    let (Ok(url), Ok(tag), Ok(seed)) = (
        std::env::var("EDGEWARD_REDIS_URL"),
        std::env::var("EDGEWARD_REDIS_TAG"),
        std::env::var("EDGEWARD_WORKER_SEED"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let mut cfg = RedisStoreConfig::new(url);
    cfg.hash_tag = tag;
    cfg.command_timeout = Duration::from_secs(2);
    let store = RedisStore::new(cfg).unwrap();
    let (kinds, _) = shared_limits();
    let totals: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (store, totals, kinds) = (&store, &totals, &kinds);
            scope.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seed * 16 + t + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut st = vec![];
                for i in 0..400u128 {
                    let amount = next() % 30 + 1;
                    let charges = [
                        Charge::new(kinds[0].0, kinds[0].1, amount),
                        Charge::new(kinds[1].0, kinds[1].1, amount),
                        Charge::new(kinds[2].0, kinds[2].1, 1),
                    ];
                    let id = ReservationId(u128::from(seed) << 96 | u128::from(t) << 64 | i);
                    totals[3].fetch_add(amount, Ordering::Relaxed);
                    if store
                        .acquire(id, &charges, NOON, 600 * S, &mut st)
                        .unwrap()
                        .is_admitted()
                    {
                        totals[0].fetch_add(amount, Ordering::Relaxed);
                        totals[2].fetch_add(1, Ordering::Relaxed);
                        // Every other request finishes, using half its estimate.
                        if next() % 2 == 0 {
                            store.settle(id, &[amount, amount / 2, 1], NOON).unwrap();
                            totals[1].fetch_add(amount - amount / 2, Ordering::Relaxed);
                            totals[2].fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let t: Vec<u64> = totals.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    println!(
        "EDGEWARD_WORKER admitted={} refunded={} inflight={} asked={}",
        t[0], t[1], t[2], t[3]
    );
}

/// A rate (burst 3,000 units), a daily budget (5,000 units) and 40 requests in flight.
fn shared_limits() -> ([(&'static str, LimitKind); 3], [u64; 3]) {
    let kinds = [
        (
            "hot:rate",
            LimitKind::rate(3_000, 3_600 * S, 3_000).unwrap(),
        ),
        (
            "hot:budget",
            LimitKind::budget(5_000, Calendar::utc(Period::Day)).unwrap(),
        ),
        ("hot:inflight", LimitKind::Concurrency { max: 40 }),
    ];
    (kinds, [3_000, 5_000, 40])
}

#[test]
fn two_processes_never_exceed_a_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let tag = format!("procs-{}", std::process::id());
    // Both at once, so that they overlap on the same keys.
    let children: Vec<_> = (1..=2u64)
        .map(|seed| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "redis_worker_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env("EDGEWARD_REDIS_URL", server.url())
                .env("EDGEWARD_REDIS_TAG", &tag)
                .env("EDGEWARD_WORKER_SEED", seed.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("worker starts")
        })
        .collect::<Vec<_>>();
    let children: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("worker ends"))
        .collect();
    let mut sums = [0u64; 4];
    for out in &children {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("EDGEWARD_WORKER "))
            .unwrap_or_else(|| panic!("no report in {stdout}"));
        let nums: Vec<u64> = line
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
            .collect();
        assert!(nums[0] > 0, "each process got some through: {line}");
        for (s, n) in sums.iter_mut().zip(nums) {
            *s += n;
        }
    }
    let (kinds, limits) = shared_limits();
    let [admitted, refunded, inflight, asked] = sums;
    assert!(asked > 2 * limits[1], "demand exceeds every limit: {asked}");
    assert!(admitted <= limits[0], "rate: {admitted} admitted");
    assert!(
        admitted - refunded <= limits[1],
        "budget: {admitted} - {refunded}"
    );
    assert!(inflight <= limits[2], "{inflight} in flight");
    // Redis agrees with the processes' own count: nothing lost, nothing charged twice.
    let probe: Vec<Charge> = kinds
        .iter()
        .map(|(k, kind)| Charge::new(*k, *kind, 1))
        .collect();
    let mut cfg = RedisStoreConfig::new(server.url());
    cfg.hash_tag = tag;
    let store = RedisStore::new(cfg).unwrap();
    let mut st = vec![];
    store.peek(&probe, NOON, &mut st).unwrap();
    assert_eq!(st[0].remaining, limits[0] - admitted);
    assert_eq!(st[1].remaining, limits[1] - (admitted - refunded));
    assert_eq!(st[2].remaining, limits[2] - inflight);
}

fn policy(on_store_error: &str) -> Policy {
    policy_with(on_store_error, "")
}

fn policy_with(on_store_error: &str, store: &str) -> Policy {
    Policy::from_text(&format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: redis}}
spec:
  rules: {{builtin: false}}
  identity: {{anonymous: allow}}
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {{input: 0.15, output: 0.60}}
  routes:
    - name: chat
      match: {{paths: ["/v1/chat/completions"]}}
      schema: openai-chat
  limits:
    - {{name: rpm, key: [client_ip], unit: requests, rate: {{limit: 5, per: 1m}}, onStoreError: {on_store_error}}}
    - {{name: tokens, key: [client_ip], unit: totalTokens, budget: {{limit: 100000, per: day}}, onStoreError: {on_store_error}}}
{store}
"#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"Hello there"}]}"#;

fn chat(e: &Engine, peer: &str) -> edgeward::Decision {
    let hs: [(&[u8], &[u8]); 1] = [(b"content-type", b"application/json")];
    e.inspect(
        &Request::new(b"POST", b"/v1/chat/completions")
            .with_headers(&hs)
            .with_body(BODY)
            .with_peer(peer.parse().unwrap()),
    )
}

fn engine(store: RedisStore, on_store_error: &str) -> Engine {
    Engine::builder()
        .store(Arc::new(store))
        .build(&policy(on_store_error))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn replicas_share_limits_through_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let tag = |c: &mut RedisStoreConfig| c.hash_tag = "replicas".into();
    let a = engine(store_with(&server.url(), tag), "closed");
    let b = engine(store_with(&server.url(), tag), "closed");
    for i in 0..5 {
        let e = if i % 2 == 0 { &a } else { &b };
        let d = chat(e, "198.51.100.7");
        assert!(d.is_allowed(), "{i}: {}", d.to_json());
        assert!(d.store_error.is_none());
        let r = d.reservation.as_ref().expect("tokens are reserved");
        // Settling on the replica that decided: the token estimate becomes the usage.
        let usage = Usage {
            prompt_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(e.settle(r, &usage).unwrap(), Settled::Settled);
    }
    let d = chat(&b, "198.51.100.7");
    assert_eq!(d.status(), Some(429), "{}", d.to_json());
    assert!(d.headers.iter().any(|(n, _)| *n == "retry-after"));
    // Another address has its own limits on both replicas.
    assert!(chat(&a, "198.51.100.8").is_allowed());
    // The budget saw the settled usage (15 per request), not the estimates.
    let tokens = d.limits.iter().find(|l| &*l.name == "tokens").unwrap();
    assert_eq!(tokens.remaining, 100_000 - 5 * 15);
}

#[test]
fn outage_follows_on_store_error_and_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let tune = |c: &mut RedisStoreConfig| c.retry_backoff = Duration::from_millis(50);
    let open = engine(store_with(&server.url(), tune), "open");
    let closed = engine(store_with(&server.url(), tune), "closed");
    let before = chat(&open, "203.0.113.1");
    assert!(before.is_allowed() && before.store_error.is_none());
    assert!(chat(&closed, "203.0.113.1").is_allowed());

    server.stop();
    for _ in 0..3 {
        let d = chat(&open, "203.0.113.1");
        assert!(d.is_allowed(), "{}", d.to_json());
        let f = d.store_error.as_ref().expect("the failure is recorded");
        assert_eq!((f.code, f.failed_open), ("store.unavailable", true));
        let d = chat(&closed, "203.0.113.1");
        assert_eq!(d.status(), Some(503), "{}", d.to_json());
        assert_eq!(d.reason().unwrap().code(), "limit_store_unavailable");
    }
    // Settling while Redis is down is an error, not a panic, and not retried later.
    let r = before.reservation.as_ref().unwrap();
    let e = open.settle(r, &Usage::default()).unwrap_err();
    assert_eq!(e.code(), "store.unavailable");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = chat(&closed, "203.0.113.1");
        if d.is_allowed() {
            assert!(d.store_error.is_none());
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", d.to_json());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(chat(&open, "203.0.113.1").store_error.is_none());
}

#[test]
fn a_paused_server_times_out() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server.url(), |c| {
        c.command_timeout = Duration::from_millis(50)
    });
    let c = [Charge::new("k", LimitKind::rate(10, S, 10).unwrap(), 1)];
    let mut st = vec![];
    assert!(s
        .acquire(ReservationId(1), &c, NOON, 0, &mut st)
        .unwrap()
        .is_admitted());
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "400", "ALL"])
        .query(&mut admin)
        .unwrap();
    let t = Instant::now();
    let e = s
        .acquire(ReservationId(2), &c, NOON, 0, &mut st)
        .unwrap_err();
    assert_eq!(e.code(), "store.timeout", "{e}");
    assert!(t.elapsed() < Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(450));
    // The timed-out connection was dropped: the next call gets a fresh one and its own
    // answer, not the late answer to the call that timed out.
    let out = s.acquire(ReservationId(3), &c, NOON, 0, &mut st).unwrap();
    assert!(out.is_admitted());
    // 1 before the pause, perhaps 1 by the timed-out call (Redis ran it after the pause),
    // and this one.
    assert!(st[0].remaining == 8 || st[0].remaining == 7, "{:?}", st[0]);
}

fn local_first(url: &str, tag: &str) -> LocalFirstStore {
    let mut cfg = RedisStoreConfig::new(url);
    cfg.hash_tag = tag.into();
    cfg.retry_backoff = Duration::from_millis(20);
    LocalFirstStore::new(
        RedisStore::new(cfg).unwrap(),
        LocalFirstConfig {
            interval: None,
            ..LocalFirstConfig::default()
        },
    )
}

fn shared(url: &str, tag: &str, charges: &[Charge], now: u64) -> Vec<u64> {
    let mut cfg = RedisStoreConfig::new(url);
    cfg.hash_tag = tag.into();
    let mut st = vec![];
    RedisStore::new(cfg)
        .unwrap()
        .peek(charges, now, &mut st)
        .unwrap();
    st.iter().map(|s| s.remaining).collect()
}

/// Admit `amount` on `store` until it refuses; the units admitted.
fn drain(store: &dyn LimitStore, c: &[Charge], now: u64, base: u128) -> u64 {
    let mut st = vec![];
    let mut n = 0;
    for i in 0..10_000u128 {
        if !store
            .acquire(ReservationId(base + i), c, now, 0, &mut st)
            .unwrap()
            .is_admitted()
        {
            return n;
        }
        n += c[0].amount;
    }
    panic!("never refused")
}

#[test]
fn local_first_keeps_the_store_contract() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let make = || -> Box<dyn LimitStore> {
        let tag = format!("lf-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        Box::new(local_first(&server.url(), &tag))
    };
    conformance::run_all(&make);
    conformance::concurrent_never_exceeds(&make);
}

/// Two replicas: each decides alone until it syncs, so the first interval on a fresh key
/// admits one burst per replica (the documented `(R - 1) x burst`); after a sync both see
/// everything, and later overshoot is bounded by what one replica admits in an interval.
#[test]
fn local_first_replicas_overshoot_within_the_bound_then_converge() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        local_first(&server.url(), "lf-pair"),
        local_first(&server.url(), "lf-pair"),
    );
    let rate = [Charge::new(
        "k",
        LimitKind::rate(100, 60 * S, 100).unwrap(),
        1,
    )];
    assert_eq!(drain(&a, &rate, NOON, 0), 100);
    assert_eq!(
        drain(&b, &rate, NOON, 1 << 20),
        100,
        "b has not heard of a yet"
    );
    a.sync_now(NOON).unwrap();
    b.sync_now(NOON).unwrap();
    a.sync_now(NOON).unwrap();
    assert_eq!(shared(&server.url(), "lf-pair", &rate, NOON), [0]);
    assert_eq!(drain(&a, &rate, NOON, 2 << 20), 0, "a now sees b's burst");
    assert_eq!(drain(&b, &rate, NOON, 3 << 20), 0);
    // The shared TAT is 200 units (120 s) ahead with a tolerance of 100 units (60 s): after
    // 90 s, 50 units fit, and each replica admits them before hearing of the other.
    let later = NOON + 90 * S;
    let got = drain(&a, &rate, later, 4 << 20) + drain(&b, &rate, later, 5 << 20);
    assert_eq!(got, 100, "50 each: the bound (R - 1) x what dripped in, 50");
    for s in [&a, &b, &a] {
        s.sync_now(later).unwrap();
    }
    assert_eq!(drain(&a, &rate, later, 6 << 20), 0);
    assert_eq!(drain(&b, &rate, later, 7 << 20), 0);

    // A daily budget: 600 + 600 of 1,000 locally, then both refuse once synced.
    let budget = [Charge::new(
        "tokens",
        LimitKind::budget(1_000, Calendar::utc(Period::Day)).unwrap(),
        600,
    )];
    let mut st = vec![];
    for s in [&a, &b] {
        assert!(s
            .acquire(ReservationId(9 << 20), &budget, NOON, 0, &mut st)
            .unwrap()
            .is_admitted());
    }
    for s in [&a, &b, &a] {
        s.sync_now(NOON).unwrap();
    }
    let small = [Charge::new("tokens", budget[0].kind, 1)];
    for s in [&a, &b] {
        s.peek(&small, NOON, &mut st).unwrap();
        assert_eq!(st[0].remaining, 0, "1,200 used of 1,000");
    }
}

#[test]
fn local_first_settles_and_survives_an_outage() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = local_first(&server.url(), "lf-outage");
    let tokens = LimitKind::budget(100_000, Calendar::utc(Period::Day)).unwrap();
    let c = [Charge::new("t", tokens, 5_000)];
    let probe = [Charge::new("t", tokens, 1)];
    let mut st = vec![];
    assert!(s
        .acquire(ReservationId(1), &c, NOON, 60 * S, &mut st)
        .unwrap()
        .is_admitted());
    assert_eq!(
        s.settle(ReservationId(1), &[1_200], NOON).unwrap(),
        Settled::Settled
    );
    s.sync_now(NOON).unwrap();
    assert_eq!(
        shared(&server.url(), "lf-outage", &probe, NOON),
        [100_000 - 1_200]
    );

    server.stop();
    // Decisions go on locally; the sync fails and keeps its deltas.
    for i in 0..3 {
        assert!(s
            .acquire(ReservationId(10 + i), &c, NOON, 0, &mut st)
            .unwrap()
            .is_admitted());
    }
    assert_eq!(s.sync_now(NOON).unwrap_err().code(), "store.unavailable");
    let stats = s.stats();
    assert_eq!((stats.syncs, stats.failed_syncs), (1, 1));
    assert!(stats.last_error.is_some());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.sync_now(NOON).is_err() {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(25));
    }
    // Redis restarted empty; what was charged during the outage arrived (15,000).
    assert_eq!(
        shared(&server.url(), "lf-outage", &probe, NOON),
        [100_000 - 15_000]
    );
    assert!(s.stats().last_error.is_none());
}

#[test]
fn the_policy_names_the_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The URL from the environment (a password stays out of the policy), a unique tag.
    let var = format!("EDGEWARD_TEST_REDIS_{}", std::process::id());
    std::env::set_var(&var, server.url());
    let store = format!(
        "  store:\n    redis: {{urlEnv: {var}, url: 'redis://127.0.0.1:1/', hashTag: policy-{}, commandTimeout: 500ms}}",
        std::process::id()
    );
    let p = policy_with("closed", &store);
    let (a, b) = (Engine::new(&p).unwrap(), Engine::new(&p).unwrap());
    for i in 0..5 {
        let d = chat(if i % 2 == 0 { &a } else { &b }, "192.0.2.9");
        assert!(d.is_allowed(), "{i}: {}", d.to_json());
    }
    assert_eq!(
        chat(&a, "192.0.2.9").status(),
        Some(429),
        "shared through Redis"
    );

    // Local-first from the policy: decided locally at once, shared after a sync.
    let lf = format!(
        "  store:\n    redis: {{url: '{}', hashTag: lf-policy-{}, localFirst: {{syncInterval: 10ms}}}}",
        server.url(),
        std::process::id()
    );
    let p = policy_with("closed", &lf);
    let (a, b) = (Engine::new(&p).unwrap(), Engine::new(&p).unwrap());
    for _ in 0..5 {
        assert!(chat(&a, "192.0.2.10").is_allowed());
    }
    assert_eq!(chat(&a, "192.0.2.10").status(), Some(429));
    // b has not charged this address yet, so it starts from a full bucket (the documented
    // overshoot); once it has, its syncs bring a's five in, and it refuses.
    assert!(chat(&b, "192.0.2.10").is_allowed());
    std::thread::sleep(Duration::from_millis(500));
    let d = chat(&b, "192.0.2.10");
    assert_eq!(
        d.status(),
        Some(429),
        "b heard of a's requests: {}",
        d.to_json()
    );

    // Bad settings are policy errors.
    for (bad, what) in [
        ("  store:\n    redis: {hashTag: x}", "url"),
        (
            "  store:\n    redis: {url: 'redis://h/', commandTimeout: soon}",
            "commandTimeout",
        ),
        ("  store:\n    redis: {url: 'not a url'}", "redis url"),
        (
            "  store:\n    redis: {url: 'redis://h/', hashTag: 'a{b'}",
            "hash tag",
        ),
    ] {
        let e = Engine::new(&policy_with("open", bad)).unwrap_err();
        assert_eq!(e.code(), "policy.invalid_value", "{bad}");
        assert!(e.to_string().contains(what), "{bad}: {e}");
    }
}

/// On a Redis Cluster a store pointed at any node follows `MOVED` to the node serving its
/// hash tag's slot, and passes the whole store contract there.
#[test]
fn a_cluster_is_followed_to_the_slots_node() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let urls = cluster.urls();
    // Each check of the suite gets a fresh tag; those not served by the first node answer
    // MOVED there, so most checks run through a redirect.
    let mut direct = redis::Client::open(urls[0].as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let tag = |i: u64| format!("cluster-{}-{i}", std::process::id());
    let moved = (0..17)
        .filter(|&i| {
            redis::cmd("GET")
                .arg(format!("{{{}}}:probe", tag(i)))
                .query::<Option<String>>(&mut direct)
                .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved))
        })
        .count();
    assert!(moved > 0, "some tags live on the other nodes");
    let next = AtomicU64::new(0);
    conformance::run_all(&|| {
        let i = next.fetch_add(1, Ordering::Relaxed) % 10;
        Box::new(store_with(&urls[0], |c| {
            c.hash_tag = format!("cluster-{i}-{}", std::process::id())
        }))
    });
    // Engines pointed at different nodes share one limit.
    let a = engine(
        store_with(&urls[1], |c| c.hash_tag = "shared".into()),
        "closed",
    );
    let b = engine(
        store_with(&urls[2], |c| c.hash_tag = "shared".into()),
        "closed",
    );
    for i in 0..5 {
        let d = chat(if i % 2 == 0 { &a } else { &b }, "198.51.100.50");
        assert!(
            d.is_allowed() && d.store_error.is_none(),
            "{i}: {}",
            d.to_json()
        );
    }
    assert_eq!(chat(&a, "198.51.100.50").status(), Some(429));
}

/// A refund that gives a rate back in full reaches the shared state too (its TAT drops to
/// now: the key is deleted rather than left at the charged value).
#[test]
fn local_first_refunds_reach_the_shared_state() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = local_first(&server.url(), "lf-refund");
    let rate = LimitKind::rate(100, 60 * S, 100).unwrap();
    let c = [Charge::new("tokens/min", rate, 50)];
    let probe = [Charge::new("tokens/min", rate, 1)];
    let mut st = vec![];
    assert!(s
        .acquire(ReservationId(1), &c, NOON, 60 * S, &mut st)
        .unwrap()
        .is_admitted());
    s.sync_now(NOON).unwrap();
    assert_eq!(shared(&server.url(), "lf-refund", &probe, NOON), [50]);
    assert_eq!(
        s.settle(ReservationId(1), &[0], NOON).unwrap(),
        Settled::Settled
    );
    s.sync_now(NOON).unwrap();
    assert_eq!(shared(&server.url(), "lf-refund", &probe, NOON), [100]);
    s.peek(&probe, NOON, &mut st).unwrap();
    assert_eq!(st[0].remaining, 100);
}
