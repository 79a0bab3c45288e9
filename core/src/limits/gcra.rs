//! GCRA (the generic cell rate algorithm) as pure functions over one integer of state.
//!
//! The state of a rate limit is its theoretical arrival time (TAT): the instant at which the
//! bucket would be full again. A request of `n` units advances the TAT by the time `n` units
//! take to drip out (`increment(n)`) and is admitted when the new TAT is at most `tau` (the
//! burst tolerance, about `increment(burst)`) ahead of now.
//!
//! Time is an integer tick count since an epoch the caller picks; the memory store uses
//! nanoseconds. Every store applies the same two steps:
//!
//! 1. [`Gcra::increment`] turns an amount into ticks. It needs 128-bit arithmetic, so it runs
//!    in Rust, also for a Redis store, which passes the result to its script.
//! 2. [`Gcra::apply`] is the atomic part: a max, an add and a compare on the stored TAT. That
//!    is all a Lua script has to repeat, and every number in it stays below 2^53 when the
//!    ticks are chosen so that now fits (microseconds since the Unix epoch do until 2255).
//!
//! Reporting ([`Gcra::snapshot`]) and settlement ([`Gcra::settle`]) are derived from the
//! stored TAT afterwards and need no atomicity of their own beyond the store's update.

/// A rate: `limit` units per `period` ticks, with bursts of up to `burst` units.
///
/// Increments are computed for the whole amount of a request at once
/// (`ceil(amount * period / limit)` in 128 bits), so there is no per-unit rounding drift and
/// rounding up means a limit is never exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    limit: u64,
    period: u64,
    burst: u64,
    /// `increment(burst)`: how far ahead of now the TAT may run.
    tau: u64,
    /// `period / limit` when it divides exactly, else 0: the common rates (1000 per second,
    /// 60 per minute) then cost one multiplication instead of a 128-bit division.
    t_exact: u64,
}

/// Why [`Gcra::new`] refused its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GcraParamError {
    /// `limit` is 0: nothing could ever pass, which a policy should say with a deny rule.
    ZeroLimit,
    /// `period` is 0.
    ZeroPeriod,
    /// `burst` is 0: nothing could ever pass.
    ZeroBurst,
}

/// Why a request does not fit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It fits after this many ticks (if nothing else is admitted meanwhile).
    RetryAfter(u64),
    /// It is larger than the limit's capacity and can never pass.
    ExceedsCapacity,
}

impl Refusal {
    /// The retry delay, or `None` when the request can never pass.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            Refusal::RetryAfter(d) => Some(d),
            Refusal::ExceedsCapacity => None,
        }
    }
}

/// What a limit looks like at an instant, for `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// Units that would be admitted now (at most the burst).
    pub remaining: u64,
    /// Ticks until the bucket is full again.
    pub reset_after: u64,
}

impl Gcra {
    /// A rate of `limit` units per `period` ticks with bursts of up to `burst` units.
    pub fn new(limit: u64, period: u64, burst: u64) -> Result<Gcra, GcraParamError> {
        if limit == 0 {
            return Err(GcraParamError::ZeroLimit);
        }
        if period == 0 {
            return Err(GcraParamError::ZeroPeriod);
        }
        if burst == 0 {
            return Err(GcraParamError::ZeroBurst);
        }
        let t_exact = if period % limit == 0 {
            period / limit
        } else {
            0
        };
        let mut g = Gcra {
            limit,
            period,
            burst,
            tau: 0,
            t_exact,
        };
        // Each request rounds its increment up by less than a tick. Without slack for that,
        // a burst of single requests on an inexact rate (3 per second) would admit one less
        // than the burst; with `burst - 1` ticks of slack any `k <= burst` requests totalling
        // at most `burst` units fit. The cost is at most `burst * limit / period` extra
        // units per window, under one unit whenever `burst * limit < period`.
        let slack = if t_exact != 0 { 0 } else { burst - 1 };
        g.tau = g.ticks(burst).saturating_add(slack);
        Ok(g)
    }

    /// Units per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period in ticks.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// The largest amount admitted at once from a full bucket.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The burst tolerance in ticks: `increment(burst)`, plus `burst - 1` ticks of rounding
    /// slack when `limit` does not divide `period`.
    pub fn tau(&self) -> u64 {
        self.tau
    }

    /// `ceil(amount * period / limit)`, saturating at `u64::MAX`: what `amount` units cost
    /// in ticks, also above the burst (a settlement may charge more than a burst).
    pub fn ticks(&self, amount: u64) -> u64 {
        if self.t_exact != 0 {
            return amount.saturating_mul(self.t_exact);
        }
        if let Some(p) = amount.checked_mul(self.period) {
            return p.div_ceil(self.limit);
        }
        let p = u128::from(amount) * u128::from(self.period);
        u64::try_from(p.div_ceil(u128::from(self.limit))).unwrap_or(u64::MAX)
    }

    /// The ticks `amount` units advance the TAT by, or `None` when the amount is larger than
    /// the burst and can never pass.
    pub fn increment(&self, amount: u64) -> Option<u64> {
        (amount <= self.burst).then(|| self.ticks(amount))
    }

    /// The atomic step: admit an increment on a stored TAT at `now`.
    ///
    /// Returns the new TAT, or the exact delay after which the same increment fits (at
    /// `now + delay` it fits, one tick earlier it does not). `inc` must come from
    /// [`increment`](Gcra::increment), so `inc <= tau` and the delay always exists.
    #[inline]
    pub fn apply(&self, tat: u64, now: u64, inc: u64) -> Result<u64, u64> {
        let new_tat = tat.max(now).saturating_add(inc);
        let allowed_at = new_tat.saturating_sub(self.tau);
        if allowed_at <= now {
            Ok(new_tat)
        } else {
            Err(allowed_at - now)
        }
    }

    /// Admit `amount` units on a stored TAT at `now`: the new TAT, or why not.
    pub fn check_n(&self, tat: u64, now: u64, amount: u64) -> Result<u64, Refusal> {
        let inc = self.increment(amount).ok_or(Refusal::ExceedsCapacity)?;
        self.apply(tat, now, inc).map_err(Refusal::RetryAfter)
    }

    /// The capacity left and the time to a full bucket, for a stored TAT at `now`.
    pub fn snapshot(&self, tat: u64, now: u64) -> Snapshot {
        let ahead = tat.saturating_sub(now);
        // The TAT may run past now + tau after a top-up: the debt leaves no capacity.
        let slack = self.tau.saturating_sub(ahead);
        // The largest r with ceil(r * period / limit) <= slack is floor(slack * limit / period).
        let remaining = slack.checked_div(self.t_exact).unwrap_or_else(|| {
            let r = u128::from(slack) * u128::from(self.limit) / u128::from(self.period);
            u64::try_from(r).unwrap_or(u64::MAX)
        });
        Snapshot {
            remaining: remaining.min(self.burst),
            reset_after: ahead,
        }
    }

    /// Give back `amount` units: the TAT moves back, but never below now, so a refund can
    /// not create capacity beyond a full bucket.
    pub fn refund(&self, tat: u64, now: u64, amount: u64) -> u64 {
        tat.saturating_sub(self.ticks(amount)).max(now.min(tat))
    }

    /// Charge `amount` more units after the fact (a top-up at settlement). Unlike
    /// [`check_n`](Gcra::check_n) this always succeeds: the units were used, so the TAT may
    /// run past `now + tau` and later requests wait until the debt has dripped out.
    pub fn add(&self, tat: u64, now: u64, amount: u64) -> u64 {
        tat.max(now).saturating_add(self.ticks(amount))
    }

    /// Settle a reservation of `reserved` units that really used `actual`: refund or add the
    /// difference of the two increments, so that reserve-then-settle leaves the TAT where
    /// charging `actual` in the first place would have (up to the refund floor at now).
    pub fn settle(&self, tat: u64, now: u64, reserved: u64, actual: u64) -> u64 {
        let charged = self.ticks(reserved);
        let due = self.ticks(actual);
        if due < charged {
            tat.saturating_sub(charged - due).max(now.min(tat))
        } else {
            tat.max(now).saturating_add(due - charged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra::new(10, SEC, 10).unwrap();
        let mut tat = 0;
        let now = 5 * SEC;
        for _ in 0..10 {
            tat = g.check_n(tat, now, 1).unwrap();
        }
        assert_eq!(g.check_n(tat, now, 1), Err(Refusal::RetryAfter(SEC / 10)));
        assert_eq!(g.snapshot(tat, now).remaining, 0);
        assert_eq!(g.snapshot(tat, now).reset_after, SEC);
        let later = now + SEC / 10;
        tat = g.check_n(tat, later, 1).unwrap();
        assert!(g.check_n(tat, later, 1).is_err());
    }

    #[test]
    fn a_burst_of_singles_fits_on_inexact_rates() {
        for (limit, period) in [(3, SEC), (7, 1_000), (1_000_000, 3), (999, 1_000)] {
            let g = Gcra::new(limit, period, limit).unwrap();
            let mut tat = 0;
            for i in 0..limit.min(10_000) {
                tat = g
                    .check_n(tat, 10 * period, 1)
                    .unwrap_or_else(|_| panic!("{limit}/{period}: {i}"));
            }
            if limit <= 10_000 {
                assert!(g.check_n(tat, 10 * period, 1).is_err());
            }
        }
    }

    #[test]
    fn amount_above_burst_never_passes() {
        let g = Gcra::new(100, SEC, 20).unwrap();
        assert_eq!(g.check_n(0, SEC, 21), Err(Refusal::ExceedsCapacity));
        assert!(g.check_n(0, SEC, 20).is_ok());
        assert_eq!(Refusal::ExceedsCapacity.retry_after(), None);
    }

    #[test]
    fn zero_parameters_are_rejected() {
        assert_eq!(Gcra::new(0, 1, 1), Err(GcraParamError::ZeroLimit));
        assert_eq!(Gcra::new(1, 0, 1), Err(GcraParamError::ZeroPeriod));
        assert_eq!(Gcra::new(1, 1, 0), Err(GcraParamError::ZeroBurst));
    }

    #[test]
    fn no_rounding_drift_for_inexact_rates() {
        // 3 per 10 ticks: one unit at a time costs ceil(10/3) = 4, but three at once cost 10.
        let g = Gcra::new(3, 10, 3).unwrap();
        assert_eq!(g.increment(1), Some(4));
        assert_eq!(g.increment(3), Some(10));
        assert_eq!(g.tau(), 12);
        // Huge amounts on huge periods go through 128 bits.
        let g = Gcra::new(7, u64::MAX / 2, u64::MAX).unwrap();
        assert_eq!(g.increment(7), Some(u64::MAX / 2));
    }

    #[test]
    fn refund_stops_at_now_and_top_up_adds() {
        let g = Gcra::new(10, SEC, 10).unwrap();
        let now = 100 * SEC;
        let tat = g.check_n(0, now, 5).unwrap();
        assert_eq!(g.snapshot(tat, now).remaining, 5);
        assert_eq!(g.refund(tat, now, 100), now);
        assert_eq!(g.snapshot(g.refund(tat, now, 100), now).remaining, 10);
        assert_eq!(g.settle(tat, now, 5, 2), now + 2 * SEC / 10);
        // A top-up past the burst leaves a debt: nothing remains until it drips out.
        let debt = g.settle(tat, now, 5, 25);
        assert_eq!(debt, now + 25 * SEC / 10);
        assert_eq!(g.snapshot(debt, now).remaining, 0);
        assert_eq!(g.add(tat, now, 1), tat + SEC / 10);
        // A refund on a bucket that already refilled changes nothing.
        assert_eq!(g.refund(now - 1, now, 3), now - 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over any window of `w` ticks the admitted units are at most what the bucket held
        /// plus what dripped in: `ceil(admitted * period / limit) <= w + tau`, which is
        /// `burst + limit * w / period` up to the rounding slack in `tau` (`burst` ticks).
        #[test]
        fn never_more_than_burst_plus_rate(
            limit in 1u64..50,
            period in 1u64..2_000,
            burst_extra in 0u64..50,
            reqs in proptest::collection::vec((0u64..40, 1u64..20), 1..200),
        ) {
            let burst = limit + burst_extra;
            let g = Gcra::new(limit, period, burst).unwrap();
            let mut tat = 0;
            let mut now = 1_000;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, amount) in reqs {
                now += gap;
                if let Ok(t) = g.check_n(tat, now, amount) {
                    tat = t;
                    admitted.push((now, amount));
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut sum = 0u64;
                for &(at, amount) in &admitted[i..] {
                    sum += amount;
                    let w = at - start;
                    let bound = u128::from(w + g.tau()) * u128::from(limit) / u128::from(period);
                    prop_assert!(u128::from(sum) <= bound, "sum {} > {} over {}", sum, bound, w);
                    // The continuous bound, with the sub-tick slack of rounding tau up.
                    let slack = if period % limit == 0 { 0 } else { burst };
                    let real = burst as f64 + (limit as f64) * ((w + slack) as f64) / period as f64;
                    prop_assert!((sum as f64) <= real + 1e-9);
                }
            }
        }

        #[test]
        fn retry_after_is_exact(
            limit in 1u64..1_000,
            period in 1u64..1_000_000,
            tat_ahead in 0u64..2_000_000,
            amount in 1u64..1_000,
        ) {
            let g = Gcra::new(limit, period, 1_000).unwrap();
            let now = 10_000_000;
            let tat = now + tat_ahead.min(g.tau());
            match g.check_n(tat, now, amount) {
                Ok(_) => {}
                Err(Refusal::RetryAfter(d)) => {
                    prop_assert!(d > 0);
                    prop_assert!(g.check_n(tat, now + d, amount).is_ok());
                    prop_assert!(g.check_n(tat, now + d - 1, amount).is_err());
                }
                Err(Refusal::ExceedsCapacity) => prop_assert!(false, "amount <= burst"),
            }
        }

        #[test]
        fn refunds_never_go_negative(
            limit in 1u64..1_000,
            period in 1u64..1_000_000,
            ops in proptest::collection::vec((0u64..10_000, 0u64..500, 0u64..500), 1..50),
        ) {
            let g = Gcra::new(limit, period, 500).unwrap();
            let mut now = 1_000_000;
            let mut tat = 0;
            for (gap, reserved, actual) in ops {
                now += gap;
                if let Ok(t) = g.check_n(tat, now, reserved) {
                    tat = g.settle(t, now, reserved, actual);
                }
                tat = g.refund(tat, now, actual);
                let s = g.snapshot(tat, now);
                prop_assert!(s.remaining <= g.burst());
                // A refund never moves the TAT below now: capacity is never above a full bucket.
                prop_assert!(tat >= now || s.reset_after == 0);
            }
        }

        #[test]
        fn check_of_sum_matches_two_checks(
            limit in 1u64..1_000,
            period in 1u64..1_000_000,
            tat_ahead in 0u64..1_000_000,
            a in 1u64..300,
            b in 1u64..300,
        ) {
            let g = Gcra::new(limit, period, 1_000).unwrap();
            let now = 5_000_000;
            let tat = now + tat_ahead;
            let one = g.check_n(tat, now, a + b);
            let two = g.check_n(tat, now, a).and_then(|t| g.check_n(t, now, b));
            // Whole amounts round up once, split amounts twice: the sum is never stricter.
            if let Ok(t2) = two {
                let t1 = one.expect("a then b fit, so a + b fits");
                prop_assert!(t1 <= t2);
                prop_assert!(t2 - t1 <= 1);
            }
            if g.t_exact != 0 {
                prop_assert_eq!(one.is_ok(), two.is_ok());
            }
        }
    }
}
