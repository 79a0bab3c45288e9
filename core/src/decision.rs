//! The decision: what the host should do and why, in a stable JSON form for audit logs.

use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::policy::Mode;
use crate::rules::Category;

/// Which pipeline stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Route selection.
    Route,
    /// Who is calling (API key, JWT, trusted header, host identity).
    Identity,
    /// The route's access rules.
    Access,
    /// Size limits, checked before any parsing.
    Size,
    /// Content inspection (rules, parser findings, anomaly scores).
    Inspect,
    /// The parameter policy (model, output limit, `n`, logprobs, streaming, tools,
    /// messages).
    Params,
    /// The cost stage: prompt tokens against the route's cap.
    Cost,
    /// Rate limits, budgets and concurrency.
    Limits,
    /// Abuse signals with a `deny` action.
    Signals,
}

impl Stage {
    /// The stage's name, as it appears in the decision JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Route => "route",
            Stage::Identity => "identity",
            Stage::Access => "access",
            Stage::Size => "size",
            Stage::Inspect => "inspect",
            Stage::Params => "params",
            Stage::Cost => "cost",
            Stage::Limits => "limits",
            Stage::Signals => "signals",
        }
    }
}

/// Why a request was denied. Each variant has a stable [`code`](Reason::code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The route needs an identified caller and the request has no credentials.
    Unauthenticated,
    /// Credentials were presented and refused.
    InvalidCredentials {
        /// Why: `unknown_key`, `malformed_token`, `bad_signature`, `expired`,
        /// `not_yet_valid`, `wrong_issuer`, `wrong_audience`, `unknown_key_id`,
        /// `algorithm_not_allowed` or `missing_claim`.
        why: &'static str,
    },
    /// The caller is identified but the route's access rules do not admit it.
    AccessDenied,
    /// A rate limit, budget or concurrency limit refuses the request.
    RateLimited {
        /// The limit's name.
        limit: Arc<str>,
        /// Seconds after which the request would fit; absent when it never can (larger
        /// than the limit).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_seconds: Option<u64>,
    },
    /// A limit's store failed and the limit fails closed.
    LimitStoreUnavailable {
        /// The limit's name.
        limit: Arc<str>,
    },
    /// The body is larger than the route allows.
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// More headers than the route allows.
    TooManyHeaders {
        /// The configured limit.
        limit: u32,
    },
    /// One header is larger than the route allows.
    HeaderTooLarge {
        /// The configured limit.
        limit: u32,
    },
    /// Path and query are longer than the route allows.
    UriTooLarge {
        /// The configured limit.
        limit: u32,
    },
    /// A request parameter is not allowed on the route, or malformed.
    ParameterRejected {
        /// The parameter's name in the API (`max_tokens`, `n`, `logprobs`, ...).
        param: &'static str,
        /// Why: `above_limit`, `not_allowed` or `invalid`.
        why: &'static str,
        /// The route's limit, for `above_limit`.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// The requested model is not in the route's allowlist.
    ModelNotAllowed {
        /// The model the request named (empty when it named none).
        model: String,
    },
    /// The prompt has more tokens than the route allows.
    PromptTooLong {
        /// The prompt's tokens (the point estimate when not counted exactly).
        tokens: u64,
        /// The route's limit.
        limit: u64,
        /// Whether `tokens` is an exact count.
        exact: bool,
    },
    /// An abuse signal with a `deny` action is active for the caller.
    AbuseSignal {
        /// The signal.
        signal: crate::signals::SignalKind,
        /// Seconds until its cooldown ends (unless it holds again).
        retry_after_seconds: u64,
    },
    /// The anomaly score reached the threshold.
    AnomalyScore {
        /// The category contributing most.
        category: Category,
        /// The total score (or the category's, for a category threshold).
        score: u32,
        /// The threshold reached.
        threshold: u32,
    },
}

impl Reason {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::InvalidCredentials { .. } => "invalid_credentials",
            Reason::AccessDenied => "access_denied",
            Reason::RateLimited { .. } => "rate_limited",
            Reason::LimitStoreUnavailable { .. } => "limit_store_unavailable",
            Reason::BodyTooLarge { .. } => "body_too_large",
            Reason::TooManyHeaders { .. } => "too_many_headers",
            Reason::HeaderTooLarge { .. } => "header_too_large",
            Reason::UriTooLarge { .. } => "uri_too_large",
            Reason::ParameterRejected { .. } => "parameter_rejected",
            Reason::ModelNotAllowed { .. } => "model_not_allowed",
            Reason::PromptTooLong { .. } => "prompt_too_long",
            Reason::AbuseSignal { .. } => "abuse_signal",
            Reason::AnomalyScore { .. } => "anomaly_score",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unauthenticated => write!(f, "credentials required"),
            Reason::InvalidCredentials { why } => write!(f, "invalid credentials ({why})"),
            Reason::AccessDenied => write!(f, "the caller may not use this route"),
            Reason::RateLimited {
                limit,
                retry_after_seconds,
            } => match retry_after_seconds {
                Some(s) => write!(f, "limit {limit:?} reached; retry after {s} s"),
                None => write!(f, "request larger than limit {limit:?} allows"),
            },
            Reason::LimitStoreUnavailable { limit } => {
                write!(f, "limit {limit:?} cannot be checked (store unavailable)")
            }
            Reason::BodyTooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Reason::TooManyHeaders { limit } => write!(f, "more than {limit} headers"),
            Reason::HeaderTooLarge { limit } => write!(f, "a header larger than {limit} bytes"),
            Reason::UriTooLarge { limit } => write!(f, "URI longer than {limit} bytes"),
            Reason::ParameterRejected { param, why, limit } => match (why, limit) {
                (&"above_limit", Some(l)) => write!(f, "`{param}` above the limit of {l}"),
                (&"invalid", _) => write!(f, "`{param}` has an invalid value"),
                _ => write!(f, "`{param}` is not allowed on this route"),
            },
            Reason::AbuseSignal {
                signal,
                retry_after_seconds,
            } => write!(
                f,
                "abuse signal {:?}; retry after {retry_after_seconds} s",
                signal.name()
            ),
            Reason::ModelNotAllowed { model } => {
                write!(f, "model {model:?} is not allowed on this route")
            }
            Reason::PromptTooLong {
                tokens,
                limit,
                exact,
            } => write!(
                f,
                "prompt of {}{tokens} tokens is above the limit of {limit}",
                if *exact { "" } else { "at least " }
            ),
            Reason::AnomalyScore {
                category,
                score,
                threshold,
            } => write!(
                f,
                "{} detected (score {score} >= {threshold})",
                category.as_str()
            ),
        }
    }
}

/// What the host should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Forward the request.
    Allow,
    /// Refuse it with this status.
    Deny {
        /// HTTP status to send.
        status: u16,
        /// Why.
        reason: Reason,
    },
}

/// One rule (or parser finding) that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    /// The rule id (1–999 are parser findings).
    pub rule_id: u32,
    /// The rule's name.
    pub name: Arc<str>,
    /// Its category.
    pub category: Category,
    /// Score added (0 if this rule already scored on another field).
    pub score: u32,
    /// Where: `json:/messages/0/content`, `query:id`, `header:user-agent`, `path`, `body`.
    pub location: String,
    /// Span of the match in the transformed value.
    pub span: (u32, u32),
    /// A short excerpt around the match (lossy UTF-8, at most 80 bytes of the value).
    pub excerpt: String,
}

/// Anomaly scores per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scores(pub [u32; Category::COUNT]);

impl Scores {
    /// The score of one category.
    pub fn get(&self, c: Category) -> u32 {
        self.0[c as usize]
    }

    /// The sum over categories.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// The category with the highest score, if any scored.
    pub fn top(&self) -> Option<Category> {
        let (i, s) = self
            .0
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (**s, usize::MAX - *i))?;
        (*s > 0).then(|| Category::ALL[i])
    }
}

impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.iter().filter(|v| **v > 0).count();
        let mut m = s.serialize_map(Some(n))?;
        for c in Category::ALL {
            if self.0[c as usize] > 0 {
                m.serialize_entry(c.as_str(), &self.0[c as usize])?;
            }
        }
        m.end()
    }
}

/// What a request will cost, known before inference starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// The model-table row that priced it (its first glob), if any matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Arc<str>>,
    /// Prompt tokens: text of every message, tool definitions, images and chat overhead.
    pub prompt_tokens: u64,
    /// Bounds of `prompt_tokens` when estimated (equal to it when exact).
    pub prompt_tokens_low: u64,
    /// See `prompt_tokens_low`.
    pub prompt_tokens_high: u64,
    /// Output tokens reserved: the output limit (after clamping) times `n`, or the route's
    /// default output reservation when the request sets no limit.
    pub output_tokens_reserved: u64,
    /// Prompt plus reserved output, priced by the model table, in micro-dollars (rounded
    /// up).
    pub micro_usd: u64,
    /// Whether `prompt_tokens` was counted exactly (tiktoken) rather than estimated.
    pub exact: bool,
    /// The response format to expect, for [`crate::Engine::usage_tracker`] and
    /// [`crate::Engine::usage_from_body`] (none on custom-server routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::cost::usage::Provider>,
}

/// A change the host must make to the request before forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// The parameter's name in the API.
    pub param: &'static str,
    /// What to do with it.
    #[serde(flatten)]
    pub action: RewriteAction,
}

/// See [`Rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewriteAction {
    /// Set it to this number (a clamped output limit).
    Set(u64),
    /// Set it to `false` (streaming forced off).
    SetFalse,
    /// Set it to `true` (`stream_options.include_usage` forced on).
    SetTrue,
    /// Remove it.
    Remove,
}

impl RewriteAction {
    /// The action's name, as bindings show it: `set`, `set_false`, `set_true`, `remove`.
    pub fn as_str(self) -> &'static str {
        match self {
            RewriteAction::Set(_) => "set",
            RewriteAction::SetFalse => "set_false",
            RewriteAction::SetTrue => "set_true",
            RewriteAction::Remove => "remove",
        }
    }

    /// The number a `Set` sets; `None` for the other actions.
    pub fn value(self) -> Option<u64> {
        match self {
            RewriteAction::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// How long something took, in nanoseconds.
///
/// Every `Elapsed` equals every other: timing is not part of what was decided, so two
/// decisions of the same request compare equal however long each took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Elapsed(pub u64);

impl PartialEq for Elapsed {
    fn eq(&self, _: &Elapsed) -> bool {
        true
    }
}

impl Eq for Elapsed {}

/// The outcome of [`crate::Engine::inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    #[serde(flatten)]
    pub action: Action,
    /// The stage that decided (for an allow: the last stage run).
    pub stage: Stage,
    /// The route name.
    pub route: Arc<str>,
    /// The route's mode.
    pub mode: Mode,
    /// In monitor mode: what enforce mode would have done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<Reason>,
    /// Total anomaly score.
    pub score: u32,
    /// Scores per category.
    pub scores: Scores,
    /// The route's threshold.
    pub threshold: u32,
    /// Matches, in request order (bounded; see `matches_truncated`).
    pub matches: Vec<RuleMatch>,
    /// Whether more matches were found than recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub matches_truncated: bool,
    /// The identified caller; `None` for an anonymous request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<crate::identity::Principal>,
    /// The cost estimate, on routes with an inference-API schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Parameter changes the host must apply before forwarding (clamped output limit,
    /// stripped parameters); empty in the common case.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<Rewrite>,
    /// Every limit the request was charged against (or checked, when refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<crate::limits::stage::LimitOutcome>,
    /// Response headers for the host to add: `Retry-After` on a refusal, and the IETF
    /// `RateLimit` / `RateLimit-Policy` and `X-RateLimit-*` fields of the most constrained
    /// limit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(&'static str, String)>,
    /// What was reserved, to settle with [`crate::Engine::settle`] once the response's
    /// usage is known; `None` when nothing needs settling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    /// A limit store failure and what the policy made of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<StoreFailure>,
    /// Abuse signals active for the principal (see [`crate::signals`]); empty in the
    /// common case.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<crate::signals::SignalHit>,
    /// How long `inspect` took (for events and the latency metrics; not in
    /// [`to_json`](Decision::to_json), which stays the same for the same request).
    #[serde(skip)]
    pub inspect_ns: Elapsed,
}

/// A reservation on the limits a request was charged against, settled later with the
/// response's usage. Opaque apart from its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    #[serde(serialize_with = "hex_id")]
    pub(crate) id: crate::limits::ReservationId,
    /// The unit of each charge, in acquire order, and how many times it counts (a
    /// tightened principal's rate charges count the `tighten` factor times).
    #[serde(skip)]
    pub(crate) units: Vec<(crate::limits::Unit, u64)>,
    /// The model-table row the cost was priced with (its name).
    #[serde(skip)]
    pub(crate) model: Option<Arc<str>>,
}

impl Reservation {
    /// The id the store knows the reservation by.
    pub fn id(&self) -> crate::limits::ReservationId {
        self.id
    }
}

fn hex_id<S: serde::Serializer>(
    id: &crate::limits::ReservationId,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// A limit store failure recorded in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreFailure {
    /// The store error's stable code (`store.unavailable`, `store.timeout`, ...).
    pub code: &'static str,
    /// Whether the request went through anyway (`onStoreError: open`).
    pub failed_open: bool,
}

impl Decision {
    /// Whether the host should forward the request.
    pub fn is_allowed(&self) -> bool {
        matches!(self.action, Action::Allow)
    }

    /// The HTTP status for a denial.
    pub fn status(&self) -> Option<u16> {
        match &self.action {
            Action::Deny { status, .. } => Some(*status),
            Action::Allow => None,
        }
    }

    /// The denial reason.
    pub fn reason(&self) -> Option<&Reason> {
        match &self.action {
            Action::Deny { reason, .. } => Some(reason),
            Action::Allow => None,
        }
    }

    /// Whether a rule with this id matched.
    pub fn matched(&self, rule_id: u32) -> bool {
        self.matches.iter().any(|m| m.rule_id == rule_id)
    }

    /// The stable JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
