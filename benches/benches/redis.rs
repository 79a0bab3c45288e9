//! `RedisStore` against a real `redis-server` on loopback (started by the bench): one
//! decision's round trip from one caller, a three-limit decision with its settle, and
//! decisions per second from 1 to 32 concurrent callers (one connection each from the
//! pool). Each decision is one rate charge on one of 1,000 keys, always admitted.
//!
//! `local_first/*` compares a `LocalFirstStore` decision with the `MemoryStore` it wraps.
//!
//! The throughput cases report the wall time per decision across all callers (criterion's
//! time per iteration, with `iter_custom` splitting each batch over the threads), so
//! decisions per second = 1 / that time.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeward::limits::redis_server::RedisServer;
use edgeward::limits::{
    Calendar, Charge, LimitKind, LimitStore, LocalFirstConfig, LocalFirstStore, MemoryStore,
    Period, RedisStore, RedisStoreConfig, ReservationId,
};

const S: u64 = 1_000_000_000;
/// 2026-11-27 12:00:00 UTC.
const NOON: u64 = 1_795_780_800 * S;

fn rate_keys() -> Vec<[Charge; 1]> {
    let k = LimitKind::rate(1_000_000_000, S, 1_000_000_000).unwrap();
    (0..1_000)
        .map(|i| [Charge::new(format!("principal:{i}"), k, 1)])
        .collect()
}

/// `iters` decisions from `callers` threads at once; the wall time of the whole batch.
/// Batches are at least 2,000 decisions per caller (the time scaled back to `iters`), so
/// that starting the threads is not what is measured.
fn decide(store: &RedisStore, keys: &[[Charge; 1]], callers: u64, iters: u64) -> Duration {
    let total = iters.max(callers * 2_000);
    let per = total.div_ceil(callers);
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..callers {
            s.spawn(move || {
                let mut st = Vec::with_capacity(1);
                for i in 0..per {
                    let k = &keys[((c * per + i) % keys.len() as u64) as usize];
                    let id = ReservationId(u128::from(c) << 64 | u128::from(i));
                    let out = store.acquire(id, k, NOON + i, 0, &mut st).unwrap();
                    assert!(out.is_admitted());
                }
            });
        }
    });
    t.elapsed().mul_f64(iters as f64 / (per * callers) as f64)
}

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::new(RedisStoreConfig::new(server.url())).unwrap();
    store.check().unwrap();
    let keys = rate_keys();

    let mut g = c.benchmark_group("redis");
    // Each sample is thousands of decisions (see `decide`): ten samples are enough.
    g.sample_size(10);
    g.bench_function("acquire_1_limit", |b| {
        b.iter_custom(|iters| decide(&store, &keys, 1, iters))
    });
    let three = [
        Charge::new(
            "p:rate",
            LimitKind::rate(1_000_000_000, S, 1_000_000_000).unwrap(),
            1,
        ),
        Charge::new(
            "p:tokens",
            LimitKind::budget(1 << 40, Calendar::utc(Period::Day)).unwrap(),
            500,
        ),
        Charge::new("p:inflight", LimitKind::Concurrency { max: 1 << 20 }, 1),
    ];
    let mut n = 0u128;
    let mut st = Vec::new();
    g.bench_function("acquire+settle_3_limits", |b| {
        b.iter(|| {
            n += 1;
            let id = ReservationId(1 << 100 | n);
            let out = store.acquire(id, &three, NOON, 60 * S, &mut st).unwrap();
            assert!(out.is_admitted());
            store.settle(id, &[1, 420, 0], NOON).unwrap();
        })
    });
    for callers in [1u64, 2, 4, 8, 16, 32] {
        g.bench_function(format!("decisions_{callers}_callers"), |b| {
            b.iter_custom(|iters| decide(&store, &keys, callers, iters))
        });
    }
    g.finish();

    // Local-first against the memory store it wraps, in the same run: the overhead of
    // recording each charge for the next sync (syncs run in the background every 20 ms).
    let mut g = c.benchmark_group("local_first");
    let mut cfg = RedisStoreConfig::new(server.url());
    cfg.hash_tag = "bench-lf".into();
    let lf = LocalFirstStore::new(RedisStore::new(cfg).unwrap(), LocalFirstConfig::default());
    let mem = MemoryStore::default();
    for (name, store) in [
        ("memory_acquire", &mem as &dyn LimitStore),
        ("local_first_acquire", &lf as &dyn LimitStore),
    ] {
        let mut st = Vec::with_capacity(1);
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let k = &keys[(i % 1_000) as usize];
                let id = ReservationId(u128::from(i));
                assert!(store
                    .acquire(id, k, NOON + i, 0, &mut st)
                    .unwrap()
                    .is_admitted());
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = redis
}
criterion_main!(benches);
