//! Fixed calendar windows for budgets: "100 dollars per day", "10 M tokens per month".
//!
//! Windows are aligned to the calendar at UTC or at a fixed UTC offset, computed from Unix
//! time with Howard Hinnant's `civil_from_days` / `days_from_civil` instead of a date crate:
//! budgets only ever need "which window is this" and "when does it end", and the two
//! functions are a dozen integer operations that a Lua script can repeat.
//!
//! The usage of a budget is the pair (window index, units used), packed into one `u64` so
//! that the memory store can update it with one compare-and-swap:
//!
//! ```text
//!  63           44 43                                  0
//! | window mod 2^20 |            used (saturating)     |
//! ```
//!
//! 44 bits of amount hold 17.6 T tokens or 17.6 M dollars in micro-dollars per window, far
//! above any budget; larger limits are refused by [`Budget::new`] and usage saturates rather
//! than wrapping. 20 bits of window index tell a stale window from the current one (and from
//! the next, see [`Budget::current`]) unless a key stayed untouched for almost exactly a
//! multiple of 2^20 windows (12 days of one-second windows, 2 years of minutes, 2,870 years
//! of days); the memory store's eviction and sweep drop idle budget keys long before that.
//! A Redis store keeps the two numbers apart (both below 2^53).

use super::gcra::{Refusal, Snapshot};

const NS_PER_SEC: i128 = 1_000_000_000;
const WINDOW_BITS: u32 = 20;
const AMOUNT_BITS: u32 = 44;
const AMOUNT_MASK: u64 = (1 << AMOUNT_BITS) - 1;

/// The largest budget limit and the value usage saturates at: 2^44 - 1.
pub const MAX_BUDGET: u64 = AMOUNT_MASK;

/// The length of a calendar window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// `n` seconds, aligned to multiples of `n` since the epoch (at the offset).
    Seconds(u32),
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A calendar day, midnight to midnight.
    Day,
    /// A calendar month, from the first at midnight.
    Month,
}

/// A calendar window: a period at a fixed offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calendar {
    period: Period,
    /// Minutes east of UTC, e.g. 330 for India, -300 for New York in winter.
    offset_minutes: i16,
}

impl Calendar {
    /// Windows of `period` at UTC.
    pub fn utc(period: Period) -> Calendar {
        Calendar {
            period,
            offset_minutes: 0,
        }
    }

    /// Windows of `period` at a fixed offset east of UTC (clamped to ±18 hours, the range
    /// ISO 8601 allows). Daylight-saving changes are not followed: a budget reset that moved
    /// with them would have days of 23 and 25 hours.
    pub fn with_offset(period: Period, offset_minutes: i16) -> Calendar {
        Calendar {
            period,
            offset_minutes: offset_minutes.clamp(-18 * 60, 18 * 60),
        }
    }

    /// The period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// Minutes east of UTC.
    pub fn offset_minutes(&self) -> i16 {
        self.offset_minutes
    }

    fn local_secs(&self, now_ns: u64) -> i64 {
        (now_ns / 1_000_000_000) as i64 + i64::from(self.offset_minutes) * 60
    }

    fn fixed_len(&self) -> Option<i64> {
        match self.period {
            Period::Seconds(n) => Some(i64::from(n.max(1))),
            Period::Minute => Some(60),
            Period::Hour => Some(3_600),
            Period::Day => Some(86_400),
            Period::Month => None,
        }
    }

    /// The index of the window `now_ns` (Unix time in nanoseconds) falls in: windows since
    /// the epoch for fixed lengths, `year * 12 + month - 1` for months.
    pub fn window_index(&self, now_ns: u64) -> i64 {
        let s = self.local_secs(now_ns);
        match self.fixed_len() {
            Some(len) => s.div_euclid(len),
            None => {
                let (y, m, _) = civil_from_days(s.div_euclid(86_400));
                y * 12 + i64::from(m) - 1
            }
        }
    }

    /// Unix time in nanoseconds at which the window `now_ns` falls in ends.
    pub fn window_end(&self, now_ns: u64) -> u64 {
        let idx = self.window_index(now_ns);
        let local_end = match self.fixed_len() {
            Some(len) => (idx + 1) * len,
            None => {
                let next = idx + 1;
                days_from_civil(next.div_euclid(12), (next.rem_euclid(12) + 1) as u32, 1) * 86_400
            }
        };
        let utc_end = i128::from(local_end) - i128::from(self.offset_minutes) * 60;
        u64::try_from(utc_end * NS_PER_SEC).unwrap_or(if utc_end < 0 { 0 } else { u64::MAX })
    }
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian calendar.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month 1-12, day 1-31) to days since 1970-01-01; the inverse of [`civil_from_days`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A budget: `limit` units per calendar window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    limit: u64,
    calendar: Calendar,
}

/// Why [`Budget::new`] refused its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetParamError {
    /// The limit is 0.
    ZeroLimit,
    /// The limit is above [`MAX_BUDGET`].
    TooLarge,
    /// `Period::Seconds(0)`.
    ZeroPeriod,
}

/// Pack a window index and an amount into the stored state.
pub fn pack(window: i64, used: u64) -> u64 {
    ((window.rem_euclid(1 << WINDOW_BITS) as u64) << AMOUNT_BITS) | used.min(AMOUNT_MASK)
}

/// The window index (modulo 2^20) and the amount of a stored state.
pub fn unpack(state: u64) -> (u64, u64) {
    (state >> AMOUNT_BITS, state & AMOUNT_MASK)
}

impl Budget {
    /// `limit` units per window of `calendar`.
    pub fn new(limit: u64, calendar: Calendar) -> Result<Budget, BudgetParamError> {
        if limit == 0 {
            return Err(BudgetParamError::ZeroLimit);
        }
        if limit > MAX_BUDGET {
            return Err(BudgetParamError::TooLarge);
        }
        if calendar.period == Period::Seconds(0) {
            return Err(BudgetParamError::ZeroPeriod);
        }
        Ok(Budget { limit, calendar })
    }

    /// Units per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn calendar(&self) -> Calendar {
        self.calendar
    }

    /// The window a stored state counts for, seen from `window`, and its usage. That is
    /// `window` itself; or the next window, when a caller whose clock is a little behind
    /// another's meets a state already charged past the boundary (counting it as empty would
    /// overwrite the new window's usage); or an older window, which counts as empty.
    pub fn current(state: u64, window: i64) -> (i64, u64) {
        let (w, used) = unpack(state);
        match (w as i64 - window).rem_euclid(1 << WINDOW_BITS) {
            0 => (window, used),
            1 => (window + 1, used),
            _ => (window, 0),
        }
    }

    /// Admit `amount` units at `now_ns` in `window` (its [`Calendar::window_index`]): the new
    /// state, or why not. A refusal waits for the next window.
    pub fn check_n(
        &self,
        state: u64,
        now_ns: u64,
        window: i64,
        amount: u64,
    ) -> Result<u64, Refusal> {
        if amount > self.limit {
            return Err(Refusal::ExceedsCapacity);
        }
        let (win, used) = Budget::current(state, window);
        if amount <= self.limit - used.min(self.limit) {
            Ok(pack(win, used + amount))
        } else {
            let mut end = self.calendar.window_end(now_ns);
            if win != window {
                end = self.calendar.window_end(end);
            }
            Err(Refusal::RetryAfter(end.saturating_sub(now_ns).max(1)))
        }
    }

    /// Units left in the current window and the nanoseconds until it ends.
    pub fn snapshot(&self, state: u64, now_ns: u64) -> Snapshot {
        let (_, used) = Budget::current(state, self.calendar.window_index(now_ns));
        Snapshot {
            remaining: self.limit.saturating_sub(used),
            reset_after: self.calendar.window_end(now_ns).saturating_sub(now_ns),
        }
    }

    /// Replace `reserved` by `actual` units in `window`, the window the reservation was
    /// charged in, seen at window `current`. Once that window is over (or the state has
    /// moved on to another) nothing changes: the next window starts from zero either way.
    /// Top-ups may push usage past the limit (the units were used); it saturates at
    /// [`MAX_BUDGET`].
    pub fn settle(state: u64, current: i64, window: i64, reserved: u64, actual: u64) -> u64 {
        let (w, used) = unpack(state);
        if current > window || w != window.rem_euclid(1 << WINDOW_BITS) as u64 {
            return state;
        }
        pack(window, used.saturating_sub(reserved).saturating_add(actual))
    }

    /// Whether a stored state holds no usage for the current window (evictable).
    pub fn is_idle(&self, state: u64, now_ns: u64) -> bool {
        Budget::current(state, self.calendar.window_index(now_ns)).1 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 1_000_000_000;

    fn unix(y: i64, m: u32, d: u32, hh: u64, mm: u64, ss: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * 86_400 * NS + (hh * 3600 + mm * 60 + ss) * NS
    }

    #[test]
    fn civil_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2026-11-27 is day 20,784.
        assert_eq!(days_from_civil(2026, 11, 27), 20_784);
        for days in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn unix_timestamps_agree() {
        // `date -u -d 2024-02-29T12:34:56Z +%s` = 1709210096.
        assert_eq!(unix(2024, 2, 29, 12, 34, 56), 1_709_210_096 * NS);
        // 2100 is not a leap year: March 1 follows February 28.
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1
        );
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
    }

    #[test]
    fn month_windows_end_at_month_ends() {
        let cal = Calendar::utc(Period::Month);
        let cases = [
            ((2024, 1, 31), (2024, 2, 1)),
            ((2024, 2, 29), (2024, 3, 1)),
            ((2023, 2, 28), (2023, 3, 1)),
            ((2024, 4, 30), (2024, 5, 1)),
            ((2024, 12, 31), (2025, 1, 1)),
            ((2100, 2, 28), (2100, 3, 1)),
        ];
        for ((y, m, d), (ey, em, ed)) in cases {
            let t = unix(y, m, d, 23, 59, 59) + NS - 1;
            assert_eq!(cal.window_end(t), unix(ey, em, ed, 0, 0, 0), "{y}-{m}-{d}");
            assert_eq!(cal.window_index(t), y * 12 + i64::from(m) - 1);
            assert_eq!(cal.window_index(t + 1), ey * 12 + i64::from(em) - 1);
        }
    }

    #[test]
    fn fixed_windows_and_offsets() {
        let t = unix(2026, 11, 27, 7, 30, 15) + 123;
        let day = Calendar::utc(Period::Day);
        assert_eq!(day.window_index(t), days_from_civil(2026, 11, 27));
        assert_eq!(day.window_end(t), unix(2026, 11, 28, 0, 0, 0));
        assert_eq!(
            Calendar::utc(Period::Hour).window_end(t),
            unix(2026, 11, 27, 8, 0, 0)
        );
        assert_eq!(
            Calendar::utc(Period::Minute).window_end(t),
            unix(2026, 11, 27, 7, 31, 0)
        );
        assert_eq!(
            Calendar::utc(Period::Seconds(10)).window_end(t),
            unix(2026, 11, 27, 7, 30, 20)
        );
        // India (+05:30): 07:30 UTC is 13:00 local, the local day ends at 18:30 UTC.
        let ist = Calendar::with_offset(Period::Day, 330);
        assert_eq!(ist.window_end(t), unix(2026, 11, 27, 18, 30, 0));
        // New York in winter (-05:00): 07:30 UTC is 02:30 local on the 27th.
        let ny = Calendar::with_offset(Period::Day, -300);
        assert_eq!(ny.window_end(t), unix(2026, 11, 28, 5, 0, 0));
        let ny_early = unix(2026, 11, 27, 3, 0, 0);
        assert_eq!(ny.window_index(ny_early), days_from_civil(2026, 11, 26));
        // A month at -05:00 ends at 05:00 UTC on the first.
        let nym = Calendar::with_offset(Period::Month, -300);
        assert_eq!(
            nym.window_end(unix(2026, 12, 1, 4, 0, 0)),
            unix(2026, 12, 1, 5, 0, 0)
        );
        assert_eq!(
            Calendar::with_offset(Period::Day, i16::MAX).offset_minutes(),
            18 * 60
        );
        // The first hours of 1970 at a negative offset are still in a window.
        assert_eq!(ny.window_index(0), -1);
        assert_eq!(ny.window_end(0), 5 * 3600 * NS);
    }

    #[test]
    fn budget_checks_and_rolls_over() {
        let b = Budget::new(100, Calendar::utc(Period::Day)).unwrap();
        let t = unix(2026, 11, 27, 23, 0, 0);
        let w = b.calendar().window_index(t);
        let s = b.check_n(0, t, w, 60).unwrap();
        assert_eq!(unpack(s).1, 60);
        assert_eq!(b.check_n(s, t, w, 41), Err(Refusal::RetryAfter(3600 * NS)));
        assert_eq!(b.check_n(s, t, w, 101), Err(Refusal::ExceedsCapacity));
        let s = b.check_n(s, t, w, 40).unwrap();
        assert_eq!(
            b.snapshot(s, t),
            Snapshot {
                remaining: 0,
                reset_after: 3600 * NS
            }
        );
        let next = t + 3600 * NS;
        let w2 = b.calendar().window_index(next);
        assert!(b.is_idle(s, next));
        assert_eq!(b.snapshot(s, next).remaining, 100);
        let s2 = b.check_n(s, next, w2, 100).unwrap();
        assert_eq!(unpack(s2).1, 100);
        // Settling in the old window is skipped; in the current one it adjusts.
        assert_eq!(Budget::settle(s2, w2, w, 100, 0), s2);
        assert_eq!(unpack(Budget::settle(s2, w2, w2, 100, 30)).1, 30);
        assert_eq!(
            unpack(Budget::settle(s2, w2, w2, 10, 1 << 50)).1,
            MAX_BUDGET
        );
    }

    #[test]
    fn a_clock_behind_does_not_reset_the_next_window() {
        let b = Budget::new(100, Calendar::utc(Period::Minute)).unwrap();
        let t = unix(2026, 11, 27, 7, 59, 59) + NS - 1;
        let w = b.calendar().window_index(t);
        // One thread is already in the next minute and charged 30 there.
        let s = b.check_n(pack(w, 90), t + 1, w + 1, 30).unwrap();
        assert_eq!(Budget::current(s, w + 1), (w + 1, 30));
        // A thread one nanosecond behind counts against that minute, not its own.
        assert_eq!(Budget::current(s, w), (w + 1, 30));
        assert_eq!(
            b.check_n(s, t, w, 71),
            Err(Refusal::RetryAfter(60 * NS + 1))
        );
        let s2 = b.check_n(s, t, w, 70).unwrap();
        assert_eq!(unpack(s2).1, 100);
        // Settling the old minute's reservation, or undoing it, leaves the new one alone.
        assert_eq!(Budget::settle(s2, w, w, 90, 0), s2);
        assert_eq!(unpack(Budget::settle(s2, w, w + 1, 70, 10)).1, 40);
        assert!(!b.is_idle(s2, t));
        // Two windows or more behind is an old window: empty.
        assert_eq!(Budget::current(s2, w + 3), (w + 3, 0));
    }

    #[test]
    fn budget_parameters_and_saturation() {
        let c = Calendar::utc(Period::Day);
        assert_eq!(Budget::new(0, c), Err(BudgetParamError::ZeroLimit));
        assert_eq!(
            Budget::new(MAX_BUDGET + 1, c),
            Err(BudgetParamError::TooLarge)
        );
        assert_eq!(
            Budget::new(1, Calendar::utc(Period::Seconds(0))),
            Err(BudgetParamError::ZeroPeriod)
        );
        assert_eq!(unpack(pack(-1, u64::MAX)), ((1 << 20) - 1, MAX_BUDGET));
        assert_eq!(unpack(pack(5 + (1 << 20), 7)), (5, 7));
    }
}
