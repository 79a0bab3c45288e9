//! The decision and its parts, as read-only Python objects.
//!
//! A `Decision` owns the core decision and converts a part only when it is read, so the
//! common path (is it allowed?) costs one attribute lookup and no conversions.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use edgeward::cost::usage::Provider;

/// What the engine decided about a request, and why.
#[pyclass(frozen, module = "edgeward._native", name = "Decision")]
pub(crate) struct PyDecision {
    pub(crate) d: edgeward::Decision,
}

/// One rule (or parser finding) that matched.
#[pyclass(frozen, get_all, module = "edgeward._native", name = "Match")]
pub(crate) struct PyMatch {
    /// The rule id (1-999 are parser findings).
    rule_id: u32,
    /// The rule's name.
    name: String,
    /// Its category (`sql_injection`, `prompt_injection`, ...).
    category: &'static str,
    /// The score it added.
    score: u32,
    /// Where: `json:/messages/0/content`, `query:id`, `header:user-agent`, ...
    location: String,
    /// Start and end of the match in the transformed value.
    span: (u32, u32),
    /// A short excerpt around the match.
    excerpt: String,
}

#[pymethods]
impl PyMatch {
    fn __repr__(&self) -> String {
        format!(
            "Match(rule_id={}, category={:?}, location={:?})",
            self.rule_id, self.category, self.location
        )
    }
}

/// What an inference request will cost, known before inference starts.
#[pyclass(frozen, get_all, module = "edgeward._native", name = "Cost")]
pub(crate) struct PyCost {
    /// The model-table row that priced it, if one did.
    model: Option<String>,
    /// Prompt tokens (estimated, or exact when `exact`).
    prompt_tokens: u64,
    /// Lower bound of the estimate.
    prompt_tokens_low: u64,
    /// Upper bound of the estimate.
    prompt_tokens_high: u64,
    /// Output tokens reserved (maximum output times `n`).
    output_tokens_reserved: u64,
    /// Prompt plus reserved output, in micro-dollars.
    micro_usd: u64,
    /// Whether `prompt_tokens` was counted exactly.
    exact: bool,
    /// The response format to expect (`openai_chat`, `anthropic`, ...), if known.
    provider: Option<&'static str>,
}

#[pymethods]
impl PyCost {
    fn __repr__(&self) -> String {
        format!(
            "Cost(prompt_tokens={}, output_tokens_reserved={}, micro_usd={})",
            self.prompt_tokens, self.output_tokens_reserved, self.micro_usd
        )
    }
}

/// A parameter change to apply before forwarding (`Engine.rewrite_body` applies them).
#[pyclass(frozen, get_all, module = "edgeward._native", name = "Rewrite")]
pub(crate) struct PyRewrite {
    /// The parameter's name in the API (`max_tokens`, `logprobs`, ...).
    param: &'static str,
    /// `"set"`, `"set_false"`, `"set_true"` or `"remove"`.
    action: &'static str,
    /// The value for `"set"`, else None.
    value: Option<u64>,
}

#[pymethods]
impl PyRewrite {
    fn __repr__(&self) -> String {
        let value = self.value.map_or("None".to_string(), |v| v.to_string());
        format!(
            "Rewrite(param={:?}, action={:?}, value={value})",
            self.param, self.action
        )
    }
}

/// What a request reserved on its limits; settle it with `Engine.settle` once the
/// response's usage is known.
#[pyclass(frozen, module = "edgeward._native", name = "Reservation")]
pub(crate) struct PyReservation {
    pub(crate) r: edgeward::decision::Reservation,
    /// The response format of the decision's route, to read usage from a body.
    pub(crate) provider: Option<Provider>,
}

#[pymethods]
impl PyReservation {
    /// The id the limit store knows it by (32 hex digits).
    #[getter]
    fn id(&self) -> String {
        self.r.id().to_string()
    }

    fn __repr__(&self) -> String {
        format!("Reservation(id={:?})", self.r.id().to_string())
    }
}

/// A JSON value as plain Python objects (for the decision's less used, nested parts).
fn to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(0.0).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

fn serialized<'py, T: serde::Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    to_py(
        py,
        &serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
    )
}

#[pymethods]
impl PyDecision {
    /// Whether the host should forward the request.
    #[getter]
    fn allowed(&self) -> bool {
        self.d.is_allowed()
    }

    /// The HTTP status to refuse with (401, 403, 413, 429, ...); None when allowed.
    #[getter]
    fn status(&self) -> Option<u16> {
        self.d.status()
    }

    /// The refusal's stable reason code (`anomaly_score`, `rate_limited`, ...); None
    /// when allowed.
    #[getter]
    fn reason_code(&self) -> Option<&'static str> {
        self.d.reason().map(|r| r.code())
    }

    /// The refusal's reason for people; None when allowed.
    #[getter]
    fn reason(&self) -> Option<String> {
        self.d.reason().map(|r| r.to_string())
    }

    /// The pipeline stage that decided (`identity`, `inspect`, `limits`, ...).
    #[getter]
    fn stage(&self) -> &'static str {
        self.d.stage.as_str()
    }

    /// The route's name.
    #[getter]
    fn route(&self) -> &str {
        &self.d.route
    }

    /// The route's mode: `"enforce"` or `"monitor"`.
    #[getter]
    fn mode(&self) -> &'static str {
        match self.d.mode {
            edgeward::Mode::Monitor => "monitor",
            _ => "enforce",
        }
    }

    /// In monitor mode, the reason code enforce mode would have refused with.
    #[getter]
    fn would_deny(&self) -> Option<&'static str> {
        self.d.would_deny.as_ref().map(|r| r.code())
    }

    /// The total anomaly score.
    #[getter]
    fn score(&self) -> u32 {
        self.d.score
    }

    /// The route's anomaly threshold.
    #[getter]
    fn threshold(&self) -> u32 {
        self.d.threshold
    }

    /// Anomaly scores by category (only categories that scored).
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        serialized(py, &self.d.scores)
    }

    /// Seconds after which a refused request may be retried (`Retry-After`); None when
    /// the decision gives none.
    #[getter]
    fn retry_after(&self) -> Option<u64> {
        self.d
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, v)| v.parse().ok())
    }

    /// Response headers to add (`retry-after`, `ratelimit`, `x-ratelimit-*`, ...), names
    /// in lowercase.
    #[getter]
    fn headers(&self) -> Vec<(&'static str, String)> {
        self.d.headers.clone()
    }

    /// The rule matches, in request order.
    #[getter]
    fn matches(&self) -> Vec<PyMatch> {
        self.d
            .matches
            .iter()
            .map(|m| PyMatch {
                rule_id: m.rule_id,
                name: m.name.to_string(),
                category: m.category.as_str(),
                score: m.score,
                location: m.location.clone(),
                span: m.span,
                excerpt: m.excerpt.clone(),
            })
            .collect()
    }

    /// Whether more matches were found than recorded.
    #[getter]
    fn matches_truncated(&self) -> bool {
        self.d.matches_truncated
    }

    /// Whether a rule with this id matched.
    fn matched(&self, rule_id: u32) -> bool {
        self.d.matched(rule_id)
    }

    /// The identified caller (`id`, `tenant`, `tier`, `tags`, `source`); None when
    /// anonymous. Never the credential.
    #[getter]
    fn principal<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.d.principal {
            Some(p) => serialized(py, p),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// The cost estimate, on routes with an inference-API schema.
    #[getter]
    fn cost(&self) -> Option<PyCost> {
        self.d.cost.as_ref().map(|c| PyCost {
            model: c.model.as_deref().map(str::to_string),
            prompt_tokens: c.prompt_tokens,
            prompt_tokens_low: c.prompt_tokens_low,
            prompt_tokens_high: c.prompt_tokens_high,
            output_tokens_reserved: c.output_tokens_reserved,
            micro_usd: c.micro_usd,
            exact: c.exact,
            provider: c.provider.map(Provider::as_str),
        })
    }

    /// Parameter changes to apply before forwarding (clamped `max_tokens`, stripped
    /// parameters); empty in the common case.
    #[getter]
    fn rewrites(&self) -> Vec<PyRewrite> {
        self.d
            .rewrites
            .iter()
            .map(|r| PyRewrite {
                param: r.param,
                action: r.action.as_str(),
                value: r.action.value(),
            })
            .collect()
    }

    /// Every limit the request was charged against (or checked, when refused): dicts
    /// with `name`, `unit`, `limit`, `remaining`, `reset_seconds`, ...
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        serialized(py, &self.d.limits)
    }

    /// Active abuse signals for the caller, as dicts; empty in the common case.
    #[getter]
    fn signals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        serialized(py, &self.d.signals)
    }

    /// A limit store failure (`code`, `failed_open`), if one happened.
    #[getter]
    fn store_error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.d.store_error {
            Some(s) => serialized(py, s),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// What was reserved, to settle once the response's usage is known; None when
    /// nothing needs settling.
    #[getter]
    fn reservation(&self) -> Option<PyReservation> {
        self.d.reservation.as_ref().map(|r| PyReservation {
            r: r.clone(),
            provider: self.d.cost.as_ref().and_then(|c| c.provider),
        })
    }

    /// How long the inspection took, in nanoseconds.
    #[getter]
    fn inspect_ns(&self) -> u64 {
        self.d.inspect_ns.0
    }

    /// The stable JSON form, for audit logs.
    fn to_json(&self) -> String {
        self.d.to_json()
    }

    fn __repr__(&self) -> String {
        match self.d.reason() {
            None => format!("Decision(allowed=True, route={:?})", &*self.d.route),
            Some(r) => format!(
                "Decision(allowed=False, status={}, reason_code={:?}, stage={:?})",
                self.d.status().unwrap_or(0),
                r.code(),
                self.d.stage.as_str()
            ),
        }
    }
}
