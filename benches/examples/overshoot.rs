//! How far local-first limits overshoot: two replicas (each a `LocalFirstStore` with its own
//! connection and sync thread) with two threads each hammer one shared rate limit on a real
//! redis-server for a few seconds; the same run with plain `RedisStore`s as the exact
//! reference. Prints admitted units against what the limit allows over the elapsed time.
//!
//! `cargo run --release -p edgeward-benches --example overshoot [seconds] [sync-ms]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgeward::limits::redis_server::RedisServer;
use edgeward::limits::{
    Charge, Clock, LimitKind, LimitStore, LocalFirstConfig, LocalFirstStore, RedisStore,
    RedisStoreConfig, ReservationId, SystemClock,
};

const RATE: u64 = 20_000; // per second
const BURST: u64 = 2_000;

/// Admitted units over the whole run, the run's length, and the largest excess over the
/// limit's allowance seen at any 5 ms checkpoint (`admitted(t) - (burst + rate x t)`).
fn run(stores: &[Box<dyn LimitStore>], secs: f64) -> (u64, f64, f64) {
    let kind = LimitKind::rate(RATE, 1_000_000_000, BURST).unwrap();
    let admitted = AtomicU64::new(0);
    let t = Instant::now();
    let until = t + Duration::from_secs_f64(secs);
    let mut worst = f64::MIN;
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut worst = f64::MIN;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
                let el = t.elapsed().as_secs_f64();
                let got = admitted.load(Ordering::Relaxed) as f64;
                worst = worst.max(got - (BURST as f64 + RATE as f64 * el));
            }
            worst
        });
        for (r, store) in stores.iter().enumerate() {
            for th in 0..2u128 {
                let admitted = &admitted;
                s.spawn(move || {
                    let c = [Charge::new("shared:key", kind, 1)];
                    let mut st = Vec::with_capacity(1);
                    let mut i = 0u128;
                    while Instant::now() < until {
                        i += 1;
                        let id = ReservationId((r as u128) << 100 | th << 90 | i);
                        let now = SystemClock.now_ns();
                        if store
                            .acquire(id, &c, now, 0, &mut st)
                            .unwrap()
                            .is_admitted()
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        worst = sampler.join().unwrap();
    });
    (
        admitted.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
        worst,
    )
}

fn main() {
    let secs: f64 = std::env::args().nth(1).map_or(3.0, |s| s.parse().unwrap());
    let sync_ms: u64 = std::env::args().nth(2).map_or(20, |s| s.parse().unwrap());
    let server = RedisServer::start().expect("redis-server");
    let store = |tag: &str| {
        let mut cfg = RedisStoreConfig::new(server.url());
        cfg.hash_tag = tag.into();
        RedisStore::new(cfg).unwrap()
    };
    let report = |name: &str, (got, el, worst): (u64, f64, f64)| {
        let allowed = BURST as f64 + RATE as f64 * el;
        println!(
            "{name}: admitted {got} in {el:.2} s of {allowed:.0} allowed ({:+.2} %); \
             largest excess at any moment {worst:+.0} units ({:+.1} bursts)",
            100.0 * (got as f64 - allowed) / allowed,
            worst / BURST as f64
        );
    };
    let exact: Vec<Box<dyn LimitStore>> = vec![Box::new(store("exact")), Box::new(store("exact"))];
    report("redis (2 replicas)", run(&exact, secs));
    let lf = |tag: &str| -> Box<dyn LimitStore> {
        Box::new(LocalFirstStore::new(
            store(tag),
            LocalFirstConfig {
                interval: Some(Duration::from_millis(sync_ms)),
                ..LocalFirstConfig::default()
            },
        ))
    };
    let local: Vec<Box<dyn LimitStore>> = vec![lf("lf"), lf("lf")];
    report(
        &format!("local-first (2 replicas, sync every {sync_ms} ms)"),
        run(&local, secs),
    );
}
