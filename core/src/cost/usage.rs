//! What a response actually cost: token usage read from a response body or counted from a
//! server-sent-events stream.
//!
//! A reservation made before inference is only an estimate (the prompt estimate plus
//! `max_tokens × n`); settling it needs what the model really used. Servers report that in
//! a `usage` object, but under different names per API, only at the very end of a stream,
//! and for OpenAI streams only when the client asked for it
//! (`stream_options.include_usage`). This module hides those differences behind one
//! [`Usage`]:
//!
//! - [`usage_from_body`] reads the `usage` object of a complete JSON response;
//! - [`UsageTracker`] is fed a `text/event-stream` response chunk by chunk, in whatever
//!   pieces the host's HTTP stack delivers, and yields the reported usage when the server
//!   sent it, or else a count of the streamed text, or, for a stream cut short, what it saw.
//!
//! # One meaning for every provider
//!
//! [`Usage::prompt_tokens`] is always *every* input token, including the cached ones and
//! the ones written to a cache: OpenAI reports it that way, Anthropic reports the three
//! parts separately (`input_tokens` excludes both cache counts), so for Anthropic the
//! three are summed. [`Usage::cached_prompt_tokens`] and [`Usage::cache_creation_tokens`]
//! are parts of it, and [`Usage::reasoning_tokens`] is part of [`Usage::output_tokens`]; a
//! part is never larger than its total (a server that says otherwise is clamped), so a
//! price computation may subtract without underflow.
//!
//! # Counting streamed text
//!
//! Without a usage event the tracker applies the host's counter (the route's tokenizer or
//! estimator) to the text of each streamed delta separately and sums the results. Servers
//! emit one delta per generated token or per few tokens, so delta boundaries fall on token
//! boundaries in practice and the per-delta sum is close to counting the joined text (and it
//! never needs the whole text in memory). It is still an estimate: the result says so with
//! [`UsageSource::Counted`], and it never includes the prompt, which the tracker does not
//! see (the prompt fields are 0; the settling side keeps its own prompt count).
//!
//! # Bounded memory
//!
//! The tracker keeps at most one pending event, capped at [`MAX_EVENT_BYTES`]. A larger
//! event is dropped whole without being buffered: it is counted in
//! [`UsageTracker::skipped_events`], and unless the server's usage report arrives in
//! another event, the result becomes [`UsageSource::Partial`], because the skipped event
//! may have held text or the report itself. One exception: the Responses API's terminal
//! event (`response.completed`, `.incomplete`, `.failed`) repeats the whole output, which
//! with generated images runs to megabytes; for it the last 64 KiB are kept while the rest
//! streams past, and the `usage` object, which follows the output, is read from there.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use memchr::{memchr, memchr2};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{UsageError, UsageErrorKind};

/// The largest event the tracker buffers: the `data` values read so far (each with its
/// `\n`) plus the whole raw line being read, field name included.
///
/// Real usage and delta events are a few hundred bytes; the only large events are the final
/// ones that repeat the whole output (Responses API `response.completed`), and 1 MiB holds
/// a maximal text output several times over. The cap bounds memory per stream whatever the
/// server sends.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Counts above this are rejected: no response comes near it, and with it every sum of a
/// few counts stays exact (also as a JavaScript number) and far from `u64` overflow.
const MAX_COUNT: u64 = 1 << 53;

/// Event names longer than this are cut; the longest one used here is 41 bytes.
const MAX_EVENT_NAME: usize = 64;

/// Buffers that grew for one large event are given back down to this after it.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// The tokens a response used, in one meaning for every provider (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Every input token, including cached and cache-creation tokens.
    pub prompt_tokens: u64,
    /// Input tokens read from the provider's prompt cache (OpenAI
    /// `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`); they are
    /// usually billed at a lower price.
    pub cached_prompt_tokens: u64,
    /// Input tokens written to the prompt cache (Anthropic `cache_creation_input_tokens`;
    /// 0 for OpenAI); usually billed above the normal input price.
    pub cache_creation_tokens: u64,
    /// Every generated token, including reasoning tokens.
    pub output_tokens: u64,
    /// Generated tokens spent on reasoning (OpenAI `reasoning_tokens`; for Anthropic, which
    /// does not report them, the count of streamed `thinking` deltas, else 0).
    pub reasoning_tokens: u64,
    /// How far the numbers can be trusted.
    pub source: UsageSource,
}

/// Where the numbers of a [`Usage`] come from, so the settling side knows whether it holds
/// the server's bill, an estimate, or a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The server reported the counts (a body's `usage`, or a stream's usage event that
    /// ended a complete stream).
    Reported,
    /// The stream ended properly without a (complete) usage report; the output was counted
    /// from the streamed deltas with the host's counter. The prompt fields hold what the
    /// server did report (Anthropic's `message_start`), else 0: OpenAI streams say nothing
    /// about the prompt without `include_usage`.
    Counted,
    /// The stream ended before its terminal event, or events were lost (oversized or not
    /// the expected JSON): the numbers are what was seen, a lower bound. Also the default,
    /// since zero is a lower bound of anything.
    #[default]
    Partial,
}

impl UsageSource {
    /// The name, as in the JSON forms (`reported`, `counted`, `partial`); bindings show it.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Counted => "counted",
            UsageSource::Partial => "partial",
        }
    }

    /// The source of that name, for bindings that take usage from their host.
    pub fn from_name(name: &str) -> Option<UsageSource> {
        [
            UsageSource::Reported,
            UsageSource::Counted,
            UsageSource::Partial,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The response format: which API produced the body or stream.
///
/// Each names its counts differently and streams differently, and the route already knows
/// which one it serves, so the host says it rather than the tracker guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Provider {
    /// OpenAI `/v1/chat/completions` (and servers compatible with it).
    OpenAiChat,
    /// OpenAI legacy `/v1/completions`.
    OpenAiCompletions,
    /// OpenAI Responses API, `/v1/responses`.
    OpenAiResponses,
    /// OpenAI `/v1/embeddings` (bodies only; embeddings do not stream).
    OpenAiEmbeddings,
    /// Anthropic `/v1/messages`.
    Anthropic,
}

impl Provider {
    /// The name bindings show (`openai_chat`, `anthropic`, ...). Not the serde form,
    /// which splits `OpenAi` into `open_ai`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAiChat => "openai_chat",
            Provider::OpenAiCompletions => "openai_completions",
            Provider::OpenAiResponses => "openai_responses",
            Provider::OpenAiEmbeddings => "openai_embeddings",
            Provider::Anthropic => "anthropic",
        }
    }

    fn is_openai_family(self) -> bool {
        !matches!(self, Provider::Anthropic)
    }
}

/// Reads the server's usage report from a complete JSON response body.
///
/// Only the `usage` object is materialized; everything else in the body (which can be
/// megabytes of output) is skipped by the parser without building values, and strings it
/// skips are not checked for valid UTF-8 (the text is not this function's business; keys
/// and the usage object are checked).
///
/// # Errors
///
/// [`UsageErrorKind::MalformedJson`] when the body is not JSON, [`UsageErrorKind::Missing`]
/// when it has no `usage` or `usage` lacks the provider's input or output count,
/// [`UsageErrorKind::WrongType`] for non-numeric counts or a non-object body or `usage`, and
/// [`UsageErrorKind::OutOfRange`] for negative, fractional or absurdly large counts.
pub fn usage_from_body(provider: Provider, body: &[u8]) -> Result<Usage, UsageError> {
    let parsed: BodyWire = serde_json::from_slice(body).map_err(json_error)?;
    match parsed.usage {
        Some(u) => u.to_usage(provider),
        None => Err(UsageError::new(
            UsageErrorKind::Missing,
            "the body has no `usage` object",
        )),
    }
}

fn json_error(e: serde_json::Error) -> UsageError {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Data => UsageErrorKind::WrongType,
        Category::Syntax | Category::Eof | Category::Io => UsageErrorKind::MalformedJson,
    };
    UsageError::new(kind, e.to_string())
}

/// Follows one streamed response and yields its [`Usage`].
///
/// Feed it the raw bytes of a `text/event-stream` body in any pieces (a chunk may end inside
/// a UTF-8 sequence, inside a field name, or between `\r` and `\n`); the result does not
/// depend on where the pieces end. Memory stays bounded by one pending event (see
/// [`MAX_EVENT_BYTES`]). The tracker is `Send`, so it can follow the body across tasks.
///
/// ```
/// use edgeward::cost::usage::{Provider, UsageSource, UsageTracker};
///
/// let mut t = UsageTracker::new(Provider::OpenAiChat, Box::new(|s: &str| s.split_whitespace().count() as u64));
/// t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there\"}}]}\n\nda");
/// t.feed(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
/// let u = t.finish();
/// assert_eq!((u.prompt_tokens, u.output_tokens, u.source), (9, 3, UsageSource::Reported));
/// ```
pub struct UsageTracker {
    provider: Provider,
    counter: Box<dyn Fn(&str) -> u64 + Send + Sync>,
    sse: SseParser,
    acc: Accounting,
}

impl fmt::Debug for UsageTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTracker")
            .field("provider", &self.provider)
            .field("usage_so_far", &self.usage_so_far())
            .field("skipped_events", &self.sse.skipped)
            .field("malformed_events", &self.acc.malformed)
            .finish()
    }
}

impl UsageTracker {
    /// A tracker for one streamed response of `provider`.
    ///
    /// `counter` returns the number of tokens in a piece of text; the engine passes the
    /// route's tokenizer or estimator so that counted output matches how the request was
    /// priced. It is only called when the stream carries text deltas.
    pub fn new(
        provider: Provider,
        counter: Box<dyn Fn(&str) -> u64 + Send + Sync>,
    ) -> UsageTracker {
        UsageTracker {
            provider,
            counter,
            sse: SseParser::default(),
            acc: Accounting::default(),
        }
    }

    /// Consumes the next piece of the stream, exactly as received.
    pub fn feed(&mut self, chunk: &[u8]) {
        let provider = self.provider;
        let counter = &*self.counter;
        let acc = &mut self.acc;
        self.sse.feed(chunk, &mut |name, data, whole| {
            acc.on_event(provider, counter, name, data, whole)
        });
    }

    /// The usage of the whole stream; call it at the end of the body, whether the stream
    /// ended properly or was cut off.
    ///
    /// A last event that lacks its closing blank line is still read (unlike the SSE spec,
    /// which drops it): its payload is JSON, which either parses whole or, if the stream was
    /// cut inside it, is rejected, so nothing half-read is ever counted.
    pub fn finish(mut self) -> Usage {
        let provider = self.provider;
        let counter = &*self.counter;
        let acc = &mut self.acc;
        self.sse
            .finish(&mut |name, data, whole| acc.on_event(provider, counter, name, data, whole));
        self.usage_so_far()
    }

    /// The usage of what has been fed so far: what [`finish`](UsageTracker::finish) would
    /// return if the stream ended at the last complete event. Lets a host account for a
    /// long stream while it runs, or stop it when a budget runs out.
    pub fn usage_so_far(&self) -> Usage {
        self.acc.usage(self.provider, self.sse.skipped)
    }

    /// How many events were dropped because they exceeded [`MAX_EVENT_BYTES`].
    pub fn skipped_events(&self) -> u64 {
        self.sse.skipped
    }

    /// How many events carried data that was not the JSON this provider sends (invalid
    /// JSON, wrong types, counts out of range); they were ignored.
    pub fn malformed_events(&self) -> u64 {
        self.acc.malformed
    }
}

// ---------------------------------------------------------------------------------------
// Server-sent events: lines and fields, per the WHATWG HTML "event stream" grammar.
// ---------------------------------------------------------------------------------------

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Receives each event: its name, then its data and `true`, or, for an event dropped for
/// size, the end of its raw lines and `false`.
type OnEvent<'a> = dyn FnMut(&[u8], &[u8], bool) + 'a;

/// The incremental event-stream parser: holds at most one line and one event's data.
#[derive(Default)]
struct SseParser {
    /// Bytes of the current line not yet ended (only when a line spans chunks).
    line: Vec<u8>,
    /// The current event's `data` values, each followed by `\n`.
    data: Vec<u8>,
    /// The current event's `event` field.
    event: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting this one ends nothing.
    pending_cr: bool,
    /// Bytes of a leading byte-order mark seen (0..=3), or `BOM_DONE`.
    bom: u8,
    /// The current event exceeded the cap; its lines are discarded until its blank line.
    oversized: bool,
    /// In the oversized state: the current (discarded) line has bytes.
    line_nonempty: bool,
    /// Events dropped for size.
    skipped: u64,
    /// In the oversized state: the last bytes of the event's raw lines (from the line that
    /// overflowed on, each line followed by `\n`), at most `2 * OVERSIZED_TAIL`.
    tail: Vec<u8>,
}

/// How much of an oversized event's end is kept, to find a usage report there.
const OVERSIZED_TAIL: usize = 64 * 1024;

const BOM_DONE: u8 = 4;

impl SseParser {
    fn feed(&mut self, mut chunk: &[u8], on_event: &mut OnEvent<'_>) {
        if self.bom != BOM_DONE {
            while (self.bom as usize) < BOM.len() && !chunk.is_empty() {
                if chunk[0] != BOM[self.bom as usize] {
                    break;
                }
                self.bom += 1;
                chunk = &chunk[1..];
            }
            if self.bom as usize == BOM.len() {
                self.bom = BOM_DONE;
            } else if chunk.is_empty() {
                return; // still a possible BOM prefix
            } else {
                // Not a BOM after all: the bytes matched so far are stream content.
                let seen = self.bom as usize;
                self.bom = BOM_DONE;
                self.feed_lines(&BOM[..seen], on_event);
            }
        }
        self.feed_lines(chunk, on_event);
    }

    fn feed_lines(&mut self, mut chunk: &[u8], on_event: &mut OnEvent<'_>) {
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(i) = memchr2(b'\n', b'\r', chunk) {
            self.end_line(&chunk[..i], on_event);
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => chunk = &chunk[i + 2..],
                    Some(_) => chunk = &chunk[i + 1..],
                    None => {
                        self.pending_cr = true;
                        return;
                    }
                }
            } else {
                chunk = &chunk[i + 1..];
            }
        }
        self.push_line_bytes(chunk);
    }

    fn finish(&mut self, on_event: &mut OnEvent<'_>) {
        if self.bom != BOM_DONE {
            let seen = self.bom as usize;
            self.bom = BOM_DONE;
            self.feed_lines(&BOM[..seen], on_event);
        }
        if !self.line.is_empty() || self.line_nonempty {
            self.end_line(&[], on_event);
        }
        // The stream's end closes the last event (see `UsageTracker::finish`).
        self.end_line(&[], on_event);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.oversized {
            self.line_nonempty = true;
            self.keep_tail(bytes);
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > MAX_EVENT_BYTES {
            self.start_oversized(bytes);
            self.line_nonempty = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Drops the buffered event; keeps its name and, as the start of the tail, the line
    /// read so far plus `more` (so the tail is the same wherever the chunks ended).
    fn start_oversized(&mut self, more: &[u8]) {
        self.oversized = true;
        self.tail.clear();
        let line = std::mem::take(&mut self.line);
        self.keep_tail(&line);
        self.line = line;
        self.line.clear();
        self.keep_tail(more);
        self.data.clear();
        self.line.shrink_to(RETAINED_CAPACITY);
        self.data.shrink_to(RETAINED_CAPACITY);
    }

    fn keep_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= OVERSIZED_TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - OVERSIZED_TAIL..]);
            return;
        }
        if self.tail.len() + bytes.len() > 2 * OVERSIZED_TAIL {
            let drop = self.tail.len() + bytes.len() - OVERSIZED_TAIL;
            self.tail.drain(..drop);
        }
        self.tail.extend_from_slice(bytes);
    }

    fn end_oversized(&mut self, on_event: &mut OnEvent<'_>) {
        self.oversized = false;
        self.skipped += 1;
        let start = self.tail.len().saturating_sub(OVERSIZED_TAIL);
        on_event(&self.event, &self.tail[start..], false);
        self.event.clear();
        self.tail.clear();
        self.tail.shrink_to(0);
    }

    /// Ends the current line, whose last bytes (`tail`) are in the chunk being fed.
    fn end_line(&mut self, tail: &[u8], on_event: &mut OnEvent<'_>) {
        if !self.oversized && self.line.is_empty() {
            // The whole line is in this chunk: no copy.
            self.process_line(tail, on_event);
            return;
        }
        self.push_line_bytes(tail);
        if self.oversized {
            let blank = !self.line_nonempty;
            self.line_nonempty = false;
            if blank {
                self.end_oversized(on_event);
            } else {
                self.keep_tail(b"\n");
            }
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.process_line(&line, on_event);
        self.line = line;
        self.line.clear();
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut OnEvent<'_>) {
        debug_assert!(!self.oversized);
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        // The same bound as `push_line_bytes` applies to a line that was never buffered,
        // so where the chunks end cannot change which events are kept.
        if self.data.len() + line.len() > MAX_EVENT_BYTES {
            self.start_oversized(line);
            self.keep_tail(b"\n");
            self.line_nonempty = false; // this line has ended
            return;
        }
        if line[0] == b':' {
            return; // a comment (keep-alive)
        }
        let (name, value) = match memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                // Fits: `value` and its `\n` are no longer than the line.
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event
                    .extend_from_slice(&value[..value.len().min(MAX_EVENT_NAME)]);
            }
            // `id` and `retry` matter for reconnecting, not for usage; other names are
            // ignored as the spec says.
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut OnEvent<'_>) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop(); // the `\n` after the last data line
        on_event(&self.event, &self.data, true);
        self.data.clear();
        self.event.clear();
        if self.data.capacity() > RETAINED_CAPACITY {
            self.data.shrink_to(RETAINED_CAPACITY);
        }
        if self.line.capacity() > RETAINED_CAPACITY {
            self.line.shrink_to(RETAINED_CAPACITY);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Accounting: what the events say.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Accounting {
    /// Output tokens counted from text deltas.
    counted_output: u64,
    /// The part of `counted_output` that was reasoning text.
    counted_reasoning: u64,
    /// OpenAI family: the latest usage the server reported.
    reported: Option<Usage>,
    /// Anthropic: the latest reported input counts.
    anthropic_input: Option<u64>,
    anthropic_cache_creation: Option<u64>,
    anthropic_cache_read: Option<u64>,
    /// Anthropic: the latest cumulative output count of a `message_delta`.
    anthropic_output: Option<u64>,
    /// The provider's terminal event was seen: the stream is complete.
    terminal: bool,
    /// Events whose data was not the expected JSON.
    malformed: u64,
}

impl Accounting {
    fn on_event(
        &mut self,
        provider: Provider,
        counter: &dyn Fn(&str) -> u64,
        name: &[u8],
        data: &[u8],
        whole: bool,
    ) {
        if !whole {
            self.on_oversized(provider, name, data);
            return;
        }
        if data.iter().all(u8::is_ascii_whitespace) {
            return; // an empty keep-alive event carries nothing to parse
        }
        if data == b"[DONE]" {
            if provider.is_openai_family() {
                self.terminal = true;
            }
            return;
        }
        // The event-stream format is UTF-8 with invalid sequences replaced (WHATWG); doing
        // the same here keeps one stray byte from costing a whole event.
        // `from_utf8` first: its ASCII fast path is several times quicker than the lossy
        // decoder, which only runs for the rare event that needs a replacement.
        let text = match std::str::from_utf8(data) {
            Ok(t) => Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(data),
        };
        let ok = match provider {
            Provider::OpenAiChat | Provider::OpenAiCompletions | Provider::OpenAiEmbeddings => {
                self.on_chat_chunk(provider, counter, &text)
            }
            Provider::OpenAiResponses => self.on_responses_event(counter, name, &text),
            Provider::Anthropic => self.on_anthropic_event(counter, name, &text),
        };
        if !ok {
            self.malformed += 1;
        }
    }

    /// An event too large to buffer. The Responses API's terminal events repeat the whole
    /// output (generated images as base64 included), so they are the one kind that can
    /// legitimately exceed the cap; their `usage` comes after the output, near the end, and
    /// is looked for in the kept tail.
    fn on_oversized(&mut self, provider: Provider, name: &[u8], tail: &[u8]) {
        if provider != Provider::OpenAiResponses
            || !matches!(
                name,
                b"response.completed" | b"response.incomplete" | b"response.failed"
            )
        {
            return;
        }
        if let Some(u) = usage_in_tail(tail) {
            self.reported = Some(u);
            self.terminal = true;
        }
    }

    fn add_output(&mut self, counter: &dyn Fn(&str) -> u64, text: &str, reasoning: bool) {
        if text.is_empty() {
            return;
        }
        let n = counter(text);
        self.counted_output = self.counted_output.saturating_add(n);
        if reasoning {
            self.counted_reasoning = self.counted_reasoning.saturating_add(n);
        }
    }

    fn on_chat_chunk(
        &mut self,
        provider: Provider,
        counter: &dyn Fn(&str) -> u64,
        text: &str,
    ) -> bool {
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(text) else {
            return false;
        };
        let reported = match &chunk.usage {
            Some(u) => match u.to_usage(provider) {
                Ok(u) => Some(u),
                Err(_) => return false,
            },
            None => None,
        };
        let choices = chunk.choices.unwrap_or_default();
        for c in &choices {
            if let Some(t) = &c.text {
                self.add_output(counter, &t.0, false);
            }
            let Some(d) = &c.delta else { continue };
            for t in [&d.content, &d.refusal].into_iter().flatten() {
                self.add_output(counter, &t.0, false);
            }
            for t in [&d.reasoning_content, &d.reasoning].into_iter().flatten() {
                self.add_output(counter, &t.0, true);
            }
            let calls = d
                .tool_calls
                .iter()
                .flatten()
                .filter_map(|c| c.function.as_ref());
            for f in calls.chain(d.function_call.as_ref()) {
                for t in [&f.name, &f.arguments].into_iter().flatten() {
                    self.add_output(counter, &t.0, false);
                }
            }
        }
        if let Some(u) = reported {
            self.reported = Some(u);
            // The include_usage chunk comes last and has no choices; servers that report
            // running usage on every chunk (with choices) end with `[DONE]`.
            if choices.is_empty() {
                self.terminal = true;
            }
        }
        true
    }

    fn on_responses_event(
        &mut self,
        counter: &dyn Fn(&str) -> u64,
        name: &[u8],
        text: &str,
    ) -> bool {
        let Ok(ev) = serde_json::from_str::<ResponsesEvent<'_>>(text) else {
            return false;
        };
        let kind: &[u8] = match &ev.kind {
            Some(k) => k.0.as_bytes(),
            None => name,
        };
        match kind {
            b"response.output_text.delta"
            | b"response.refusal.delta"
            | b"response.function_call_arguments.delta"
            | b"response.custom_tool_call_input.delta"
            | b"response.mcp_call_arguments.delta"
            | b"response.code_interpreter_call_code.delta" => {
                if let Some(AnyText(Some(d))) = &ev.delta {
                    self.add_output(counter, d, false);
                }
            }
            b"response.reasoning_text.delta" | b"response.reasoning_summary_text.delta" => {
                if let Some(AnyText(Some(d))) = &ev.delta {
                    self.add_output(counter, d, true);
                }
            }
            b"response.completed" | b"response.incomplete" | b"response.failed" => {
                if let Some(u) = ev.response.and_then(|r| r.usage) {
                    match u.to_usage(Provider::OpenAiResponses) {
                        Ok(u) => self.reported = Some(u),
                        Err(_) => return false,
                    }
                }
                self.terminal = true;
            }
            _ => {}
        }
        true
    }

    fn on_anthropic_event(
        &mut self,
        counter: &dyn Fn(&str) -> u64,
        name: &[u8],
        text: &str,
    ) -> bool {
        let Ok(ev) = serde_json::from_str::<AnthropicEvent<'_>>(text) else {
            return false;
        };
        let kind: &[u8] = match &ev.kind {
            Some(k) => k.0.as_bytes(),
            None => name,
        };
        let checked = |c: Option<Count>| c.map(Count::get).transpose();
        match kind {
            b"message_start" => {
                let Some(u) = ev.message.and_then(|m| m.usage) else {
                    return true;
                };
                let (Ok(input), Ok(creation), Ok(read)) = (
                    checked(u.input_tokens),
                    checked(u.cache_creation_input_tokens),
                    checked(u.cache_read_input_tokens),
                ) else {
                    return false;
                };
                // The start's `output_tokens` is a placeholder; the deltas tell the rest.
                self.anthropic_input = input.or(self.anthropic_input);
                self.anthropic_cache_creation = creation.or(self.anthropic_cache_creation);
                self.anthropic_cache_read = read.or(self.anthropic_cache_read);
            }
            b"content_block_delta" => {
                if let Some(d) = &ev.delta {
                    for t in [&d.text, &d.partial_json].into_iter().flatten() {
                        self.add_output(counter, &t.0, false);
                    }
                    if let Some(t) = &d.thinking {
                        self.add_output(counter, &t.0, true);
                    }
                }
            }
            b"message_delta" => {
                let Some(u) = ev.usage else { return true };
                let (Ok(input), Ok(creation), Ok(read), Ok(output)) = (
                    checked(u.input_tokens),
                    checked(u.cache_creation_input_tokens),
                    checked(u.cache_read_input_tokens),
                    checked(u.output_tokens),
                ) else {
                    return false;
                };
                // Counts here are cumulative and, when present, supersede the start's.
                self.anthropic_input = input.or(self.anthropic_input);
                self.anthropic_cache_creation = creation.or(self.anthropic_cache_creation);
                self.anthropic_cache_read = read.or(self.anthropic_cache_read);
                self.anthropic_output = output.or(self.anthropic_output);
            }
            b"message_stop" => self.terminal = true,
            _ => {}
        }
        true
    }

    fn usage(&self, provider: Provider, skipped: u64) -> Usage {
        let lost = skipped > 0 || self.malformed > 0;
        if provider == Provider::Anthropic {
            let input = self.anthropic_input.unwrap_or(0);
            let creation = self.anthropic_cache_creation.unwrap_or(0);
            let read = self.anthropic_cache_read.unwrap_or(0);
            let output = self.anthropic_output.unwrap_or(self.counted_output);
            let reported = self.anthropic_input.is_some() && self.anthropic_output.is_some();
            let source = if !self.terminal || (!reported && lost) {
                UsageSource::Partial
            } else if reported {
                UsageSource::Reported
            } else {
                UsageSource::Counted
            };
            return Usage {
                prompt_tokens: input + creation + read,
                cached_prompt_tokens: read,
                cache_creation_tokens: creation,
                output_tokens: output,
                reasoning_tokens: self.counted_reasoning.min(output),
                source,
            };
        }
        if let Some(mut u) = self.reported {
            u.source = if self.terminal {
                UsageSource::Reported
            } else {
                UsageSource::Partial
            };
            return u;
        }
        Usage {
            output_tokens: self.counted_output,
            reasoning_tokens: self.counted_reasoning,
            source: if self.terminal && !lost {
                UsageSource::Counted
            } else {
                UsageSource::Partial
            },
            ..Usage::default()
        }
    }
}

/// Finds the last `"usage":{…}` member in the end of an oversized Responses event.
///
/// In valid JSON the bytes `"usage":` with an unescaped first quote can only be an object
/// key (inside a string the second quote would have to be escaped too), and the response's
/// `usage` is its last object-valued member named so (only `user` and `metadata`, a map of
/// strings, follow it). A candidate whose preceding backslashes reach the start of the
/// tail cannot be judged and is not used.
fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\":";
    let pos = memchr::memmem::rfind(tail, KEY)?;
    let backslashes = tail[..pos]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    if backslashes % 2 == 1 || backslashes == pos {
        return None;
    }
    let rest = &tail[pos + KEY.len()..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[start] != b'{' {
        return None; // `"usage":null`
    }
    let mut de = serde_json::Deserializer::from_slice(&rest[start..]);
    let wire = WireUsage::deserialize(&mut de).ok()?;
    wire.to_usage(Provider::OpenAiResponses).ok()
}

// ---------------------------------------------------------------------------------------
// Wire formats. Only the fields read are declared; serde skips the rest without building
// values. Text fields borrow from the event when they hold no escapes.
// ---------------------------------------------------------------------------------------

/// A token count as the server wrote it. Out-of-range numbers are kept as such (rather than
/// failing inside serde) so they can be told apart from wrong types.
#[derive(Debug, Clone, Copy)]
enum Count {
    Valid(u64),
    OutOfRange,
}

impl Count {
    fn get(self) -> Result<u64, UsageError> {
        match self {
            Count::Valid(n) => Ok(n),
            Count::OutOfRange => Err(UsageError::new(
                UsageErrorKind::OutOfRange,
                "a token count is negative, fractional or above 2^53",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(if v <= MAX_COUNT {
                    Count::Valid(v)
                } else {
                    Count::OutOfRange
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Ok(Count::OutOfRange),
                }
            }
            // Also numbers beyond u64, which serde_json reads as floats.
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
                Ok(Count::OutOfRange)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that borrows from the input when it can (`Option<Cow<str>>` never does).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// A field that is text in the events we count and something else in others (the Responses
/// API's `delta`): strings are kept, any other value is skipped.
struct AnyText<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for AnyText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnyText<'a>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = AnyText<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<AnyText<'a>, E> {
                Ok(AnyText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AnyText<'a>, E> {
                Ok(AnyText(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyText<'a>, E> {
                Ok(AnyText(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyText<'a>, E> {
                Ok(AnyText(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyText<'a>, E> {
                Ok(AnyText(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyText<'a>, E> {
                Ok(AnyText(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<AnyText<'a>, E> {
                Ok(AnyText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<AnyText<'a>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AnyText<'a>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyText(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct BodyWire {
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<Count>,
    reasoning_tokens: Option<Count>,
}

/// Every count name any of the providers uses; each provider reads its own.
#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<Count>,
    completion_tokens: Option<Count>,
    total_tokens: Option<Count>,
    input_tokens: Option<Count>,
    output_tokens: Option<Count>,
    cache_creation_input_tokens: Option<Count>,
    cache_read_input_tokens: Option<Count>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

fn required(c: Option<Count>, name: &str) -> Result<u64, UsageError> {
    match c {
        Some(c) => c.get(),
        None => Err(UsageError::new(
            UsageErrorKind::Missing,
            format!("`usage` has no `{name}`"),
        )),
    }
}

fn optional(c: Option<Count>) -> Result<u64, UsageError> {
    c.map_or(Ok(0), Count::get)
}

fn detail(d: &Option<Details>, pick: fn(&Details) -> Option<Count>) -> Result<u64, UsageError> {
    optional(d.as_ref().and_then(pick))
}

impl WireUsage {
    fn to_usage(&self, provider: Provider) -> Result<Usage, UsageError> {
        let cached = |d: &Details| d.cached_tokens;
        let reasoning = |d: &Details| d.reasoning_tokens;
        let (prompt, cached, creation, output, reasoning) = match provider {
            Provider::OpenAiChat | Provider::OpenAiCompletions => (
                required(self.prompt_tokens, "prompt_tokens")?,
                detail(&self.prompt_tokens_details, cached)?,
                0,
                required(self.completion_tokens, "completion_tokens")?,
                detail(&self.completion_tokens_details, reasoning)?,
            ),
            Provider::OpenAiResponses => (
                required(self.input_tokens, "input_tokens")?,
                detail(&self.input_tokens_details, cached)?,
                0,
                required(self.output_tokens, "output_tokens")?,
                detail(&self.output_tokens_details, reasoning)?,
            ),
            Provider::OpenAiEmbeddings => {
                let prompt = match self.prompt_tokens {
                    Some(c) => c.get()?,
                    None => required(self.total_tokens, "prompt_tokens")?,
                };
                (prompt, 0, 0, 0, 0)
            }
            Provider::Anthropic => {
                let input = required(self.input_tokens, "input_tokens")?;
                let creation = optional(self.cache_creation_input_tokens)?;
                let read = optional(self.cache_read_input_tokens)?;
                // Each is at most 2^53, so the sum cannot overflow.
                (
                    input + creation + read,
                    read,
                    creation,
                    required(self.output_tokens, "output_tokens")?,
                    0,
                )
            }
        };
        Ok(Usage {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached.min(prompt),
            cache_creation_tokens: creation,
            output_tokens: output,
            reasoning_tokens: reasoning.min(output),
            source: UsageSource::Reported,
        })
    }
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow)]
    choices: Option<Vec<ChatChoice<'a>>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow)]
    delta: Option<ChatDelta<'a>>,
    /// Legacy completions stream `text` instead of a delta.
    #[serde(borrow)]
    text: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow)]
    content: Option<Text<'a>>,
    #[serde(borrow)]
    refusal: Option<Text<'a>>,
    /// Reasoning text as several OpenAI-compatible servers stream it.
    #[serde(borrow)]
    reasoning_content: Option<Text<'a>>,
    #[serde(borrow)]
    reasoning: Option<Text<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    /// The deprecated single function call.
    #[serde(borrow)]
    function_call: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    delta: Option<AnyText<'a>>,
    response: Option<ResponseObject>,
}

#[derive(Deserialize)]
struct ResponseObject {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    message: Option<AnthropicMessage>,
    #[serde(borrow)]
    delta: Option<AnthropicDelta<'a>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow)]
    text: Option<Text<'a>>,
    #[serde(borrow)]
    partial_json: Option<Text<'a>>,
    #[serde(borrow)]
    thinking: Option<Text<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_distinct_and_round_trip() {
        let json = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let providers = [
            Provider::OpenAiChat,
            Provider::OpenAiCompletions,
            Provider::OpenAiResponses,
            Provider::OpenAiEmbeddings,
            Provider::Anthropic,
        ];
        let names: std::collections::HashSet<_> = providers.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), providers.len());
        for s in [
            UsageSource::Reported,
            UsageSource::Counted,
            UsageSource::Partial,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
            assert_eq!(UsageSource::from_name(s.as_str()), Some(s));
        }
        assert_eq!(UsageSource::from_name("guessed"), None);
    }

    type Events = Vec<(Vec<u8>, Vec<u8>)>;

    fn incremental(input: &[u8], cuts: &[usize]) -> (Events, u64) {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let mut on = |n: &[u8], d: &[u8], whole: bool| {
            if whole {
                out.push((n.to_vec(), d.to_vec()))
            }
        };
        let mut at = 0;
        for &c in cuts {
            p.feed(&input[at..c], &mut on);
            at = c;
        }
        p.feed(&input[at..], &mut on);
        p.finish(&mut on);
        (out, p.skipped)
    }

    /// The event-stream grammar read the obvious way, on the whole input at once: the oracle
    /// for the incremental parser (with the same end-of-stream rule: the end closes the
    /// last line and the last event).
    fn naive(input: &[u8]) -> Events {
        let input = input.strip_prefix(&BOM[..]).unwrap_or(input);
        let mut lines = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' => {
                    lines.push(std::mem::take(&mut cur));
                    if input.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b'\n' => lines.push(std::mem::take(&mut cur)),
                b => cur.push(b),
            }
            i += 1;
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        lines.push(Vec::new());
        let (mut out, mut data, mut event) = (Vec::new(), Vec::<u8>::new(), Vec::new());
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    out.push((event.clone(), data.clone()));
                }
                data.clear();
                event.clear();
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &[][..]),
            };
            if name == b"data" {
                data.extend_from_slice(value);
                data.push(b'\n');
            } else if name == b"event" {
                event = value[..value.len().min(MAX_EVENT_NAME)].to_vec();
            }
        }
        out
    }

    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"data"[..]),
            Just(&b"event"[..]),
            Just(&b"id"[..]),
            Just(&b":"[..]),
            Just(&b" "[..]),
            Just(&b"\r"[..]),
            Just(&b"\n"[..]),
            Just(&b"\r\n"[..]),
            Just(&b"x"[..]),
            Just(&b"{\"a\":1}"[..]),
            Just("é🙂".as_bytes()),
            Just(&b"\xEF\xBB\xBF"[..]),
            Just(&b"\xEF"[..]),
            Just(&b"\xFF"[..]),
        ];
        proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The incremental parser, split anywhere, finds exactly the oracle's events.
        #[test]
        fn sse_parser_matches_the_naive_oracle(
            input in stream_bytes(),
            raw_cuts in proptest::collection::vec(0usize..4096, 0..12),
        ) {
            let mut cuts: Vec<usize> = raw_cuts.iter().map(|&c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let (got, skipped) = incremental(&input, &cuts);
            prop_assert_eq!(skipped, 0);
            prop_assert_eq!(got, naive(&input));
        }
    }

    #[test]
    fn memory_stays_bounded_by_one_event() {
        let mut p = SseParser::default();
        let mut n = 0;
        let mut on = |_: &[u8], _: &[u8], whole: bool| n += usize::from(whole);
        p.feed(b"data: ", &mut on);
        let block = vec![b'x'; 64 * 1024];
        let mut max_capacity = 0;
        for _ in 0..160 {
            p.feed(&block, &mut on);
            max_capacity = max_capacity.max(p.line.capacity() + p.data.capacity());
        }
        assert!(max_capacity <= 2 * MAX_EVENT_BYTES, "{max_capacity}");
        assert!(p.line.capacity() + p.data.capacity() <= 2 * RETAINED_CAPACITY);
        p.feed(b"\n\ndata: ok\n\n", &mut on);
        assert_eq!(p.skipped, 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn an_event_of_exactly_the_cap_is_kept() {
        // The raw line `data: ` + value is exactly the cap.
        let value = vec![b'v'; MAX_EVENT_BYTES - 6];
        let mut s = b"data: ".to_vec();
        s.extend_from_slice(&value);
        s.extend_from_slice(b"\n\n");
        for cut in [0, 3, 7, s.len() / 2, s.len() - 1] {
            let (ev, skipped) = incremental(&s, &[cut]);
            assert_eq!((ev.len(), skipped), (1, 0), "cut {cut}");
            assert_eq!(ev[0].1, value);
        }
        let mut s2 = b"data: v".to_vec();
        s2.extend_from_slice(&s[6..]);
        for cut in [0, 3, 7, s2.len() / 2, s2.len() - 1] {
            assert_eq!(incremental(&s2, &[cut]), (vec![], 1), "cut {cut}");
        }
    }
}
