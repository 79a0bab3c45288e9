//! Decisions and settlements as structured events: one JSON object per line.
//!
//! An event says who called (the principal's id, tenant, tier; never a credential), what
//! was decided and by which stage, which rules matched where, the scores, the cost estimate,
//! the reservation and every limit's outcome; a settlement event adds the usage the response
//! reported and its difference to the estimate. Prompt text and match excerpts (which
//! quote the request) appear only when the policy opts in (`spec.events.prompts`), cut to
//! the policy's length.
//!
//! [`crate::Engine::event_json`] and [`crate::Engine::settlement_event_json`] build the
//! lines; an [`EventSink`] given to the engine builder receives every decision's line as
//! `inspect` makes it, and every settlement's as `settle` does.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::usage::Usage;
use crate::decision::{Action, Cost, Decision, Rewrite, StoreFailure};
use crate::identity::Principal;
use crate::limits::stage::LimitOutcome;
use crate::policy::Mode;
use crate::rules::Category;
use crate::signals::{SignalAction, SignalHit, SignalKind};

/// The `events` section of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSettings {
    /// Log prompt text and match excerpts, cut to this many bytes each. Absent: never (the
    /// default), since prompts may hold personal data and secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PromptLogging>,
}

/// How much request text an event may quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromptLogging {
    /// The most bytes of prompt text per event (cut on a character boundary).
    pub max_bytes: u32,
}

/// Receives event lines (JSON, without a newline) as the engine makes them. Called on the
/// inspecting thread: an implementation should hand lines off (a channel, a buffered
/// writer behind a lock) rather than do slow I/O inline.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// One event.
    fn event(&self, line: &str);
}

/// The time of an event, RFC 3339 in UTC with milliseconds.
pub fn rfc3339(now_ns: u64) -> String {
    let secs = now_ns / 1_000_000_000;
    let ms = (now_ns / 1_000_000) % 1_000;
    let (y, mo, d) = crate::limits::window::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3_600,
        (s / 60) % 60,
        s % 60
    )
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
struct Match<'a> {
    rule: u32,
    name: &'a str,
    category: Category,
    location: &'a str,
    score: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    excerpt: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
struct DecisionEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    route: &'a str,
    mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a Principal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(flatten)]
    action: &'a Action,
    stage: crate::decision::Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    would_deny: Option<&'a crate::decision::Reason>,
    score: u32,
    scores: &'a crate::decision::Scores,
    threshold: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Match<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    matches_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<&'a Cost>,
    #[serde(skip_serializing_if = "<[Rewrite]>::is_empty")]
    rewrites: &'a [Rewrite],
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation: Option<String>,
    #[serde(skip_serializing_if = "<[LimitOutcome]>::is_empty")]
    limits: &'a [LimitOutcome],
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<&'a StoreFailure>,
    #[serde(skip_serializing_if = "<[SignalHit]>::is_empty")]
    signals: &'a [SignalHit],
    #[serde(skip_serializing_if = "Option::is_none")]
    inspect_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
}

/// What went into a decision event beyond the decision.
pub(crate) struct EventContext {
    pub now_ns: u64,
    pub client: Option<std::net::IpAddr>,
    pub prompt: Option<String>,
    pub excerpts: bool,
}

/// A decision as one event line.
pub(crate) fn decision_line(d: &Decision, cx: EventContext) -> String {
    let matches = d
        .matches
        .iter()
        .map(|m| Match {
            rule: m.rule_id,
            name: &m.name,
            category: m.category,
            location: &m.location,
            score: m.score,
            excerpt: cx.excerpts.then_some(m.excerpt.as_str()),
        })
        .collect();
    let e = DecisionEvent {
        kind: "decision",
        ts: rfc3339(cx.now_ns),
        route: &d.route,
        mode: d.mode,
        principal: d.principal.as_ref(),
        client: cx.client.map(|ip| ip.to_string()),
        action: &d.action,
        stage: d.stage,
        would_deny: d.would_deny.as_ref(),
        score: d.score,
        scores: &d.scores,
        threshold: d.threshold,
        matches,
        matches_truncated: d.matches_truncated,
        cost: d.cost.as_ref(),
        rewrites: &d.rewrites,
        reservation: d.reservation.as_ref().map(|r| r.id().to_string()),
        limits: &d.limits,
        store_error: d.store_error.as_ref(),
        signals: &d.signals,
        inspect_us: (d.inspect_ns.0 > 0).then(|| d.inspect_ns.0 as f64 / 1_000.0),
        prompt: cx.prompt,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
struct Difference {
    prompt_tokens: i64,
    output_tokens: i64,
    micro_usd: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
struct SettlementEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a Principal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    usage: &'a Usage,
    micro_usd: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate: Option<&'a Cost>,
    /// Actual minus estimated (prompt tokens, output tokens against the reservation,
    /// micro-dollars): negative when the estimate was high.
    #[serde(skip_serializing_if = "Option::is_none")]
    difference: Option<Difference>,
    settled: &'static str,
}

fn diff(actual: u64, estimate: u64) -> i64 {
    (i128::from(actual) - i128::from(estimate)).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
        as i64
}

/// A settlement as one event line.
pub(crate) fn settlement_line(
    d: &Decision,
    usage: &Usage,
    micro_usd: u64,
    settled: &'static str,
    now_ns: u64,
) -> String {
    let e = SettlementEvent {
        kind: "settlement",
        ts: rfc3339(now_ns),
        route: &d.route,
        principal: d.principal.as_ref(),
        reservation: d.reservation.as_ref().map(|r| r.id().to_string()),
        model: d.cost.as_ref().and_then(|c| c.model.as_deref()),
        usage,
        micro_usd,
        estimate: d.cost.as_ref(),
        difference: d.cost.as_ref().map(|c| Difference {
            prompt_tokens: diff(usage.prompt_tokens, c.prompt_tokens),
            output_tokens: diff(usage.output_tokens, c.output_tokens_reserved),
            micro_usd: diff(micro_usd, c.micro_usd),
        }),
        settled,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
struct SignalEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    signal: SignalKind,
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a Principal>,
    action: SignalAction,
    value: f64,
    threshold: f64,
    remaining_seconds: u64,
    detail: String,
}

/// A signal that fired, as one event line: which, for whom, what was measured against
/// what threshold, and the action now in force.
pub(crate) fn signal_line(d: &Decision, h: &SignalHit, unit: &str, now_ns: u64) -> String {
    let (v, t) = (h.value.0, h.threshold.0);
    let detail = match h.signal {
        SignalKind::Velocity => {
            format!("{v:.0} {unit} in the window, above {t:.0} (the factor times the baseline)")
        }
        SignalKind::Duplicates => {
            format!("{v:.0} near-duplicate prompts in the window (threshold {t:.0})")
        }
        SignalKind::Refusals => format!(
            "{:.0}% of requests refused (threshold {:.0}%)",
            v * 100.0,
            t * 100.0
        ),
        SignalKind::Logprobs => format!(
            "{:.0}% of requests ask for logprobs (threshold {:.0}%)",
            v * 100.0,
            t * 100.0
        ),
    };
    let e = SignalEvent {
        kind: "signal",
        ts: rfc3339(now_ns),
        signal: h.signal,
        route: &d.route,
        principal: d.principal.as_ref(),
        action: h.action,
        value: v,
        threshold: t,
        remaining_seconds: h.remaining_seconds,
        detail,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

/// Cut `text` to at most `max` bytes on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        // 2026-11-27T12:00:00.250Z
        assert_eq!(
            rfc3339(1_795_780_800_250_000_000),
            "2026-11-27T12:00:00.250Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
