//! The limits stage's state layer: the pure GCRA check, and `MemoryStore` acquire of one
//! rate charge (with and without its settle) on one key, on 1000 keys, and from 2 threads
//! on one key and on separate keys.
//!
//! `acquire` is a reservation that is final at once (a lease of 0: no bookkeeping, the path
//! for amounts known up front); `acquire+settle` is the full path of a request whose
//! amounts are settled later.
//!
//! Time moves one nanosecond per call at a rate of one unit per nanosecond, so every call
//! is admitted (the path a limit is meant to be fast on) and no state piles up.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeward::limits::{
    Charge, Gcra, LimitKind, LimitState, LimitStore, MemoryStore, Outcome, ReservationId,
};

const START: u64 = 1_764_000_000_000_000_000;
const LEASE: u64 = 60_000_000_000;

fn kind() -> LimitKind {
    // One unit per nanosecond, bursts of a second's worth.
    LimitKind::rate(1_000_000_000, 1_000_000_000, 1_000_000_000).unwrap()
}

fn gcra(c: &mut Criterion) {
    let g = Gcra::new(1_000_000_000, 1_000_000_000, 1_000_000_000).unwrap();
    let mut tat = 0;
    let mut now = START;
    c.bench_function("limits/gcra_check_n", |b| {
        b.iter(|| {
            now += 1;
            tat = g.check_n(black_box(tat), black_box(now), 1).unwrap();
        })
    });
}

/// Acquire `iters` times, each settled at once when `settle` (as the engine will, later).
fn run(
    store: &MemoryStore,
    charges: &[[Charge; 1]],
    id_base: u128,
    iters: u64,
    settle: bool,
) -> Duration {
    let mut st: Vec<LimitState> = Vec::with_capacity(1);
    // Each thread keeps its own time: a shared clock would be a contended atomic of its own.
    let mut now = START;
    let t = Instant::now();
    for i in 0..iters {
        now += 1;
        let c = &charges[i as usize % charges.len()];
        let id = ReservationId(id_base | u128::from(i));
        // Without a settle the reservation is final at once (a lease of 0): nothing is
        // remembered, the engine's path for amounts known up front.
        let lease = if settle { LEASE } else { 0 };
        let out = store.acquire(id, c, now, lease, &mut st).unwrap();
        debug_assert_eq!(out, Outcome::Admitted);
        black_box(&st);
        if settle {
            store.settle(id, &[1], now).unwrap();
        }
    }
    t.elapsed()
}

fn store(c: &mut Criterion) {
    let one: Vec<[Charge; 1]> = vec![[Charge::new("tenant-42:requests", kind(), 1)]];
    let many: Vec<[Charge; 1]> = (0..1000)
        .map(|k| [Charge::new(format!("tenant-{k}:requests"), kind(), 1)])
        .collect();
    let mut g = c.benchmark_group("limits/memory");
    for (name, keys) in [("1key", &one), ("1000keys", &many)] {
        for settle in [false, true] {
            let label = if settle {
                format!("{name}/acquire+settle")
            } else {
                format!("{name}/acquire-final")
            };
            g.bench_function(label, |b| {
                b.iter_custom(|iters| {
                    // A fresh store per sample: unsettled reservations would otherwise pile
                    // up across samples.
                    let s = MemoryStore::default();
                    run(&s, keys, 0, iters, settle)
                })
            });
        }
    }
    // The lookup and the math without charging: acquire minus this is the CAS and the
    // reservation bookkeeping.
    g.bench_function("1key/peek", |b| {
        let s = MemoryStore::default();
        let c = &one[0];
        let mut st = Vec::with_capacity(1);
        let mut now = START;
        b.iter(|| {
            now += 1;
            s.peek(c, now, &mut st).unwrap();
            black_box(&st);
        })
    });
    // Two threads, each timing its own calls; the sample is the slower thread's time per
    // call (so throughput is two calls per that time).
    for (name, shared) in [("2threads-1key", true), ("2threads-2keys", false)] {
        for settle in [false, true] {
            let op = if settle {
                "acquire+settle"
            } else {
                "acquire-final"
            };
            g.bench_function(format!("{name}/{op}"), |b| {
                b.iter_custom(|iters| {
                    let s = Arc::new(MemoryStore::default());
                    std::thread::scope(|scope| {
                        let hs: Vec<_> = (0..2u128)
                            .map(|t| {
                                let s = &s;
                                let key = if shared { 0 } else { t };
                                let c = vec![[Charge::new(format!("tenant-{key}"), kind(), 1)]];
                                scope.spawn(move || run(s, &c, (t + 1) << 64, iters, settle))
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, gcra, store);
criterion_main!(benches);
