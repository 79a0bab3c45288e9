//! Abuse signals: per-principal behaviour that looks like abuse rather than use.
//!
//! Limits bound what a caller may spend; signals notice how it spends. Each signal has a
//! threshold in the policy (`spec.signals`) and an action taken for a cooldown once it
//! fires:
//!
//! - `velocity`: cost (or tokens) in the current window far above the principal's own
//!   recent baseline, an exponentially weighted mean of its past windows. A stolen key
//!   used for "LLM jacking" looks like this: valid requests, suddenly many of them.
//! - `duplicates`: a burst of near-duplicate prompts with systematic variation (one
//!   template, different slots), the shape of probing and model extraction. Each user
//!   prompt is summarised by a 64-bit SimHash (Charikar, 2002) of its words; two prompts
//!   are near-duplicates when their fingerprints differ in at most `distance` bits and the
//!   prompts are not identical (exact repeats are retries, not variation). Only the last
//!   user message counts (a conversation re-sends its earlier turns), read at both ends
//!   (its first and last 64 words). On the 4,077 benign prompts of the development
//!   corpora, 623 of 8.3 million pairs (0.0075 %) are within the default distance of 6
//!   bits, and no prompt has more than 19 such neighbours in the whole set (a corpus
//!   generated from templates); the default burst asks for 20 within one principal's
//!   minute. An application that sends one fixed template with a small variable part
//!   under one key looks the same as a probe: raise `burst` or leave the signal off.
//! - `refusals`: a high share of the principal's requests refused by access, size,
//!   content, parameter or cost checks (not by limits, which refuse honest callers too).
//! - `logprobs`: a high share of requests asking for `logprobs` / `top_logprobs`, which
//!   expose the model's distribution and help distil it.
//!
//! Actions: `flag` only reports (in the decision, a `signal` event and the
//! `edgeward_signals_total` metric); `tighten` divides every rate limit of the principal by
//! the policy's factor (its charges count `factor` times, settlement included); `deny`
//! refuses its requests with 429 and a Retry-After until the cooldown ends. A signal that
//! still holds while active extends its cooldown without a new event.
//!
//! Memory is bounded: at most `maxPrincipals` principals are tracked (the least recently
//! seen inactive one of a sample makes room), each with a few counters and a ring of
//! `2 x burst` fingerprints (about 0.3 KB plus 48 bytes per unit of burst). State is per
//! engine (per process), like the heavy-hitter trackers: a replica sees its own traffic,
//! and an engine rebuilt from a reloaded policy starts with no signals active.
//!
//! A principal idle for longer than the velocity baseline's time constant has no
//! baseline left: its first busy window fires when it reaches `min` (a dormant key waking
//! up is what a stolen one looks like; set `min` above what a batch job spends).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::stage::parse_duration;

/// The `signals` section of a policy. Each signal is off unless configured.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignalSettings {
    /// Principals tracked at once (1 to 1,000,000; default 10,000; rounded up to a
    /// multiple of 16, the state's shards). Past it, a principal seen long ago and without
    /// an active signal is forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_principals: Option<u32>,
    /// What the `tighten` action does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tighten: Option<TightenSettings>,
    /// Cost or token velocity against the principal's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity: Option<VelocitySignal>,
    /// Bursts of near-duplicate prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<DuplicateSignal>,
    /// The share of refused requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<RatioSignal>,
    /// The share of requests asking for log probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<RatioSignal>,
}

/// The `tighten` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TightenSettings {
    /// Rate limits are divided by this (2 to 1,000; default 4): each charge of a tightened
    /// principal against a rate limit counts this many times (but never more than the
    /// limit's burst, so no request becomes impossible). Budgets and concurrency are
    /// unchanged (money spent is money spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 1_000))]
    pub factor: Option<u32>,
}

/// What a fired signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalAction {
    /// Report only.
    #[default]
    Flag,
    /// Divide the principal's rate limits by the `tighten` factor.
    Tighten,
    /// Refuse the principal's requests (429).
    Deny,
}

impl SignalAction {
    /// The action's name in policies, events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SignalAction::Flag => "flag",
            SignalAction::Tighten => "tighten",
            SignalAction::Deny => "deny",
        }
    }
}

/// The signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Cost or tokens far above the principal's baseline.
    Velocity = 0,
    /// A burst of near-duplicate prompts.
    Duplicates = 1,
    /// A high share of refused requests.
    Refusals = 2,
    /// A high share of requests asking for log probabilities.
    Logprobs = 3,
}

/// Every signal, in the order of their numbers.
pub const SIGNAL_KINDS: [SignalKind; 4] = [
    SignalKind::Velocity,
    SignalKind::Duplicates,
    SignalKind::Refusals,
    SignalKind::Logprobs,
];

impl SignalKind {
    /// The signal's name in policies, events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Velocity => "velocity",
            SignalKind::Duplicates => "duplicates",
            SignalKind::Refusals => "refusals",
            SignalKind::Logprobs => "logprobs",
        }
    }
}

/// What `velocity` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VelocityBy {
    /// Estimated micro-dollars of admitted requests.
    #[default]
    MicroUsd,
    /// Prompt plus reserved output tokens of admitted requests.
    Tokens,
}

/// The `velocity` signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VelocitySignal {
    /// What is measured (default `microUsd`).
    #[serde(default)]
    pub by: VelocityBy,
    /// The window compared with the baseline (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The baseline's time constant: how far back "recent" reaches (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// How long a principal must have been seen before its baseline counts (default:
    /// the baseline's time constant). A new caller has no baseline to exceed; limits
    /// bound it meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<String>,
    /// Fires above this multiple of the baseline (default 10).
    #[serde(default = "ten")]
    pub factor: f64,
    /// And only when the window holds at least this much (in the unit of `by`), so a
    /// near-zero baseline does not fire on pocket change.
    pub min: u64,
    /// What to do (default `flag`).
    #[serde(default)]
    pub action: SignalAction,
    /// How long the action lasts after the signal last held (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
}

fn ten() -> f64 {
    10.0
}

/// The `duplicates` signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DuplicateSignal {
    /// How far back near-duplicates are counted (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fires when a prompt has this many near-duplicates in the window, itself included
    /// (2 to 64; default 20). They are looked for among the principal's last `2 x burst`
    /// prompts (bounded memory), so a probe diluted with more than as many unrelated
    /// prompts escapes; other signals (velocity, limits) still see its volume.
    #[serde(default = "twenty")]
    #[schemars(range(min = 2, max = 64))]
    pub burst: u32,
    /// The most differing bits (of 64) between near-duplicate fingerprints (default 6;
    /// at most 24). Unrelated prompts differ in about 32.
    #[serde(default = "six")]
    #[schemars(range(max = 24))]
    pub distance: u32,
    /// What to do (default `flag`).
    #[serde(default)]
    pub action: SignalAction,
    /// How long the action lasts after the signal last held (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
}

fn twenty() -> u32 {
    20
}

fn six() -> u32 {
    6
}

/// A signal on the share of a principal's requests with some property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RatioSignal {
    /// The sliding window (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fires at or above this share (above 0, at most 1).
    pub ratio: f64,
    /// And only after this many requests in the window (default 20).
    #[serde(default = "twenty")]
    pub min: u32,
    /// What to do (default `flag`).
    #[serde(default)]
    pub action: SignalAction,
    /// How long the action lasts after the signal last held (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
}

/// A number measured by a signal. Compared by its bits, so decisions stay `Eq`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct Measure(pub f64);

impl PartialEq for Measure {
    fn eq(&self, other: &Measure) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Measure {}

/// A signal active for the decision's principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalHit {
    /// Which signal.
    pub signal: SignalKind,
    /// What it does.
    pub action: SignalAction,
    /// What was measured when it last held: the window's amount (`velocity`), the
    /// near-duplicates (`duplicates`), the share (`refusals`, `logprobs`).
    pub value: Measure,
    /// The threshold it was compared with (for `velocity`: factor times the baseline).
    pub threshold: Measure,
    /// Whether this request fired it (an episode's first request). A `signal` event is
    /// sent for these only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fired: bool,
    /// Seconds until the action ends unless the signal holds again.
    pub remaining_seconds: u64,
}

const SEC: u64 = 1_000_000_000;
const SHARDS: usize = 16;
/// Entries of a full shard looked at to choose one to forget.
const EVICTION_SAMPLE: usize = 32;
/// Words fingerprinted from the start of each text, and from its end: bounds the cost on
/// long prompts without reading their middle.
const HEAD_WORDS: u32 = 64;
const TAIL_WORDS: usize = 64;
/// Words fingerprinted per message in all (several text parts).
const MAX_WORDS: u32 = 256;

/// Settings compiled: durations in nanoseconds.
#[derive(Debug, Clone)]
struct Compiled {
    velocity: Option<Velocity>,
    duplicates: Option<Duplicates>,
    refusals: Option<Ratio>,
    logprobs: Option<Ratio>,
    per_shard: usize,
    tighten: u64,
}

#[derive(Debug, Clone)]
struct Response {
    action: SignalAction,
    cooldown_ns: u64,
}

#[derive(Debug, Clone)]
struct Velocity {
    by: VelocityBy,
    window_ns: u64,
    /// The weight of a closed window in the baseline: window / time constant.
    alpha: f64,
    warmup_windows: u64,
    factor: f64,
    min: u64,
    response: Response,
}

impl Velocity {
    /// What a request adds to the window, from its (micro-dollars, tokens).
    fn amount(&self, cost: Option<(u64, u64)>) -> Option<u64> {
        cost.map(|(usd, tokens)| match self.by {
            VelocityBy::MicroUsd => usd,
            VelocityBy::Tokens => tokens,
        })
    }
}

#[derive(Debug, Clone)]
struct Duplicates {
    window_ns: u64,
    burst: u32,
    distance: u32,
    ring: usize,
    response: Response,
}

#[derive(Debug, Clone)]
struct Ratio {
    window_ns: u64,
    ratio: f64,
    min: u32,
    response: Response,
}

fn duration(field: &str, v: &Option<String>, default_ns: u64) -> Result<u64, String> {
    match v {
        None => Ok(default_ns),
        Some(s) => parse_duration(s)
            .ok_or_else(|| format!("{field}: {s:?} is not a duration (`30s`, `1m`, `1h`)")),
    }
}

fn response(at: &str, action: SignalAction, cooldown: &Option<String>) -> Result<Response, String> {
    Ok(Response {
        action,
        cooldown_ns: duration(&format!("{at}.cooldown"), cooldown, 600 * SEC)?,
    })
}

fn ratio(at: &str, r: &RatioSignal) -> Result<Ratio, String> {
    if !(r.ratio > 0.0 && r.ratio <= 1.0) {
        return Err(format!("{at}.ratio: must be above 0 and at most 1"));
    }
    Ok(Ratio {
        window_ns: duration(&format!("{at}.window"), &r.window, 300 * SEC)?,
        ratio: r.ratio,
        min: r.min.max(1),
        response: response(at, r.action, &r.cooldown)?,
    })
}

impl Compiled {
    fn new(s: &SignalSettings) -> Result<Compiled, String> {
        let velocity = match &s.velocity {
            None => None,
            Some(v) => {
                let window_ns = duration("velocity.window", &v.window, 60 * SEC)?;
                let baseline_ns = duration("velocity.baseline", &v.baseline, 3_600 * SEC)?;
                let warmup_ns = duration("velocity.warmup", &v.warmup, baseline_ns)?;
                if baseline_ns < window_ns {
                    return Err("velocity.baseline: must be at least the window".into());
                }
                if !(v.factor.is_finite() && v.factor > 1.0) {
                    return Err("velocity.factor: must be above 1".into());
                }
                if v.min == 0 {
                    return Err("velocity.min: must be at least 1".into());
                }
                Some(Velocity {
                    by: v.by,
                    window_ns,
                    alpha: window_ns as f64 / baseline_ns as f64,
                    warmup_windows: warmup_ns / window_ns,
                    factor: v.factor,
                    min: v.min,
                    response: response("velocity", v.action, &v.cooldown)?,
                })
            }
        };
        let duplicates = match &s.duplicates {
            None => None,
            Some(d) => {
                if !(2..=64).contains(&d.burst) {
                    return Err("duplicates.burst: must be 2 to 64".into());
                }
                if d.distance > 24 {
                    return Err("duplicates.distance: must be at most 24 (of 64 bits)".into());
                }
                Some(Duplicates {
                    window_ns: duration("duplicates.window", &d.window, 60 * SEC)?,
                    burst: d.burst,
                    distance: d.distance,
                    // Twice the burst, so a burst interleaved with other prompts still fits.
                    ring: 2 * d.burst as usize,
                    response: response("duplicates", d.action, &d.cooldown)?,
                })
            }
        };
        let refusals = s
            .refusals
            .as_ref()
            .map(|r| ratio("refusals", r))
            .transpose()?;
        let logprobs = s
            .logprobs
            .as_ref()
            .map(|r| ratio("logprobs", r))
            .transpose()?;
        let max = s.max_principals.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max) {
            return Err("maxPrincipals: must be 1 to 1000000".into());
        }
        let tighten = s.tighten.and_then(|t| t.factor).unwrap_or(4);
        if !(2..=1_000).contains(&tighten) {
            return Err("tighten.factor: must be 2 to 1000".into());
        }
        Ok(Compiled {
            velocity,
            duplicates,
            refusals,
            logprobs,
            per_shard: (max as usize).div_ceil(SHARDS),
            tighten: u64::from(tighten),
        })
    }

    fn response(&self, k: SignalKind) -> Option<&Response> {
        match k {
            SignalKind::Velocity => self.velocity.as_ref().map(|v| &v.response),
            SignalKind::Duplicates => self.duplicates.as_ref().map(|v| &v.response),
            SignalKind::Refusals => self.refusals.as_ref().map(|v| &v.response),
            SignalKind::Logprobs => self.logprobs.as_ref().map(|v| &v.response),
        }
    }
}

/// A request as the signals see it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observation {
    /// Estimated micro-dollars and tokens, when the request is admitted so far.
    pub cost: Option<(u64, u64)>,
    /// The user prompt's fingerprint: SimHash and an identity hash.
    pub print: Option<(u64, u64)>,
    /// An inference request: counted in the `logprobs` share.
    pub inference: bool,
    /// Whether it asks for log probabilities.
    pub logprobs: bool,
}

/// A count per fixed window, compared as a sliding one: the previous window weighted by
/// how much of it the sliding window still covers.
#[derive(Debug, Clone, Copy, Default)]
struct Share {
    window: u64,
    cur: (u32, u32),
    prev: (u32, u32),
}

impl Share {
    fn add(&mut self, now: u64, window_ns: u64, hit: bool) -> (f64, f64) {
        let w = now / window_ns;
        if w > self.window {
            self.prev = if w == self.window + 1 {
                self.cur
            } else {
                (0, 0)
            };
            self.cur = (0, 0);
            self.window = w;
        }
        self.cur.0 = self.cur.0.saturating_add(1);
        self.cur.1 = self.cur.1.saturating_add(u32::from(hit));
        let covered = 1.0 - (now % window_ns) as f64 / window_ns as f64;
        (
            f64::from(self.cur.0) + f64::from(self.prev.0) * covered,
            f64::from(self.cur.1) + f64::from(self.prev.1) * covered,
        )
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    /// Whether a window has been seen (window 0 is a real window under a test clock).
    started: bool,
    window: u64,
    cur: u64,
    /// The exponentially weighted mean of closed windows, not yet corrected for starting
    /// at zero (see [`Rate::baseline`]).
    ewma: f64,
    windows: u64,
}

impl Rate {
    /// The baseline: the weighted mean divided by the weight its windows carry so far
    /// (`1 - (1 - alpha)^windows`), so a steady caller's baseline is its rate from the
    /// first window on instead of creeping up from zero.
    fn baseline(&self, alpha: f64) -> f64 {
        let weight = 1.0 - (1.0 - alpha).powi(self.windows.min(1_000_000) as i32);
        if weight > 0.0 {
            self.ewma / weight
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Print {
    sim: u64,
    exact: u64,
    at_ns: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Active {
    until_ns: u64,
    value: f64,
    threshold: f64,
    /// Held since it was last reported: the episode's first request reports it as fired.
    fresh: bool,
}

#[derive(Debug, Default)]
struct State {
    seen_ns: u64,
    rate: Rate,
    prints: Vec<Print>,
    next_print: usize,
    refusals: Share,
    logprobs: Share,
    active: [Active; 4],
}

impl State {
    fn any_active(&self, now: u64) -> bool {
        self.active.iter().any(|a| a.until_ns > now)
    }
}

/// One shard of the per-principal state, by a hash of the principal's id: sixteen locks,
/// so concurrent callers rarely wait on each other.
type Shard = Mutex<HashMap<Arc<str>, State>>;

/// The signals of one engine: settings and per-principal state.
pub(crate) struct Signals {
    cfg: Compiled,
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").field("cfg", &self.cfg).finish()
    }
}

impl Signals {
    /// Compiles the policy's settings; `Err` holds the message for a compile error.
    pub fn new(s: &SignalSettings) -> Result<Signals, String> {
        Ok(Signals {
            cfg: Compiled::new(s)?,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Whether prompts need fingerprints.
    pub fn fingerprints(&self) -> bool {
        self.cfg.duplicates.is_some()
    }

    /// The factor a tightened principal's rate charges are multiplied by.
    pub fn tighten_factor(&self) -> u64 {
        self.cfg.tighten
    }

    fn with_state<R>(&self, principal: &str, now: u64, f: impl FnOnce(&mut State) -> R) -> R {
        let shard = &self.shards[shard_of(principal)];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(principal) && map.len() >= self.cfg.per_shard {
            // Forget the least recently seen of a sample (bounded work on the request
            // path), one without an active action first: an attacker under `deny` must
            // not be freed by others' traffic unless every sampled entry is active.
            let victim = map
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, s)| (s.any_active(now), s.seen_ns))
                .map(|(k, _)| Arc::clone(k));
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        let state = match map.get_mut(principal) {
            Some(s) => s,
            None => map.entry(Arc::from(principal)).or_default(),
        };
        state.seen_ns = now;
        f(state)
    }

    /// Counts a request of `principal` that reached the signals (after the cost stage) and
    /// appends the principal's active signals to `hits`.
    pub fn observe(&self, principal: &str, now: u64, o: &Observation, hits: &mut Vec<SignalHit>) {
        let cfg = &self.cfg;
        self.with_state(principal, now, |st| {
            if let Some(v) = &cfg.velocity {
                let w = now / v.window_ns;
                if !st.rate.started {
                    st.rate.started = true;
                    st.rate.window = w;
                }
                roll(&mut st.rate, w, v.alpha);
                if let Some(amount) = v.amount(o.cost) {
                    // Counted now, taken back by `outcome` if the request is refused later
                    // (by this signal's own deny, or a limit): only admitted cost counts.
                    st.rate.cur = st.rate.cur.saturating_add(amount);
                    let threshold = v.factor * st.rate.baseline(v.alpha);
                    let cur = st.rate.cur as f64;
                    if st.rate.windows >= v.warmup_windows.max(1)
                        && st.rate.cur >= v.min
                        && cur > threshold
                    {
                        hold(st, SignalKind::Velocity, &v.response, now, cur, threshold);
                    }
                }
            }
            if let (Some(d), Some((sim, exact))) = (&cfg.duplicates, o.print) {
                let since = now.saturating_sub(d.window_ns);
                let near = st
                    .prints
                    .iter()
                    .filter(|p| {
                        p.at_ns >= since
                            && p.exact != exact
                            && (p.sim ^ sim).count_ones() <= d.distance
                    })
                    .count() as u32;
                let p = Print {
                    sim,
                    exact,
                    at_ns: now,
                };
                if st.prints.len() < d.ring {
                    st.prints.push(p);
                } else {
                    st.prints[st.next_print] = p;
                    st.next_print = (st.next_print + 1) % d.ring;
                }
                let n = near + 1;
                if n >= d.burst {
                    hold(
                        st,
                        SignalKind::Duplicates,
                        &d.response,
                        now,
                        f64::from(n),
                        f64::from(d.burst),
                    );
                }
            }
            if let (Some(r), true) = (&cfg.logprobs, o.inference) {
                let (total, hits) = st.logprobs.add(now, r.window_ns, o.logprobs);
                share(st, SignalKind::Logprobs, r, now, total, hits);
            }
            active(cfg, st, now, hits);
        });
    }

    /// Whether [`outcome`](Signals::outcome) must hear of a request: always when refusals
    /// are counted; for a refused request whose cost `observe` counted, to take it back.
    pub fn wants_outcome(&self, refused_after_observe: bool) -> bool {
        self.cfg.refusals.is_some() || (refused_after_observe && self.cfg.velocity.is_some())
    }

    /// The end of a request of `principal`: `refused` counts in the refusal share (and
    /// appends the `refusals` signal to `hits` when this fires it); `uncount` is the
    /// observation of a request refused after [`observe`](Signals::observe) counted its
    /// cost, which is taken back (velocity measures admitted cost).
    pub fn outcome(
        &self,
        principal: &str,
        now: u64,
        refused: bool,
        uncount: Option<&Observation>,
        hits: &mut Vec<SignalHit>,
    ) {
        let cfg = &self.cfg;
        self.with_state(principal, now, |st| {
            if let (Some(v), Some(o)) = (&cfg.velocity, uncount) {
                if st.rate.started && st.rate.window == now / v.window_ns {
                    let amount = v.amount(o.cost).unwrap_or(0);
                    st.rate.cur = st.rate.cur.saturating_sub(amount);
                }
            }
            let Some(r) = &cfg.refusals else { return };
            let (total, n) = st.refusals.add(now, r.window_ns, refused);
            let holds = share(st, SignalKind::Refusals, r, now, total, n);
            let a = &mut st.active[SignalKind::Refusals as usize];
            if holds && a.fresh {
                hits.push(hit(SignalKind::Refusals, r.response.action, a, now));
            }
        });
    }

    /// The principals tracked now (for tests of the memory bound).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Closes windows up to `w`: each closed window moves the baseline towards its amount.
fn roll(r: &mut Rate, w: u64, alpha: f64) {
    if w <= r.window {
        // The same window, or a clock that stepped back: keep counting where we are.
        return;
    }
    let gap = w - r.window;
    r.ewma += alpha * (r.cur as f64 - r.ewma);
    // Idle windows pull the baseline towards zero; after thousands it is zero anyway.
    let idle = (gap - 1).min(100_000) as i32;
    r.ewma *= (1.0 - alpha).powi(idle);
    r.windows = r.windows.saturating_add(gap);
    r.cur = 0;
    r.window = w;
}

/// A ratio signal's check: holds it when the share is at or above the threshold.
fn share(st: &mut State, k: SignalKind, r: &Ratio, now: u64, total: f64, hits: f64) -> bool {
    if total + 1e-9 < f64::from(r.min) {
        return false;
    }
    let share = hits / total;
    if share + 1e-12 >= r.ratio {
        hold(st, k, &r.response, now, share, r.ratio);
        return true;
    }
    false
}

/// The signal holds now: its action lasts a cooldown from now.
fn hold(st: &mut State, k: SignalKind, r: &Response, now: u64, value: f64, threshold: f64) {
    let a = &mut st.active[k as usize];
    a.fresh |= a.until_ns <= now;
    // Never shorter: a concurrent request may bring an older `now`.
    a.until_ns = a.until_ns.max(now.saturating_add(r.cooldown_ns));
    a.value = value;
    a.threshold = threshold;
}

fn hit(k: SignalKind, action: SignalAction, a: &mut Active, now: u64) -> SignalHit {
    let fired = std::mem::take(&mut a.fresh);
    SignalHit {
        signal: k,
        action,
        value: Measure(a.value),
        threshold: Measure(a.threshold),
        fired,
        remaining_seconds: (a.until_ns - now).div_ceil(SEC),
    }
}

/// Appends the state's active signals to `hits`.
fn active(cfg: &Compiled, st: &mut State, now: u64, hits: &mut Vec<SignalHit>) {
    for k in SIGNAL_KINDS {
        let a = &mut st.active[k as usize];
        if a.until_ns <= now {
            continue;
        }
        let Some(r) = cfg.response(k) else { continue };
        hits.push(hit(k, r.action, a, now));
    }
}

/// A user message's pointer: the first two segments of a field's (`/messages/3` of
/// `/messages/3/content/0/text`), or the whole name when shorter.
fn message_of(pointer: &[u8]) -> &[u8] {
    let mut slashes = 0;
    for (i, &b) in pointer.iter().enumerate() {
        if b == b'/' {
            slashes += 1;
            if slashes == 3 {
                return &pointer[..i];
            }
        }
    }
    pointer
}

fn shard_of(principal: &str) -> usize {
    (hash(principal.as_bytes()) as usize) % SHARDS
}

/// A fixed-seed foldhash (as the limit stores use): shard choice and the fingerprint's
/// message and tail hashes, which must not change between calls.
fn hash(b: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0x51e7_a15b_0f1d_0e5c).hash_one(b)
}

/// An odd multiplier that spreads the running identity hash over its bits.
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// MurmurHash3's finaliser: spreads a word hash over all 64 bits, which SimHash's
/// per-bit votes need.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A SimHash of the user prompt's words, built during the walk of the body.
///
/// Votes are counted eight bits at a time in byte lanes of eight words (each lane holds
/// the counts of bits `k, k+8, ..., k+56`), flushed before a byte can overflow: a few
/// shifts and adds per word instead of 64 branches.
#[derive(Debug, Clone)]
pub(crate) struct Fingerprint {
    on: bool,
    lanes: [u64; 8],
    in_lanes: u32,
    votes: [u32; 64],
    words: u32,
    exact: u64,
    bytes: u64,
    /// A hash of the last bytes seen, so long prompts differing past the words
    /// fingerprinted are still not identical.
    tail: u64,
    /// The user message the words come from (a hash of its JSON pointer's first two
    /// segments, `/messages/3`).
    message: u64,
}

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint {
            on: false,
            lanes: [0; 8],
            in_lanes: 0,
            votes: [0; 64],
            words: 0,
            exact: 0,
            bytes: 0,
            tail: 0,
            message: 0,
        }
    }
}

impl Fingerprint {
    /// Starts a request; `on` says whether fingerprints are wanted at all.
    pub fn reset(&mut self, on: bool) {
        *self = Fingerprint {
            on,
            ..Fingerprint::default()
        };
    }

    /// Notes the field a text comes from (its JSON pointer): a field of another user
    /// message than the last one starts the fingerprint afresh, so it is of the request's
    /// last user message. A conversation re-sends its earlier turns, which would make every
    /// turn a near-duplicate of the one before.
    pub fn field(&mut self, pointer: &[u8]) {
        if !self.on {
            return;
        }
        let key = hash(message_of(pointer));
        if key != self.message {
            if self.words > 0 || self.bytes > 0 {
                self.reset(true);
            }
            self.message = key;
        }
    }

    /// Adds a user prompt text: its first [`HEAD_WORDS`] words and, of longer texts, the
    /// last [`TAIL_WORDS`] (found scanning back from the end, so the middle of a long text
    /// is never read). A template's slots vary at either end; the cost stays bounded.
    pub fn text(&mut self, t: &[u8]) {
        if !self.on {
            return;
        }
        self.bytes += t.len() as u64;
        let tail = &t[t.len().saturating_sub(32)..];
        self.tail = hash(tail) ^ self.tail.rotate_left(7);
        // Forward: one table load per byte, a word's bytes folded into a rotating
        // accumulator (cheap; `mix` spreads it once per word).
        let mut head = 0;
        let mut h = 0u64;
        let mut end = 0;
        for (i, &b) in t.iter().enumerate() {
            let c = WORD_BYTE[b as usize];
            if c != 0 {
                h = h.rotate_left(7) ^ u64::from(c);
            } else if h != 0 {
                self.word(mix(h));
                h = 0;
                head += 1;
                end = i;
                if head == HEAD_WORDS || self.words >= MAX_WORDS {
                    break;
                }
            }
        }
        if head < HEAD_WORDS && self.words < MAX_WORDS {
            if h != 0 {
                self.word(mix(h));
            }
            return;
        }
        // Backward from the end to `end`, the last words. The forward fold of a word
        // `c0..cn` is the XOR of each `ci` rotated left by `7 (n - 1 - i)`, so read
        // backwards it is the XOR of the k-th byte from the end rotated by `7 k`: the same
        // hash in one pass, wherever the word is.
        let mut i = t.len();
        let mut n = 0;
        while n < TAIL_WORDS && i > end && self.words < MAX_WORDS {
            while i > end && WORD_BYTE[t[i - 1] as usize] == 0 {
                i -= 1;
            }
            let (mut h, mut r) = (0u64, 0u32);
            while i > end {
                let c = WORD_BYTE[t[i - 1] as usize];
                if c == 0 {
                    break;
                }
                h ^= u64::from(c).rotate_left(r);
                r = (r + 7) & 63;
                i -= 1;
            }
            if h != 0 {
                self.word(mix(h));
                n += 1;
            }
        }
    }

    fn word(&mut self, h: u64) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            *lane += (h >> k) & ONES;
        }
        self.in_lanes += 1;
        self.words += 1;
        self.exact = (self.exact ^ h).wrapping_mul(SPREAD).rotate_left(5);
        if self.in_lanes == 255 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            for j in 0..8 {
                self.votes[8 * j + k] += ((*lane >> (8 * j)) & 0xff) as u32;
            }
            *lane = 0;
        }
        self.in_lanes = 0;
    }

    /// The SimHash (a bit is set when most words have it set) and an identity hash of the
    /// prompt; `None` without words.
    pub fn finish(&mut self) -> Option<(u64, u64)> {
        if !self.on || self.words == 0 {
            return None;
        }
        self.flush();
        let sim = self
            .votes
            .iter()
            .enumerate()
            .filter(|(_, &v)| 2 * v > self.words)
            .fold(0u64, |s, (b, _)| s | 1 << b);
        let exact = mix(self.exact ^ self.bytes.rotate_left(32) ^ self.tail);
        Some((sim, exact))
    }
}

/// Word bytes folded (ASCII letters lowercased), 0 for separators: ASCII letters and
/// digits are word bytes, and so is every byte of a non-ASCII character (so other scripts
/// form words too).
static WORD_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphanumeric() || c >= 0x80 {
            c.to_ascii_lowercase()
        } else {
            0
        };
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn print(t: &str) -> (u64, u64) {
        let mut f = Fingerprint::default();
        f.reset(true);
        f.text(t.as_bytes());
        f.finish().unwrap()
    }

    #[test]
    fn simhash_is_close_for_variations_and_far_for_unrelated_prompts() {
        let a = print("Translate the following sentence into French: the cat sat on the red mat near the door");
        let b = print("Translate the following sentence into French: the dog sat on the red mat near the door");
        let c = print("Write a haiku about autumn leaves falling in a quiet Kyoto garden at dusk");
        assert!(
            (a.0 ^ b.0).count_ones() <= 6,
            "{}",
            (a.0 ^ b.0).count_ones()
        );
        assert!(
            (a.0 ^ c.0).count_ones() > 12,
            "{}",
            (a.0 ^ c.0).count_ones()
        );
        assert_ne!(a.1, b.1);
        // Case and punctuation do not make prompts different words, but the identity
        // hash still tells them apart only by words, length and tail.
        assert_eq!(print("Hello, World").0, print("hello world!").0);
        assert_eq!(print("same text").1, print("same text").1);
    }

    #[test]
    fn votes_survive_lane_overflow() {
        // More than 255 votes for each bit: the lanes flush before a byte wraps, so every
        // bit of the word's hash wins its vote, and a bit never set loses.
        let h = mix(0x1234_5678);
        let mut f = Fingerprint::default();
        f.reset(true);
        for _ in 0..700 {
            f.word(h);
        }
        assert_eq!(f.finish().unwrap().0, h);
        let mut off = Fingerprint::default();
        off.reset(false);
        off.text(b"alpha");
        assert_eq!(off.finish(), None);
    }

    #[test]
    fn long_texts_are_read_at_both_ends_only() {
        let words = |from: usize, n: usize| -> String {
            (from..from + n).map(|i| format!("w{i} ")).collect()
        };
        let long = |mid: &str, end: &str| {
            print(&format!("{}{mid}{}{end}", words(0, 100), words(500, 100)))
        };
        let a = long(&words(1_000, 2_000), "Answer with one word.");
        let b = long(&words(1_000, 2_000), "Answer with two words.");
        // One word differs at the end, 128 are read: close, and not identical.
        assert!(
            (a.0 ^ b.0).count_ones() <= 6,
            "{}",
            (a.0 ^ b.0).count_ones()
        );
        assert_ne!(a.1, b.1);
        // The middle is not read: other words there change only the identity.
        let d = long(&words(5_000, 2_000), "Answer with one word.");
        assert_eq!(a.0, d.0);
        // A different ending of many words moves the fingerprint further.
        let c = long(&words(1_000, 2_000), &words(9_000, 40));
        assert!((a.0 ^ c.0).count_ones() > (a.0 ^ b.0).count_ones());
        // A text of up to 128 words is read whole; a longer one, 128 words of it.
        for (n, read) in [(100, 100), (129, 128), (3_000, 128)] {
            let mut f = Fingerprint::default();
            f.reset(true);
            f.text(&b"w ".repeat(n));
            assert_eq!(f.words, read, "{n}");
        }
    }

    #[test]
    fn words_read_backwards_hash_as_read_forwards() {
        let head: String = (0..64).map(|i| format!("w{i} ")).collect();
        // `Supercalifragilistic` is read backwards here (after the 64 head words)...
        let mut a = Fingerprint::default();
        a.reset(true);
        a.text(format!("{head}Supercalifragilistic-expialidocious").as_bytes());
        // ...and forwards here (a text of its own).
        let mut b = Fingerprint::default();
        b.reset(true);
        b.text(head.as_bytes());
        b.text(b"Supercalifragilistic expialidocious");
        a.flush();
        b.flush();
        assert_eq!(a.words, 66);
        assert_eq!(a.votes, b.votes);
    }

    #[test]
    fn the_fingerprint_is_of_the_last_user_message() {
        let mut f = Fingerprint::default();
        f.reset(true);
        f.field(b"/messages/1/content");
        f.text(b"What is the capital of France?");
        f.field(b"/messages/3/content/0/text");
        f.text(b"And of Spain?");
        f.field(b"/messages/3/content/1/text");
        f.text(b"Answer briefly.");
        let last = f.finish().unwrap();
        let mut g = Fingerprint::default();
        g.reset(true);
        g.field(b"/messages/0/content");
        g.text(b"And of Spain?");
        g.text(b"Answer briefly.");
        assert_eq!(last.0, g.finish().unwrap().0);
        assert_eq!(message_of(b"/messages/12/content/0/text"), b"/messages/12");
        assert_eq!(message_of(b"/prompt"), b"/prompt");
    }

    fn signals(yaml: &str) -> Signals {
        let s: SignalSettings = serde_saphyr::from_str(yaml).unwrap();
        Signals::new(&s).unwrap()
    }

    #[test]
    fn velocity_fires_above_the_baseline_once_per_episode() {
        let s = signals("velocity: {window: 1m, baseline: 10m, warmup: 5m, factor: 5, min: 1000, action: deny, cooldown: 2m}");
        let min = 60 * SEC;
        let mut hits = Vec::new();
        let obs = |usd| Observation {
            cost: Some((usd, 0)),
            ..Observation::default()
        };
        // Ten quiet minutes at 500 a minute: a baseline, no signal.
        for m in 0..10 {
            s.observe("p", m * min, &obs(500), &mut hits);
            assert!(hits.is_empty(), "minute {m}: {hits:?}");
        }
        // Then 5,000 within a minute: ten times the baseline (about 500 at most).
        let mut fired = 0;
        for i in 0..10 {
            hits.clear();
            s.observe("p", 10 * min + i * SEC, &obs(500), &mut hits);
            fired += hits.iter().filter(|h| h.fired).count();
        }
        assert_eq!(fired, 1);
        assert_eq!(hits[0].signal, SignalKind::Velocity);
        assert_eq!(hits[0].action, SignalAction::Deny);
        assert!(hits[0].value.0 >= 5_000.0 && hits[0].threshold.0 < 2_600.0);
        // The cooldown runs out two minutes after it last held.
        hits.clear();
        s.observe("p", 12 * min + 20 * SEC, &obs(0), &mut hits);
        assert!(hits.is_empty(), "{hits:?}");
        // A new principal has no baseline yet: a big first minute is for limits.
        s.observe("new", 10 * min, &obs(1_000_000), &mut hits);
        assert!(hits.is_empty());
    }

    #[test]
    fn ratio_signals_need_the_minimum_and_the_share() {
        let s = signals("logprobs: {ratio: 0.5, min: 10}\nrefusals: {ratio: 0.3, min: 10}");
        let mut hits = Vec::new();
        let lp = |on| Observation {
            inference: true,
            logprobs: on,
            ..Observation::default()
        };
        for i in 0..9 {
            s.observe("p", i * SEC, &lp(true), &mut hits);
        }
        assert!(hits.is_empty(), "below the minimum");
        s.observe("p", 9 * SEC, &lp(true), &mut hits);
        assert_eq!(hits.len(), 1);
        assert!(hits[0].fired && hits[0].signal == SignalKind::Logprobs);
        // Refusals: 2 of 10 stays silent, the 3rd refusal of 11 fires once.
        let mut out = Vec::new();
        for i in 0..10 {
            s.outcome("q", i * SEC, i < 2, None, &mut out);
        }
        assert!(out.is_empty());
        s.outcome("q", 10 * SEC, true, None, &mut out);
        s.outcome("q", 11 * SEC, true, None, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].signal, SignalKind::Refusals);
    }

    #[test]
    fn memory_stays_within_max_principals() {
        let s = signals("maxPrincipals: 64\nlogprobs: {ratio: 1.0, min: 1000}");
        let mut hits = Vec::new();
        let o = Observation {
            inference: true,
            ..Observation::default()
        };
        for i in 0..10_000u64 {
            s.observe(&format!("p{i}"), i, &o, &mut hits);
        }
        assert!(s.tracked() <= 64 + SHARDS, "{}", s.tracked());
    }

    #[test]
    fn settings_are_checked() {
        for (yaml, msg) in [
            ("velocity: {min: 1, factor: 0.5}", "velocity.factor"),
            (
                "velocity: {min: 1, window: 1h, baseline: 1m}",
                "velocity.baseline",
            ),
            ("duplicates: {burst: 1}", "duplicates.burst"),
            ("duplicates: {distance: 40}", "duplicates.distance"),
            ("refusals: {ratio: 1.5}", "refusals.ratio"),
            ("logprobs: {ratio: 0.5, window: soon}", "logprobs.window"),
            ("tighten: {factor: 1}", "tighten.factor"),
            ("maxPrincipals: 0", "maxPrincipals"),
            ("maxPrincipals: 2000000", "maxPrincipals"),
            ("velocity: {min: 0}", "velocity.min"),
        ] {
            let s: SignalSettings = serde_saphyr::from_str(yaml).unwrap();
            let e = Signals::new(&s).unwrap_err();
            assert!(e.starts_with(msg), "{yaml}: {e}");
        }
    }
}
