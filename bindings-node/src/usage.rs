//! What a response used (`Usage`, a plain object) and the tracker that reads it from a
//! stream.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::errors::{Fail, Res};

/// Tokens a response used, in one meaning for every provider.
#[napi(object, object_from_js = false)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub prompt_tokens: f64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_prompt_tokens: f64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_tokens: f64,
    /// Every generated token, reasoning included.
    pub output_tokens: f64,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: f64,
    /// Where the numbers come from: `reported` (the server's), `counted` (from streamed
    /// text) or `partial` (a lower bound).
    #[napi(ts_type = "'reported' | 'counted' | 'partial'")]
    pub source: &'static str,
}

/// The usage `settle` takes: missing counts are 0, `source` defaults to `reported`;
/// unknown keys and counts that are not non-negative integers are refused (code
/// `node.argument`). A `Usage` is one. (For the type definitions: the binding reads the
/// object key by key.)
#[napi(object, object_to_js = false)]
pub struct UsageInput {
    /// Every input token, cached ones included.
    pub prompt_tokens: Option<f64>,
    /// Input tokens read from the provider's prompt cache.
    pub cached_prompt_tokens: Option<f64>,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_tokens: Option<f64>,
    /// Every generated token, reasoning included.
    pub output_tokens: Option<f64>,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: Option<f64>,
    /// `reported`, `counted` or `partial`.
    #[napi(ts_type = "'reported' | 'counted' | 'partial'")]
    pub source: Option<String>,
}

impl From<edgeward::Usage> for Usage {
    fn from(u: edgeward::Usage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens as f64,
            cached_prompt_tokens: u.cached_prompt_tokens as f64,
            cache_creation_tokens: u.cache_creation_tokens as f64,
            output_tokens: u.output_tokens as f64,
            reasoning_tokens: u.reasoning_tokens as f64,
            source: u.source.as_str(),
        }
    }
}

fn source_of(s: &str) -> Res<edgeward::UsageSource> {
    edgeward::UsageSource::from_name(s).ok_or_else(|| {
        Fail::argument(format!(
            "usage source {s:?} is not reported, counted or partial"
        ))
    })
}

/// A usage object (`{promptTokens: 12, outputTokens: 40}`; missing counts are 0,
/// `source` defaults to `reported`) as core usage. Unknown keys are refused so a typo
/// does not settle with zero; counts must be non-negative integers.
pub(crate) fn usage_from_object(o: &Object<'_>) -> Res<edgeward::Usage> {
    let mut u = edgeward::Usage {
        source: edgeward::UsageSource::Reported,
        ..edgeward::Usage::default()
    };
    let keys = Object::keys(o).map_err(|_| Fail::type_error("usage must be an object"))?;
    for k in keys {
        if k == "source" {
            let s: Option<String> = o
                .get(&k)
                .map_err(|_| Fail::type_error("usage source must be a string"))?;
            if let Some(s) = s {
                u.source = source_of(&s)?;
            }
            continue;
        }
        let slot = match k.as_str() {
            "promptTokens" => &mut u.prompt_tokens,
            "cachedPromptTokens" => &mut u.cached_prompt_tokens,
            "cacheCreationTokens" => &mut u.cache_creation_tokens,
            "outputTokens" => &mut u.output_tokens,
            "reasoningTokens" => &mut u.reasoning_tokens,
            other => return Err(Fail::argument(format!("unknown usage key {other:?}"))),
        };
        let v: Option<f64> = o
            .get(&k)
            .map_err(|_| Fail::type_error(format!("usage {k} must be a number")))?;
        let v = v.unwrap_or(0.0);
        // 2^53: the largest count a JS number holds exactly.
        if !(0.0..=9_007_199_254_740_992.0).contains(&v) || v.fract() != 0.0 {
            return Err(Fail::argument(format!(
                "usage {k} must be a non-negative integer, not {v}"
            )));
        }
        *slot = v as u64;
    }
    Ok(u)
}

/// Follows a streamed (server-sent events) response chunk by chunk without buffering
/// it: feed every chunk as it passes, then `finish()` for the usage. Made by
/// `engine.usageTracker(decision)`.
#[napi]
pub struct UsageTracker {
    pub(crate) t: Option<edgeward::UsageTracker>,
}

impl UsageTracker {
    fn tracker(&mut self) -> Res<&mut edgeward::UsageTracker> {
        self.t
            .as_mut()
            .ok_or_else(|| Fail::argument("the tracker was finished"))
    }
}

#[napi]
impl UsageTracker {
    /// Feeds a chunk of the response stream (any boundaries): a Buffer, Uint8Array or
    /// string.
    #[napi(ts_args_type = "chunk: Buffer | Uint8Array | string")]
    pub fn feed(&mut self, env: Env, chunk: Unknown<'_>) -> Result<()> {
        let r = crate::engine::bytes_of(chunk, "chunk", false)
            .and_then(|b| self.tracker().map(|t| t.feed(b.bytes())));
        r.map_err(|f| f.into_js(&env))
    }

    /// The usage seen so far (of an aborted stream: a lower bound).
    #[napi]
    pub fn usage_so_far(&mut self, env: Env) -> Result<Usage> {
        self.tracker()
            .map(|t| t.usage_so_far().into())
            .map_err(|f| f.into_js(&env))
    }

    /// Ends the stream and returns its usage; the tracker accepts nothing more.
    #[napi]
    pub fn finish(&mut self, env: Env) -> Result<Usage> {
        match self.t.take() {
            Some(t) => Ok(t.finish().into()),
            None => Err(Fail::argument("the tracker was finished").into_js(&env)),
        }
    }

    /// Whether `finish()` was called.
    #[napi(getter)]
    pub fn finished(&self) -> bool {
        self.t.is_none()
    }
}
