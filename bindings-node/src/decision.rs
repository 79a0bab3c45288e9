//! The decision as a plain JavaScript object.
//!
//! Every part is converted when the decision is returned (JS objects cannot convert
//! lazily without getters, and a plain object is what JS code logs, spreads and
//! serializes). The core decision itself stays behind `handle`, an opaque value (an
//! external, or for the common allowed decision `lib/decision.js`'s handle object with the
//! decision's template and numbers in private fields, see `flat.rs`) the engine's other
//! methods (`settle`, `rewriteBody`, `refusalBody`, `usageTracker`) take it back from, so
//! nothing read from JS is ever trusted as policy.

use std::collections::HashMap;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use edgeward::cost::usage::Provider;

/// The core decision, shared by the JS decision and its reservation.
pub(crate) type Held = Arc<edgeward::Decision>;

/// What the engine decided about a request, and why.
#[napi(object, object_from_js = false)]
pub struct Decision {
    /// Whether the host should forward the request.
    pub allowed: bool,
    /// The HTTP status to refuse with (401, 403, 413, 429, ...); absent when allowed.
    pub status: Option<u32>,
    /// The refusal's stable reason code (`anomaly_score`, `rate_limited`, ...).
    pub reason_code: Option<&'static str>,
    /// The refusal's reason for people.
    pub reason: Option<String>,
    /// The pipeline stage that decided (`identity`, `inspect`, `limits`, ...).
    pub stage: &'static str,
    /// The route's name.
    pub route: String,
    /// The route's mode: `enforce` or `monitor`.
    #[napi(ts_type = "'enforce' | 'monitor'")]
    pub mode: &'static str,
    /// In monitor mode, the reason code enforce mode would have refused with.
    pub would_deny: Option<&'static str>,
    /// The total anomaly score.
    pub score: u32,
    /// The route's anomaly threshold.
    pub threshold: u32,
    /// Anomaly scores by category (only categories that scored).
    pub scores: HashMap<&'static str, u32>,
    /// Seconds after which a refused request may be retried (`Retry-After`).
    pub retry_after: Option<u32>,
    /// Response headers to add (`retry-after`, `ratelimit`, `x-ratelimit-*`, ...), as
    /// `[name, value]` pairs with lowercase names.
    pub headers: Vec<(&'static str, String)>,
    /// The rule matches, in request order.
    pub matches: Vec<Match>,
    /// Whether more matches were found than recorded.
    pub matches_truncated: bool,
    /// The identified caller; absent when anonymous. Never the credential.
    pub principal: Option<Principal>,
    /// The cost estimate, on routes with an inference-API schema.
    pub cost: Option<Cost>,
    /// Parameter changes to apply before forwarding (`engine.rewriteBody` applies them).
    pub rewrites: Vec<Rewrite>,
    /// Every limit the request was charged against (or checked, when refused).
    pub limits: Vec<LimitOutcome>,
    /// Active abuse signals for the caller, in the event JSON's shape; empty in the
    /// common case.
    pub signals: Vec<serde_json::Value>,
    /// A limit store failure, if one happened.
    pub store_error: Option<StoreFailure>,
    /// What was reserved, to settle once the response's usage is known; absent when
    /// nothing needs settling.
    pub reservation: Option<Reservation>,
    /// How long the inspection took, in nanoseconds.
    pub inspect_ns: f64,
    /// The core decision, for the engine's other methods. Opaque: an external value, or
    /// for the common allowed decision an object of `lib/decision.js`; pass it back, never
    /// read or build it. It holds the core decision for as long as it is reachable.
    #[napi(ts_type = "object")]
    pub handle: External<Held>,
}

/// One rule (or parser finding) that matched.
#[napi(object, object_from_js = false)]
pub struct Match {
    /// The rule id (1-999 are parser findings).
    pub rule_id: u32,
    /// The rule's name.
    pub name: String,
    /// Its category (`sql_injection`, `prompt_injection`, ...).
    pub category: &'static str,
    /// The score it added.
    pub score: u32,
    /// Where: `json:/messages/0/content`, `query:id`, `header:user-agent`, ...
    pub location: String,
    /// Start and end of the match in the transformed value.
    pub span: (u32, u32),
    /// A short excerpt around the match.
    pub excerpt: String,
}

/// The identified caller.
#[napi(object, object_from_js = false)]
pub struct Principal {
    /// The principal's id.
    pub id: String,
    /// Its tenant, if known.
    pub tenant: Option<String>,
    /// Its tier, if known.
    pub tier: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// How it was identified (`api_key`, `jwt`, `host`, `trusted_header`).
    pub source: String,
}

/// What an inference request will cost, known before inference starts.
#[napi(object, object_from_js = false)]
pub struct Cost {
    /// The model-table row that priced it, if one did.
    pub model: Option<String>,
    /// Prompt tokens (estimated, or exact when `exact`).
    pub prompt_tokens: f64,
    /// Lower bound of the estimate.
    pub prompt_tokens_low: f64,
    /// Upper bound of the estimate.
    pub prompt_tokens_high: f64,
    /// Output tokens reserved (maximum output times `n`).
    pub output_tokens_reserved: f64,
    /// Prompt plus reserved output, in micro-dollars.
    pub micro_usd: f64,
    /// Whether `promptTokens` was counted exactly.
    pub exact: bool,
    /// The response format to expect (`openai_chat`, `anthropic`, ...), if known.
    pub provider: Option<&'static str>,
}

/// A parameter change to apply before forwarding.
#[napi(object, object_from_js = false)]
pub struct Rewrite {
    /// The parameter's name in the API (`max_tokens`, `logprobs`, ...).
    pub param: &'static str,
    /// `set`, `set_false`, `set_true` or `remove`.
    #[napi(ts_type = "'set' | 'set_false' | 'set_true' | 'remove'")]
    pub action: &'static str,
    /// The value for `set`.
    pub value: Option<f64>,
}

/// A limit the request was charged against (or checked, when refused).
#[napi(object, object_from_js = false)]
pub struct LimitOutcome {
    /// The limit's name.
    pub name: String,
    /// What it counts (`requests`, `totalTokens`, `microUsd`, ...).
    pub unit: String,
    /// Its limit (per period, per window, or in flight).
    pub limit: f64,
    /// What is left after this request.
    pub remaining: f64,
    /// Seconds until it is fully available again.
    pub reset_seconds: f64,
    /// Whether this limit alone would refuse the request.
    pub exceeded: bool,
    /// Seconds after which it would admit the request, when it refuses.
    pub retry_after_seconds: Option<f64>,
    /// Reported only.
    pub shadow: bool,
}

/// A limit store failure and what the policy made of it.
#[napi(object, object_from_js = false)]
pub struct StoreFailure {
    /// The store error's stable code (`store.unavailable`, ...).
    pub code: &'static str,
    /// Whether the request went through anyway (`onStoreError: open`).
    pub failed_open: bool,
}

/// What a request reserved on its limits; settle it (or its decision) with
/// `engine.settle` once the response's usage is known.
#[napi(object, object_from_js = false)]
pub struct Reservation {
    /// The id the limit store knows it by (32 hex digits).
    pub id: String,
    /// The decision it belongs to. Opaque.
    #[napi(ts_type = "ExternalObject<'edgeward.Decision'>")]
    pub handle: External<Held>,
}

/// A serde enum's name (`snake_case` or `camelCase` as the core serializes it).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Counts above 2^53 lose precision as JS numbers; none of ours come near.
fn num(v: u64) -> f64 {
    v as f64
}

impl Decision {
    /// The JS form of a core decision.
    pub(crate) fn from_core(d: edgeward::Decision) -> Decision {
        Decision::from_held(Arc::new(d))
    }

    fn from_held(d: Held) -> Decision {
        let mut out = Decision::parts(&d);
        out.reservation = d.reservation.as_ref().map(|r| Reservation {
            id: r.id().to_string(),
            handle: External::new(d.clone()),
        });
        out.handle = External::new(d);
        out
    }

    /// Every part but the handles (`reservation` and `handle` are placeholders).
    fn parts(d: &Held) -> Decision {
        let scores = edgeward::Category::ALL
            .iter()
            .filter_map(|&c| {
                let s = d.scores.get(c);
                (s > 0).then(|| (c.as_str(), s))
            })
            .collect();
        Decision {
            allowed: d.is_allowed(),
            status: d.status().map(u32::from),
            reason_code: d.reason().map(|r| r.code()),
            reason: d.reason().map(|r| r.to_string()),
            stage: d.stage.as_str(),
            route: d.route.to_string(),
            mode: match d.mode {
                edgeward::Mode::Monitor => "monitor",
                _ => "enforce",
            },
            would_deny: d.would_deny.as_ref().map(|r| r.code()),
            score: d.score,
            threshold: d.threshold,
            scores,
            retry_after: d
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.parse().ok()),
            headers: d.headers.clone(),
            matches: d
                .matches
                .iter()
                .map(|m| Match {
                    rule_id: m.rule_id,
                    name: m.name.to_string(),
                    category: m.category.as_str(),
                    score: m.score,
                    location: m.location.clone(),
                    span: m.span,
                    excerpt: m.excerpt.clone(),
                })
                .collect(),
            matches_truncated: d.matches_truncated,
            principal: d.principal.as_ref().map(|p| Principal {
                id: p.id.to_string(),
                tenant: p.tenant.as_deref().map(str::to_string),
                tier: p.tier.as_deref().map(str::to_string),
                tags: p.tags.iter().map(|t| t.to_string()).collect(),
                source: name_of(&p.source),
            }),
            cost: d.cost.as_ref().map(|c| Cost {
                model: c.model.as_deref().map(str::to_string),
                prompt_tokens: num(c.prompt_tokens),
                prompt_tokens_low: num(c.prompt_tokens_low),
                prompt_tokens_high: num(c.prompt_tokens_high),
                output_tokens_reserved: num(c.output_tokens_reserved),
                micro_usd: num(c.micro_usd),
                exact: c.exact,
                provider: c.provider.map(Provider::as_str),
            }),
            rewrites: d
                .rewrites
                .iter()
                .map(|r| Rewrite {
                    param: r.param,
                    action: r.action.as_str(),
                    value: r.action.value().map(num),
                })
                .collect(),
            limits: d
                .limits
                .iter()
                .map(|l| LimitOutcome {
                    name: l.name.to_string(),
                    unit: name_of(&l.unit),
                    limit: num(l.limit),
                    remaining: num(l.remaining),
                    reset_seconds: num(l.reset_seconds),
                    exceeded: l.exceeded,
                    retry_after_seconds: l.retry_after_seconds.map(num),
                    shadow: l.shadow,
                })
                .collect(),
            signals: d
                .signals
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect(),
            store_error: d.store_error.as_ref().map(|s| StoreFailure {
                code: s.code,
                failed_open: s.failed_open,
            }),
            reservation: None,
            inspect_ns: num(d.inspect_ns.0),
            handle: External::new(Arc::clone(d)),
        }
    }
}

/// A decision as `lib/decision.js` rebuilds it, for `_inspect` (requests the flat lane of
/// `flat.rs` does not take) and `_inspectAsync` (the pool's answer has no shared array to
/// write to): for the common allowed request, one array of scalars with its template's
/// index (no property names to create and look up per field, which is most of what a plain
/// object costs through N-API); any other decision as the full object.
pub struct Compact(Held);

/// The array's slots; `lib/decision.js` reads the same numbers.
const SLOTS: u32 = 16;

/// Sets element `i` of `arr` to `v`.
///
/// # Safety
///
/// `env` must be the environment of the current N-API call (on the JS thread) and `arr` an
/// array created in it.
unsafe fn put<T: ToNapiValue>(
    env: napi::sys::napi_env,
    arr: napi::sys::napi_value,
    i: u32,
    v: T,
) -> Result<()> {
    // SAFETY: `env` and `arr` are live in the current call (this function's contract).
    let v = unsafe { T::to_napi_value(env, v)? };
    // SAFETY: as above; `v` was just created in the same environment.
    check_status!(unsafe { napi::sys::napi_set_element(env, arr, i, v) })
}

impl Compact {
    /// The compact form of a core decision.
    pub(crate) fn new(d: edgeward::Decision) -> Compact {
        Compact(Arc::new(d))
    }

    /// Whether the decision has only the parts the array carries (an allowed request
    /// that scored nothing, charged no limit and needs nothing settled or rewritten).
    pub(crate) fn common(d: &edgeward::Decision) -> bool {
        d.is_allowed()
            && d.would_deny.is_none()
            && edgeward::Category::ALL
                .iter()
                .all(|&c| d.scores.get(c) == 0)
            && d.headers.is_empty()
            && d.matches.is_empty()
            && !d.matches_truncated
            && d.principal.is_none()
            && d.rewrites.is_empty()
            && d.limits.is_empty()
            && d.signals.is_empty()
            && d.store_error.is_none()
            && d.reservation.is_none()
    }
}

impl ToNapiValue for Compact {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> Result<napi::sys::napi_value> {
        let d = val.0;
        let Some(template) = Compact::common(&d)
            .then(|| crate::flat::template_of(&d))
            .flatten()
        else {
            // SAFETY: `env` is the environment napi-rs called this conversion with.
            return unsafe { Decision::to_napi_value(env, Decision::from_held(d)) };
        };
        let mut arr = std::ptr::null_mut();
        // SAFETY: `env` is live (as above) and `arr` a valid out-pointer.
        check_status!(unsafe {
            napi::sys::napi_create_array_with_length(env, SLOTS as usize, &mut arr)
        })?;
        // SAFETY: `env` is live and `arr` was created in it just above.
        unsafe {
            put(env, arr, 0, d.is_allowed())?;
            put(env, arr, 1, d.stage.as_str())?;
            put(env, arr, 2, &*d.route)?;
            put(env, arr, 3, matches!(d.mode, edgeward::Mode::Monitor))?;
            put(env, arr, 4, d.score)?;
            put(env, arr, 5, d.threshold)?;
            put(env, arr, 6, num(d.inspect_ns.0))?;
            if let Some(c) = &d.cost {
                put(env, arr, 8, c.model.as_deref())?;
                put(env, arr, 9, num(c.prompt_tokens))?;
                put(env, arr, 10, num(c.prompt_tokens_low))?;
                put(env, arr, 11, num(c.prompt_tokens_high))?;
                put(env, arr, 12, num(c.output_tokens_reserved))?;
                put(env, arr, 13, num(c.micro_usd))?;
                put(env, arr, 14, c.exact)?;
                put(env, arr, 15, c.provider.map(Provider::as_str))?;
            }
            // The template: `lib/decision.js` makes the handle of it and the numbers.
            put(env, arr, 7, template)?;
        }
        Ok(arr)
    }
}

impl TypeName for Compact {
    fn type_name() -> &'static str {
        "Array"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}
