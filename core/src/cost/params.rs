//! The parameter policy (OWASP LLM10 controls) and the model table: what a route lets a
//! caller ask of a model, and how each model's tokens are counted and priced.
//!
//! The policy side is plain serde data (part of the policy document); a per-request state
//! collects a request's parameters from the JSON walker's [`ApiParam`] events during the
//! walk that also feeds the rules, so checking parameters costs no second pass over the
//! body.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::tokens::{ByteClasses, ImageDetail};
use crate::field::ApiParam;

/// What to do with a parameter the route does not want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Allowance {
    /// Pass it on.
    #[default]
    Allow,
    /// Refuse the request (400), naming the parameter.
    Deny,
    /// Accept the request and tell the host to remove the parameter before forwarding.
    Strip,
}

/// What to do when the requested output limit is above `maxOutputTokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Refuse the request (400), naming the parameter and the limit.
    #[default]
    Reject,
    /// Accept it and tell the host the value to forward instead (the limit).
    Clamp,
}

/// Per-route parameter policy. Every setting is optional; a route's settings override the
/// defaults' one by one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamPolicy {
    /// Most prompt tokens (all messages, tools and images, with chat overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
    /// Decide `maxPromptTokens` on the bound crafted text cannot beat: count exactly
    /// whenever the prompt could exceed the cap at one token per byte, instead of only when
    /// the estimate's interval straddles it. The estimate's interval holds for natural text
    /// and widens for text that looks made up, but pronounceable gibberish can still carry
    /// up to about 1.5 times the interval's upper end (see `CALIBRATION.md`). Costs an
    /// exact count (8-35 MB/s) for every prompt longer in bytes than the cap. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_prompt_tokens: Option<bool>,
    /// Largest output limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Reject or clamp an output limit above `maxOutputTokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_output: Option<OverLimit>,
    /// Output tokens reserved per choice when the request sets no output limit (the
    /// model would otherwise be free to run to its context end). Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_output_tokens: Option<u64>,
    /// Most choices (`n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_n: Option<u64>,
    /// `logprobs` and `top_logprobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Allowance>,
    /// `logit_bias`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Allowance>,
    /// Model globs the route accepts (`gpt-4o-mini*`); unset accepts any model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Whether `stream: true` is accepted (`strip` tells the host to force it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Allowance>,
    /// Whether tool definitions (`tools`, `functions`) are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Allowance>,
    /// Most messages (or Responses input items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u32>,
    /// Have OpenAI streams end with a usage event: a streamed chat or completions request
    /// without `stream_options.include_usage: true` gets a rewrite setting it, so the
    /// response's usage is reported rather than counted from the deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_stream_usage: Option<bool>,
}

impl ParamPolicy {
    /// `self` with every unset setting taken from `base`.
    pub fn or(&self, base: &ParamPolicy) -> ParamPolicy {
        ParamPolicy {
            max_prompt_tokens: self.max_prompt_tokens.or(base.max_prompt_tokens),
            strict_prompt_tokens: self.strict_prompt_tokens.or(base.strict_prompt_tokens),
            max_output_tokens: self.max_output_tokens.or(base.max_output_tokens),
            on_max_output: self.on_max_output.or(base.on_max_output),
            default_output_tokens: self.default_output_tokens.or(base.default_output_tokens),
            max_n: self.max_n.or(base.max_n),
            logprobs: self.logprobs.or(base.logprobs),
            logit_bias: self.logit_bias.or(base.logit_bias),
            models: self.models.clone().or_else(|| base.models.clone()),
            stream: self.stream.or(base.stream),
            tools: self.tools.or(base.tools),
            max_messages: self.max_messages.or(base.max_messages),
            force_stream_usage: self.force_stream_usage.or(base.force_stream_usage),
        }
    }
}

/// Where the inference fields of a custom model server's JSON body are, for routes with
/// `schema: json` (as JSON pointers, RFC 6901). Setting this turns on the parameter and
/// cost stages for the route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiFields {
    /// Pointers to prompt text: every string at or below each is user prompt text (the
    /// prompt rules read it, and its tokens are counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Pointer to the model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Pointer to the output-token limit (`/parameters/max_new_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<String>,
    /// Pointer to the number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Pointer to the streaming flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// How a model family's tokens are counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TokenizerSpec {
    /// An OpenAI encoding by name: `o200k_base` or `cl100k_base` (exact counting).
    Encoding(String),
    /// An estimator for other families: bytes per token and its relative error bound,
    /// calibrated by the user on their own traffic.
    Ratio {
        /// Average bytes per token.
        #[serde(rename = "bytesPerToken")]
        bytes_per_token: f64,
        /// Relative error bound of the estimate (0.2 = ±20 %).
        #[serde(rename = "error")]
        error: f64,
    },
}

/// Prices in US dollars per million tokens (the unit providers publish).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Price {
    /// Input (prompt) tokens.
    pub input: f64,
    /// Cached input tokens; defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Output tokens.
    pub output: f64,
}

/// One row of the model table: which models it covers, how their tokens are counted and
/// what they cost. The first row whose glob matches the request's model wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelEntry {
    /// Model-name globs (`gpt-4o-mini*`, `claude-*`), matched case-insensitively.
    #[serde(rename = "match")]
    pub matcher: Vec<String>,
    /// How tokens are counted.
    pub tokenizer: TokenizerSpec,
    /// Prices; unset means the model is free to this policy (cost 0, tokens still counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

/// A price in pico-dollars per token (integer, so costs add without rounding drift):
/// USD per million tokens × 10^6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PicoPrice {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

impl PicoPrice {
    fn from_usd_per_million(p: &Price) -> Option<PicoPrice> {
        let pico = |x: f64| -> Option<u64> {
            (x.is_finite() && (0.0..=1e6).contains(&x)).then(|| (x * 1e6).round() as u64)
        };
        Some(PicoPrice {
            input: pico(p.input)?,
            cached_input: pico(p.cached_input.unwrap_or(p.input))?,
            output: pico(p.output)?,
        })
    }

    /// Micro-dollars for the given tokens, rounded up (a budget must not leak fractions).
    pub fn micro_usd(&self, input: u64, cached: u64, output: u64) -> u64 {
        let pico = u128::from(input.saturating_sub(cached)) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(output) * u128::from(self.output);
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// A compiled model-table row.
#[derive(Debug, Clone)]
pub(crate) struct CompiledModel {
    pub name: Arc<str>,
    pub globs: Vec<Vec<u8>>,
    pub tokenizer: Tokenizer,
    pub price: PicoPrice,
}

/// How a request's tokens are counted, resolved from the model table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Tokenizer {
    /// An OpenAI encoding.
    Encoding(crate::cost::tokens::Encoding),
    /// Bytes per token with a relative error bound.
    Ratio { bytes_per_token: f64, error: f64 },
}

/// Compiles the model table; `Err` carries the message for a `CompileError`.
pub(crate) fn compile_models(entries: &[ModelEntry]) -> Result<Vec<CompiledModel>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.matcher.is_empty() {
                return Err(format!("spec.models[{i}]: `match` needs at least one glob"));
            }
            let tokenizer = match &e.tokenizer {
                TokenizerSpec::Encoding(n) => Tokenizer::Encoding(
                    crate::cost::tokens::Encoding::from_name(n).ok_or_else(|| {
                        format!(
                            "spec.models[{i}].tokenizer: unknown encoding {n:?} \
                             (o200k_base, cl100k_base, or {{bytesPerToken, error}})"
                        )
                    })?,
                ),
                TokenizerSpec::Ratio {
                    bytes_per_token,
                    error,
                } => {
                    let sane = bytes_per_token.is_finite()
                        && *bytes_per_token >= 0.5
                        && error.is_finite()
                        && (0.0..=10.0).contains(error);
                    if !sane {
                        return Err(format!(
                            "spec.models[{i}].tokenizer: bytesPerToken must be >= 0.5 and error in 0..=10"
                        ));
                    }
                    Tokenizer::Ratio {
                        bytes_per_token: *bytes_per_token,
                        error: *error,
                    }
                }
            };
            let price = match &e.price {
                None => PicoPrice::default(),
                Some(p) => PicoPrice::from_usd_per_million(p).ok_or_else(|| {
                    format!("spec.models[{i}].price: prices must be between 0 and 1e6 USD per million tokens")
                })?,
            };
            Ok(CompiledModel {
                name: Arc::from(e.matcher[0].as_str()),
                globs: e
                    .matcher
                    .iter()
                    .map(|g| g.to_ascii_lowercase().into_bytes())
                    .collect(),
                tokenizer,
                price,
            })
        })
        .collect()
}

/// A number-valued parameter as the request gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
    /// A non-negative integer.
    Int(u64),
    /// JSON `null`: as if absent.
    Null,
    /// Anything else: a negative number, a fraction, a string, an object.
    Invalid,
}

fn num(raw: &[u8]) -> Num {
    if raw == b"null" {
        return Num::Null;
    }
    // The walker validated the JSON; a plain digit run is the common case.
    match std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(n) => Num::Int(n),
        None => Num::Invalid,
    }
}

/// A boolean-valued parameter as the request gave it.
fn flag(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" => Some(true),
        b"false" | b"null" => Some(false),
        _ => None,
    }
}

/// An image of the request: its detail and, when it is inline data, its pixel size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageRef {
    pub detail: ImageDetail,
    pub size: Option<(u32, u32)>,
}

/// A request's inference-API parameters, collected from [`ApiParam`] events during the
/// walk. Lives in the worker's scratch and is reset per request, so it allocates only while
/// warming up.
#[derive(Debug, Default)]
pub(crate) struct ParamState {
    /// The decoded `model` string (empty when absent).
    pub model: String,
    /// `model` in ASCII lowercase, what the globs are matched against.
    pub model_lc: String,
    /// The output limit the request set, from whichever of the three names it used, and
    /// that name (the last one seen wins, as in the back ends).
    pub max_output: Option<(ApiParam, Num)>,
    pub n: Option<Num>,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    /// `logprobs` requested (true, or a number for legacy completions).
    pub logprobs: bool,
    pub top_logprobs: Option<Num>,
    /// `logit_bias` present with at least one entry.
    pub logit_bias: bool,
    /// Tool definitions (`tools`/`functions` elements) and the byte classes of their raw
    /// JSON, which is what the model reads them as (approximately: OpenAI renders them into
    /// its own format, a little shorter than JSON).
    pub tools: u32,
    pub tool_classes: ByteClasses,
    pub messages: u32,
    pub names: u32,
    pub images: Vec<ImageRef>,
    /// The open part's image and detail, paired when the part closes.
    part_image: Option<Option<(u32, u32)>>,
    part_detail: Option<ImageDetail>,
    /// First malformed parameter (wrong JSON type).
    pub invalid: Option<ApiParam>,
}

impl ParamState {
    /// Whether the request asks for log probabilities (`logprobs`, or `top_logprobs`
    /// above zero).
    pub fn wants_logprobs(&self) -> bool {
        self.logprobs || matches!(self.top_logprobs, Some(Num::Int(k)) if k > 0)
    }

    /// Clears for the next request, keeping buffers.
    pub fn reset(&mut self) {
        let mut model = std::mem::take(&mut self.model);
        let mut model_lc = std::mem::take(&mut self.model_lc);
        let mut images = std::mem::take(&mut self.images);
        model.clear();
        model_lc.clear();
        images.clear();
        *self = ParamState {
            model,
            model_lc,
            images,
            ..ParamState::default()
        };
    }

    /// Takes one walker event.
    pub fn add(&mut self, p: ApiParam, raw: &[u8]) {
        use ApiParam as P;
        match p {
            P::Model => {
                self.model.clear();
                self.model_lc.clear();
                // `&str` borrows from the body (no allocation) unless the name has escapes.
                let decoded = serde_json::from_slice::<&str>(raw)
                    .map(std::borrow::Cow::Borrowed)
                    .or_else(|_| {
                        serde_json::from_slice::<String>(raw).map(std::borrow::Cow::Owned)
                    });
                match decoded {
                    Ok(s) => {
                        self.model.push_str(&s);
                        self.model_lc
                            .extend(s.chars().map(|c| c.to_ascii_lowercase()));
                    }
                    Err(_) => self.mark_invalid(p),
                }
            }
            P::MaxTokens | P::MaxCompletionTokens | P::MaxOutputTokens => {
                let v = num(raw);
                if v == Num::Invalid {
                    self.mark_invalid(p);
                }
                // `null` does not override a number given under another name.
                if v != Num::Null || self.max_output.is_none() {
                    self.max_output = Some((p, v));
                }
            }
            P::N => {
                let v = num(raw);
                if v == Num::Invalid {
                    self.mark_invalid(p);
                }
                self.n = Some(v);
            }
            P::Stream => match flag(raw) {
                Some(b) => self.stream = Some(b),
                None => self.mark_invalid(p),
            },
            P::StreamOptions => {
                #[derive(Deserialize)]
                struct Opts {
                    include_usage: Option<bool>,
                }
                match serde_json::from_slice::<Option<Opts>>(raw) {
                    Ok(o) => self.include_usage = o.and_then(|o| o.include_usage),
                    Err(_) => self.mark_invalid(p),
                }
            }
            P::Logprobs => match (flag(raw), num(raw)) {
                (Some(b), _) => self.logprobs = b,
                (None, Num::Int(_)) => self.logprobs = true,
                _ => self.mark_invalid(p),
            },
            P::TopLogprobs => {
                let v = num(raw);
                if v == Num::Invalid {
                    self.mark_invalid(p);
                }
                self.top_logprobs = Some(v);
            }
            P::LogitBias => {
                let t = raw.trim_ascii();
                if t.first() == Some(&b'{') {
                    self.logit_bias = t[1..].trim_ascii_start().first() != Some(&b'}');
                } else if t != b"null" {
                    self.mark_invalid(p);
                }
            }
            P::Tools | P::Functions => {
                let t = raw.trim_ascii();
                if t.first() == Some(&b'[') {
                    let n = crate::parse::json::array_len(t).unwrap_or(0);
                    self.tools = self.tools.saturating_add(n);
                    self.tool_classes.add(&ByteClasses::of(t));
                } else if t != b"null" {
                    self.mark_invalid(p);
                }
            }
            P::Message => self.messages = self.messages.saturating_add(1),
            P::MessageName => self.names = self.names.saturating_add(1),
            P::Image => {
                self.part_image =
                    Some(crate::cost::tokens::data_url_image_size(raw).or_else(|| {
                        // Anthropic sends bare base64 without the `data:` prefix.
                        crate::cost::tokens::base64_image_size(raw)
                    }))
            }
            P::ImageDetail => {
                self.part_detail = Some(match raw {
                    b"low" => ImageDetail::Low,
                    b"high" => ImageDetail::High,
                    _ => ImageDetail::Auto,
                })
            }
            P::PartEnd => {
                if let Some(size) = self.part_image.take() {
                    // Bounded by the walker's field limit: one image per part.
                    self.images.push(ImageRef {
                        detail: self.part_detail.unwrap_or(ImageDetail::Auto),
                        size,
                    });
                }
                self.part_detail = None;
            }
            P::ToolChoice => {}
        }
    }

    fn mark_invalid(&mut self, p: ApiParam) {
        self.invalid.get_or_insert(p);
    }
}

/// The name a parameter has in the API, for refusal reasons and rewrites.
pub fn param_name(p: ApiParam) -> &'static str {
    use ApiParam as P;
    match p {
        P::Model => "model",
        P::MaxTokens => "max_tokens",
        P::MaxCompletionTokens => "max_completion_tokens",
        P::MaxOutputTokens => "max_output_tokens",
        P::N => "n",
        P::Stream => "stream",
        P::StreamOptions => "stream_options",
        P::Logprobs => "logprobs",
        P::TopLogprobs => "top_logprobs",
        P::LogitBias => "logit_bias",
        P::Tools => "tools",
        P::Functions => "functions",
        P::ToolChoice => "tool_choice",
        P::Message | P::MessageName => "messages",
        P::Image | P::ImageDetail | P::PartEnd => "image_url",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts() {
        let count_elements = |a: &[u8]| crate::parse::json::array_len(a).unwrap_or(0);
        assert_eq!(count_elements(b"[]"), 0);
        assert_eq!(count_elements(b"[ ]"), 0);
        assert_eq!(count_elements(b"[1]"), 1);
        assert_eq!(count_elements(br#"[{"a":[1,2]},"x,]",3]"#), 3);
        assert_eq!(count_elements(br#"["a\"],"]"#), 1);
    }

    #[test]
    fn prices_round_up_to_micro_dollars() {
        let p = PicoPrice::from_usd_per_million(&Price {
            input: 0.15,
            cached_input: Some(0.075),
            output: 0.6,
        })
        .unwrap();
        // 1000 input tokens at $0.15/M = 150 micro-dollars.
        assert_eq!(p.micro_usd(1000, 0, 0), 150);
        assert_eq!(p.micro_usd(1, 0, 0), 1, "a fraction rounds up");
        assert_eq!(p.micro_usd(1000, 1000, 0), 75);
        assert_eq!(p.micro_usd(0, 0, 512), 308);
        // Sums are done in u128 and saturate instead of wrapping.
        let dear = PicoPrice::from_usd_per_million(&Price {
            input: 1e6,
            cached_input: None,
            output: 1e6,
        })
        .unwrap();
        assert_eq!(dear.micro_usd(u64::MAX, 0, u64::MAX), u64::MAX);
        assert!(PicoPrice::from_usd_per_million(&Price {
            input: -1.0,
            cached_input: None,
            output: 1.0
        })
        .is_none());
        assert!(PicoPrice::from_usd_per_million(&Price {
            input: f64::NAN,
            cached_input: None,
            output: 1.0
        })
        .is_none());
    }

    #[test]
    fn numbers_and_flags() {
        assert_eq!(num(b"512"), Num::Int(512));
        assert_eq!(num(b"null"), Num::Null);
        assert_eq!(num(b"-1"), Num::Invalid);
        assert_eq!(num(b"1.5"), Num::Invalid);
        assert_eq!(num(b"1e3"), Num::Invalid);
        assert_eq!(num(b"\"5\""), Num::Invalid);
        assert_eq!(num(b"99999999999999999999999"), Num::Invalid);
        assert_eq!(flag(b"true"), Some(true));
        assert_eq!(flag(b"1"), None);
    }

    #[test]
    fn state_collects_the_last_output_limit_and_pairs_images() {
        let mut s = ParamState::default();
        s.add(ApiParam::MaxTokens, b"100");
        s.add(ApiParam::MaxCompletionTokens, b"200");
        s.add(ApiParam::MaxTokens, b"null");
        assert_eq!(
            s.max_output,
            Some((ApiParam::MaxCompletionTokens, Num::Int(200)))
        );
        s.add(ApiParam::ImageDetail, b"low");
        s.add(ApiParam::Image, b"https://example.com/a.png");
        s.add(ApiParam::PartEnd, b"");
        s.add(ApiParam::PartEnd, b"");
        s.add(ApiParam::Image, b"https://example.com/b.png");
        s.add(ApiParam::PartEnd, b"");
        assert_eq!(
            s.images,
            [
                ImageRef {
                    detail: ImageDetail::Low,
                    size: None
                },
                ImageRef {
                    detail: ImageDetail::Auto,
                    size: None
                }
            ]
        );
        s.add(ApiParam::Stream, b"\"yes\"");
        s.add(ApiParam::N, b"-2");
        assert_eq!(s.invalid, Some(ApiParam::Stream));
        s.reset();
        assert!(s.images.is_empty() && s.invalid.is_none() && s.max_output.is_none());
    }
}
