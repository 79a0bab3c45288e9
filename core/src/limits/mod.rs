//! Rate limits, budgets and concurrency: the state layer behind the limits stage.
//!
//! The engine turns every limit that matches a request into a [`Charge`] (a key naming the
//! limit and its subject, the [`LimitKind`], the estimated amount) and asks a
//! [`LimitStore`] to reserve all of them at once. After the response it settles the
//! reservation with what was really used.
//!
//! - Rates use GCRA ([`gcra`]), budgets fixed calendar windows ([`window`]), concurrency a
//!   counter. The math is pure and shared by every store; a store only makes it atomic.
//! - Reserve then settle: [`LimitStore::acquire`] is all-or-nothing over the enforced
//!   charges; [`LimitStore::settle`] refunds or adds the difference and releases
//!   concurrency, at most once; a reservation that is never settled expires after its lease
//!   (its concurrency is released, its estimate becomes final).
//! - Shadow charges are evaluated and reported but never refuse a request.
//! - Stores never read a clock: `now_ns` (Unix time in nanoseconds, since budgets follow the
//!   calendar) is always an argument, so tests drive time with a `FakeClock` (feature `test-util`).
//!
//! # For a store over Redis
//!
//! The math is split so that a Lua script (whose numbers are doubles, exact below 2^53) only
//! repeats the atomic step and Rust keeps everything that needs more bits:
//!
//! - Rates: nanoseconds since 1970 pass 2^53 in 104 days, so a Redis store runs the same
//!   [`Gcra`] in microseconds (`Gcra::new(limit, period_ns / 1000, burst)`, exact until
//!   2255). Rust computes [`Gcra::increment`] and [`Gcra::tau`]; the script does
//!   [`Gcra::apply`] (a max, an add, a compare) and returns the TAT, from which Rust derives
//!   [`Gcra::snapshot`]. Settlement passes the difference of two increments the same way.
//! - Budgets: the memory store packs (window, used) into one `u64`; a Redis store keeps the
//!   window index in the key (or a second field) and `used` apart, both below 2^53, and
//!   Rust passes the window index and its end from [`Calendar`].
//! - On Redis Cluster one script only sees keys of one slot, so the keys of a request need
//!   one hash tag (e.g. the subject's). Charges spread over slots take one script per slot
//!   and compensating updates on refusal, as the memory store does across keys.
//! - A reservation is a hash holding the keys, the reserved amounts and windows, with the
//!   lease as its expiry.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod gcra;
#[cfg(feature = "redis")]
pub mod local_first;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(all(feature = "redis", any(test, feature = "test-util")))]
pub mod redis_server;
pub mod stage;
pub mod window;

#[cfg(feature = "redis")]
pub use self::local_first::{LocalFirstConfig, LocalFirstStats, LocalFirstStore};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreConfig};
pub use gcra::{Gcra, GcraParamError, Refusal, Snapshot};
pub use memory::{MemoryStore, MemoryStoreConfig};
pub use window::{Budget, BudgetParamError, Calendar, Period, MAX_BUDGET};

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Unit {
    /// Requests (each request is 1).
    Requests,
    /// Prompt (input) tokens.
    PromptTokens,
    /// Output tokens.
    OutputTokens,
    /// Prompt plus output tokens.
    TotalTokens,
    /// Cost in millionths of a dollar.
    MicroUsd,
    /// Requests in flight at once.
    Concurrency,
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A rate with bursts (GCRA, ticks in nanoseconds).
    Rate(Gcra),
    /// A budget per calendar window.
    Budget(Budget),
    /// At most `max` reservations in flight.
    Concurrency {
        /// The most in flight at once.
        max: u64,
    },
}

impl LimitKind {
    /// `limit` units per `period_ns` with bursts of `burst` units.
    pub fn rate(limit: u64, period_ns: u64, burst: u64) -> Result<LimitKind, GcraParamError> {
        Gcra::new(limit, period_ns, burst).map(LimitKind::Rate)
    }

    /// `limit` units per window of `calendar`.
    pub fn budget(limit: u64, calendar: Calendar) -> Result<LimitKind, BudgetParamError> {
        Budget::new(limit, calendar).map(LimitKind::Budget)
    }

    /// The configured limit: units per period, per window, or in flight.
    pub fn limit(&self) -> u64 {
        match self {
            LimitKind::Rate(g) => g.limit(),
            LimitKind::Budget(b) => b.limit(),
            LimitKind::Concurrency { max } => *max,
        }
    }

    /// The policy's window in nanoseconds for `RateLimit-Policy` (`w=`); months are
    /// reported as 30 days, the convention of that header.
    pub fn window_ns(&self) -> u64 {
        const S: u64 = 1_000_000_000;
        match self {
            LimitKind::Rate(g) => g.period(),
            LimitKind::Budget(b) => match b.calendar().period() {
                Period::Seconds(n) => u64::from(n) * S,
                Period::Minute => 60 * S,
                Period::Hour => 3_600 * S,
                Period::Day => 86_400 * S,
                Period::Month => 30 * 86_400 * S,
            },
            LimitKind::Concurrency { .. } => 0,
        }
    }
}

/// One limit a request is charged against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Charge {
    /// Names the limit and its subject (e.g. `"tokens-per-min:tenant-42"`). One key is one
    /// limit: two kinds must not share a key.
    pub key: Arc<str>,
    /// How the limit counts.
    pub kind: LimitKind,
    /// The estimated amount (1 for requests and concurrency).
    pub amount: u64,
    /// Reported, never enforced.
    pub shadow: bool,
}

impl Charge {
    /// An enforced charge.
    pub fn new(key: impl Into<Arc<str>>, kind: LimitKind, amount: u64) -> Charge {
        Charge {
            key: key.into(),
            kind,
            amount,
            shadow: false,
        }
    }

    /// The same charge in shadow mode.
    pub fn shadow(mut self) -> Charge {
        self.shadow = true;
        self
    }
}

/// Identifies a reservation from acquire to settle. Random per reservation (the engine makes
/// it), so that ids from different engine instances sharing a store do not collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(pub u128);

/// 32 hex digits: how decisions, events and the Redis store name a reservation.
impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What one limit said about a request, and its state for `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitState {
    /// The configured limit (units per period, per window, or in flight).
    pub limit: u64,
    /// Units left after this request (or now, for a refused request or a peek).
    pub remaining: u64,
    /// Nanoseconds until the limit is fully available again (a full bucket, the next
    /// window; 0 for concurrency).
    pub reset_after_ns: u64,
    /// Whether this limit alone admits the request, and if not, when it would.
    pub verdict: Verdict,
    /// Whether the amount was charged (false for refusals, for every charge of a refused
    /// request, and for peeks).
    pub charged: bool,
}

impl LimitState {
    /// `Some(delay)` when this limit refuses but would admit after `delay` nanoseconds.
    pub fn retry_after_ns(&self) -> Option<u64> {
        match self.verdict {
            Verdict::RetryAfter(d) => Some(d),
            _ => None,
        }
    }
}

/// What one limit says about an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// It fits.
    Allowed,
    /// It fits after this many nanoseconds (for concurrency: 0, "when one finishes").
    RetryAfter(u64),
    /// It is larger than the limit and can never pass.
    ExceedsCapacity,
}

impl From<Refusal> for Verdict {
    fn from(r: Refusal) -> Verdict {
        match r {
            Refusal::RetryAfter(d) => Verdict::RetryAfter(d),
            Refusal::ExceedsCapacity => Verdict::ExceedsCapacity,
        }
    }
}

/// The result of [`LimitStore::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every enforced charge was reserved (and every shadow charge that fits).
    Admitted,
    /// Nothing was charged.
    Refused {
        /// The index of the refusing charge with the longest wait (one that can never pass
        /// first).
        charge: usize,
        /// The longest wait of the refusing charges, `None` if one can never pass.
        retry_after_ns: Option<u64>,
    },
}

impl Outcome {
    /// Whether the request may proceed.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Outcome::Admitted)
    }
}

/// Of the enforced charges the states refuse, the one with the longest wait (one that can
/// never pass first) and that wait: the `Outcome::Refused` every store reports.
pub(crate) fn worst_refusal(
    charges: &[Charge],
    states: &[LimitState],
) -> Option<(usize, Option<u64>)> {
    let mut worst: Option<(usize, Option<u64>)> = None;
    for (i, (c, s)) in charges.iter().zip(states).enumerate() {
        if c.shadow {
            continue;
        }
        let wait = match s.verdict {
            Verdict::Allowed => continue,
            Verdict::RetryAfter(d) => Some(d),
            Verdict::ExceedsCapacity => None,
        };
        worst = match worst {
            None => Some((i, wait)),
            Some((_, None)) => worst,
            Some((j, Some(w))) => match wait {
                None => Some((i, None)),
                Some(d) if d > w => Some((i, Some(d))),
                _ => Some((j, Some(w))),
            },
        };
    }
    worst
}

/// The result of [`LimitStore::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Settled {
    /// The reservation was settled now.
    Settled,
    /// No such reservation: never made, already settled, or expired (its estimate stands
    /// and its concurrency was released at expiry). Nothing changed.
    Unknown,
}

/// Atomic multi-key reserve, settle and peek over limit state.
///
/// Every implementation runs the same math ([`gcra`], [`window`]) and passes the
/// conformance suite (`limits::conformance`, feature `test-util`).
pub trait LimitStore: Send + Sync + fmt::Debug {
    /// Reserve every charge at `now_ns`, all-or-nothing over the enforced ones, and remember
    /// the reservation under `id` for `lease_ns`.
    ///
    /// A `lease_ns` of 0 makes the reservation final at once: nothing is remembered, a
    /// concurrency charge is only checked, and settling it is [`Settled::Unknown`]. The
    /// engine uses it when every amount is known up front (a request counter) and nothing
    /// is in flight to release, which saves the bookkeeping of a reservation.
    ///
    /// `states` is cleared and receives one [`LimitState`] per charge, in order; it is an
    /// out-parameter so the engine can reuse one buffer per worker. Shadow charges never
    /// refuse; they are charged only when the request is admitted and they fit. A refused
    /// request leaves no reservation.
    fn acquire(
        &self,
        id: ReservationId,
        charges: &[Charge],
        now_ns: u64,
        lease_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<Outcome, StoreError>;

    /// Settle a reservation with the amounts really used, one per charge in acquire's
    /// order (missing entries settle at the reserved amount; concurrency ignores them and
    /// is released). Settling twice, or an unknown or expired id, changes nothing.
    fn settle(&self, id: ReservationId, actual: &[u64], now_ns: u64)
        -> Result<Settled, StoreError>;

    /// The state of every charge as if it were acquired now, without charging anything.
    fn peek(
        &self,
        charges: &[Charge],
        now_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<(), StoreError>;
}

/// What went wrong in a limit store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend cannot be reached.
    Unavailable,
    /// The backend did not answer in time.
    Timeout,
    /// The store is full (keys or reservations) and nothing idle can be evicted.
    Capacity,
    /// The backend answered something this version does not understand.
    Protocol,
    /// The store's configuration is invalid (an unparsable URL, a limit too long for the
    /// backend's arithmetic).
    Config,
}

impl StoreErrorKind {
    /// Every kind, for bindings that list the codes.
    pub const ALL: [StoreErrorKind; 5] = [
        StoreErrorKind::Unavailable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Capacity,
        StoreErrorKind::Protocol,
        StoreErrorKind::Config,
    ];

    /// The stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "store.unavailable",
            StoreErrorKind::Timeout => "store.timeout",
            StoreErrorKind::Capacity => "store.capacity",
            StoreErrorKind::Protocol => "store.protocol",
            StoreErrorKind::Config => "store.config",
        }
    }
}

/// A limit store could not answer. The engine applies the limit's `on_store_error`
/// (open or closed) and records that in the decision.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreError(Box<(StoreErrorKind, String)>);

impl StoreError {
    /// A new error; public so that stores outside this crate can report failures.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError(Box::new((kind, message.into())))
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.0 .0
    }

    /// The stable code, e.g. `store.unavailable`.
    pub fn code(&self) -> &'static str {
        self.0 .0.code()
    }

    /// A human-readable explanation.
    pub fn message(&self) -> &str {
        &self.0 .1
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code(), self.message())
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StoreError {}

/// Where `now_ns` comes from: Unix time in nanoseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; clones share the time.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<std::sync::atomic::AtomicU64>);

#[cfg(any(test, feature = "test-util"))]
impl FakeClock {
    /// A clock at `now_ns`.
    pub fn new(now_ns: u64) -> FakeClock {
        FakeClock(Arc::new(std::sync::atomic::AtomicU64::new(now_ns)))
    }

    /// Move forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Jump to `now_ns`.
    pub fn set(&self, now_ns: u64) {
        self.0.store(now_ns, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_serialize_camel_case() {
        let s = serde_json::to_string(&[Unit::PromptTokens, Unit::MicroUsd, Unit::Concurrency])
            .unwrap();
        assert_eq!(s, r#"["promptTokens","microUsd","concurrency"]"#);
        let u: Unit = serde_json::from_str(r#""totalTokens""#).unwrap();
        assert_eq!(u, Unit::TotalTokens);
    }

    #[test]
    fn store_error_codes_are_stable() {
        let codes: Vec<_> = StoreErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(
            codes,
            [
                "store.unavailable",
                "store.timeout",
                "store.capacity",
                "store.protocol",
                "store.config"
            ]
        );
        let e = StoreError::new(StoreErrorKind::Timeout, "no answer in 5 ms");
        assert_eq!(e.to_string(), "[store.timeout] no answer in 5 ms");
        assert_eq!(e.kind(), StoreErrorKind::Timeout);
        assert_eq!(e.message(), "no answer in 5 ms");
    }

    #[test]
    fn clocks() {
        let c = FakeClock::new(5);
        let d = c.clone();
        c.advance(10);
        assert_eq!(d.now_ns(), 15);
        d.set(3);
        assert_eq!(c.now_ns(), 3);
        // 2020-01-01 in nanoseconds: the system clock is past it.
        assert!(SystemClock.now_ns() > 1_577_836_800_000_000_000);
    }

    #[test]
    fn kinds_report_limits_and_windows() {
        let r = LimitKind::rate(100, 60_000_000_000, 100).unwrap();
        assert_eq!((r.limit(), r.window_ns()), (100, 60_000_000_000));
        let b = LimitKind::budget(5, Calendar::utc(Period::Day)).unwrap();
        assert_eq!((b.limit(), b.window_ns()), (5, 86_400_000_000_000));
        let c = LimitKind::Concurrency { max: 3 };
        assert_eq!((c.limit(), c.window_ns()), (3, 0));
        assert!(LimitKind::rate(0, 1, 1).is_err());
        assert!(LimitKind::budget(0, Calendar::utc(Period::Day)).is_err());
        assert!(Charge::new("k", c, 1).shadow().shadow);
    }
}
