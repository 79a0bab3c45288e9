//! `Engine`: build from a policy or bundle, inspect, answer, rewrite and settle.

use std::borrow::Cow;
use std::net::IpAddr;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMapping, PyString, PyTuple};

use crate::decision::{PyDecision, PyReservation};
use crate::errors::Fail;
use crate::usage::{usage_from_mapping, PyUsage, PyUsageTracker};

/// The compiled policy. Immutable and thread-safe: build one at start-up and share it
/// between threads and requests.
#[pyclass(frozen, module = "edgeward._native", name = "Engine")]
pub(crate) struct PyEngine {
    engine: edgeward::Engine,
}

/// Bytes borrowed from a Python `bytes`, or owned (encoded from `str`, copied from a
/// `bytearray`, whose contents may change while the GIL is released).
enum Data<'py> {
    Borrowed(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
    Text(Cow<'py, str>),
}

impl Data<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Borrowed(b) => b.as_bytes(),
            Data::Owned(v) => v,
            Data::Text(s) => s.as_bytes(),
        }
    }
}

fn data<'py>(v: &Bound<'py, PyAny>, what: &str) -> PyResult<Data<'py>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Data::Borrowed(b.clone()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Data::Text(Cow::Owned(s.to_cow()?.into_owned())));
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(Data::Owned(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes or str, not {}",
        v.get_type().name()?
    )))
}

/// The request's headers as (name, value) data: from a mapping (`dict`, Starlette's
/// `Headers`, anything with `items()`) or an iterable of pairs (ASGI's `scope["headers"]`).
fn header_data<'py>(h: &Bound<'py, PyAny>) -> PyResult<Vec<(Data<'py>, Data<'py>)>> {
    let mut out = Vec::new();
    if h.is_none() {
        return Ok(out);
    }
    // Lists and tuples first: the common case (ASGI's headers) skips the Mapping check,
    // an `isinstance` against an abstract class.
    let pairs = if h.is_instance_of::<PyList>() || h.is_instance_of::<PyTuple>() {
        h.clone()
    } else if let Ok(d) = h.cast::<PyDict>() {
        d.items().into_any()
    } else if let Ok(m) = h.cast::<PyMapping>() {
        m.items()?.into_any()
    } else if h.is_instance_of::<PyString>() || h.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "headers must be a mapping or an iterable of (name, value) pairs",
        ));
    } else {
        h.clone()
    };
    for pair in pairs.try_iter()? {
        let pair = pair?;
        let n = pair.len().unwrap_or(0);
        if n != 2 {
            return Err(PyTypeError::new_err(
                "each header must be a (name, value) pair",
            ));
        }
        out.push((
            data(&pair.get_item(0)?, "header name")?,
            data(&pair.get_item(1)?, "header value")?,
        ));
    }
    Ok(out)
}

fn ip(v: Option<&str>, what: &str) -> Result<Option<IpAddr>, Fail> {
    match v {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Fail::argument(format!("{what} {s:?} is not an IP address"))),
    }
}

/// The usage a settle call was given: usage, a dict of it, or a response body.
fn usage_arg(
    usage: &Bound<'_, PyAny>,
    provider: Option<edgeward::cost::usage::Provider>,
) -> PyResult<edgeward::Usage> {
    if let Ok(u) = usage.cast::<PyUsage>() {
        return Ok(u.get().u);
    }
    if let Ok(m) = usage.cast::<PyMapping>() {
        return usage_from_mapping(m);
    }
    if usage.is_instance_of::<PyBytes>()
        || usage.is_instance_of::<PyByteArray>()
        || usage.is_instance_of::<PyString>()
    {
        let body = data(usage, "body")?;
        let p = provider
            .ok_or_else(|| Fail::not_found("the decision's route serves no known usage format"))?;
        return Ok(edgeward::cost::usage::usage_from_body(p, body.bytes()).map_err(Fail::from)?);
    }
    Err(PyTypeError::new_err(format!(
        "usage must be a Usage, a dict or a response body (bytes), not {}",
        usage.get_type().name()?
    )))
}

#[pymethods]
impl PyEngine {
    /// An engine from a policy: a path to a YAML or JSON file (rule and key files it names
    /// are read relative to it), or the policy text itself.
    #[staticmethod]
    fn from_policy(py: Python<'_>, path_or_text: &Bound<'_, PyAny>) -> PyResult<PyEngine> {
        // A path-like object is always a path; a string is one when such a file exists
        // (policy text has newlines and braces no file name has).
        let (text, is_path) = if let Ok(s) = path_or_text.cast::<PyString>() {
            let s = s.to_cow()?.into_owned();
            let is_path = !s.contains('\n') && std::path::Path::new(&s).is_file();
            (s, is_path)
        } else if path_or_text.hasattr("__fspath__")? {
            let p = path_or_text.call_method0("__fspath__")?;
            let s: String = p
                .extract()
                .map_err(|_| PyTypeError::new_err("a policy path must be a str path"))?;
            (s, true)
        } else {
            return Err(PyTypeError::new_err(
                "from_policy takes a path (str or os.PathLike) or policy text (str)",
            ));
        };
        let engine = py.detach(move || -> Result<edgeward::Engine, Fail> {
            let policy = if is_path {
                edgeward::Policy::from_file(&text)?
            } else {
                edgeward::Policy::from_text(&text)?
            };
            Ok(edgeward::Engine::new(&policy)?)
        })?;
        Ok(PyEngine { engine })
    }

    /// An engine from a compiled bundle (`edgeward compile -o BUNDLE`); the bytes are
    /// checked, so untrusted bundles are safe to load.
    #[staticmethod]
    fn from_bundle(py: Python<'_>, bundle: &[u8]) -> PyResult<PyEngine> {
        let engine = py.detach(|| edgeward::Engine::from_bundle(bundle).map_err(Fail::from))?;
        Ok(PyEngine { engine })
    }

    /// The engine of the embedded default policy (built-in rules, no keys or limits).
    #[staticmethod]
    fn default(py: Python<'_>) -> PyResult<PyEngine> {
        let engine = py.detach(|| {
            edgeward::Engine::new(&edgeward::Policy::default_policy()).map_err(Fail::from)
        })?;
        Ok(PyEngine { engine })
    }

    /// The engine as a bundle, for `Engine.from_bundle`.
    fn to_bundle<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = py.detach(|| self.engine.to_bundle());
        PyBytes::new(py, &b)
    }

    /// Inspects a request. `method`, `uri` (path and raw query) and `body` are bytes or
    /// str; `headers` a mapping or (name, value) pairs; `peer` the socket's IP address;
    /// `client_ip` the end client's address your proxy resolved; `identity` a caller
    /// your host has already verified. Never raises on request content: malformed
    /// bodies are findings in the decision.
    #[pyo3(signature = (method, uri, headers=None, body=None, *, peer=None, identity=None, client_ip=None))]
    #[allow(clippy::too_many_arguments)]
    fn inspect(
        &self,
        py: Python<'_>,
        method: &Bound<'_, PyAny>,
        uri: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
        body: Option<&Bound<'_, PyAny>>,
        peer: Option<&str>,
        identity: Option<&str>,
        client_ip: Option<&str>,
    ) -> PyResult<PyDecision> {
        let method = data(method, "method")?;
        let uri = data(uri, "uri")?;
        let body = match body {
            Some(b) if !b.is_none() => Some(data(b, "body")?),
            _ => None,
        };
        let hdata = match headers {
            Some(h) => header_data(h)?,
            None => Vec::new(),
        };
        let peer = ip(peer, "peer")?;
        let client_ip = ip(client_ip, "client_ip")?;
        let pairs: Vec<(&[u8], &[u8])> =
            hdata.iter().map(|(n, v)| (n.bytes(), v.bytes())).collect();
        let mut req = edgeward::Request::new(method.bytes(), uri.bytes()).with_headers(&pairs);
        if let Some(b) = &body {
            req = req.with_body(b.bytes());
        }
        if let Some(p) = peer {
            req = req.with_peer(p);
        }
        if let Some(c) = client_ip {
            req = req.with_client_ip(c);
        }
        if let Some(id) = identity {
            req = req.with_identity(id);
        }
        // The core's scratch pool gives each concurrent caller its own buffers; the GIL
        // is released so other Python threads run meanwhile.
        let d = py.detach(|| self.engine.inspect(&req));
        Ok(PyDecision { d })
    }

    /// The body to answer a refused request with (by default the OpenAI error shape,
    /// `{"error": {"message", "type", "code"}}`); None when the request is allowed.
    /// `request_id` fills the policy template's `{request_id}`.
    #[pyo3(signature = (decision, request_id=None))]
    fn refusal_body(&self, decision: &PyDecision, request_id: Option<&str>) -> Option<String> {
        self.engine.refusal_body(&decision.d, request_id)
    }

    /// The content type of `refusal_body`.
    #[getter]
    fn refusal_content_type(&self) -> &str {
        self.engine.refusal_content_type()
    }

    /// The request body to forward for an allowed decision: None to forward the original
    /// bytes, or the body with the decision's rewrites (clamped `max_tokens`, stripped
    /// parameters) applied. Raises `RewriteError` when the body cannot carry them: refuse
    /// the request then rather than forward it unchanged.
    fn rewrite_body<'py>(
        &self,
        py: Python<'py>,
        decision: &PyDecision,
        body: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let body = data(body, "body")?;
        let out = self
            .engine
            .rewrite_body(&decision.d, body.bytes())
            .map_err(Fail::from)?;
        Ok(out.map(|b| PyBytes::new(py, &b)))
    }

    /// The usage reported in a (non-streamed) JSON response body. Raises `UsageError`
    /// when the body has none, `NotFoundError` when the route serves no known format.
    fn usage_from_body(&self, decision: &PyDecision, body: &Bound<'_, PyAny>) -> PyResult<PyUsage> {
        let body = data(body, "body")?;
        match self.engine.usage_from_body(&decision.d, body.bytes()) {
            None => {
                Err(Fail::not_found("the decision's route serves no known usage format").into())
            }
            Some(r) => Ok(PyUsage {
                u: r.map_err(Fail::from)?,
            }),
        }
    }

    /// A tracker for the streamed response to the decided request; None when the route
    /// serves no known stream format.
    fn usage_tracker(&self, decision: &PyDecision) -> Option<PyUsageTracker> {
        self.engine
            .usage_tracker(&decision.d)
            .map(|t| PyUsageTracker { t: Some(t) })
    }

    /// Settles what a request reserved with what its response used: `usage` is a
    /// `Usage`, a dict of counts, or the JSON response body (bytes) to read it from.
    /// Token and cost limits are refunded or topped up, concurrency released. Given the
    /// decision (rather than its reservation) the usage is also counted in the metrics
    /// and events. Returns True when settled now, False when there was nothing to settle
    /// (no reservation, already settled, or expired). Raises `StoreError` when the
    /// limit store fails.
    fn settle(
        &self,
        py: Python<'_>,
        reservation_or_decision: &Bound<'_, PyAny>,
        usage: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        use edgeward::limits::Settled;
        let settled = if let Ok(d) = reservation_or_decision.cast::<PyDecision>() {
            let d = d.get();
            let u = usage_arg(usage, d.d.cost.as_ref().and_then(|c| c.provider))?;
            py.detach(|| self.engine.settle_decision(&d.d, &u))
                .map_err(Fail::from)?
        } else if let Ok(r) = reservation_or_decision.cast::<PyReservation>() {
            let r = r.get();
            let u = usage_arg(usage, r.provider)?;
            py.detach(|| self.engine.settle(&r.r, &u))
                .map_err(Fail::from)?
        } else {
            return Err(PyTypeError::new_err(format!(
                "settle takes a Decision or a Reservation, not {}",
                reservation_or_decision.get_type().name()?
            )));
        };
        Ok(settled == Settled::Settled)
    }

    /// The decision as one JSON event line for logs (time, route, principal, action,
    /// rules, cost, limits; never credentials).
    fn event_json(&self, decision: &PyDecision) -> String {
        self.engine.event_json(&decision.d, None)
    }

    /// The engine's metrics in the Prometheus text format, for a `/metrics` endpoint.
    fn metrics_text(&self) -> String {
        self.engine.metrics_text()
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.engine)
    }
}
