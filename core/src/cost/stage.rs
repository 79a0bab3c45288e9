//! The parameter and cost stages of `inspect`: what the request asks of the model, what it
//! will cost, and whether the route allows it.
//!
//! Everything here reads state gathered during the single walk of the body ([`CostScratch`]:
//! parameters from the walker's [`ApiParam`](crate::field::ApiParam) events, byte classes
//! of every prompt field). Only when the token estimate's interval straddles the route's
//! prompt-token cap is the body walked again, to count its prompt fields exactly.

use std::sync::Arc;

use crate::cost::params::{
    param_name, Allowance, ApiFields, CompiledModel, Num, OverLimit, ParamPolicy, ParamState,
    Tokenizer,
};
use crate::cost::tokens::{self, ByteClasses, ChatOverhead, Encoding, ImageCost, TokenEstimate};
use crate::cost::usage::Provider;
use crate::decision::{Cost, Reason, Rewrite, RewriteAction, Stage};
use crate::field::{ApiParam, Field, FieldFlags, FieldKind, FieldSink, Finding, ParseLimits, Role};
use crate::parse::json::{pointer_get, pointer_tokens};
use crate::parse::{ChatShape, Emitter, ParseScratch};
use crate::rules::glob_match;

/// Output tokens reserved per choice when neither the request nor the route sets a limit.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// Per-worker state of the cost stages, reset per request.
#[derive(Debug, Default)]
pub(crate) struct CostScratch {
    pub params: ParamState,
    /// Byte classes of every prompt text field, summed.
    pub prompt: ByteClasses,
    /// Non-empty prompt text fields.
    pub prompt_fields: u64,
    /// The user prompt's fingerprint, for the `duplicates` signal (off unless configured).
    pub print: crate::signals::Fingerprint,
    /// Byte classes of long prompt texts seen before (see [`ClassMemo`]).
    pub memo: ClassMemo,
}

/// Prompt texts shorter than this are counted, not looked up: their byte classes cost
/// less than a hash and a compare.
const CLASS_MEMO_MIN: usize = 512;

/// Byte classes of long prompt texts, remembered per worker: an application's system
/// prompt and a conversation's earlier turns come back with every request, and their
/// classes are a pure function of their bytes (about 5 instructions per byte to count, a
/// fraction of one to hash and compare). Compared on the full bytes, so a hash collision
/// costs a count, never a wrong estimate. Sized by [`crate::Config::large_field_memo`] and
/// [`crate::Config::large_field_memo_bytes`], the same knobs as the rules' memo.
#[derive(Debug, Default)]
pub(crate) struct ClassMemo {
    seen: crate::memo::SeenBytes<(), ByteClasses>,
}

impl ClassMemo {
    /// A memo of `slots` texts of up to `max` bytes; 0 slots turns it off.
    pub fn new(slots: usize, max: usize) -> ClassMemo {
        ClassMemo {
            seen: crate::memo::SeenBytes::new(slots, max),
        }
    }

    /// The byte classes of the text `hash` is of, from the memo when it holds them.
    pub fn classes(&mut self, hash: &mut crate::memo::ValueHash<'_>) -> ByteClasses {
        let text = hash.value();
        if text.len() < CLASS_MEMO_MIN || !self.seen.takes(text.len()) {
            return ByteClasses::of(text);
        }
        let h = hash.get();
        if let Some(c) = self.seen.get(h, (), &[text]) {
            return c;
        }
        let c = ByteClasses::of(text);
        self.seen.insert(h, (), &[text], c);
        c
    }
}

impl CostScratch {
    pub fn reset(&mut self) {
        self.params.reset();
        self.prompt = ByteClasses::default();
        self.prompt_fields = 0;
    }

    /// Takes a field of the walk: prompt text adds to the prompt. `hash` is of the
    /// field's value.
    #[inline]
    pub fn field(&mut self, f: &Field<'_>, hash: &mut crate::memo::ValueHash<'_>) {
        if is_prompt_text(f) && !f.value.is_empty() {
            self.prompt.add(&self.memo.classes(hash));
            self.prompt_fields += 1;
            if f.role == Some(Role::User) {
                self.print.field(f.name);
                self.print.text(f.value);
            }
        }
    }
}

/// Whether a field is text the model reads as prompt: a JSON string with a role, and not
/// JSON re-read from inside a string, whose text the outer field already holds.
#[inline]
fn is_prompt_text(f: &Field<'_>) -> bool {
    f.role.is_some() && f.kind == FieldKind::Json && !f.flags.has(FieldFlags::NESTED_JSON)
}

/// A route's compiled parameter policy.
#[derive(Debug, Clone)]
pub(crate) struct RouteParams {
    pub shape: ChatShape,
    /// Whether the stages run: a chat shape, or `apiFields` on a JSON route.
    pub enabled: bool,
    pub policy: ParamPolicy,
    /// Lowercased model globs of the allowlist.
    pub models: Option<Vec<Vec<u8>>>,
    /// A custom server's fields, compiled.
    pub generic: Option<Generic>,
    /// For a tier's parameters with their own model allowlist: the route's allowlist, which
    /// must allow the model too.
    pub route_models: Option<Vec<Vec<u8>>>,
}

/// [`ApiFields`] compiled: prompt pointers as field names, the others as pointer tokens.
#[derive(Debug, Clone)]
pub(crate) struct Generic {
    prompts: Vec<Vec<u8>>,
    scalars: Vec<(ApiParam, Vec<Vec<u8>>)>,
}

impl Generic {
    /// The field as user prompt text, when it is a JSON string at or below a prompt
    /// pointer that the chat shapes gave no role.
    #[inline]
    pub fn promote<'a>(&self, f: &Field<'a>) -> Option<Field<'a>> {
        let prompt = f.kind == FieldKind::Json && f.role.is_none() && self.is_prompt(f.name);
        prompt.then_some(Field {
            role: Some(Role::User),
            ..*f
        })
    }

    /// Whether a JSON field (named by its pointer) is at or below a prompt pointer.
    #[inline]
    fn is_prompt(&self, name: &[u8]) -> bool {
        self.prompts
            .iter()
            .any(|p| name.starts_with(p) && matches!(name.get(p.len()), None | Some(b'/' | b'#')))
    }
}

impl RouteParams {
    /// Compiles a route's settings; `Err` holds the message for a `CompileError`.
    pub fn new(
        shape: ChatShape,
        policy: ParamPolicy,
        fields: Option<&ApiFields>,
    ) -> Result<RouteParams, String> {
        let models = policy.models.as_ref().map(|m| {
            m.iter()
                .map(|g| g.to_ascii_lowercase().into_bytes())
                .collect()
        });
        let generic = match fields {
            None => None,
            Some(f) => {
                let tokens = |p: &str| {
                    pointer_tokens(p).ok_or_else(|| {
                        format!("apiFields: {p:?} is not a JSON pointer (RFC 6901: \"/a/b\")")
                    })
                };
                let mut prompts = Vec::new();
                for p in &f.prompts {
                    tokens(p)?;
                    prompts.push(p.as_bytes().to_vec());
                }
                let mut scalars = Vec::new();
                for (param, p) in [
                    (ApiParam::Model, &f.model),
                    (ApiParam::MaxTokens, &f.max_output_tokens),
                    (ApiParam::N, &f.n),
                    (ApiParam::Stream, &f.stream),
                ] {
                    if let Some(p) = p {
                        scalars.push((param, tokens(p)?));
                    }
                }
                Some(Generic { prompts, scalars })
            }
        };
        Ok(RouteParams {
            shape,
            enabled: shape != ChatShape::None || generic.is_some(),
            policy,
            models,
            generic,
            route_models: None,
        })
    }
}

/// What the stages decided.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub cost: Option<Cost>,
    pub rewrites: Vec<Rewrite>,
    /// A refusal: status, reason, stage.
    pub deny: Option<(u16, Reason, Stage)>,
    /// How to count the prompt exactly later, when the cost is an estimate and the model's
    /// encoding is countable: for a budget the estimate straddles.
    pub recount: Option<Recount>,
}

/// What an exact recount of the prompt needs beyond the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recount {
    enc: Encoding,
    /// Chat overhead and image tokens, added to the counted text.
    fixed: u64,
    tools: bool,
    bytes: u64,
}

impl Recount {
    /// The prompt's exact tokens (text, tools, overhead, images), or `None` when the body
    /// is beyond `max_exact_bytes` or a text cannot be counted within bounds.
    pub fn count(
        &self,
        rp: &RouteParams,
        body: &[u8],
        limits: ParseLimits,
        parse: &mut ParseScratch,
        max_exact_bytes: u64,
    ) -> Option<u64> {
        if self.bytes > max_exact_bytes {
            return None;
        }
        count_exact(self.enc, rp, body, limits, parse, self.tools)
            .map(|t| t.saturating_add(self.fixed))
    }
}

/// Runs the parameter policy and computes the cost. `body`, `limits` and `parse` are for
/// the exact recount when the estimate straddles the prompt cap.
pub(crate) fn decide(
    rp: &RouteParams,
    models: &[CompiledModel],
    st: &mut CostScratch,
    body: &[u8],
    limits: ParseLimits,
    parse: &mut ParseScratch,
    max_exact_bytes: u64,
) -> Outcome {
    let mut out = Outcome::default();
    if !rp.enabled {
        return out;
    }
    if let Some(g) = &rp.generic {
        for (param, tokens) in &g.scalars {
            if let Some(raw) = pointer_get(body, tokens) {
                st.params.add(*param, raw);
            }
        }
    }
    let st = &*st;
    let p = &st.params;
    let pol = &rp.policy;
    let reject = |param: ApiParam, why: &'static str, limit: Option<u64>| {
        Some((
            400,
            Reason::ParameterRejected {
                param: param_name(param),
                why,
                limit,
            },
            Stage::Params,
        ))
    };
    // Malformed values first: a limit cannot be checked on a value that is not a number.
    if let Some(bad) = p.invalid {
        out.deny = reject(bad, "invalid", None);
    }
    let model_lc = &p.model_lc;
    if out.deny.is_none() {
        let allowed = |globs: &Option<Vec<Vec<u8>>>| {
            globs
                .as_ref()
                .is_none_or(|g| g.iter().any(|g| glob_match(g, model_lc.as_bytes())))
        };
        {
            if !allowed(&rp.models) || !allowed(&rp.route_models) {
                out.deny = Some((
                    403,
                    Reason::ModelNotAllowed {
                        model: p.model.clone(),
                    },
                    Stage::Params,
                ));
            }
        }
    }
    if out.deny.is_none() {
        if let Some(max) = pol.max_messages {
            if p.messages > max {
                out.deny = reject(ApiParam::Message, "above_limit", Some(u64::from(max)));
            }
        }
    }
    let n = match p.n {
        Some(Num::Int(n)) => n.max(1),
        _ => 1,
    };
    if out.deny.is_none() {
        if let Some(max) = pol.max_n {
            if n > max {
                out.deny = reject(ApiParam::N, "above_limit", Some(max));
            }
        }
    }
    // The output limit: clamp or reject above the route's maximum.
    let mut output = match p.max_output {
        Some((_, Num::Int(v))) => Some(v),
        _ => None,
    };
    if let (Some(max), Some((param, Num::Int(v)))) = (pol.max_output_tokens, p.max_output) {
        if v > max {
            match pol.on_max_output.unwrap_or_default() {
                OverLimit::Reject => {
                    if out.deny.is_none() {
                        out.deny = reject(param, "above_limit", Some(max));
                    }
                }
                OverLimit::Clamp => {
                    output = Some(max);
                    out.rewrites.push(Rewrite {
                        param: param_name(param),
                        action: RewriteAction::Set(max),
                    });
                }
            }
        }
    }
    let logprobs = p.wants_logprobs();
    let switches: [(bool, Option<Allowance>, &[ApiParam], RewriteAction); 4] = [
        (
            logprobs,
            pol.logprobs,
            &[ApiParam::Logprobs, ApiParam::TopLogprobs],
            RewriteAction::Remove,
        ),
        (
            p.logit_bias,
            pol.logit_bias,
            &[ApiParam::LogitBias],
            RewriteAction::Remove,
        ),
        (
            p.stream == Some(true),
            pol.stream,
            &[ApiParam::Stream],
            RewriteAction::SetFalse,
        ),
        (
            p.tools > 0,
            pol.tools,
            &[ApiParam::Tools, ApiParam::Functions, ApiParam::ToolChoice],
            RewriteAction::Remove,
        ),
    ];
    for (present, allowance, params, action) in switches {
        if !present {
            continue;
        }
        match allowance.unwrap_or_default() {
            Allowance::Allow => {}
            Allowance::Deny => {
                if out.deny.is_none() {
                    out.deny = reject(params[0], "not_allowed", None);
                }
            }
            Allowance::Strip => {
                for &param in params {
                    out.rewrites.push(Rewrite {
                        param: param_name(param),
                        action,
                    });
                }
            }
        }
    }

    // Streams that will report their usage: a rewrite for OpenAI chat and completions
    // streams that did not ask for it (Responses and Anthropic streams always report it).
    let stripped = |a: Option<Allowance>| a == Some(Allowance::Strip);
    let streaming = p.stream == Some(true) && !stripped(pol.stream);
    // Stripped tool definitions never reach the model: they cost nothing.
    let tools_counted = p.tools > 0 && !stripped(pol.tools);
    if pol.force_stream_usage == Some(true)
        && streaming
        && rp.shape == ChatShape::OpenaiChat
        && p.include_usage != Some(true)
    {
        out.rewrites.push(Rewrite {
            param: "stream_options.include_usage",
            action: RewriteAction::SetTrue,
        });
    }

    // Cost: prompt tokens (text, tools, images, overhead) and the output reservation.
    let row = models
        .iter()
        .find(|m| m.globs.iter().any(|g| glob_match(g, model_lc.as_bytes())));
    let tokenizer = row.map_or(Tokenizer::Encoding(Encoding::O200kBase), |m| m.tokenizer);
    let mut classes = st.prompt;
    let mut texts = st.prompt_fields;
    if tools_counted {
        classes.add(&p.tool_classes);
        texts += 1;
    }
    let text = match tokenizer {
        Tokenizer::Encoding(enc) => tokens::estimate_classes(enc, &classes, texts),
        Tokenizer::Ratio {
            bytes_per_token,
            error,
        } => tokens::estimate_ratio_classes(bytes_per_token, error, &classes),
    };
    let image_cost = ImageCost::default();
    let fixed = ChatOverhead::default()
        .tokens(u64::from(p.messages), u64::from(p.names))
        .saturating_add(
            p.images
                .iter()
                .map(|i| tokens::image_tokens(&image_cost, i.detail, i.size))
                .fold(0u64, u64::saturating_add),
        );
    let mut prompt = TokenEstimate {
        tokens: text.tokens.saturating_add(fixed),
        low: text.low.saturating_add(fixed),
        high: text.high.saturating_add(fixed),
    };
    let mut exact = false;
    if let Some(cap) = pol.max_prompt_tokens {
        let bytes = classes.features()[1];
        if pol.strict_prompt_tokens == Some(true) {
            // One token per byte is the bound no text can beat.
            prompt.high = prompt.high.max(bytes.saturating_add(fixed));
        }
        if prompt.fits(cap).is_none() {
            if let Tokenizer::Encoding(enc) = tokenizer {
                let bounded = bytes <= max_exact_bytes;
                let counted = bounded
                    .then(|| count_exact(enc, rp, body, limits, parse, tools_counted))
                    .flatten();
                if let Some(t) = counted {
                    let t = t.saturating_add(fixed);
                    prompt = TokenEstimate::exact(t);
                    exact = true;
                }
            }
        }
        // Still straddling (no exact counter for this family, or tiktoken not built in):
        // the point estimate decides, and the decision says it was an estimate.
        let over = match prompt.fits(cap) {
            Some(fits) => !fits,
            None => prompt.tokens > cap,
        };
        if over && out.deny.is_none() {
            out.deny = Some((
                400,
                Reason::PromptTooLong {
                    tokens: prompt.tokens,
                    limit: cap,
                    exact,
                },
                Stage::Cost,
            ));
        }
    }
    let output_reserved = if rp.shape == ChatShape::OpenaiEmbeddings {
        0
    } else {
        output
            .or(pol.default_output_tokens)
            .unwrap_or(DEFAULT_OUTPUT_TOKENS)
            .saturating_mul(n)
    };
    let micro_usd = row.map_or(0, |m| m.price.micro_usd(prompt.tokens, 0, output_reserved));
    if let (false, Tokenizer::Encoding(enc)) = (exact, tokenizer) {
        out.recount = Some(Recount {
            enc,
            fixed,
            tools: tools_counted,
            bytes: classes.features()[1],
        });
    }
    out.cost = Some(Cost {
        model: row.map(|m| Arc::clone(&m.name)),
        prompt_tokens: prompt.tokens,
        prompt_tokens_low: prompt.low,
        prompt_tokens_high: prompt.high,
        output_tokens_reserved: output_reserved,
        micro_usd,
        exact,
        provider: provider(rp.shape, p.messages),
    });
    out
}

/// The response format a route's requests get back.
fn provider(shape: ChatShape, messages: u32) -> Option<Provider> {
    Some(match shape {
        // The chat schema also serves legacy completions (`prompt`, no `messages`).
        ChatShape::OpenaiChat if messages == 0 => Provider::OpenAiCompletions,
        ChatShape::OpenaiChat => Provider::OpenAiChat,
        ChatShape::OpenaiResponses => Provider::OpenAiResponses,
        ChatShape::OpenaiEmbeddings => Provider::OpenAiEmbeddings,
        ChatShape::AnthropicMessages => Provider::Anthropic,
        _ => return None,
    })
}

/// A token counter for response text: exact when tiktoken is built in and the model has
/// an OpenAI encoding, else the model's estimator.
pub(crate) fn text_counter(tokenizer: Tokenizer) -> Box<dyn Fn(&str) -> u64 + Send + Sync> {
    match tokenizer {
        Tokenizer::Encoding(enc) => Box::new(move |s: &str| {
            tokens::count_exact(enc, s)
                .unwrap_or_else(|| tokens::estimate(enc, s.as_bytes()).tokens)
        }),
        Tokenizer::Ratio {
            bytes_per_token,
            error,
        } => Box::new(move |s: &str| {
            tokens::estimate_ratio(bytes_per_token, error, s.as_bytes()).tokens
        }),
    }
}

/// Counts the prompt fields of `body` exactly by walking it again; `None` when exact
/// counting is not built in.
fn count_exact(
    enc: Encoding,
    rp: &RouteParams,
    body: &[u8],
    limits: ParseLimits,
    parse: &mut ParseScratch,
    include_tools: bool,
) -> Option<u64> {
    if !tokens::prepare(enc) {
        return None;
    }
    struct Exact<'g> {
        enc: Encoding,
        total: u64,
        tools: bool,
        generic: Option<&'g Generic>,
        /// A text could not be counted within bounds: the whole count is off.
        gave_up: bool,
    }
    impl Exact<'_> {
        fn count(&mut self, text: &[u8]) {
            if self.gave_up {
                return;
            }
            if longest_run(text) > MAX_EXACT_RUN {
                self.gave_up = true;
                return;
            }
            match tokens::count_exact(self.enc, &String::from_utf8_lossy(text)) {
                Some(n) => self.total = self.total.saturating_add(n),
                None => self.gave_up = true,
            }
        }
    }
    impl FieldSink for Exact<'_> {
        fn field(&mut self, f: &Field<'_>) {
            let promoted = self.generic.and_then(|g| g.promote(f));
            if is_prompt_text(promoted.as_ref().unwrap_or(f)) {
                self.count(f.value);
            }
        }
        fn finding(&mut self, _: Finding) {}
        fn param(&mut self, p: ApiParam, raw: &[u8]) {
            if self.tools && matches!(p, ApiParam::Tools | ApiParam::Functions) {
                self.count(raw);
            }
        }
    }
    let mut sink = Exact {
        enc,
        total: 0,
        tools: include_tools,
        generic: rp.generic.as_ref(),
        gave_up: false,
    };
    let mut em = Emitter::new(&mut sink, limits);
    crate::parse::json::walk(body, rp.shape, parse, &mut em);
    (!sink.gave_up).then_some(sink.total)
}

/// The prompt texts of `body` (every message's text the cost stage counts, in order),
/// joined by newlines and cut to `max_bytes` on a character boundary: what an event quotes
/// when the policy opts in.
pub(crate) fn prompt_text(
    rp: &RouteParams,
    body: &[u8],
    limits: ParseLimits,
    parse: &mut ParseScratch,
    max_bytes: usize,
) -> String {
    struct Quote<'g> {
        text: String,
        max: usize,
        generic: Option<&'g Generic>,
    }
    impl FieldSink for Quote<'_> {
        fn field(&mut self, f: &Field<'_>) {
            let promoted = self.generic.and_then(|g| g.promote(f));
            if !is_prompt_text(promoted.as_ref().unwrap_or(f)) || self.text.len() >= self.max {
                return;
            }
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            let room = self.max.saturating_sub(self.text.len());
            let value = String::from_utf8_lossy(f.value);
            self.text.push_str(crate::events::cut(&value, room));
        }
        fn finding(&mut self, _: Finding) {}
        fn param(&mut self, _: ApiParam, _: &[u8]) {}
    }
    let mut sink = Quote {
        text: String::new(),
        max: max_bytes,
        generic: rp.generic.as_ref(),
    };
    if rp.enabled {
        let mut em = Emitter::new(&mut sink, limits);
        crate::parse::json::walk(body, rp.shape, parse, &mut em);
    }
    sink.text
}

/// Longest run of whitespace, or of anything but whitespace, that is counted exactly.
///
/// tiktoken's byte-pair merge is quadratic in the length of one pre-tokenized piece, and a
/// run of one repeated character or of whitespace is one piece: 256 KiB of spaces takes
/// ~120 ms. Natural text has no 1 KiB run of either kind except base64 or minified code,
/// where the estimate (with its dense-byte margin) decides instead.
pub const MAX_EXACT_RUN: usize = 1024;

/// The longest run of `text` that is all ASCII whitespace or has none.
fn longest_run(text: &[u8]) -> usize {
    let (mut longest, mut run, mut ws) = (0, 0, false);
    for &b in text {
        let w = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
        run = if w == ws { run + 1 } else { 1 };
        ws = w;
        longest = longest.max(run);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the memo holds, it answers what counting the text answers: repeated texts,
    /// texts that differ from a remembered one in a single byte (same length, so the same
    /// hash bucket is no shortcut), more texts than slots, short and over-long texts.
    #[test]
    fn class_memo_answers_what_counting_answers() {
        let mut m = ClassMemo::new(2, 4096);
        let hasher = foldhash::fast::RandomState::default();
        let base: Vec<u8> = "Quarterly figures: shipping rose 4% on northern routes; Ünïcödé ok. "
            .repeat(20)
            .into_bytes();
        let mut texts = vec![base.clone(), base[..100].to_vec(), vec![b'x'; 5000]];
        for i in [0, 700, base.len() - 1] {
            let mut t = base.clone();
            t[i] = b'\n';
            texts.push(t);
        }
        texts.push(b"Another long prompt with digits 12345 and tabs\t\t. ".repeat(15));
        for round in 0..3 {
            for t in &texts {
                let mut h = crate::memo::ValueHash::new(&hasher, t);
                assert_eq!(m.classes(&mut h), ByteClasses::of(t), "round {round}");
            }
        }
        // Off: counts every time.
        let mut off = ClassMemo::new(0, 4096);
        let mut h = crate::memo::ValueHash::new(&hasher, &base);
        assert_eq!(off.classes(&mut h), ByteClasses::of(&base));
    }
}
