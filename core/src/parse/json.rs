//! A streaming JSON walker that emits string leaves and object keys as fields.
//!
//! The walker validates the document (RFC 8259) in one forward pass with an explicit stack
//! of open containers, so nesting depth costs heap (reused) rather than call stack, and it
//! never builds a tree. Strings without backslashes are zero-copy slices of the input; an
//! escaped string is decoded into a buffer owned by the current nesting level, which stays
//! valid while the string is walked again as JSON (JSON inside a JSON string).
//!
//! Choices where RFC 8259 or the back ends leave room:
//! - A leading UTF-8 byte order mark is skipped, as several server stacks accept one.
//! - Invalid UTF-8 inside a string is not a syntax error: the field is flagged
//!   [`FieldFlags::INVALID_UTF8`] (reporting [`Finding::InvalidUtf8`]) and the walk goes on,
//!   so the bytes after it are still inspected. Raw control characters in strings are
//!   syntax errors, as RFC 8259 says.
//! - Past `max_depth`, the deeper part is still validated, with one bit per level on a bit
//!   stack, but nothing in it is emitted; [`Finding::JsonTooDeep`] is reported once and the
//!   walk continues after it. Skipping instead of stopping keeps the fields that follow a
//!   deep decoy inspected.
//! - Duplicate keys are detected among the first [`DUP_WINDOW`] keys of each object: every
//!   key is compared (by a 64-bit hash) with those, so the check is bounded per key. A
//!   false report needs a hash collision.
//! - JSON inside a JSON string is walked at most [`MAX_NESTED_LEVELS`] deep whatever the
//!   limits say, because each level is one native call frame. (Real nesting cannot go
//!   much deeper anyway: every level doubles the backslashes a quote needs.) Inner
//!   documents report no syntax findings of their own (invalid inner JSON is just text);
//!   the emitter's limits and the findings implied by field flags still apply.

use memchr::{memchr2, memchr2_iter};

use super::{utf8_flags, Emitter, ParseScratch};
use crate::field::{ApiParam, Field, FieldFlags, FieldKind, Finding, Role};

/// How many leading keys of an object each key is compared with to detect duplicates.
pub const DUP_WINDOW: usize = 32;

/// Hard cap on levels of JSON inside JSON strings, whatever `max_nested_json` says.
pub const MAX_NESTED_LEVELS: u32 = 8;

/// Chat awareness mode for the JSON walker: which inference API a body follows, so that
/// prompt text fields can be tagged with their chat [`Role`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ChatShape {
    /// Plain JSON: no roles.
    None,
    /// OpenAI Chat Completions (`messages`), and legacy Completions (`prompt`).
    OpenaiChat,
    /// OpenAI Responses (`instructions`, `input`).
    OpenaiResponses,
    /// OpenAI Embeddings (`input`).
    OpenaiEmbeddings,
    /// Anthropic Messages (`system`, `messages` with content blocks).
    AnthropicMessages,
}

/// The JSON walker's reusable buffers.
#[derive(Debug, Default)]
pub(crate) struct JsonScratch {
    /// The JSON pointer of the current position, shared by all nesting levels: an inner
    /// document's pointers are appended after the outer one and a `#`.
    ptr: Vec<u8>,
    /// One set of buffers per level of JSON-in-a-string (index 0 is the body itself).
    levels: Vec<Level>,
}

impl JsonScratch {
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.ptr.capacity()
            + self.levels.capacity()
            + self
                .levels
                .iter()
                .map(|l| {
                    l.frames.capacity()
                        + l.deep.capacity()
                        + l.keys.capacity()
                        + l.buf.capacity()
                        + l.key_buf.capacity()
                })
                .sum::<usize>()
    }
}

#[derive(Debug, Default)]
struct Level {
    /// Open containers up to `max_depth`.
    frames: Vec<Frame>,
    /// Open containers beyond `max_depth`, one bit each (1 = object).
    deep: Vec<u64>,
    /// Key hashes of the open objects' first [`DUP_WINDOW`] keys, stacked.
    keys: Vec<u64>,
    /// Decoded string values.
    buf: Vec<u8>,
    /// Decoded object keys.
    key_buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Length of the pointer buffer at this container (its own pointer).
    ptr_len: usize,
    /// Where this object's key hashes start in `Level::keys`.
    keys_start: usize,
    /// Keys seen so far (objects) or the current element's index (arrays).
    count: u64,
    is_obj: bool,
    ctx: Ctx,
}

/// Where in a chat-shaped document a value sits; decides the role of string leaves.
///
/// Each value's context is computed from its parent's and its key or index, so the
/// tagging is a small tree automaton that costs one match per value. The `*Pending`
/// contexts mark objects whose meaning depends on a sibling key (`role`, `type`) that may
/// come after the text; they are resolved by a forward scan of the object when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Nothing at or below is prompt text.
    Plain,
    /// The document root.
    Root,
    /// Every string at or below has this role.
    All(Role),
    /// `messages` (OpenAI chat, Anthropic).
    Messages,
    /// An element of `messages`, role unknown yet.
    MessagePending,
    /// A message (or Responses input message) with its role.
    Message(Role),
    /// Message content: a string has the role; array elements are parts.
    Content(Role),
    /// Anthropic message content: a string has the role; array elements are blocks.
    Blocks(Role),
    /// A content part or text block: its `text` has the role.
    Part(Role),
    /// An Anthropic content block, type unknown yet.
    BlockPending(Role),
    /// Anthropic `tool_result` block: its `content` is tool text.
    ToolResult,
    /// Anthropic `tool_use` block: its `input` is assistant text.
    ToolUse,
    /// OpenAI chat `tool_calls`.
    ToolCalls,
    /// An element of `tool_calls`.
    ToolCall,
    /// A tool call's `function` (or a legacy `function_call`): `arguments` is assistant text.
    Function,
    /// Responses `input`: a string is user text; elements are items.
    ResponsesInput,
    /// A Responses input item, type and role unknown yet.
    ItemPending,
    /// A Responses `function_call_output` item: its `output` is tool text.
    FunctionCallOutput,
    /// A top-level inference-API parameter: its raw value is reported when it ends.
    Param(ApiParam),
    /// A part's `image_url`: a string is the image, an object holds `url` and `detail`.
    ImageUrl,
    /// An Anthropic image block's `source`: `data` or `url` is the image.
    ImageSource,
    /// A string that is an image URL or base64 data.
    ImageStr,
    /// An image part's `detail` string.
    DetailStr,
}

impl Ctx {
    fn leaf_role(self) -> Option<Role> {
        match self {
            Ctx::All(r) | Ctx::Content(r) | Ctx::Blocks(r) | Ctx::BlockPending(r) => Some(r),
            Ctx::ResponsesInput | Ctx::ItemPending => Some(Role::User),
            _ => None,
        }
    }

    fn needs_lookahead(self) -> bool {
        matches!(
            self,
            Ctx::MessagePending | Ctx::BlockPending(_) | Ctx::ItemPending
        )
    }

    /// The context of a child at `key` (object member) or at an index (`None`).
    fn child(self, shape: ChatShape, key: Option<&[u8]>) -> Ctx {
        use ChatShape as S;
        match (self, key) {
            (Ctx::Plain, _) => Ctx::Plain,
            (Ctx::All(r), _) => Ctx::All(r),
            (Ctx::Root, Some(k)) => match (shape, k) {
                (_, b"model") => Ctx::Param(ApiParam::Model),
                (_, b"max_tokens") => Ctx::Param(ApiParam::MaxTokens),
                (_, b"max_completion_tokens") => Ctx::Param(ApiParam::MaxCompletionTokens),
                (_, b"max_output_tokens") => Ctx::Param(ApiParam::MaxOutputTokens),
                (_, b"n") => Ctx::Param(ApiParam::N),
                (_, b"stream") => Ctx::Param(ApiParam::Stream),
                (_, b"stream_options") => Ctx::Param(ApiParam::StreamOptions),
                (_, b"logprobs") => Ctx::Param(ApiParam::Logprobs),
                (_, b"top_logprobs") => Ctx::Param(ApiParam::TopLogprobs),
                (_, b"logit_bias") => Ctx::Param(ApiParam::LogitBias),
                (_, b"tools") => Ctx::Param(ApiParam::Tools),
                (_, b"functions") => Ctx::Param(ApiParam::Functions),
                (_, b"tool_choice") => Ctx::Param(ApiParam::ToolChoice),
                (S::OpenaiChat, b"messages") => Ctx::Messages,
                (S::OpenaiChat, b"prompt") => Ctx::All(Role::User),
                (S::OpenaiResponses, b"instructions") => Ctx::All(Role::System),
                (S::OpenaiResponses, b"input") => Ctx::ResponsesInput,
                (S::OpenaiEmbeddings, b"input") => Ctx::All(Role::User),
                (S::AnthropicMessages, b"system") => Ctx::Content(Role::System),
                (S::AnthropicMessages, b"messages") => Ctx::Messages,
                _ => Ctx::Plain,
            },
            (Ctx::Messages, None) => Ctx::MessagePending,
            (Ctx::Message(r), Some(k)) => match (shape, k) {
                (S::AnthropicMessages, b"content") => Ctx::Blocks(r),
                (_, b"content") => Ctx::Content(r),
                (S::OpenaiChat, b"tool_calls") => Ctx::ToolCalls,
                (S::OpenaiChat, b"function_call") => Ctx::Function,
                _ => Ctx::Plain,
            },
            (Ctx::Content(r), None) => Ctx::Part(r),
            (Ctx::Blocks(r), None) => Ctx::BlockPending(r),
            (Ctx::Part(r), Some(b"text")) => Ctx::All(r),
            (Ctx::Part(_), Some(b"image_url")) => Ctx::ImageUrl,
            (Ctx::Part(_), Some(b"source")) => Ctx::ImageSource,
            (Ctx::Part(_) | Ctx::ImageUrl, Some(b"detail")) => Ctx::DetailStr,
            (Ctx::ImageUrl, Some(b"url")) | (Ctx::ImageSource, Some(b"data" | b"url")) => {
                Ctx::ImageStr
            }
            (Ctx::ToolResult, Some(b"content")) => Ctx::Content(Role::Tool),
            (Ctx::ToolUse, Some(b"input")) => Ctx::All(Role::Assistant),
            (Ctx::ToolCalls, None) => Ctx::ToolCall,
            (Ctx::ToolCall, Some(b"function")) => Ctx::Function,
            (Ctx::Function, Some(b"arguments")) => Ctx::All(Role::Assistant),
            (Ctx::ResponsesInput, None) => Ctx::ItemPending,
            (Ctx::FunctionCallOutput, Some(b"output")) => Ctx::All(Role::Tool),
            _ => Ctx::Plain,
        }
    }

    /// Resolves a pending context from the object's `role` and `type` members.
    fn resolve(self, doc: &[u8], open: usize) -> Ctx {
        if !self.needs_lookahead() {
            return self;
        }
        let la = lookahead(doc, open);
        let role = la.role.unwrap_or(Role::User);
        match self {
            Ctx::MessagePending => Ctx::Message(role),
            Ctx::BlockPending(r) => match la.ty {
                Ty::ToolResult => Ctx::ToolResult,
                Ty::ToolUse => Ctx::ToolUse,
                _ => Ctx::Part(r),
            },
            Ctx::ItemPending => match la.ty {
                Ty::FunctionCallOutput => Ctx::FunctionCallOutput,
                // A function call item carries `arguments` like a tool call's function.
                Ty::FunctionCall => Ctx::Function,
                _ => Ctx::Message(role),
            },
            other => other,
        }
    }
}

/// The `type` values the chat shapes care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Ty {
    #[default]
    Other,
    ToolResult,
    ToolUse,
    FunctionCall,
    FunctionCallOutput,
}

#[derive(Debug, Default)]
struct Lookahead {
    role: Option<Role>,
    ty: Ty,
}

/// Scans the object opening at `doc[open]` for its top-level `role` and `type` string
/// members, without validating (the walker validates right after).
///
/// This is the price of not buffering: a message object is read twice, once here and once
/// by the walker, so chat-shaped bodies cost about 2x on message objects (3x on Anthropic
/// content blocks, which are scanned for their `type` inside a scanned message). It stays
/// linear, because it only runs at the fixed positions of a shape and each scan covers
/// one object. When a member repeats, the last one wins, as in most JSON parsers; the
/// walker reports the duplicate. Names and values are unescaped, so `"r\u006fle"` is seen
/// as `role`; an unknown or undecodable role counts as user text.
fn lookahead(doc: &[u8], open: usize) -> Lookahead {
    let mut la = Lookahead::default();
    let mut depth = 0usize;
    let mut i = open;
    let mut small = [0u8; SMALL];
    while i < doc.len() {
        match doc[i] {
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            b'"' => {
                let Some(end) = skip_string(doc, i) else {
                    break;
                };
                if depth != 1 {
                    i = end;
                    continue;
                }
                let colon = skip_ws(doc, end);
                if doc.get(colon) != Some(&b':') {
                    i = end;
                    continue;
                }
                let which = match small_unescape(&doc[i + 1..end - 1], &mut small) {
                    Some(b"role") => 1,
                    Some(b"type") => 2,
                    _ => 0,
                };
                let v = skip_ws(doc, colon + 1);
                i = v;
                if which == 0 || doc.get(v) != Some(&b'"') {
                    continue;
                }
                let Some(vend) = skip_string(doc, v) else {
                    break;
                };
                let value = small_unescape(&doc[v + 1..vend - 1], &mut small);
                if which == 1 {
                    la.role = Some(value.map_or(Role::User, Role::from_chat_role));
                } else {
                    la.ty = match value {
                        Some(b"tool_result") => Ty::ToolResult,
                        Some(b"tool_use") => Ty::ToolUse,
                        Some(b"function_call") => Ty::FunctionCall,
                        Some(b"function_call_output") => Ty::FunctionCallOutput,
                        _ => Ty::Other,
                    };
                }
                i = vend;
            }
            _ => i += 1,
        }
    }
    la
}

/// Longest name or value [`small_unescape`] decodes; longer ones match nothing we look for.
const SMALL: usize = 24;

/// Unescapes a short ASCII JSON string body into `out`; `None` if it is longer than
/// [`SMALL`], not ASCII, or badly escaped (none of which can spell a name we look for).
fn small_unescape<'o>(raw: &[u8], out: &'o mut [u8; SMALL]) -> Option<&'o [u8]> {
    let mut n = 0;
    let mut i = 0;
    while i < raw.len() {
        let mut b = raw[i];
        i += 1;
        if b == b'\\' {
            let e = *raw.get(i)?;
            i += 1;
            b = match e {
                b'"' | b'\\' | b'/' => e,
                b'u' => {
                    let u = hex4(raw, i)?;
                    i += 4;
                    u8::try_from(u).ok().filter(u8::is_ascii)?
                }
                // The other escapes are control characters, which no name we want has.
                _ => return None,
            };
        }
        if !b.is_ascii() || n == SMALL {
            return None;
        }
        out[n] = b;
        n += 1;
    }
    Some(&out[..n])
}

/// Given `doc[open] == '"'`, returns the index after the closing quote, without decoding.
fn skip_string(doc: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i += string_stop(doc.get(i..)?)?;
        match doc[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            // A control character: invalid, but the walk proper reports it.
            _ => i += 1,
        }
    }
}

/// Whether `b` ends a run of plain string bytes: a quote, a backslash, or a control
/// character (RFC 8259 forbids those raw in strings).
#[inline(always)]
fn stops(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The index of the first byte of `s` that [`stops`] a string's plain run. `s` runs to the
/// end of the document, not of the string, so even a short string is one block: what
/// follows its closing quote is never reached. One pass for the three kinds of byte: a
/// search for the quote and the backslash (`memchr2`) with a separate test of the run for
/// control characters was two passes over every string, and a search restarted after
/// every escape.
#[inline]
fn string_stop(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = crate::simd::v3() {
        return simd.vectorize(StopScan { simd, s });
    }
    string_stop_blocks(s)
}

/// [`string_stop`] 16 bytes at a time: each block is tested branch-free (the compiler
/// vectorizes the fold), and only a block that has a stop is searched.
fn string_stop_blocks(s: &[u8]) -> Option<usize> {
    let mut blocks = s.chunks_exact(16);
    for (k, b) in blocks.by_ref().enumerate() {
        if b.iter().fold(false, |a, &c| a | stops(c)) {
            return b.iter().position(|&c| stops(c)).map(|i| 16 * k + i);
        }
    }
    stop_in_tail(s, blocks.remainder())
}

/// [`string_stop`] in `tail`, the last bytes of `s` after its whole blocks.
#[inline(always)]
fn stop_in_tail(s: &[u8], tail: &[u8]) -> Option<usize> {
    tail.iter()
        .position(|&c| stops(c))
        .map(|i| s.len() - tail.len() + i)
}

/// The AVX2 body of [`string_stop`]: 32 bytes per step, three compares and one mask.
/// pulp's callable as a struct (see `cost::tokens::wide` for why not a closure).
#[cfg(target_arch = "x86_64")]
struct StopScan<'a> {
    simd: pulp::x86::V3,
    s: &'a [u8],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for StopScan<'_> {
    type Output = Option<usize>;

    #[inline(always)]
    fn call(self) -> Option<usize> {
        let (avx, avx2) = (self.simd.avx, self.simd.avx2);
        let quote = avx._mm256_set1_epi8(b'"' as i8);
        let backslash = avx._mm256_set1_epi8(b'\\' as i8);
        let below = avx._mm256_set1_epi8(0x1F);
        let mut blocks = self.s.chunks_exact(32);
        for (k, b) in blocks.by_ref().enumerate() {
            let bytes: [u8; 32] = b.try_into().unwrap_or([0; 32]);
            let v: core::arch::x86_64::__m256i = pulp::cast(bytes);
            // A byte is at most 0x1F exactly when max(byte, 0x1F) is 0x1F (unsigned).
            let control = avx2._mm256_cmpeq_epi8(avx2._mm256_max_epu8(v, below), below);
            let hit = avx2._mm256_or_si256(
                avx2._mm256_or_si256(
                    avx2._mm256_cmpeq_epi8(v, quote),
                    avx2._mm256_cmpeq_epi8(v, backslash),
                ),
                control,
            );
            let mask = avx2._mm256_movemask_epi8(hit) as u32;
            if mask != 0 {
                return Some(32 * k + mask.trailing_zeros() as usize);
            }
        }
        stop_in_tail(self.s, blocks.remainder())
    }
}

#[inline]
fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = doc.get(i) {
        i += 1;
    }
    i
}

fn hex4(doc: &[u8], at: usize) -> Option<u32> {
    let h = doc.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in h {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u32::from(d);
    }
    Some(v)
}

fn push_utf8(out: &mut Vec<u8>, c: char) {
    let mut tmp = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
}

/// A parsed string: where it ends and how it was decoded.
#[derive(Debug, Clone, Copy)]
struct Str {
    /// Index after the closing quote.
    end: usize,
    /// Whether the value was decoded into the buffer (it had a backslash).
    escaped: bool,
    /// Whether a lone surrogate was replaced by U+FFFD.
    bad_escape: bool,
}

/// Parses the string opening at `doc[open]`; with `decode`, an escaped value is written to
/// `out`. Errors carry the offset of the offending byte.
fn parse_string(doc: &[u8], open: usize, out: &mut Vec<u8>, decode: bool) -> Result<Str, usize> {
    let start = open + 1;
    let rest = doc.get(start..).unwrap_or_default();
    let Some(k) = string_stop(rest) else {
        return Err(doc.len());
    };
    let mut i = start + k;
    match doc[i] {
        b'"' => {
            return Ok(Str {
                end: i + 1,
                escaped: false,
                bad_escape: false,
            })
        }
        b'\\' => {}
        _ => return Err(i),
    }
    if decode {
        out.clear();
        out.extend_from_slice(&doc[start..i]);
    }
    let mut bad_escape = false;
    loop {
        // doc[i] is a backslash.
        let Some(&e) = doc.get(i + 1) else {
            return Err(doc.len());
        };
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0C),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(i + 1),
        };
        if let Some(c) = simple {
            if decode {
                out.push(c);
            }
            i += 2;
        } else {
            let Some(u) = hex4(doc, i + 2) else {
                return Err(i);
            };
            i += 6;
            let c = match u {
                0xD800..=0xDBFF => {
                    let low = if doc.get(i..i + 2) == Some(b"\\u") {
                        hex4(doc, i + 2).filter(|l| (0xDC00..=0xDFFF).contains(l))
                    } else {
                        None
                    };
                    match low {
                        Some(l) => {
                            i += 6;
                            char::from_u32(0x10000 + ((u - 0xD800) << 10) + (l - 0xDC00))
                        }
                        None => None,
                    }
                }
                _ => char::from_u32(u),
            };
            let c = c.unwrap_or_else(|| {
                bad_escape = true;
                char::REPLACEMENT_CHARACTER
            });
            if decode {
                push_utf8(out, c);
            }
        }
        let seg_start = i;
        let rest = doc.get(i..).unwrap_or_default();
        let Some(k) = string_stop(rest) else {
            return Err(doc.len());
        };
        i += k;
        if decode {
            out.extend_from_slice(&doc[seg_start..i]);
        }
        match doc[i] {
            b'"' => {
                return Ok(Str {
                    end: i + 1,
                    escaped: true,
                    bad_escape,
                })
            }
            b'\\' => {}
            _ => return Err(i),
        }
    }
}

/// Validates the number starting at `doc[p]`; returns the index after it.
fn parse_number(doc: &[u8], mut p: usize) -> Result<usize, usize> {
    let digits = |doc: &[u8], mut p: usize| {
        while doc.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        p
    };
    if doc.get(p) == Some(&b'-') {
        p += 1;
    }
    match doc.get(p) {
        Some(b'0') => p += 1,
        Some(b'1'..=b'9') => p = digits(doc, p + 1),
        _ => return Err(p),
    }
    if doc.get(p) == Some(&b'.') {
        p += 1;
        if !doc.get(p).is_some_and(u8::is_ascii_digit) {
            return Err(p);
        }
        p = digits(doc, p);
    }
    if let Some(b'e' | b'E') = doc.get(p) {
        p += 1;
        if let Some(b'+' | b'-') = doc.get(p) {
            p += 1;
        }
        if !doc.get(p).is_some_and(u8::is_ascii_digit) {
            return Err(p);
        }
        p = digits(doc, p);
    }
    Ok(p)
}

/// A 64-bit hash of a key for duplicate detection; eight bytes per step.
fn key_hash(k: &[u8]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (k.len() as u64).wrapping_mul(M);
    let mut chunks = k.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(M);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(M);
    h ^ (h >> 29)
}

/// Appends `/` and a key to a JSON pointer, escaping `~` and `/` (RFC 6901).
fn push_key(ptr: &mut Vec<u8>, key: &[u8]) {
    ptr.push(b'/');
    if memchr2(b'~', b'/', key).is_none() {
        ptr.extend_from_slice(key);
        return;
    }
    let mut last = 0;
    for i in memchr2_iter(b'~', b'/', key) {
        ptr.extend_from_slice(&key[last..i]);
        ptr.extend_from_slice(if key[i] == b'~' { b"~0" } else { b"~1" });
        last = i + 1;
    }
    ptr.extend_from_slice(&key[last..]);
}

/// Appends `/` and an array index to a JSON pointer.
fn push_index(ptr: &mut Vec<u8>, mut n: u64) {
    ptr.push(b'/');
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ptr.extend_from_slice(&tmp[i..]);
}

/// Splits an RFC 6901 JSON pointer (`/parameters/max_new_tokens`, `""` for the root) into
/// its unescaped reference tokens (`~1` is `/`, `~0` is `~`); `None` if it does not start
/// with `/` or has a bad escape. Done once, when a policy compiles.
pub fn pointer_tokens(pointer: &str) -> Option<Vec<Vec<u8>>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    pointer
        .strip_prefix('/')?
        .split('/')
        .map(|t| {
            let mut out = Vec::with_capacity(t.len());
            let mut it = t.bytes();
            while let Some(b) = it.next() {
                if b == b'~' {
                    out.push(match it.next()? {
                        b'0' => b'~',
                        b'1' => b'/',
                        _ => return None,
                    });
                } else {
                    out.push(b);
                }
            }
            Some(out)
        })
        .collect()
}

/// The raw JSON value at a pointer (tokens from [`pointer_tokens`]) of `doc`, as a slice of
/// it, found by skipping over every other value without building or validating anything.
///
/// For the few fields a generic inference schema names (model, output limit, ...): one
/// forward scan per pointer, each skipped string costing one `memchr`. Keys are compared
/// after unescaping; an array token must be a decimal index. A repeated key resolves to
/// its last occurrence, like most JSON parsers. `None` when the path does not exist or
/// the document is malformed along it (the walker reports malformed JSON on its own).
pub fn pointer_get<'d>(doc: &'d [u8], tokens: &[Vec<u8>]) -> Option<&'d [u8]> {
    let mut i = skip_ws(doc, usize::from(doc.starts_with(b"\xEF\xBB\xBF")) * 3);
    let mut key = Vec::new();
    for tok in tokens {
        match *doc.get(i)? {
            b'{' => {
                let mut found = None;
                let mut p = skip_ws(doc, i + 1);
                while doc.get(p) == Some(&b'"') {
                    let kend = skip_string(doc, p)?;
                    let raw = &doc[p + 1..kend - 1];
                    let same = if raw.contains(&b'\\') {
                        key.clear();
                        parse_string(doc, p, &mut key, true).ok()?;
                        key == *tok
                    } else {
                        raw == tok.as_slice()
                    };
                    let colon = skip_ws(doc, kend);
                    if doc.get(colon) != Some(&b':') {
                        return None;
                    }
                    let v = skip_ws(doc, colon + 1);
                    if same {
                        found = Some(v);
                    }
                    p = skip_ws(doc, skip_value(doc, v)?);
                    match doc.get(p) {
                        Some(b',') => p = skip_ws(doc, p + 1),
                        _ => break,
                    }
                }
                i = found?;
            }
            b'[' => {
                let idx: usize = std::str::from_utf8(tok).ok()?.parse().ok()?;
                if tok.len() > 1 && tok[0] == b'0' {
                    return None;
                }
                let mut p = skip_ws(doc, i + 1);
                for _ in 0..idx {
                    p = skip_ws(doc, skip_value(doc, p)?);
                    if doc.get(p) != Some(&b',') {
                        return None;
                    }
                    p = skip_ws(doc, p + 1);
                }
                if matches!(doc.get(p), None | Some(b']')) {
                    return None;
                }
                i = p;
            }
            _ => return None,
        }
    }
    let end = skip_value(doc, i)?;
    Some(&doc[i..end])
}

/// The number of elements of the JSON array `doc` (which starts with `[`), skipping over
/// each like [`pointer_get`] does; `None` if it is not an array or is malformed.
pub fn array_len(doc: &[u8]) -> Option<u32> {
    if doc.first() != Some(&b'[') {
        return None;
    }
    let mut p = skip_ws(doc, 1);
    let mut n = 0u32;
    while doc.get(p) != Some(&b']') {
        p = skip_ws(doc, skip_value(doc, p)?);
        n = n.saturating_add(1);
        match doc.get(p)? {
            b',' => p = skip_ws(doc, p + 1),
            b']' => break,
            _ => return None,
        }
    }
    Some(n)
}

/// The end of the JSON value starting at `doc[i]` (not validated).
fn skip_value(doc: &[u8], i: usize) -> Option<usize> {
    match *doc.get(i)? {
        b'"' => skip_string(doc, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut p = i;
            loop {
                match *doc.get(p)? {
                    b'"' => {
                        p = skip_string(doc, p)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(p + 1);
                        }
                    }
                    _ => {}
                }
                p += 1;
            }
        }
        _ => {
            let n = doc[i..]
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(doc.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// Walks a JSON document, emitting its string leaves and object keys.
///
/// Emits a [`FieldKind::Json`] field for every string leaf (name = its JSON pointer per
/// RFC 6901, with `~0`/`~1` escaping; value = the unescaped string) and a
/// [`FieldKind::JsonKey`] field for every object key (name = the pointer of the object
/// holding it; value = the unescaped key), in document order, each key before its value.
/// Numbers, booleans and null are validated but not emitted.
///
/// `\uXXXX` escapes are decoded, surrogate pairs included; a lone surrogate becomes U+FFFD
/// and reports [`Finding::InvalidJsonEscape`]. Any syntax error, trailing garbage or
/// truncation reports [`Finding::InvalidJson`] with the offset where parsing stopped, and
/// the walk stops there (fields already emitted stay emitted). A repeated key reports
/// [`Finding::DuplicateJsonKey`]. See the module documentation for depth limits, the BOM
/// and invalid UTF-8.
///
/// When a string leaf's value, after leading JSON whitespace, starts with `{` or `[` and
/// the `max_nested_json` budget allows, it is walked as JSON too: its fields are named
/// `<outer pointer>#<inner pointer>` (so the inner root object's keys are named
/// `<outer pointer>#`) and flagged [`FieldFlags::NESTED_JSON`], after the outer string's
/// own field. Inner string leaves inherit the outer string's role.
///
/// With a chat `shape`, prompt text fields carry a role (all others have `None`):
/// - [`ChatShape::OpenaiChat`]: `/messages/N/content` (a string) and
///   `/messages/N/content/M/text` take the role of `/messages/N/role` (via
///   [`Role::from_chat_role`]; user when missing), even when `role` comes after `content`;
///   `/messages/N/tool_calls/M/function/arguments` (and legacy `function_call/arguments`)
///   are assistant; legacy `prompt` (a string or an array of strings) is user.
/// - [`ChatShape::OpenaiResponses`]: `instructions` is system; `input` as a string is
///   user; `input/N/content` (a string) and `input/N/content/M/text` take the item's role
///   (user by default); the `output` of a `function_call_output` item is tool and the
///   `arguments` of a `function_call` item are assistant.
/// - [`ChatShape::OpenaiEmbeddings`]: `input` (a string or an array of strings) is user.
/// - [`ChatShape::AnthropicMessages`]: `system` (a string, or its blocks' `text`) is
///   system; `messages/N/content` (a string, or its text blocks' `text`) takes the
///   message's role; a `tool_result` block's `content` (a string, or its blocks' `text`) is
///   tool; every string inside a `tool_use` block's `input` is assistant.
pub fn walk(body: &[u8], shape: ChatShape, scratch: &mut ParseScratch, em: &mut Emitter<'_>) {
    let limits = *em.limits();
    let levels = 1 + limits.max_nested_json.min(MAX_NESTED_LEVELS) as usize;
    let js = &mut scratch.json;
    if js.levels.len() < levels {
        js.levels.resize_with(levels, Level::default);
    }
    js.ptr.clear();
    let root = if shape == ChatShape::None {
        Ctx::Plain
    } else {
        Ctx::Root
    };
    let cfg = Cfg {
        shape,
        max_depth: usize::try_from(limits.max_depth).unwrap_or(usize::MAX),
    };
    walk_doc(
        body,
        root,
        cfg,
        0,
        &mut js.levels[..levels],
        &mut js.ptr,
        em,
    );
}

#[derive(Debug, Clone, Copy)]
struct Cfg {
    shape: ChatShape,
    max_depth: usize,
}

/// Why a walk ended early.
enum Halt {
    /// A syntax error at this offset.
    Invalid(usize),
    /// The emitter reached a limit.
    Stopped,
}

fn walk_doc(
    doc: &[u8],
    root: Ctx,
    cfg: Cfg,
    level: usize,
    levels: &mut [Level],
    ptr: &mut Vec<u8>,
    em: &mut Emitter<'_>,
) {
    let Some((cur, rest)) = levels.split_first_mut() else {
        return;
    };
    cur.frames.clear();
    cur.deep.clear();
    cur.keys.clear();
    let mut w = Walker {
        doc,
        cfg,
        nested: level > 0,
        level,
        cur,
        rest,
        ptr,
        em,
        deep_len: 0,
        pending: None,
    };
    if let Err(Halt::Invalid(offset)) = w.run(root) {
        w.report(Finding::InvalidJson { offset });
    }
}

struct Walker<'d, 'l, 'e, 's> {
    doc: &'d [u8],
    cfg: Cfg,
    nested: bool,
    level: usize,
    cur: &'l mut Level,
    rest: &'l mut [Level],
    ptr: &'l mut Vec<u8>,
    em: &'e mut Emitter<'s>,
    /// Open containers beyond `max_depth` (bits in `cur.deep`).
    deep_len: usize,
    /// A top-level parameter whose value is being walked: which, where it starts, and the
    /// frame depth at which its value ends.
    pending: Option<(ApiParam, usize, usize)>,
}

impl Walker<'_, '_, '_, '_> {
    fn report(&mut self, f: Finding) {
        if !self.nested {
            self.em.finding(f);
        }
    }

    fn base_flags(&self) -> FieldFlags {
        if self.nested {
            FieldFlags::NESTED_JSON
        } else {
            FieldFlags::default()
        }
    }

    /// Whether the innermost open container is an object; `None` at the top level.
    fn top_is_obj(&self) -> Option<bool> {
        if self.deep_len > 0 {
            let i = self.deep_len - 1;
            Some(self.cur.deep[i / 64] >> (i % 64) & 1 == 1)
        } else {
            self.cur.frames.last().map(|f| f.is_obj)
        }
    }

    fn push(&mut self, is_obj: bool, ctx: Ctx, at: usize) {
        if self.deep_len == 0 && self.cur.frames.len() < self.cfg.max_depth {
            let ctx = if is_obj {
                ctx.resolve(self.doc, at)
            } else {
                ctx
            };
            self.cur.frames.push(Frame {
                ptr_len: self.ptr.len(),
                keys_start: self.cur.keys.len(),
                count: 0,
                is_obj,
                ctx,
            });
            return;
        }
        if self.deep_len == 0 {
            self.report(Finding::JsonTooDeep { offset: at });
        }
        let (word, bit) = (self.deep_len / 64, self.deep_len % 64);
        if word == self.cur.deep.len() {
            self.cur.deep.push(0);
        }
        let w = &mut self.cur.deep[word];
        *w = (*w & !(1 << bit)) | (u64::from(is_obj) << bit);
        self.deep_len += 1;
    }

    fn pop(&mut self) {
        if self.deep_len > 0 {
            self.deep_len -= 1;
        } else if let Some(f) = self.cur.frames.pop() {
            self.ptr.truncate(f.ptr_len);
            self.cur.keys.truncate(f.keys_start);
            if f.is_obj && matches!(f.ctx, Ctx::Part(_)) {
                self.em.param(ApiParam::PartEnd, b"");
            }
        }
    }

    /// A value ended at `end`: reports a top-level parameter whose value it was.
    #[inline]
    fn value_end(&mut self, end: usize) {
        if let Some((param, start, depth)) = self.pending {
            if self.deep_len == 0 && self.cur.frames.len() == depth {
                self.pending = None;
                self.em.param(param, &self.doc[start..end]);
            }
        }
    }

    /// Moves to the next element of the innermost array; returns the element's context.
    fn next_index(&mut self, first: bool) -> Ctx {
        if self.deep_len > 0 {
            return Ctx::Plain;
        }
        let Some(f) = self.cur.frames.last_mut() else {
            return Ctx::Plain;
        };
        if !first {
            f.count = f.count.saturating_add(1);
        }
        let (ptr_len, count, ctx) = (f.ptr_len, f.count, f.ctx);
        self.ptr.truncate(ptr_len);
        push_index(self.ptr, count);
        if matches!(ctx, Ctx::Messages | Ctx::ResponsesInput) {
            self.em.param(ApiParam::Message, b"");
        }
        ctx.child(self.cfg.shape, None)
    }

    /// Parses `"key" :` at `p` (after whitespace) in the innermost object; emits the key,
    /// checks it for duplicates and moves the pointer to it. Returns the position after
    /// the colon and the member value's context.
    fn member(&mut self, p: usize) -> Result<(usize, Ctx), Halt> {
        let p = skip_ws(self.doc, p);
        if self.doc.get(p) != Some(&b'"') {
            return Err(Halt::Invalid(p));
        }
        let live = self.deep_len == 0;
        let s = parse_string(self.doc, p, &mut self.cur.key_buf, live).map_err(Halt::Invalid)?;
        let mut ctx = Ctx::Plain;
        if live {
            if let Some(f) = self.cur.frames.last().copied() {
                let key: &[u8] = if s.escaped {
                    &self.cur.key_buf
                } else {
                    &self.doc[p + 1..s.end - 1]
                };
                let mut flags = self.base_flags();
                flags.set(utf8_flags(key));
                if s.escaped {
                    flags.set(FieldFlags::DECODED);
                }
                if s.bad_escape && !self.nested {
                    self.em.finding(Finding::InvalidJsonEscape);
                }
                let field = Field {
                    kind: FieldKind::JsonKey,
                    name: &self.ptr[..f.ptr_len],
                    value: key,
                    role: None,
                    flags,
                };
                if !self.em.field(&field) {
                    return Err(Halt::Stopped);
                }
                let h = key_hash(key);
                let window = &self.cur.keys[f.keys_start..];
                if window.contains(&h) && !self.nested {
                    self.em.finding(Finding::DuplicateJsonKey);
                }
                if window.len() < DUP_WINDOW {
                    self.cur.keys.push(h);
                }
                ctx = f.ctx.child(self.cfg.shape, Some(key));
                if key == b"name" && matches!(f.ctx, Ctx::Message(_)) {
                    self.em.param(ApiParam::MessageName, b"");
                }
                self.ptr.truncate(f.ptr_len);
                push_key(self.ptr, key);
            }
        }
        let p = skip_ws(self.doc, s.end);
        if self.doc.get(p) != Some(&b':') {
            return Err(Halt::Invalid(p));
        }
        Ok((p + 1, ctx))
    }

    /// Emits a string leaf that was just parsed, then walks it as JSON if it looks like
    /// JSON and the nesting budget allows.
    fn leaf(&mut self, open: usize, s: Str, ctx: Ctx) -> Result<(), Halt> {
        let mut flags = self.base_flags();
        let value: &[u8] = if s.escaped {
            &self.cur.buf
        } else {
            &self.doc[open + 1..s.end - 1]
        };
        flags.set(utf8_flags(value));
        if s.escaped {
            flags.set(FieldFlags::DECODED);
        }
        if s.bad_escape && !self.nested {
            self.em.finding(Finding::InvalidJsonEscape);
        }
        let role = ctx.leaf_role();
        let field = Field {
            kind: FieldKind::Json,
            name: &self.ptr[..],
            value,
            role,
            flags,
        };
        if !self.em.field(&field) {
            return Err(Halt::Stopped);
        }
        match ctx {
            Ctx::ImageUrl | Ctx::ImageStr => self.em.param(ApiParam::Image, value),
            Ctx::DetailStr => self.em.param(ApiParam::ImageDetail, value),
            _ => {}
        }
        if self.rest.is_empty() {
            return Ok(());
        }
        let first = skip_ws(value, 0);
        if !matches!(value.get(first), Some(b'{' | b'[')) {
            return Ok(());
        }
        let saved = self.ptr.len();
        self.ptr.push(b'#');
        let inner_root = role.map_or(Ctx::Plain, Ctx::All);
        walk_doc(
            value,
            inner_root,
            self.cfg,
            self.level + 1,
            self.rest,
            self.ptr,
            self.em,
        );
        self.ptr.truncate(saved);
        if self.em.stopped() {
            return Err(Halt::Stopped);
        }
        Ok(())
    }

    fn run(&mut self, root: Ctx) -> Result<(), Halt> {
        let doc = self.doc;
        let mut p = 0;
        if !self.nested && doc.starts_with(b"\xEF\xBB\xBF") {
            p = 3;
        }
        // The context of the value about to be parsed.
        let mut ctx = root;
        'value: loop {
            p = skip_ws(doc, p);
            let Some(&b) = doc.get(p) else {
                return Err(Halt::Invalid(p));
            };
            if let Ctx::Param(param) = ctx {
                if self.deep_len == 0 {
                    self.pending = Some((param, p, self.cur.frames.len()));
                }
            }
            match b {
                b'{' | b'[' => {
                    let is_obj = b == b'{';
                    self.push(is_obj, ctx, p);
                    p = skip_ws(doc, p + 1);
                    let close = if is_obj { b'}' } else { b']' };
                    if doc.get(p) == Some(&close) {
                        p += 1;
                        self.pop();
                        self.value_end(p);
                    } else if is_obj {
                        (p, ctx) = self.member(p)?;
                        continue 'value;
                    } else {
                        ctx = self.next_index(true);
                        continue 'value;
                    }
                }
                b'"' => {
                    let live = self.deep_len == 0;
                    let s = parse_string(doc, p, &mut self.cur.buf, live).map_err(Halt::Invalid)?;
                    if live {
                        self.leaf(p, s, ctx)?;
                    }
                    p = s.end;
                }
                b't' | b'f' | b'n' => {
                    let lit: &[u8] = match b {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    let got = doc.get(p..).unwrap_or_default();
                    if !got.starts_with(lit) {
                        let bad = got
                            .iter()
                            .zip(lit)
                            .position(|(a, b)| a != b)
                            .unwrap_or(got.len());
                        return Err(Halt::Invalid(p + bad));
                    }
                    p += lit.len();
                }
                b'-' | b'0'..=b'9' => p = parse_number(doc, p).map_err(Halt::Invalid)?,
                _ => return Err(Halt::Invalid(p)),
            }
            if !matches!(b, b'{' | b'[') {
                self.value_end(p);
            }
            // A value ended: close containers until one expects another value.
            loop {
                p = skip_ws(doc, p);
                let Some(is_obj) = self.top_is_obj() else {
                    return if p == doc.len() {
                        Ok(())
                    } else {
                        Err(Halt::Invalid(p))
                    };
                };
                match doc.get(p) {
                    Some(b',') if is_obj => {
                        (p, ctx) = self.member(p + 1)?;
                        continue 'value;
                    }
                    Some(b',') => {
                        p += 1;
                        ctx = self.next_index(false);
                        continue 'value;
                    }
                    Some(b'}') if is_obj => {
                        p += 1;
                        self.pop();
                        self.value_end(p);
                    }
                    Some(b']') if !is_obj => {
                        p += 1;
                        self.pop();
                        self.value_end(p);
                    }
                    _ => return Err(Halt::Invalid(p)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{FieldSink, ParseLimits};
    use crate::parse::testutil::{p, Collect, Rec};

    mod string_stop {
        use super::super::{stops, string_stop, string_stop_blocks};
        use proptest::prelude::*;

        fn naive(s: &[u8]) -> Option<usize> {
            s.iter().position(|&b| stops(b))
        }

        #[test]
        fn every_stop_byte_at_every_offset() {
            // Both paths, each kind of stop at every position of the blocks and the tail.
            for len in 0..100 {
                for at in 0..len {
                    for stop in [b'"', b'\\', 0x00, 0x1F, b'\n'] {
                        let mut s = vec![b'a'; len];
                        s[at] = stop;
                        assert_eq!(string_stop(&s), Some(at), "{len} {at} {stop}");
                        assert_eq!(string_stop_blocks(&s), Some(at), "{len} {at} {stop}");
                    }
                }
                // 0x20 and bytes past 0x7F are plain.
                let s: Vec<u8> = (0..len).map(|i| [0x20, 0x7F, 0x80, 0xFF][i % 4]).collect();
                assert_eq!(string_stop(&s), None);
                assert_eq!(string_stop_blocks(&s), None);
            }
        }

        proptest! {
            #[test]
            fn matches_a_naive_search(s in proptest::collection::vec(any::<u8>(), 0..300)) {
                prop_assert_eq!(string_stop(&s), naive(&s));
                prop_assert_eq!(string_stop_blocks(&s), naive(&s));
            }

            #[test]
            fn matches_on_rare_stops(
                s in proptest::collection::vec(0x20u8..=0xFF, 0..300),
                at in any::<prop::sample::Index>(),
                stop in prop::sample::select(vec![b'"', b'\\', 0x00, 0x09, 0x1F]),
            ) {
                let mut s = s;
                if !s.is_empty() {
                    let i = at.index(s.len());
                    s[i] = stop;
                }
                prop_assert_eq!(string_stop(&s), naive(&s));
                prop_assert_eq!(string_stop_blocks(&s), naive(&s));
            }
        }
    }

    fn run_with(body: &[u8], shape: ChatShape, limits: ParseLimits) -> Collect {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, limits);
        walk(body, shape, &mut scratch, &mut em);
        sink
    }

    fn run(body: &str) -> Collect {
        run_with(body.as_bytes(), ChatShape::None, ParseLimits::default())
    }

    fn chat(shape: ChatShape, body: &str) -> Collect {
        run_with(body.as_bytes(), shape, ParseLimits::default())
    }

    /// `(pointer, value, role)` of every string leaf.
    fn leaves(c: &Collect) -> Vec<(String, String, Option<Role>)> {
        c.fields
            .iter()
            .filter(|r| r.kind == FieldKind::Json)
            .map(|r| (r.name_str(), r.value_str(), r.role))
            .collect()
    }

    fn leaf<'c>(c: &'c Collect, ptr: &str) -> &'c Rec {
        c.get(FieldKind::Json, ptr)
            .unwrap_or_else(|| panic!("no leaf {ptr}: {:?}", leaves(c)))
    }

    #[test]
    fn leaves_keys_and_pointers() {
        let c = run(
            r#" {"a": "x", "b": [1, "y", {"c": null, "d": "z"}], "e": {}, "f": [], "g": true} "#,
        );
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(
            c.pairs(FieldKind::Json),
            vec![p("/a", "x"), p("/b/1", "y"), p("/b/2/d", "z")]
        );
        assert_eq!(
            c.pairs(FieldKind::JsonKey),
            vec![
                p("", "a"),
                p("", "b"),
                p("/b/2", "c"),
                p("/b/2", "d"),
                p("", "e"),
                p("", "f"),
                p("", "g")
            ]
        );
        // Each key comes right before its value.
        let kinds: Vec<_> = c.fields.iter().take(4).map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                FieldKind::JsonKey,
                FieldKind::Json,
                FieldKind::JsonKey,
                FieldKind::Json
            ]
        );
        assert!(c.fields.iter().all(|r| r.role.is_none()));
        assert!(c.fields.iter().all(|r| r.flags == FieldFlags::default()));
    }

    #[test]
    fn scalars_and_root_strings() {
        let c = run(r#""root""#);
        assert_eq!(c.pairs(FieldKind::Json), vec![p("", "root")]);
        for ok in [
            "0", "-0", "1.5", "-12.5e+3", "1E-2", "true", "false", "null", "[]", "{}", " [ ] ",
        ] {
            let c = run(ok);
            assert!(c.findings.is_empty(), "{ok}: {:?}", c.findings);
            assert!(c.fields.is_empty());
        }
    }

    #[test]
    fn pointer_escaping() {
        let c = run(r#"{"a/b": {"m~n": "v", "": "empty"}, "~/": ["w"]}"#);
        assert_eq!(
            c.pairs(FieldKind::Json),
            vec![
                p("/a~1b/m~0n", "v"),
                p("/a~1b/", "empty"),
                p("/~0~1/0", "w")
            ]
        );
        assert_eq!(
            c.pairs(FieldKind::JsonKey),
            vec![p("", "a/b"), p("/a~1b", "m~n"), p("/a~1b", ""), p("", "~/")]
        );
    }

    #[test]
    fn array_indices() {
        let items: Vec<String> = (0..12).map(|i| format!("\"s{i}\"")).collect();
        let c = run(&format!("[{}]", items.join(",")));
        let got = c.pairs(FieldKind::Json);
        assert_eq!(got.len(), 12);
        assert_eq!(got[11], p("/11", "s11"));
        assert_eq!(got[10], p("/10", "s10"));
    }

    #[test]
    fn escapes() {
        let c = run(r#"{"k\"ey": "a\"b\\c\/d\b\f\n\r\t\u00e9\u4e2d\ud83d\ude00"}"#);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let v = leaf(&c, "/k\"ey");
        assert_eq!(v.value_str(), "a\"b\\c/d\u{8}\u{c}\n\r\té中😀");
        assert_eq!(v.flags, FieldFlags::DECODED);
        let k = c.get(FieldKind::JsonKey, "").unwrap();
        assert_eq!(k.value_str(), "k\"ey");
        assert_eq!(k.flags, FieldFlags::DECODED);
        // Upper-case hex and an escaped solidus that decodes to the same bytes.
        let c = run(r#"["\u00C9", "\/"]"#);
        assert_eq!(c.pairs(FieldKind::Json), vec![p("/0", "É"), p("/1", "/")]);
        assert!(c.fields.iter().all(|r| r.flags == FieldFlags::DECODED));
    }

    #[test]
    fn lone_surrogates() {
        for (body, want) in [
            (r#""\ud800""#, "\u{FFFD}"),
            (r#""\udc00x""#, "\u{FFFD}x"),
            (r#""\ud800\u0041""#, "\u{FFFD}A"),
            (r#""\ud800\ud800\udc00""#, "\u{FFFD}\u{10000}"),
            (r#""a\ud83d""#, "a\u{FFFD}"),
        ] {
            let c = run(body);
            assert_eq!(c.pairs(FieldKind::Json), vec![p("", want)], "{body}");
            assert_eq!(c.findings, vec![Finding::InvalidJsonEscape], "{body}");
        }
    }

    #[test]
    fn syntax_errors() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"   ", 3),
            (b"{", 1),
            (b"[", 1),
            (b"{\"a\"", 4),
            (b"{\"a\":", 5),
            (b"{\"a\":}", 5),
            (b"{\"a\":1,}", 7),
            (b"{\"a\" 1}", 5),
            (b"{a:1}", 1),
            (b"{\"a\":1 \"b\":2}", 7),
            (b"{1:2}", 1),
            (b"[1,]", 3),
            (b"[,1]", 1),
            (b"[1 2]", 3),
            (b"[}", 1),
            (b"{]", 1),
            (b"[1]]", 3),
            (b"{} x", 3),
            (b"\"a\" \"b\"", 4),
            (b"01", 1),
            (b"-01", 2),
            (b"1.", 2),
            (b".5", 0),
            (b"1e", 2),
            (b"1e+", 3),
            (b"-", 1),
            (b"+1", 0),
            (b"NaN", 0),
            (b"tru", 3),
            (b"nul!", 3),
            (b"trUe", 2),
            (b"\"abc", 4),
            (b"\"a\x01b\"", 2),
            (b"\"a\\u0041\tb\"", 8),
            (b"\"\\q\"", 2),
            (b"\"\\u12\"", 1),
            (b"\"\\u12", 1),
            (b"\"\\", 2),
            (b"'a'", 0),
            (b"[1]\x00", 3),
            (b"\xff", 0),
            (b"[\"a\",\xEF\xBB\xBF\"b\"]", 5),
        ];
        for (body, offset) in cases {
            let c = run_with(body, ChatShape::None, ParseLimits::default());
            assert_eq!(
                c.findings,
                vec![Finding::InvalidJson { offset: *offset }],
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn fields_before_an_error_stay_emitted() {
        let c = run(r#"{"a": "one", "b": ["two", oops]}"#);
        assert_eq!(
            c.pairs(FieldKind::Json),
            vec![p("/a", "one"), p("/b/0", "two")]
        );
        assert_eq!(c.findings, vec![Finding::InvalidJson { offset: 26 }]);
        // Truncated body.
        let c = run(r#"{"a": "one", "b": "tw"#);
        assert_eq!(c.pairs(FieldKind::Json), vec![p("/a", "one")]);
        assert_eq!(c.findings, vec![Finding::InvalidJson { offset: 21 }]);
    }

    #[test]
    fn bom_is_accepted_at_the_start_only() {
        let c = run_with(
            b"\xEF\xBB\xBF{\"a\":\"b\"}",
            ChatShape::None,
            ParseLimits::default(),
        );
        assert!(c.findings.is_empty());
        assert_eq!(c.pairs(FieldKind::Json), vec![p("/a", "b")]);
        let c = run_with(b" \xEF\xBB\xBF{}", ChatShape::None, ParseLimits::default());
        assert_eq!(c.findings, vec![Finding::InvalidJson { offset: 1 }]);
    }

    #[test]
    fn invalid_utf8_in_strings_is_flagged_not_fatal() {
        let c = run_with(
            b"{\"a\":\"x\xffy\",\"k\xfe\":\"after\"}",
            ChatShape::None,
            ParseLimits::default(),
        );
        assert_eq!(c.findings, vec![Finding::InvalidUtf8]);
        let a = c.get(FieldKind::Json, "/a").unwrap();
        assert_eq!(a.value, b"x\xffy");
        assert_eq!(a.flags, FieldFlags::INVALID_UTF8);
        let after = c.get(FieldKind::Json, "/k\u{fffd}");
        assert!(after.is_none(), "names are raw bytes");
        let after = c
            .fields
            .iter()
            .find(|r| r.kind == FieldKind::Json && r.value == b"after")
            .unwrap();
        assert_eq!(after.name, b"/k\xfe");
    }

    fn deep(n: usize, tail: &str) -> String {
        let mut s = String::with_capacity(2 * n + 64);
        s.push_str("{\"a\":");
        for _ in 0..n {
            s.push('[');
        }
        s.push_str("\"hidden\"");
        for _ in 0..n {
            s.push(']');
        }
        s.push_str(tail);
        s
    }

    #[test]
    fn deep_nesting_does_not_overflow_a_small_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let body = deep(100_000, ", \"b\": \"after\"}");
                let c = run(&body);
                assert_eq!(c.findings, vec![Finding::JsonTooDeep { offset: 68 }]);
                assert_eq!(c.pairs(FieldKind::Json), vec![p("/b", "after")]);

                let mut open = "[".repeat(100_000);
                let c = run(&open);
                assert_eq!(
                    c.findings,
                    vec![
                        Finding::JsonTooDeep { offset: 64 },
                        Finding::InvalidJson { offset: 100_000 }
                    ]
                );
                // Mismatched brackets deep down are still syntax errors.
                open.push_str(&"]".repeat(99_999));
                open.push('}');
                let c = run(&open);
                assert_eq!(
                    c.findings,
                    vec![
                        Finding::JsonTooDeep { offset: 64 },
                        Finding::InvalidJson { offset: 199_999 }
                    ]
                );
                let c = run(&"{\"a\":".repeat(100_000));
                assert!(c.has(Finding::JsonTooDeep { offset: 5 * 64 }));
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn depth_limit_is_inclusive() {
        let limits = ParseLimits {
            max_depth: 2,
            ..ParseLimits::default()
        };
        let c = run_with(br#"[["x"]]"#, ChatShape::None, limits);
        assert!(c.findings.is_empty());
        assert_eq!(c.pairs(FieldKind::Json), vec![p("/0/0", "x")]);
        let c = run_with(br#"[[["x", {"k": "y"}]], "z"]"#, ChatShape::None, limits);
        assert_eq!(c.findings, vec![Finding::JsonTooDeep { offset: 2 }]);
        assert_eq!(c.pairs(FieldKind::Json), vec![p("/1", "z")]);
        assert!(c.pairs(FieldKind::JsonKey).is_empty());
        let none = ParseLimits {
            max_depth: 0,
            ..ParseLimits::default()
        };
        let c = run_with(br#"{"a":"b"}"#, ChatShape::None, none);
        assert_eq!(c.findings, vec![Finding::JsonTooDeep { offset: 0 }]);
        assert!(c.fields.is_empty());
    }

    #[test]
    fn field_and_decoded_limits() {
        let limits = ParseLimits {
            max_fields: 3,
            ..ParseLimits::default()
        };
        let c = run_with(br#"{"a":"1","b":"2","c":"3"}"#, ChatShape::None, limits);
        assert_eq!(c.fields.len(), 3);
        assert_eq!(c.findings, vec![Finding::TooManyFields]);

        let limits = ParseLimits {
            max_decoded_bytes: 10,
            ..ParseLimits::default()
        };
        let c = run_with(
            br#"["plain text is free", "\u0041bcdef", "\u0041bcdefgh", "never"]"#,
            ChatShape::None,
            limits,
        );
        assert_eq!(c.findings, vec![Finding::DecodedTooLarge]);
        let got: Vec<_> = c
            .fields
            .iter()
            .map(|r| (r.value_str(), r.flags.has(FieldFlags::TRUNCATED)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("plain text is free".to_string(), false),
                ("Abcdef".to_string(), false),
                ("Abcd".to_string(), true),
            ]
        );
    }

    #[test]
    fn duplicate_keys() {
        let c = run(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(c.findings, vec![Finding::DuplicateJsonKey]);
        let c = run(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#);
        assert!(c.findings.is_empty());
        // Escaped and plain spellings of one key are the same key.
        let c = run(r#"{"role":"user","r\u006fle":"system"}"#);
        assert_eq!(c.findings, vec![Finding::DuplicateJsonKey]);
        // A key repeating one of the first DUP_WINDOW keys is found however late it comes.
        let mut keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\":0")).collect();
        keys.push("\"k0\":1".into());
        let c = run(&format!("{{{}}}", keys.join(",")));
        assert_eq!(c.findings, vec![Finding::DuplicateJsonKey]);
        // Duplicates that both sit past the window are not looked for.
        keys.pop();
        keys.push("\"k50\":1".into());
        let c = run(&format!("{{{}}}", keys.join(",")));
        assert!(c.findings.is_empty());
    }

    #[test]
    fn nested_json_in_tool_call_arguments() {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"lookup","arguments":"{\"city\": \"Paris\", \"tags\": [\"a\", \"{\\\"deep\\\": \\\"x\\\"}\"]}"}}]}]}"#;
        let c = chat(ChatShape::OpenaiChat, body);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let args = "/messages/0/tool_calls/0/function/arguments";
        let outer = leaf(&c, args);
        assert_eq!(outer.role, Some(Role::Assistant));
        assert_eq!(outer.flags, FieldFlags::DECODED);
        let city = leaf(&c, &format!("{args}#/city"));
        assert_eq!(city.value_str(), "Paris");
        assert_eq!(city.role, Some(Role::Assistant));
        assert_eq!(city.flags, FieldFlags::NESTED_JSON);
        let deep = leaf(&c, &format!("{args}#/tags/1#/deep"));
        assert_eq!(deep.value_str(), "x");
        assert!(deep.flags.has(FieldFlags::NESTED_JSON));
        let key = c
            .fields
            .iter()
            .find(|r| r.kind == FieldKind::JsonKey && r.value == b"city")
            .unwrap();
        assert_eq!(key.name_str(), format!("{args}#"));
        assert!(key.flags.has(FieldFlags::NESTED_JSON));
        // The outer string is emitted before the fields inside it.
        let pos = |ptr: &str| {
            c.fields
                .iter()
                .position(|r| r.kind == FieldKind::Json && r.name == ptr.as_bytes())
                .unwrap()
        };
        assert!(pos(args) < pos(&format!("{args}#/city")));
        assert_eq!(leaf(&c, "/model").role, None);
        assert_eq!(leaf(&c, "/messages/0/tool_calls/0/id").role, None);
    }

    #[test]
    fn nested_json_budget_and_invalid_inner() {
        let body = r#"{"a": " [\"x\", \"[\\\"y\\\"]\"] ", "b": "{not json", "c": "[1, 2"}"#;
        let one = ParseLimits {
            max_nested_json: 1,
            ..ParseLimits::default()
        };
        let c = run_with(body.as_bytes(), ChatShape::None, one);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let names: Vec<_> = c
            .pairs(FieldKind::Json)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["/a", "/a#/0", "/a#/1", "/b", "/c"]);
        let two = ParseLimits {
            max_nested_json: 2,
            ..ParseLimits::default()
        };
        let c = run_with(body.as_bytes(), ChatShape::None, two);
        assert!(c.get(FieldKind::Json, "/a#/1#/0").is_some());
        let zero = ParseLimits {
            max_nested_json: 0,
            ..ParseLimits::default()
        };
        let c = run_with(body.as_bytes(), ChatShape::None, zero);
        assert_eq!(c.pairs(FieldKind::Json).len(), 3);
        // Findings inside inner documents are not reported.
        let c = run(r#"["{\"a\":1,\"a\":\"\\ud800\"}"]"#);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(leaf(&c, "/0#/a").value_str(), "\u{FFFD}");
    }

    #[test]
    fn openai_chat_roles() {
        let body = r#"{
          "model": "gpt-4o",
          "messages": [
            {"role": "system", "content": "be nice"},
            {"content": "hi there", "name": "bob", "role": "user"},
            {"content": [{"type": "text", "text": "part text"}, {"type": "image_url", "image_url": {"url": "http://x"}}], "role": "assistant"},
            {"content": "result", "role": "tool", "tool_call_id": "c1"},
            {"content": "no role"},
            {"role": "developer", "content": "dev"},
            {"role": "wizard", "content": "unknown role"},
            {"r\u006fle": "\u0073ystem", "content": "escaped role"},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
          ],
          "user": "user-123"
        }"#;
        let c = chat(ChatShape::OpenaiChat, body);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let role = |ptr: &str| leaf(&c, ptr).role;
        assert_eq!(role("/messages/0/content"), Some(Role::System));
        assert_eq!(role("/messages/1/content"), Some(Role::User));
        assert_eq!(role("/messages/1/name"), None);
        assert_eq!(role("/messages/1/role"), None);
        assert_eq!(role("/messages/2/content/0/text"), Some(Role::Assistant));
        assert_eq!(role("/messages/2/content/0/type"), None);
        assert_eq!(role("/messages/2/content/1/image_url/url"), None);
        assert_eq!(role("/messages/3/content"), Some(Role::Tool));
        assert_eq!(role("/messages/3/tool_call_id"), None);
        assert_eq!(role("/messages/4/content"), Some(Role::User));
        assert_eq!(role("/messages/5/content"), Some(Role::System));
        assert_eq!(role("/messages/6/content"), Some(Role::User));
        assert_eq!(role("/messages/7/content"), Some(Role::System));
        assert_eq!(
            role("/messages/8/function_call/arguments"),
            Some(Role::Assistant)
        );
        assert_eq!(role("/model"), None);
        assert_eq!(role("/user"), None);
        assert!(c
            .fields
            .iter()
            .filter(|r| r.kind == FieldKind::JsonKey)
            .all(|r| r.role.is_none()));
    }

    #[test]
    fn openai_chat_duplicate_role_last_wins() {
        let c = chat(
            ChatShape::OpenaiChat,
            r#"{"messages":[{"content":"c","role":"system","role":"user"}]}"#,
        );
        assert_eq!(leaf(&c, "/messages/0/content").role, Some(Role::User));
        assert_eq!(c.findings, vec![Finding::DuplicateJsonKey]);
    }

    #[test]
    fn legacy_completions_prompt() {
        let c = chat(ChatShape::OpenaiChat, r#"{"model":"m","prompt":"hello"}"#);
        assert_eq!(leaf(&c, "/prompt").role, Some(Role::User));
        let c = chat(
            ChatShape::OpenaiChat,
            r#"{"prompt":["a","b"],"suffix":"s"}"#,
        );
        assert_eq!(leaf(&c, "/prompt/0").role, Some(Role::User));
        assert_eq!(leaf(&c, "/prompt/1").role, Some(Role::User));
        assert_eq!(leaf(&c, "/suffix").role, None);
    }

    #[test]
    fn openai_responses_roles() {
        let c = chat(
            ChatShape::OpenaiResponses,
            r#"{"model":"m","instructions":"sys","input":"just text"}"#,
        );
        assert_eq!(leaf(&c, "/instructions").role, Some(Role::System));
        assert_eq!(leaf(&c, "/input").role, Some(Role::User));
        assert_eq!(leaf(&c, "/model").role, None);
        let body = r#"{"input":[
            {"content":"plain","role":"developer"},
            {"type":"message","content":[{"type":"input_text","text":"parts"}]},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"said"}]},
            {"output":"tool says","type":"function_call_output","call_id":"c1"},
            {"type":"function_call","name":"f","arguments":"{\"q\":\"v\"}","call_id":"c1"}
        ]}"#;
        let c = chat(ChatShape::OpenaiResponses, body);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(leaf(&c, "/input/0/content").role, Some(Role::System));
        assert_eq!(leaf(&c, "/input/1/content/0/text").role, Some(Role::User));
        assert_eq!(leaf(&c, "/input/1/content/0/type").role, None);
        assert_eq!(
            leaf(&c, "/input/2/content/0/text").role,
            Some(Role::Assistant)
        );
        assert_eq!(leaf(&c, "/input/3/output").role, Some(Role::Tool));
        assert_eq!(leaf(&c, "/input/3/call_id").role, None);
        assert_eq!(leaf(&c, "/input/4/arguments").role, Some(Role::Assistant));
        assert_eq!(
            leaf(&c, "/input/4/arguments#/q").role,
            Some(Role::Assistant)
        );
        assert_eq!(leaf(&c, "/input/4/name").role, None);
    }

    #[test]
    fn openai_embeddings_roles() {
        let c = chat(
            ChatShape::OpenaiEmbeddings,
            r#"{"model":"e","input":["one","two"],"encoding_format":"float"}"#,
        );
        assert_eq!(leaf(&c, "/input/0").role, Some(Role::User));
        assert_eq!(leaf(&c, "/input/1").role, Some(Role::User));
        assert_eq!(leaf(&c, "/model").role, None);
        assert_eq!(leaf(&c, "/encoding_format").role, None);
        let c = chat(ChatShape::OpenaiEmbeddings, r#"{"input":"single"}"#);
        assert_eq!(leaf(&c, "/input").role, Some(Role::User));
        // Other shapes' keys mean nothing here.
        let c = chat(
            ChatShape::OpenaiEmbeddings,
            r#"{"messages":[{"content":"x"}]}"#,
        );
        assert_eq!(leaf(&c, "/messages/0/content").role, None);
    }

    #[test]
    fn anthropic_messages_roles() {
        let body = r#"{
          "model": "claude",
          "system": [{"type": "text", "text": "sys block", "cache_control": {"type": "ephemeral"}}],
          "messages": [
            {"content": "hello", "role": "user"},
            {"role": "assistant", "content": [
              {"type": "text", "text": "let me look"},
              {"input": {"query": "q", "opts": ["o1"]}, "type": "tool_use", "id": "t1", "name": "search"}
            ]},
            {"role": "user", "content": [
              {"type": "tool_result", "tool_use_id": "t1", "content": "found it"},
              {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "block result"}]},
              {"text": "and user text", "type": "text"}
            ]}
          ]
        }"#;
        let c = chat(ChatShape::AnthropicMessages, body);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let role = |ptr: &str| leaf(&c, ptr).role;
        assert_eq!(role("/system/0/text"), Some(Role::System));
        assert_eq!(role("/system/0/type"), None);
        assert_eq!(role("/system/0/cache_control/type"), None);
        assert_eq!(role("/messages/0/content"), Some(Role::User));
        assert_eq!(role("/messages/0/role"), None);
        assert_eq!(role("/messages/1/content/0/text"), Some(Role::Assistant));
        assert_eq!(
            role("/messages/1/content/1/input/query"),
            Some(Role::Assistant)
        );
        assert_eq!(
            role("/messages/1/content/1/input/opts/0"),
            Some(Role::Assistant)
        );
        assert_eq!(role("/messages/1/content/1/name"), None);
        assert_eq!(role("/messages/1/content/1/id"), None);
        assert_eq!(role("/messages/2/content/0/content"), Some(Role::Tool));
        assert_eq!(role("/messages/2/content/0/tool_use_id"), None);
        assert_eq!(
            role("/messages/2/content/1/content/0/text"),
            Some(Role::Tool)
        );
        assert_eq!(role("/messages/2/content/2/text"), Some(Role::User));
        assert_eq!(role("/model"), None);
        let c = chat(ChatShape::AnthropicMessages, r#"{"system":"plain sys"}"#);
        assert_eq!(leaf(&c, "/system").role, Some(Role::System));
    }

    #[test]
    fn api_params_are_reported_with_raw_values() {
        use ApiParam as P;
        let body = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},
            {"role":"user","name":"bob","content":[{"type":"text","text":"hi"},
              {"type":"image_url","image_url":{"detail":"low","url":"https://x/a.png"}},
              {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],
            "max_tokens": 512 ,"n":2,"stream":true,"stream_options":{"include_usage":true},
            "logprobs":false,"top_logprobs":3,"logit_bias":{},"tools":[{"type":"function",
            "function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto",
            "temperature":0.2,"max_completion_tokens":null}"#;
        let c = chat(ChatShape::OpenaiChat, body);
        let got: Vec<(P, &str)> = c.params.iter().map(|(p, v)| (*p, v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (P::Model, r#""gpt-4o""#),
                (P::Message, ""),
                (P::Message, ""),
                (P::MessageName, ""),
                (P::PartEnd, ""),
                (P::ImageDetail, "low"),
                (P::Image, "https://x/a.png"),
                (P::PartEnd, ""),
                (P::Image, "data:image/png;base64,AAAA"),
                (P::PartEnd, ""),
                (P::MaxTokens, "512"),
                (P::N, "2"),
                (P::Stream, "true"),
                (P::StreamOptions, r#"{"include_usage":true}"#),
                (P::Logprobs, "false"),
                (P::TopLogprobs, "3"),
                (P::LogitBias, "{}"),
                (
                    P::Tools,
                    r#"[{"type":"function",
            "function":{"name":"f","parameters":{"type":"object"}}}]"#
                ),
                (P::ToolChoice, r#""auto""#),
                (P::MaxCompletionTokens, "null"),
            ]
        );
        // Parameters are the top level's only: the same names deeper are not.
        let c = chat(
            ChatShape::OpenaiChat,
            r#"{"messages":[{"role":"user","content":"x","model":"m","n":5}],"x":{"stream":true}}"#,
        );
        assert_eq!(c.params.len(), 1, "{:?}", c.params);
        // Plain JSON reports none.
        let c = chat(ChatShape::None, r#"{"model":"m","max_tokens":5}"#);
        assert!(c.params.is_empty());
    }

    #[test]
    fn api_params_of_other_shapes() {
        use ApiParam as P;
        let c = chat(
            ChatShape::OpenaiResponses,
            r#"{"model":"o3","max_output_tokens":100,"input":[{"role":"user","content":[
               {"type":"input_text","text":"x"},{"type":"input_image","image_url":"https://i","detail":"high"}]},
               {"type":"function_call_output","output":"r"}]}"#,
        );
        let kinds: Vec<P> = c.params.iter().map(|p| p.0).collect();
        assert_eq!(
            kinds,
            [
                P::Model,
                P::MaxOutputTokens,
                P::Message,
                P::PartEnd,
                P::Image,
                P::ImageDetail,
                P::PartEnd,
                P::Message
            ]
        );
        let c = chat(
            ChatShape::AnthropicMessages,
            r#"{"model":"claude-sonnet-4","max_tokens":1024,"system":"s","messages":[{"role":"user","content":[
               {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
               {"type":"text","text":"what is this?"}]}],"stream":false}"#,
        );
        let got: Vec<(P, &str)> = c.params.iter().map(|(p, v)| (*p, v.as_str())).collect();
        assert_eq!(
            got,
            [
                (P::Model, "\"claude-sonnet-4\""),
                (P::MaxTokens, "1024"),
                (P::Message, ""),
                (P::Image, "iVBOR"),
                (P::PartEnd, ""),
                (P::PartEnd, ""),
                (P::Stream, "false"),
            ]
        );
        // A truncated body reports what it passed, never a half value.
        let c = chat(ChatShape::OpenaiChat, r#"{"model":"m","tools":[{"a":1}"#);
        assert_eq!(c.params.len(), 1);
    }

    #[test]
    fn pointers() {
        let doc = br#" {"inputs":"hi","parameters":{"max_new_tokens": 64 ,"a/b":[1,{"x":"y"}],"e\u0073c":true},
            "list":[[], "s,]", {"k":null}],"inputs":"last"}"#;
        let get = |p: &str| {
            pointer_get(doc, &pointer_tokens(p).expect("valid pointer"))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            get("/inputs").as_deref(),
            Some(r#""last""#),
            "last duplicate wins"
        );
        assert_eq!(get("/parameters/max_new_tokens").as_deref(), Some("64"));
        assert_eq!(get("/parameters/a~1b/1/x").as_deref(), Some(r#""y""#));
        assert_eq!(get("/parameters/esc").as_deref(), Some("true"));
        assert_eq!(get("/list/1").as_deref(), Some(r#""s,]""#));
        assert_eq!(get("/list/2/k").as_deref(), Some("null"));
        assert_eq!(get("/list/0").as_deref(), Some("[]"));
        for missing in [
            "/nope",
            "/list/3",
            "/list/01",
            "/list/x",
            "/inputs/0",
            "/parameters/max_new_tokens/x",
        ] {
            assert_eq!(get(missing), None, "{missing}");
        }
        assert!(get("").unwrap().starts_with(r#"{"inputs""#));
        assert_eq!(pointer_tokens("no-slash"), None);
        assert_eq!(pointer_tokens("/bad~2"), None);
        // Malformed or truncated documents give None, never a panic.
        for bad in [
            &b""[..],
            b"{",
            b"{\"inputs\"",
            b"{\"inputs\":",
            b"[1,",
            b"{\"a\":{\"b\":[}",
        ] {
            let _ = pointer_get(bad, &pointer_tokens("/inputs").unwrap());
            let _ = pointer_get(bad, &pointer_tokens("/a/b/0").unwrap());
        }
    }

    #[test]
    fn chat_shapes_survive_malformed_bodies() {
        // The lookahead must not misbehave on truncated or odd message objects.
        for body in [
            r#"{"messages":[{"content":"x","role":"#,
            r#"{"messages":[{"content":"x","role":"sys"#,
            r#"{"messages":[{"content":"x","role":{"a":"b"}}]}"#,
            r#"{"messages":[{"content":"x","role":"\ud800"}]}"#,
            r#"{"messages":["str", 1, [{"role":"system","content":"y"}]]}"#,
            r#"{"messages":{"role":"system","content":"z"}}"#,
        ] {
            for shape in [ChatShape::OpenaiChat, ChatShape::AnthropicMessages] {
                let c = chat(shape, body);
                for r in &c.fields {
                    assert_ne!(r.role, Some(Role::System), "{body}: {r:?}");
                }
            }
        }
        let c = chat(
            ChatShape::OpenaiChat,
            r#"{"messages":[{"content":"x","role":{"a":"b"}}]}"#,
        );
        assert_eq!(leaf(&c, "/messages/0/content").role, Some(Role::User));
    }

    /// A sink that records whether each value was borrowed from the body.
    struct Borrowed<'b> {
        body: &'b [u8],
        from_body: Vec<bool>,
    }

    impl FieldSink for Borrowed<'_> {
        fn field(&mut self, f: &Field<'_>) {
            let range = self.body.as_ptr_range();
            self.from_body
                .push(range.contains(&f.value.as_ptr()) || f.value.is_empty());
        }
        fn finding(&mut self, _: Finding) {}
    }

    #[test]
    fn unescaped_strings_are_zero_copy() {
        let body = br#"{"plain":"text","esc":"a\nb","k\u0065y":"v"}"#;
        let mut sink = Borrowed {
            body,
            from_body: Vec::new(),
        };
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, ParseLimits::default());
        walk(body, ChatShape::None, &mut scratch, &mut em);
        assert_eq!(sink.from_body, [true, true, true, false, false, true]);
    }

    #[test]
    fn warm_scratch_does_not_grow() {
        let bodies: [&[u8]; 2] = [
            br#"{"model":"m","messages":[{"role":"user","content":"hello"},{"content":[{"type":"text","text":"t"}],"role":"assistant"}],"n":[[[1]]]}"#,
            br#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":"{\"a\":[\"\\u00e9\"]}"}}]}],"x":"\u00e9"}"#,
        ];
        for body in bodies {
            let mut scratch = ParseScratch::default();
            let mut sink = Collect::default();
            let mut em = Emitter::new(&mut sink, ParseLimits::default());
            walk(body, ChatShape::OpenaiChat, &mut scratch, &mut em);
            let cap = scratch.capacity();
            for _ in 0..3 {
                let mut sink = Collect::default();
                let mut em = Emitter::new(&mut sink, ParseLimits::default());
                walk(body, ChatShape::OpenaiChat, &mut scratch, &mut em);
                assert!(sink.findings.is_empty());
                assert_eq!(cap, scratch.capacity());
            }
        }
    }

    mod oracle {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// RFC 6901 reference token escaping, written independently of `push_key`.
        fn esc(k: &str) -> String {
            k.replace('~', "~0").replace('/', "~1")
        }

        /// `(kind, name, value)` of emitted fields.
        type Emitted = Vec<(FieldKind, Vec<u8>, Vec<u8>)>;

        /// Naive recursive oracle: every (kind, pointer, value) the walker should emit.
        fn expected(v: &Value, ptr: &str, out: &mut Emitted) {
            match v {
                Value::String(s) => out.push((FieldKind::Json, ptr.into(), s.clone().into_bytes())),
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        expected(x, &format!("{ptr}/{i}"), out);
                    }
                }
                Value::Object(o) => {
                    for (k, x) in o {
                        out.push((FieldKind::JsonKey, ptr.into(), k.clone().into_bytes()));
                        expected(x, &format!("{ptr}/{}", esc(k)), out);
                    }
                }
                _ => {}
            }
        }

        /// Serializes with every non-ASCII character as `\u` escapes (surrogate pairs for
        /// astral ones), a form serde_json never writes.
        fn ascii_json(v: &Value, out: &mut String) {
            match v {
                Value::String(s) => ascii_str(s, out),
                Value::Array(a) => {
                    out.push('[');
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            out.push_str(" ,\n");
                        }
                        ascii_json(x, out);
                    }
                    out.push(']');
                }
                Value::Object(o) => {
                    out.push_str("{ ");
                    for (i, (k, x)) in o.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        ascii_str(k, out);
                        out.push_str("\t:\r");
                        ascii_json(x, out);
                    }
                    out.push('}');
                }
                other => out.push_str(&other.to_string()),
            }
        }

        fn ascii_str(s: &str, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                    c => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                }
            }
            out.push('"');
        }

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[a-z~/\"\\\\ \u{0}-\u{1f}\u{7f}é\u{FFFF}\u{10000}\u{1F600}{}\\[\\]]{0,12}",
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                text().prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(text(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn walked(body: &[u8]) -> (Emitted, Vec<Finding>) {
            let limits = ParseLimits {
                max_nested_json: 0,
                max_depth: 64,
                max_fields: u32::MAX,
                max_decoded_bytes: u64::MAX,
                ..ParseLimits::default()
            };
            let c = run_with(body, ChatShape::None, limits);
            let mut got: Vec<_> = c
                .fields
                .into_iter()
                .map(|r| (r.kind, r.name, r.value))
                .collect();
            got.sort();
            (got, c.findings)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn matches_serde_json(v in value()) {
                let mut want = Vec::new();
                expected(&v, "", &mut want);
                want.sort();
                let compact = serde_json::to_vec(&v).unwrap();
                let (got, findings) = walked(&compact);
                prop_assert!(findings.is_empty(), "{:?}", findings);
                prop_assert_eq!(&got, &want);
                let pretty = serde_json::to_vec_pretty(&v).unwrap();
                let (got, findings) = walked(&pretty);
                prop_assert!(findings.is_empty(), "{:?}", findings);
                prop_assert_eq!(&got, &want);
                let mut ascii = String::new();
                ascii_json(&v, &mut ascii);
                let (got, findings) = walked(ascii.as_bytes());
                prop_assert!(findings.is_empty(), "{:?}", findings);
                prop_assert_eq!(&got, &want);
            }

            #[test]
            fn pointer_get_matches_serde_json(v in value()) {
                // Every value's pointer resolves to bytes that parse to that value.
                fn paths(v: &Value, ptr: String, out: &mut Vec<String>) {
                    out.push(ptr.clone());
                    match v {
                        Value::Object(m) => {
                            for (k, c) in m {
                                let k = k.replace('~', "~0").replace('/', "~1");
                                paths(c, format!("{ptr}/{k}"), out);
                            }
                        }
                        Value::Array(a) => {
                            for (i, c) in a.iter().enumerate() {
                                paths(c, format!("{ptr}/{i}"), out);
                            }
                        }
                        _ => {}
                    }
                }
                let mut all = Vec::new();
                paths(&v, String::new(), &mut all);
                // Compact text: the raw value is exactly the sub-value's serialization.
                // Pretty text: the same once both are parsed (numbers parse alike).
                let compact = serde_json::to_vec(&v).unwrap();
                let pretty = serde_json::to_vec_pretty(&v).unwrap();
                for p in &all {
                    let want = serde_json::to_vec(v.pointer(p).unwrap()).unwrap();
                    let tokens = pointer_tokens(p).unwrap();
                    let raw = pointer_get(&compact, &tokens);
                    prop_assert_eq!(raw, Some(&want[..]), "{}", p);
                    let raw = pointer_get(&pretty, &tokens).unwrap_or_else(|| panic!("{p}"));
                    let got: Value = serde_json::from_slice(raw).unwrap();
                    let want: Value = serde_json::from_slice(&want).unwrap();
                    prop_assert_eq!(got, want, "{}", p);
                }
                for doc in [compact, pretty] {
                    let missing = pointer_tokens("/\u{1}missing").unwrap();
                    prop_assert_eq!(pointer_get(&doc, &missing), None);
                }
            }

            #[test]
            fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = pointer_get(&body, &pointer_tokens("/a/0/b").unwrap());
                for shape in SHAPES {
                    run_with(&body, shape, ParseLimits::default());
                }
            }

            #[test]
            fn never_panics_on_json_like_input(
                pieces in prop::collection::vec(
                    prop::sample::select(vec![
                        "{", "}", "[", "]", ":", ",", "\"", "\\", "\\u", "d800", "dc00", "00e9",
                        "\"messages\"", "\"role\"", "\"content\"", "\"type\"", "\"tool_result\"",
                        "\"tool_use\"", "\"input\"", "\"text\"", "\"system\"", "\"user\"",
                        "\"function_call_output\"", "\"output\"", "\"tool_calls\"", "\"function\"",
                        "\"arguments\"", "\"{\\\"a\\\":\\\"b\\\"}\"", "\"[\\\"x\\\"]\"", "1", "-0.5e3",
                        "true", "null", " ", "\n", "x", "\u{1F600}", "\u{FEFF}",
                    ]),
                    0..60,
                ),
                max_depth in 0u32..6,
                max_fields in 0u32..40,
            ) {
                let body = pieces.concat();
                let limits = ParseLimits {
                    max_depth,
                    max_fields,
                    max_decoded_bytes: 64,
                    ..ParseLimits::default()
                };
                for shape in SHAPES {
                    let c = run_with(body.as_bytes(), shape, limits);
                    prop_assert!(c.fields.len() <= max_fields as usize);
                    // Exactly one of: valid, or one InvalidJson.
                    let invalid = c.findings.iter().filter(|f| matches!(f, Finding::InvalidJson { .. })).count();
                    prop_assert!(invalid <= 1);
                    if serde_json::from_slice::<Value>(body.as_bytes()).is_ok() && !c.findings.contains(&Finding::TooManyFields) {
                        prop_assert_eq!(invalid, 0, "{}", body);
                    }
                }
            }
        }

        const SHAPES: [ChatShape; 5] = [
            ChatShape::None,
            ChatShape::OpenaiChat,
            ChatShape::OpenaiResponses,
            ChatShape::OpenaiEmbeddings,
            ChatShape::AnthropicMessages,
        ];
    }
}
