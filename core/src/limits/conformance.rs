//! The behaviour every [`LimitStore`] must have, as functions a store's tests call with a
//! constructor for fresh, empty stores: `conformance::run_all(&|| Box::new(MyStore::new()))`.
//!
//! Time is driven by a [`FakeClock`] only; each check panics with a message naming the
//! behaviour that failed.

use super::{
    Calendar, Charge, Clock, FakeClock, LimitKind, LimitState, LimitStore, Outcome, Period,
    ReservationId, Settled, Verdict,
};

/// Makes a fresh, empty store.
pub type MakeStore<'a> = &'a dyn Fn() -> Box<dyn LimitStore>;

const S: u64 = 1_000_000_000;
/// 2026-11-27T10:00:00Z.
const START: u64 = (20_784 * 86_400 + 10 * 3_600) * S;
const LEASE: u64 = 60 * S;

/// Every check below, in order.
pub fn run_all(make: MakeStore<'_>) {
    rate_admits_refuses_with_exact_retry_after(make);
    rate_burst_above_limit(make);
    rate_amount_above_burst_never_passes(make);
    budget_rolls_over_per_day(make);
    budget_rolls_over_per_month(make);
    concurrency_max_and_release_on_settle(make);
    concurrency_released_on_lease_expiry(make);
    all_or_nothing_across_three_charges(make);
    refusal_names_the_longest_wait(make);
    shadow_never_blocks_and_is_reported(make);
    settle_refunds_and_tops_up(make);
    settle_twice_has_no_effect(make);
    unknown_id_has_no_effect(make);
    expired_reservation_keeps_its_estimate(make);
    peek_does_not_charge(make);
    many_keys_are_independent(make);
    zero_lease_is_final_at_once(make);
}

fn id(n: u128) -> ReservationId {
    ReservationId(0xC0FF_EE00_0000_0000_0000_0000_0000_0000 | n)
}

fn rate(limit: u64, period: u64, burst: u64) -> LimitKind {
    LimitKind::rate(limit, period, burst).expect("valid rate")
}

fn acquire(
    s: &dyn LimitStore,
    n: u128,
    charges: &[Charge],
    now: u64,
) -> (Outcome, Vec<LimitState>) {
    let mut st = vec![];
    let out = s
        .acquire(id(n), charges, now, LEASE, &mut st)
        .expect("store answers");
    assert_eq!(st.len(), charges.len(), "one state per charge");
    (out, st)
}

fn remaining(s: &dyn LimitStore, charges: &[Charge], now: u64) -> Vec<u64> {
    let mut st = vec![];
    s.peek(charges, now, &mut st).expect("store answers");
    st.iter().map(|x| x.remaining).collect()
}

/// 10 per second: ten pass at once, the eleventh is told to wait exactly 100 ms, and at
/// that instant it passes (one nanosecond earlier it does not).
pub fn rate_admits_refuses_with_exact_retry_after(make: MakeStore<'_>) {
    let s = make();
    let clock = FakeClock::new(START);
    let c = [Charge::new("rate:a", rate(10, S, 10), 1)];
    for n in 0..10 {
        let (out, st) = acquire(&*s, n, &c, clock.now_ns());
        assert!(out.is_admitted(), "request {n} within the burst");
        assert_eq!(st[0].remaining, 9 - n as u64);
        assert_eq!(st[0].limit, 10);
        assert!(st[0].charged);
    }
    let (out, st) = acquire(&*s, 10, &c, clock.now_ns());
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 0,
            retry_after_ns: Some(S / 10)
        }
    );
    assert_eq!(st[0].retry_after_ns(), Some(S / 10));
    assert_eq!(st[0].reset_after_ns, S);
    assert!(!st[0].charged);
    clock.advance(S / 10 - 1);
    assert!(
        !acquire(&*s, 11, &c, clock.now_ns()).0.is_admitted(),
        "1 ns early"
    );
    clock.advance(1);
    assert!(
        acquire(&*s, 12, &c, clock.now_ns()).0.is_admitted(),
        "exactly on time"
    );
}

/// A burst larger than the rate: 20 at once, then the rate.
pub fn rate_burst_above_limit(make: MakeStore<'_>) {
    let s = make();
    let c = [Charge::new("rate:burst", rate(5, S, 20), 1)];
    for n in 0..20 {
        assert!(acquire(&*s, n, &c, START).0.is_admitted(), "burst {n}");
    }
    assert!(!acquire(&*s, 20, &c, START).0.is_admitted());
    assert!(acquire(&*s, 21, &c, START + S / 5).0.is_admitted());
    assert!(!acquire(&*s, 22, &c, START + S / 5).0.is_admitted());
}

/// An amount larger than the burst is refused without a retry time.
pub fn rate_amount_above_burst_never_passes(make: MakeStore<'_>) {
    let s = make();
    let c = [Charge::new("tokens:a", rate(1_000, 60 * S, 1_000), 1_001)];
    let (out, st) = acquire(&*s, 1, &c, START);
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 0,
            retry_after_ns: None
        }
    );
    assert_eq!(st[0].verdict, Verdict::ExceedsCapacity);
    assert_eq!(remaining(&*s, &c, START), [1_000]);
}

/// A daily budget refuses until midnight UTC, then starts from zero.
pub fn budget_rolls_over_per_day(make: MakeStore<'_>) {
    let s = make();
    let kind = LimitKind::budget(1_000, Calendar::utc(Period::Day)).expect("valid");
    let c = [Charge::new("usd:day", kind, 600)];
    let clock = FakeClock::new(START);
    assert!(acquire(&*s, 1, &c, clock.now_ns()).0.is_admitted());
    let (out, st) = acquire(&*s, 2, &c, clock.now_ns());
    // 10:00 to midnight is 14 hours.
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 0,
            retry_after_ns: Some(14 * 3_600 * S)
        }
    );
    assert_eq!(st[0].remaining, 400);
    assert_eq!(st[0].reset_after_ns, 14 * 3_600 * S);
    clock.advance(14 * 3_600 * S - 1);
    assert!(!acquire(&*s, 3, &c, clock.now_ns()).0.is_admitted());
    clock.advance(1);
    let (out, st) = acquire(&*s, 4, &c, clock.now_ns());
    assert!(out.is_admitted(), "a new day");
    assert_eq!(st[0].remaining, 400);
    assert_eq!(st[0].reset_after_ns, 86_400 * S);
}

/// A monthly budget at an offset: the window ends on the first of the next month, local time.
pub fn budget_rolls_over_per_month(make: MakeStore<'_>) {
    let s = make();
    // UTC-05:00: December 1st starts at 05:00 UTC.
    let kind = LimitKind::budget(100, Calendar::with_offset(Period::Month, -300)).expect("valid");
    let c = [Charge::new("tokens:month", kind, 100)];
    // 2026-11-30T12:00:00Z.
    let now = (20_787 * 86_400 + 12 * 3_600) * S;
    let dec1 = (20_788 * 86_400 + 5 * 3_600) * S;
    assert!(acquire(&*s, 1, &c, now).0.is_admitted());
    let (out, _) = acquire(&*s, 2, &c, now);
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 0,
            retry_after_ns: Some(dec1 - now)
        }
    );
    assert!(!acquire(&*s, 3, &c, dec1 - 1).0.is_admitted());
    assert!(acquire(&*s, 4, &c, dec1).0.is_admitted());
    assert_eq!(remaining(&*s, &c, dec1), [0]);
}

/// At most `max` in flight; settling releases a slot.
pub fn concurrency_max_and_release_on_settle(make: MakeStore<'_>) {
    let s = make();
    let c = [Charge::new(
        "inflight:a",
        LimitKind::Concurrency { max: 2 },
        1,
    )];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    let (out, st) = acquire(&*s, 2, &c, START);
    assert!(out.is_admitted());
    assert_eq!(st[0].remaining, 0);
    let (out, st) = acquire(&*s, 3, &c, START);
    assert!(!out.is_admitted());
    assert_eq!(st[0].verdict, Verdict::RetryAfter(0));
    assert_eq!(s.settle(id(1), &[1], START + S), Ok(Settled::Settled));
    assert!(acquire(&*s, 4, &c, START + S).0.is_admitted());
    assert!(!acquire(&*s, 5, &c, START + S).0.is_admitted());
}

/// A reservation never settled gives its slot back when its lease is over.
pub fn concurrency_released_on_lease_expiry(make: MakeStore<'_>) {
    let s = make();
    let c = [Charge::new(
        "inflight:b",
        LimitKind::Concurrency { max: 1 },
        1,
    )];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    assert!(
        !acquire(&*s, 2, &c, START + LEASE).0.is_admitted(),
        "lease still on"
    );
    assert!(
        acquire(&*s, 3, &c, START + LEASE + 1).0.is_admitted(),
        "lease over"
    );
    // The expired reservation cannot release the new one's slot.
    assert_eq!(
        s.settle(id(1), &[1], START + LEASE + 2),
        Ok(Settled::Unknown)
    );
    assert!(!acquire(&*s, 4, &c, START + LEASE + 2).0.is_admitted());
}

/// When the third charge refuses, the first two are not charged.
pub fn all_or_nothing_across_three_charges(make: MakeStore<'_>) {
    let s = make();
    let budget = LimitKind::budget(50, Calendar::utc(Period::Day)).expect("valid");
    let c = [
        Charge::new("aon:rate", rate(100, S, 100), 30),
        Charge::new("aon:inflight", LimitKind::Concurrency { max: 1 }, 1),
        Charge::new("aon:budget", budget, 60),
    ];
    let (out, st) = acquire(&*s, 1, &c, START);
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 2,
            retry_after_ns: None
        }
    );
    assert!(st.iter().all(|x| !x.charged));
    assert_eq!(st[0].verdict, Verdict::Allowed);
    assert_eq!(remaining(&*s, &c, START), [100, 1, 50]);
    assert_eq!(s.settle(id(1), &[0, 0, 0], START), Ok(Settled::Unknown));
    // Within every limit, all three are charged.
    let c2 = [
        c[0].clone(),
        c[1].clone(),
        Charge::new("aon:budget", budget, 20),
    ];
    let (out, st) = acquire(&*s, 2, &c2, START);
    assert!(out.is_admitted());
    assert!(st.iter().all(|x| x.charged));
    assert_eq!(remaining(&*s, &c2, START), [70, 0, 30]);
}

/// Of several refusing charges, the outcome names the one with the longest wait.
pub fn refusal_names_the_longest_wait(make: MakeStore<'_>) {
    let s = make();
    let c = [
        Charge::new("wait:short", rate(10, S, 1), 1),
        Charge::new("wait:long", rate(1, S, 1), 1),
    ];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    let (out, st) = acquire(&*s, 2, &c, START);
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 1,
            retry_after_ns: Some(S)
        }
    );
    assert_eq!(st[0].retry_after_ns(), Some(S / 10));
    assert_eq!(st[1].retry_after_ns(), Some(S));
}

/// A shadow charge that would refuse is reported but does not block, and is not charged;
/// one that fits is charged only when the request is admitted.
pub fn shadow_never_blocks_and_is_reported(make: MakeStore<'_>) {
    let s = make();
    let enforced = Charge::new("sh:enforced", rate(2, S, 2), 1);
    let shadow_tight = Charge::new("sh:tight", rate(1, S, 1), 1).shadow();
    let shadow_loose = Charge::new("sh:loose", rate(100, S, 100), 1).shadow();
    let c = [shadow_tight.clone(), enforced.clone(), shadow_loose.clone()];
    let (out, st) = acquire(&*s, 1, &c, START);
    assert!(out.is_admitted());
    assert!(st.iter().all(|x| x.charged));
    let (out, st) = acquire(&*s, 2, &c, START);
    assert!(out.is_admitted(), "the tight shadow limit does not block");
    assert_eq!(st[0].verdict, Verdict::RetryAfter(S));
    assert!(!st[0].charged);
    assert!(st[1].charged && st[2].charged);
    assert_eq!(remaining(&*s, &c, START), [0, 0, 98]);
    // The enforced limit refuses: no shadow charge is charged either.
    let (out, st) = acquire(&*s, 3, &c, START);
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 1,
            retry_after_ns: Some(S / 2)
        }
    );
    assert_eq!(st[2].verdict, Verdict::Allowed);
    assert_eq!(remaining(&*s, &c, START), [0, 0, 98]);
    // Shadow-only requests are always admitted.
    let only = [shadow_tight];
    let (out, st) = acquire(&*s, 4, &only, START);
    assert!(out.is_admitted());
    assert!(!st[0].charged);
}

/// Settling refunds an over-estimate and adds an under-estimate, per kind.
pub fn settle_refunds_and_tops_up(make: MakeStore<'_>) {
    let s = make();
    let budget = LimitKind::budget(1_000, Calendar::utc(Period::Day)).expect("valid");
    let c = [
        Charge::new("set:rate", rate(1_000, 60 * S, 1_000), 500),
        Charge::new("set:budget", budget, 500),
        Charge::new("set:inflight", LimitKind::Concurrency { max: 1 }, 1),
    ];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    assert_eq!(remaining(&*s, &c, START), [500, 500, 0]);
    assert_eq!(s.settle(id(1), &[200, 100, 1], START), Ok(Settled::Settled));
    assert_eq!(remaining(&*s, &c, START), [800, 900, 1]);
    assert!(acquire(&*s, 2, &c, START).0.is_admitted());
    // Top-up beyond the reservation: usage past the limit leaves nothing.
    assert_eq!(
        s.settle(id(2), &[1_500, 2_000], START),
        Ok(Settled::Settled)
    );
    assert_eq!(remaining(&*s, &c, START), [0, 0, 1]);
    // The rate debt drips out: 1,700 units charged at 60 ms each put the TAT 102 s ahead,
    // so capacity comes back 42 s later, 16 units per second.
    assert_eq!(remaining(&*s, &c, START + 42 * S), [0, 0, 1]);
    assert_eq!(remaining(&*s, &c, START + 43 * S)[0], 16);
    // A budget settled after its window is over changes nothing in the new one.
    let c3 = [Charge::new("set:budget2", budget, 300)];
    let long = 3 * 86_400 * S;
    let mut st = vec![];
    let out = s
        .acquire(id(3), &c3, START, long, &mut st)
        .expect("store answers");
    assert!(out.is_admitted());
    let tomorrow = START + 14 * 3_600 * S;
    assert_eq!(
        s.settle(id(3), &[10_000], tomorrow - S),
        Ok(Settled::Settled)
    );
    assert_eq!(remaining(&*s, &c3, tomorrow - S), [0]);
    let out = s
        .acquire(id(4), &c3, tomorrow, long, &mut st)
        .expect("store answers");
    assert!(out.is_admitted());
    assert_eq!(
        s.settle(id(4), &[0], tomorrow + 86_400 * S),
        Ok(Settled::Settled)
    );
    assert_eq!(remaining(&*s, &c3, tomorrow + 86_400 * S), [1_000]);
    assert_eq!(remaining(&*s, &c3, tomorrow), [700]);
}

/// The second settle of a reservation changes nothing and says so.
pub fn settle_twice_has_no_effect(make: MakeStore<'_>) {
    let s = make();
    let c = [
        Charge::new("twice:rate", rate(100, S, 100), 50),
        Charge::new("twice:inflight", LimitKind::Concurrency { max: 2 }, 1),
    ];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    assert!(acquire(&*s, 2, &c, START).0.is_admitted());
    assert_eq!(s.settle(id(1), &[0], START), Ok(Settled::Settled));
    assert_eq!(remaining(&*s, &c, START), [50, 1]);
    assert_eq!(s.settle(id(1), &[0], START), Ok(Settled::Unknown));
    assert_eq!(remaining(&*s, &c, START), [50, 1]);
}

/// Settling an id that was never acquired (or was refused) changes nothing.
pub fn unknown_id_has_no_effect(make: MakeStore<'_>) {
    let s = make();
    let c = [Charge::new(
        "unk:inflight",
        LimitKind::Concurrency { max: 1 },
        1,
    )];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    assert_eq!(s.settle(id(99), &[1], START), Ok(Settled::Unknown));
    assert_eq!(remaining(&*s, &c, START), [0]);
}

/// An expired reservation's token estimate stays charged; settling it is too late.
pub fn expired_reservation_keeps_its_estimate(make: MakeStore<'_>) {
    let s = make();
    let budget = LimitKind::budget(1_000, Calendar::utc(Period::Day)).expect("valid");
    let c = [Charge::new("exp:budget", budget, 400)];
    assert!(acquire(&*s, 1, &c, START).0.is_admitted());
    let late = START + LEASE + 1;
    assert_eq!(s.settle(id(1), &[0], late), Ok(Settled::Unknown));
    assert_eq!(remaining(&*s, &c, late), [600]);
}

/// Peeking reports without charging, also for keys never seen.
pub fn peek_does_not_charge(make: MakeStore<'_>) {
    let s = make();
    let c = [
        Charge::new("peek:rate", rate(10, S, 10), 4),
        Charge::new("peek:new", LimitKind::Concurrency { max: 3 }, 1),
    ];
    let mut st = vec![];
    for _ in 0..5 {
        s.peek(&c, START, &mut st).expect("store answers");
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].remaining, 10);
        assert_eq!(st[0].verdict, Verdict::Allowed);
        assert!(!st[0].charged);
        assert_eq!(st[1].remaining, 3);
    }
    let big = [Charge::new("peek:rate", rate(10, S, 10), 11)];
    s.peek(&big, START, &mut st).expect("store answers");
    assert_eq!(st[0].verdict, Verdict::ExceedsCapacity);
}

/// Thousands of keys each keep their own state.
pub fn many_keys_are_independent(make: MakeStore<'_>) {
    let s = make();
    let kind = rate(3, S, 3);
    for round in 0..4u128 {
        for k in 0..2_000u128 {
            let c = [Charge::new(format!("many:{k}"), kind, 1)];
            let (out, _) = acquire(&*s, round * 10_000 + k, &c, START);
            assert_eq!(out.is_admitted(), round < 3, "key {k} round {round}");
        }
    }
}

/// A reservation with a lease of 0 charges its estimates for good and holds no slot.
pub fn zero_lease_is_final_at_once(make: MakeStore<'_>) {
    let s = make();
    let c = [
        Charge::new("final:rate", rate(10, S, 10), 3),
        Charge::new("final:inflight", LimitKind::Concurrency { max: 1 }, 1),
    ];
    let mut st = vec![];
    for n in 0..3 {
        let out = s
            .acquire(id(n), &c, START, 0, &mut st)
            .expect("store answers");
        assert!(out.is_admitted(), "request {n}");
        assert!(st[1].charged, "the slot was taken while checking");
    }
    assert_eq!(remaining(&*s, &c, START), [1, 1]);
    assert_eq!(s.settle(id(0), &[0], START), Ok(Settled::Unknown));
    assert_eq!(remaining(&*s, &c, START), [1, 1]);
    // One charge at a time, final: refusals, shadow and budgets behave the same.
    let one = [Charge::new("final:rate", rate(10, S, 10), 3)];
    let out = s
        .acquire(id(20), &one, START, 0, &mut st)
        .expect("store answers");
    assert_eq!(
        out,
        Outcome::Refused {
            charge: 0,
            retry_after_ns: Some(2 * S / 10)
        }
    );
    assert_eq!((st[0].remaining, st[0].charged), (1, false));
    let shadow = [one[0].clone().shadow()];
    let out = s
        .acquire(id(21), &shadow, START, 0, &mut st)
        .expect("store answers");
    assert!(out.is_admitted());
    assert_eq!(st[0].verdict, Verdict::RetryAfter(2 * S / 10));
    let budget = LimitKind::budget(5, Calendar::utc(Period::Day)).expect("valid");
    let b = [Charge::new("final:budget", budget, 3)];
    let out = s
        .acquire(id(22), &b, START, 0, &mut st)
        .expect("store answers");
    assert!(out.is_admitted());
    let out = s
        .acquire(id(23), &b, START, 0, &mut st)
        .expect("store answers");
    assert!(!out.is_admitted());
    assert_eq!(st[0].remaining, 2);
    let out = s
        .acquire(id(24), &one, START + S, 0, &mut st)
        .expect("store answers");
    assert!(out.is_admitted());
    assert_eq!(st[0].remaining, 7);
    // The concurrency limit is still checked.
    let full = [Charge::new(
        "final:inflight",
        LimitKind::Concurrency { max: 1 },
        1,
    )];
    assert!(acquire(&*s, 10, &full, START).0.is_admitted());
    let out = s
        .acquire(id(11), &full, START, 0, &mut st)
        .expect("store answers");
    assert!(!out.is_admitted());
}

/// Threads hammering one key and a few keys with random amounts at a fixed instant never
/// get more admitted than each limit holds, and every admitted amount is accounted for.
pub fn concurrent_never_exceeds(make: MakeStore<'_>) {
    use std::sync::atomic::{AtomicU64, Ordering};

    for threads in [2usize, 4, 8] {
        let s = make();
        let budget = LimitKind::budget(5_000, Calendar::utc(Period::Day)).expect("valid");
        let kinds = [
            ("hot:rate", rate(1_000, 60 * S, 1_000)),
            ("hot:budget", budget),
            ("hot:inflight", LimitKind::Concurrency { max: 7 }),
        ];
        let admitted: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        std::thread::scope(|scope| {
            for t in 0..threads {
                let s = &*s;
                let admitted = &admitted;
                let kinds = &kinds;
                scope.spawn(move || {
                    // xorshift: deterministic per thread, no dependency.
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let mut st = vec![];
                    for i in 0..2_000u128 {
                        let amount = next() % 40 + 1;
                        let pick = (next() % 3) as usize;
                        let mut charges = vec![Charge::new(kinds[0].0, kinds[0].1, amount)];
                        if pick >= 1 {
                            charges.push(Charge::new(kinds[1].0, kinds[1].1, amount));
                        }
                        if pick == 2 {
                            charges.push(Charge::new(kinds[2].0, kinds[2].1, 1));
                        }
                        let rid = ReservationId(((t as u128) << 64) | i);
                        let out = s
                            .acquire(rid, &charges, START, 1 << 50, &mut st)
                            .expect("store answers");
                        if out.is_admitted() {
                            admitted[0].fetch_add(amount, Ordering::Relaxed);
                            if pick >= 1 {
                                admitted[1].fetch_add(amount, Ordering::Relaxed);
                            }
                            if pick == 2 {
                                admitted[2].fetch_add(1, Ordering::Relaxed);
                                // Half of the in-flight requests finish (with their estimate).
                                if next() % 2 == 0 {
                                    s.settle(rid, &[amount, amount, 1], START)
                                        .expect("store answers");
                                    admitted[3].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
        let rate_used = admitted[0].load(Ordering::Relaxed);
        let budget_used = admitted[1].load(Ordering::Relaxed);
        let in_flight = admitted[2].load(Ordering::Relaxed) - admitted[3].load(Ordering::Relaxed);
        assert!(
            rate_used <= 1_000,
            "{threads} threads: rate admitted {rate_used}"
        );
        assert!(
            budget_used <= 5_000,
            "{threads} threads: budget admitted {budget_used}"
        );
        assert!(in_flight <= 7, "{threads} threads: {in_flight} in flight");
        // The store agrees with the count: nothing was lost or double-charged.
        let probe: Vec<Charge> = kinds
            .iter()
            .map(|(k, kind)| Charge::new(*k, *kind, 1))
            .collect();
        let mut st = vec![];
        s.peek(&probe, START, &mut st).expect("store answers");
        assert_eq!(st[0].remaining, 1_000 - rate_used);
        assert_eq!(st[1].remaining, 5_000 - budget_used);
        assert_eq!(st[2].remaining, 7 - in_flight);
    }
}
