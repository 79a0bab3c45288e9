//! What a response used (`Usage`) and the tracker that reads it from a stream.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::errors::Fail;

/// Tokens a response used, in one meaning for every provider.
#[pyclass(frozen, eq, module = "edgeward._native", name = "Usage")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PyUsage {
    pub(crate) u: edgeward::Usage,
}

fn source_of(s: &str) -> Result<edgeward::UsageSource, Fail> {
    edgeward::UsageSource::from_name(s).ok_or_else(|| {
        Fail::argument(format!(
            "usage source {s:?} is not reported, counted or partial"
        ))
    })
}

#[pymethods]
impl PyUsage {
    /// All counts default to 0; `source` is `"reported"` (the server's numbers),
    /// `"counted"` (counted from streamed text) or `"partial"` (a lower bound).
    #[new]
    #[pyo3(signature = (prompt_tokens=0, output_tokens=0, *, cached_prompt_tokens=0,
                        cache_creation_tokens=0, reasoning_tokens=0, source="reported"))]
    fn new(
        prompt_tokens: u64,
        output_tokens: u64,
        cached_prompt_tokens: u64,
        cache_creation_tokens: u64,
        reasoning_tokens: u64,
        source: &str,
    ) -> PyResult<PyUsage> {
        Ok(PyUsage {
            u: edgeward::Usage {
                prompt_tokens,
                cached_prompt_tokens,
                cache_creation_tokens,
                output_tokens,
                reasoning_tokens,
                source: source_of(source)?,
            },
        })
    }

    /// Every input token, cached ones included.
    #[getter]
    fn prompt_tokens(&self) -> u64 {
        self.u.prompt_tokens
    }

    /// Input tokens read from the provider's prompt cache.
    #[getter]
    fn cached_prompt_tokens(&self) -> u64 {
        self.u.cached_prompt_tokens
    }

    /// Input tokens written to the provider's prompt cache.
    #[getter]
    fn cache_creation_tokens(&self) -> u64 {
        self.u.cache_creation_tokens
    }

    /// Every generated token, reasoning included.
    #[getter]
    fn output_tokens(&self) -> u64 {
        self.u.output_tokens
    }

    /// Generated tokens spent on reasoning.
    #[getter]
    fn reasoning_tokens(&self) -> u64 {
        self.u.reasoning_tokens
    }

    /// Where the numbers come from: `"reported"`, `"counted"` or `"partial"`.
    #[getter]
    fn source(&self) -> &'static str {
        self.u.source.as_str()
    }

    /// The counts as a dict (the shape `Engine.settle` also accepts).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", self.u.prompt_tokens)?;
        d.set_item("cached_prompt_tokens", self.u.cached_prompt_tokens)?;
        d.set_item("cache_creation_tokens", self.u.cache_creation_tokens)?;
        d.set_item("output_tokens", self.u.output_tokens)?;
        d.set_item("reasoning_tokens", self.u.reasoning_tokens)?;
        d.set_item("source", self.u.source.as_str())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Usage(prompt_tokens={}, output_tokens={}, cached_prompt_tokens={}, \
             cache_creation_tokens={}, reasoning_tokens={}, source={:?})",
            self.u.prompt_tokens,
            self.u.output_tokens,
            self.u.cached_prompt_tokens,
            self.u.cache_creation_tokens,
            self.u.reasoning_tokens,
            self.u.source.as_str()
        )
    }
}

/// A usage dict (`{"prompt_tokens": 12, "output_tokens": 40}`; missing counts are 0,
/// `source` defaults to `"reported"`) as core usage. Unknown keys are refused so a typo
/// does not settle with zero.
pub(crate) fn usage_from_mapping(m: &Bound<'_, PyMapping>) -> PyResult<edgeward::Usage> {
    let mut u = edgeward::Usage {
        source: edgeward::UsageSource::Reported,
        ..edgeward::Usage::default()
    };
    for item in m.items()?.iter() {
        let (k, v): (String, Bound<'_, PyAny>) = item.extract()?;
        let count = |v: &Bound<'_, PyAny>| -> PyResult<u64> {
            v.extract::<u64>().map_err(|_| {
                Fail::argument(format!("usage {k:?} must be a non-negative integer")).into()
            })
        };
        match k.as_str() {
            "prompt_tokens" => u.prompt_tokens = count(&v)?,
            "cached_prompt_tokens" => u.cached_prompt_tokens = count(&v)?,
            "cache_creation_tokens" => u.cache_creation_tokens = count(&v)?,
            "output_tokens" => u.output_tokens = count(&v)?,
            "reasoning_tokens" => u.reasoning_tokens = count(&v)?,
            "source" => u.source = source_of(&v.extract::<String>()?)?,
            other => return Err(Fail::argument(format!("unknown usage key {other:?}")).into()),
        }
    }
    Ok(u)
}

/// Follows a streamed (server-sent events) response chunk by chunk without buffering it:
/// feed every chunk as it passes, then `finish()` for the usage. Made by
/// `Engine.usage_tracker(decision)`. One thread at a time.
#[pyclass(module = "edgeward._native", name = "UsageTracker")]
pub(crate) struct PyUsageTracker {
    pub(crate) t: Option<edgeward::UsageTracker>,
}

impl PyUsageTracker {
    fn tracker(&mut self) -> Result<&mut edgeward::UsageTracker, Fail> {
        self.t
            .as_mut()
            .ok_or_else(|| Fail::argument("the tracker was finished"))
    }
}

#[pymethods]
impl PyUsageTracker {
    /// Feeds a chunk of the response stream (any boundaries).
    fn feed(&mut self, chunk: &[u8]) -> PyResult<()> {
        self.tracker()?.feed(chunk);
        Ok(())
    }

    /// The usage seen so far (of an aborted stream: a lower bound).
    fn usage_so_far(&mut self) -> PyResult<PyUsage> {
        Ok(PyUsage {
            u: self.tracker()?.usage_so_far(),
        })
    }

    /// Ends the stream and returns its usage; the tracker accepts nothing more.
    fn finish(&mut self, py: Python<'_>) -> PyResult<PyUsage> {
        let t = self
            .t
            .take()
            .ok_or_else(|| Fail::argument("the tracker was finished"))?;
        // Counting the streamed text with a tokenizer can take a while on long outputs.
        let u = py.detach(move || t.finish());
        Ok(PyUsage { u })
    }

    /// Whether `finish()` was called.
    #[getter]
    fn finished(&self) -> bool {
        self.t.is_none()
    }
}
