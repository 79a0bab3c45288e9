//! Fields: the unit of inspection.
//!
//! Parsers never build a tree. They walk the request once and hand each field to a
//! [`FieldSink`] as a borrowed [`Field`]: the value is either a slice of the request
//! itself or, when the raw bytes were escaped, a slice of a decode buffer that the parser
//! reuses across fields and requests. So a request without escapes costs no allocation,
//! and an escaped one costs at most the growth of a reused buffer.

use serde::{Deserialize, Serialize};

/// Where in the request a field came from.
///
/// The set is closed and small so that a rule's targets compile to a bit set
/// ([`FieldKindSet`]) and target checks are one AND per field and rule group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum FieldKind {
    /// The request method (`GET`, `POST`, …).
    Method = 0,
    /// The raw request path, percent-decoded.
    Path,
    /// A query-string parameter value (`query:name`).
    Query,
    /// A query-string parameter name.
    QueryName,
    /// A header value (`header:name`, name lowercased).
    Header,
    /// A cookie value (`cookie:name`).
    Cookie,
    /// A cookie name.
    CookieName,
    /// An `application/x-www-form-urlencoded` body value (`form:name`).
    Form,
    /// A form body parameter name.
    FormName,
    /// A `multipart/form-data` part's content (`multipart:name`).
    Multipart,
    /// A `multipart/form-data` part's filename.
    MultipartFilename,
    /// A `multipart/form-data` part's name.
    MultipartName,
    /// A JSON string leaf (`json:/messages/2/content`), unescaped.
    Json,
    /// A JSON object key, unescaped; the name is the pointer of the object holding it.
    JsonKey,
    /// The whole body, for routes whose schema is `raw` (or bodies no parser accepts).
    Body,
    /// An XML text node, CDATA section or attribute value (`xml:name`), entity-decoded;
    /// the name is the enclosing element's or the attribute's qualified name.
    Xml,
}

impl FieldKind {
    /// Every kind, in discriminant order.
    pub const ALL: [FieldKind; 16] = [
        FieldKind::Method,
        FieldKind::Path,
        FieldKind::Query,
        FieldKind::QueryName,
        FieldKind::Header,
        FieldKind::Cookie,
        FieldKind::CookieName,
        FieldKind::Form,
        FieldKind::FormName,
        FieldKind::Multipart,
        FieldKind::MultipartFilename,
        FieldKind::MultipartName,
        FieldKind::Json,
        FieldKind::JsonKey,
        FieldKind::Body,
        FieldKind::Xml,
    ];

    /// The stable prefix used in field locations (`query:id`, `json:/a/0`).
    pub fn prefix(self) -> &'static str {
        match self {
            FieldKind::Method => "method",
            FieldKind::Path => "path",
            FieldKind::Query => "query",
            FieldKind::QueryName => "query_name",
            FieldKind::Header => "header",
            FieldKind::Cookie => "cookie",
            FieldKind::CookieName => "cookie_name",
            FieldKind::Form => "form",
            FieldKind::FormName => "form_name",
            FieldKind::Multipart => "multipart",
            FieldKind::MultipartFilename => "multipart_filename",
            FieldKind::MultipartName => "multipart_name",
            FieldKind::Json => "json",
            FieldKind::JsonKey => "json_key",
            FieldKind::Body => "body",
            FieldKind::Xml => "xml",
        }
    }

    /// Parses [`FieldKind::prefix`] back.
    pub fn from_prefix(s: &str) -> Option<FieldKind> {
        FieldKind::ALL.iter().copied().find(|k| k.prefix() == s)
    }
}

/// A set of [`FieldKind`]s as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FieldKindSet(pub u16);

impl FieldKindSet {
    /// The empty set.
    pub const EMPTY: FieldKindSet = FieldKindSet(0);

    /// Adds a kind.
    pub fn insert(&mut self, k: FieldKind) {
        self.0 |= 1 << (k as u16);
    }

    /// Whether the set holds `k`.
    #[inline]
    pub fn contains(self, k: FieldKind) -> bool {
        self.0 & (1 << (k as u16)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<FieldKind> for FieldKindSet {
    fn from_iter<I: IntoIterator<Item = FieldKind>>(iter: I) -> Self {
        let mut s = FieldKindSet::EMPTY;
        for k in iter {
            s.insert(k);
        }
        s
    }
}

/// The chat role a prompt text field belongs to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Role {
    /// System or developer instructions (OpenAI `system`/`developer`, Anthropic `system`).
    System = 0,
    /// End-user text.
    User,
    /// Model output echoed back in the conversation history.
    Assistant,
    /// Tool or function results fed back to the model (OpenAI `tool`/`function`,
    /// Anthropic `tool_result`), a common indirect prompt-injection carrier.
    Tool,
}

impl Role {
    /// Every role, in discriminant order.
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    /// Maps a chat `role` string to a role; unknown roles are treated as user text,
    /// because an attacker chooses the role string and an unknown one must not hide text.
    pub fn from_chat_role(s: &[u8]) -> Role {
        match s {
            b"system" | b"developer" => Role::System,
            b"assistant" | b"model" => Role::Assistant,
            b"tool" | b"function" | b"ipython" => Role::Tool,
            _ => Role::User,
        }
    }

    /// The lowercase role name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Bit flags describing how a field was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FieldFlags(pub u8);

impl FieldFlags {
    /// A percent-escape was malformed (`%zz`, `%4`) and kept literally.
    pub const MALFORMED_ESCAPE: FieldFlags = FieldFlags(1);
    /// The decoded value is not valid UTF-8.
    pub const INVALID_UTF8: FieldFlags = FieldFlags(2);
    /// The value was cut at a configured size limit.
    pub const TRUNCATED: FieldFlags = FieldFlags(4);
    /// The value was decoded from an escaped form (percent, JSON `\u`, …).
    pub const DECODED: FieldFlags = FieldFlags(8);
    /// The field lies inside a JSON document that was itself a JSON string.
    pub const NESTED_JSON: FieldFlags = FieldFlags(16);

    /// Whether all bits of `other` are set.
    #[inline]
    pub fn has(self, other: FieldFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the bits of `other`.
    #[inline]
    pub fn set(&mut self, other: FieldFlags) {
        self.0 |= other.0;
    }
}

/// One field handed to a [`FieldSink`].
///
/// Everything is borrowed: from the request, or from a parser's reused decode buffer. A sink
/// that needs to keep a part (to report a match) copies it then.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Which part of the request this is.
    pub kind: FieldKind,
    /// The field's name: header name (lowercase as sent is not guaranteed; compare
    /// ASCII-case-insensitively), query/form/cookie/multipart name (decoded), or the JSON
    /// pointer (`/messages/2/content`; for JSON inside a JSON string,
    /// `<outer pointer>#<inner pointer>`). Empty for `method`, `path` and `body`.
    pub name: &'a [u8],
    /// The decoded value.
    pub value: &'a [u8],
    /// The chat role, for prompt text fields of chat-aware schemas; `None` otherwise.
    pub role: Option<Role>,
    /// How the value was decoded.
    pub flags: FieldFlags,
}

/// Something a parser noticed that is not a field: malformed or over-limit content.
///
/// Malformed content is data, not an error: the engine turns each finding into a match
/// of the `protocol` category (or a refusal, where the policy says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// The body is not valid JSON; `offset` is where parsing stopped.
    InvalidJson {
        /// Byte offset in the body.
        offset: usize,
    },
    /// JSON nesting went deeper than the limit; the walker skipped the deeper part.
    JsonTooDeep {
        /// Byte offset in the body.
        offset: usize,
    },
    /// More fields than the limit; the rest were not inspected.
    TooManyFields,
    /// Decoded bytes exceeded the limit; the rest was not inspected.
    DecodedTooLarge,
    /// A percent-escape was malformed.
    MalformedEscape,
    /// A value is not valid UTF-8 where text was expected.
    InvalidUtf8,
    /// The multipart body is malformed (missing boundary, unterminated part, …).
    MalformedMultipart,
    /// More multipart parts than the limit.
    TooManyParts,
    /// A JSON object repeats a key (a classic parser-differential trick).
    DuplicateJsonKey,
    /// A JSON `\u` escape is a lone surrogate or otherwise invalid.
    InvalidJsonEscape,
    /// A multipart part declares a charset other than UTF-8 or Latin-1 (UTF-7, UTF-16,
    /// Shift-JIS…): its bytes spell text the rules do not see as such.
    MultipartCharset,
}

impl Finding {
    /// A stable short code for the finding, used as the match's rule name.
    pub fn code(&self) -> &'static str {
        match self {
            Finding::InvalidJson { .. } => "invalid_json",
            Finding::JsonTooDeep { .. } => "json_too_deep",
            Finding::TooManyFields => "too_many_fields",
            Finding::DecodedTooLarge => "decoded_too_large",
            Finding::MalformedEscape => "malformed_escape",
            Finding::InvalidUtf8 => "invalid_utf8",
            Finding::MalformedMultipart => "malformed_multipart",
            Finding::TooManyParts => "too_many_parts",
            Finding::DuplicateJsonKey => "duplicate_json_key",
            Finding::InvalidJsonEscape => "invalid_json_escape",
            Finding::MultipartCharset => "multipart_charset",
        }
    }
}

/// Receives fields and findings from parsers.
pub trait FieldSink {
    /// Called once per field, in request order.
    fn field(&mut self, field: &Field<'_>);
    /// Called for each malformed or over-limit condition.
    fn finding(&mut self, finding: Finding);
    /// Called by the JSON walker, on chat-shaped bodies, for each inference-API parameter
    /// it passes (see [`ApiParam`] for what `value` holds). Sinks that only inspect fields
    /// ignore it.
    fn param(&mut self, _param: ApiParam, _value: &[u8]) {}
}

/// An inference-API parameter seen by the JSON walker in a chat-shaped body: what the cost
/// and parameter-policy stages read, reported during the same walk that emits fields, so
/// the body is read once.
///
/// Top-level members carry their raw JSON value (a slice of the body: `"gpt-4o"` with its
/// quotes, `512`, `true`, a whole object or array); the others say in their doc what they
/// carry. Members repeated at the top level are reported each time (the last one is what
/// most JSON parsers keep, so consumers should let it win).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiParam {
    /// `model` (raw JSON).
    Model,
    /// `max_tokens` (raw JSON): OpenAI chat and completions (deprecated for chat), Anthropic.
    MaxTokens,
    /// `max_completion_tokens` (raw JSON): OpenAI chat.
    MaxCompletionTokens,
    /// `max_output_tokens` (raw JSON): OpenAI Responses.
    MaxOutputTokens,
    /// `n` (raw JSON): number of choices (OpenAI chat and completions).
    N,
    /// `stream` (raw JSON).
    Stream,
    /// `stream_options` (raw JSON object; `include_usage` inside).
    StreamOptions,
    /// `logprobs` (raw JSON: a boolean for chat, a number for legacy completions).
    Logprobs,
    /// `top_logprobs` (raw JSON number).
    TopLogprobs,
    /// `logit_bias` (raw JSON object).
    LogitBias,
    /// `tools` (raw JSON array of tool definitions).
    Tools,
    /// `functions` (raw JSON array: the legacy form of `tools`).
    Functions,
    /// `tool_choice` (raw JSON).
    ToolChoice,
    /// One element of `messages` (or of a Responses `input` array) begins; empty value.
    Message,
    /// A message has a `name` member; empty value (OpenAI counts a token for it).
    MessageName,
    /// An image in a content part: the decoded URL string (`data:` URLs included) of an
    /// OpenAI `image_url` / Responses `input_image`, or the base64 `data` (or `url`) of an
    /// Anthropic image `source`.
    Image,
    /// The `detail` string of an image part (decoded).
    ImageDetail,
    /// A content part or block object closed; empty value. Pairs an [`ApiParam::Image`]
    /// with an [`ApiParam::ImageDetail`] of the same part whichever comes first.
    PartEnd,
}

/// Bounds every parser honours. All are counts or bytes; none is a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ParseLimits {
    /// Maximum JSON nesting depth (objects + arrays).
    pub max_depth: u32,
    /// Maximum number of fields handed to the sink per request (across all parsers).
    pub max_fields: u32,
    /// Maximum total bytes of decoded values per request.
    pub max_decoded_bytes: u64,
    /// How many levels of JSON-inside-a-JSON-string are walked (0 = none).
    pub max_nested_json: u32,
    /// Maximum multipart parts.
    pub max_parts: u32,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_depth: 64,
            max_fields: 2048,
            max_decoded_bytes: 4 * 1024 * 1024,
            max_nested_json: 2,
            max_parts: 64,
        }
    }
}
