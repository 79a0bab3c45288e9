//! Request content parsers: query strings and forms, cookies, multipart bodies, JSON and
//! XML.
//!
//! Every parser walks its input once, left to right, and hands borrowed [`Field`]s to an
//! [`Emitter`]. A value is a slice of the input when nothing was escaped; otherwise it is a
//! slice of a decode buffer in [`ParseScratch`], which is cleared but never shrunk, so once a
//! worker's scratch is warm a request costs no allocation. No parser recurses on input
//! structure (JSON nesting uses an explicit stack), none panics, and all run in linear time.
//!
//! Malformed content is data, not an error: parsers report a [`Finding`] and keep whatever
//! they could parse.

pub mod cookie;
pub mod json;
pub mod media;
pub mod multipart;
pub mod urlencoded;
pub mod xml;

pub use json::ChatShape;

use crate::field::{ApiParam, Field, FieldFlags, FieldSink, Finding, ParseLimits};

/// Reusable buffers for all parsers; one per worker (lives inside the engine's scratch).
///
/// Buffers are cleared before use and never shrunk, so their capacity converges to what the
/// largest request needed and later requests allocate nothing.
#[derive(Debug, Default)]
pub struct ParseScratch {
    /// Decoded names (query, form and cookie names, multipart part names).
    name: Vec<u8>,
    /// Decoded values.
    value: Vec<u8>,
    /// The values of a repeated query or form parameter, joined (see `urlencoded`).
    joined: Vec<u8>,
    /// `--boundary`, contiguous so one substring finder can search for it.
    delim: Vec<u8>,
    /// The JSON walker's stacks, pointer and per-nesting-level buffers.
    json: json::JsonScratch,
    /// The XML walker's stack of open elements.
    xml: xml::XmlScratch,
}

impl ParseScratch {
    /// Creates empty buffers; they grow on first use.
    pub fn new() -> Self {
        ParseScratch::default()
    }

    /// Total bytes reserved by all buffers, to check that a warm scratch stops growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.name.capacity()
            + self.value.capacity()
            + self.joined.capacity()
            + self.delim.capacity()
            + self.json.capacity()
            + self.xml.capacity()
    }
}

/// Per-request accounting of the [`ParseLimits`] shared by all parsers of one request.
///
/// Parsers never talk to the sink directly: the emitter is where the field-count and
/// decoded-size budgets are enforced, so that a request split over query, cookies and body
/// cannot get more inspection-free room than one parser would give it.
pub struct Emitter<'s> {
    sink: &'s mut dyn FieldSink,
    limits: ParseLimits,
    fields: u32,
    decoded: u64,
    /// One bit per [`Finding`] kind already reported, so a body with a million bad escapes
    /// costs the sink one call, not a million.
    reported: u16,
    stopped: bool,
}

impl std::fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("limits", &self.limits)
            .field("fields", &self.fields)
            .field("decoded", &self.decoded)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<'s> Emitter<'s> {
    /// Starts the accounting for one request.
    pub fn new(sink: &'s mut dyn FieldSink, limits: ParseLimits) -> Self {
        Emitter {
            sink,
            limits,
            fields: 0,
            decoded: 0,
            reported: 0,
            stopped: false,
        }
    }

    /// Hands one field to the sink unless a limit is reached; returns whether the parser may
    /// continue.
    ///
    /// Counts fields and decoded bytes (`value.len()` of fields flagged
    /// [`FieldFlags::DECODED`]). On the first overflow it reports [`Finding::TooManyFields`]
    /// or [`Finding::DecodedTooLarge`] and from then on returns `false`, so parsers stop
    /// early. A decoded value that overflows the byte budget is not dropped whole: the part
    /// that still fits (cut at a UTF-8 character boundary when the value is text) is handed
    /// over flagged [`FieldFlags::TRUNCATED`], so a single huge escaped payload still gets its
    /// head inspected.
    ///
    /// Flags imply findings: a field flagged [`FieldFlags::MALFORMED_ESCAPE`] also reports
    /// [`Finding::MalformedEscape`] and one flagged [`FieldFlags::INVALID_UTF8`] reports
    /// [`Finding::InvalidUtf8`], so every parser reports them the same way.
    pub fn field(&mut self, f: &Field<'_>) -> bool {
        if self.stopped {
            return false;
        }
        if self.fields >= self.limits.max_fields {
            self.stopped = true;
            self.finding(Finding::TooManyFields);
            return false;
        }
        if f.flags.has(FieldFlags::DECODED) {
            let len = f.value.len() as u64;
            let room = self.limits.max_decoded_bytes.saturating_sub(self.decoded);
            if len > room {
                self.stopped = true;
                // `room < len <= usize::MAX`, so the conversion cannot fail.
                let mut cut = usize::try_from(room).unwrap_or(0);
                if !f.flags.has(FieldFlags::INVALID_UTF8) {
                    while cut > 0 && f.value.get(cut).is_some_and(|&b| b & 0xC0 == 0x80) {
                        cut -= 1;
                    }
                }
                if cut > 0 {
                    let mut flags = f.flags;
                    flags.set(FieldFlags::TRUNCATED);
                    let head = Field {
                        value: &f.value[..cut],
                        flags,
                        ..*f
                    };
                    self.fields += 1;
                    self.decoded += cut as u64;
                    self.deliver(&head);
                }
                self.finding(Finding::DecodedTooLarge);
                return false;
            }
            self.decoded += len;
        }
        self.fields += 1;
        self.deliver(f);
        true
    }

    fn deliver(&mut self, f: &Field<'_>) {
        self.sink.field(f);
        if f.flags.has(FieldFlags::MALFORMED_ESCAPE) {
            self.finding(Finding::MalformedEscape);
        }
        if f.flags.has(FieldFlags::INVALID_UTF8) {
            self.finding(Finding::InvalidUtf8);
        }
    }

    /// Forwards a finding, once per kind per request (the first one's offset is kept).
    pub fn finding(&mut self, f: Finding) {
        let bit = 1u16 << finding_index(&f);
        if self.reported & bit == 0 {
            self.reported |= bit;
            self.sink.finding(f);
        }
    }

    /// Hands an inference-API parameter to the sink (see [`ApiParam`]); not counted
    /// against the field budget, since parameters are a fixed handful per message.
    pub fn param(&mut self, p: ApiParam, value: &[u8]) {
        if !self.stopped {
            self.sink.param(p, value);
        }
    }

    /// The limits this request is held to.
    pub fn limits(&self) -> &ParseLimits {
        &self.limits
    }

    /// Whether a limit was reached; parsers stop as soon as this is true.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// How many fields were handed to the sink so far.
    pub fn field_count(&self) -> u32 {
        self.fields
    }

    /// How many decoded bytes were handed to the sink so far.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// Gives the sink back, for callers that own it through the emitter's borrow.
    pub fn into_sink(self) -> &'s mut dyn FieldSink {
        self.sink
    }
}

fn finding_index(f: &Finding) -> u32 {
    match f {
        Finding::InvalidJson { .. } => 0,
        Finding::JsonTooDeep { .. } => 1,
        Finding::TooManyFields => 2,
        Finding::DecodedTooLarge => 3,
        Finding::MalformedEscape => 4,
        Finding::InvalidUtf8 => 5,
        Finding::MalformedMultipart => 6,
        Finding::TooManyParts => 7,
        Finding::DuplicateJsonKey => 8,
        Finding::InvalidJsonEscape => 9,
        Finding::MultipartCharset => 10,
    }
}

/// [`FieldFlags::INVALID_UTF8`] if `v` is not UTF-8, for values where text is expected.
#[inline]
pub(crate) fn utf8_flags(v: &[u8]) -> FieldFlags {
    if v.is_ascii() || std::str::from_utf8(v).is_ok() {
        FieldFlags::default()
    } else {
        FieldFlags::INVALID_UTF8
    }
}

#[inline]
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `input` into `out` if it contains escapes; returns the decoded slice
/// (`input` itself when nothing changed, else `out`) and its flags.
///
/// `plus_as_space` turns `+` into a space, as forms and query strings do; paths keep `+`.
/// A `%` not followed by two hex digits (`%zz`, `%4`, a trailing `%`, IIS-style `%u0041`) is
/// kept literally and flagged [`FieldFlags::MALFORMED_ESCAPE`]; decoding is single-pass, so
/// `%2541` becomes `%41` (undoing double encoding is a transform's job, not the parser's).
/// [`FieldFlags::DECODED`] is set only when the result differs from the input, and
/// [`FieldFlags::INVALID_UTF8`] when the result is not UTF-8.
pub fn percent_decode<'a>(
    input: &'a [u8],
    plus_as_space: bool,
    out: &'a mut Vec<u8>,
) -> (&'a [u8], FieldFlags) {
    let first = if plus_as_space {
        memchr::memchr2(b'%', b'+', input)
    } else {
        memchr::memchr(b'%', input)
    };
    let Some(first) = first else {
        return (input, utf8_flags(input));
    };
    let mut flags = FieldFlags::default();
    let mut changed = false;
    out.clear();
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex_val);
                let lo = input.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    changed = true;
                    i += 3;
                } else {
                    out.push(b'%');
                    flags.set(FieldFlags::MALFORMED_ESCAPE);
                    i += 1;
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                changed = true;
                i += 1;
            }
            _ => {
                let rest = &input[i..];
                let next = if plus_as_space {
                    memchr::memchr2(b'%', b'+', rest)
                } else {
                    memchr::memchr(b'%', rest)
                };
                let n = next.unwrap_or(rest.len());
                out.extend_from_slice(&rest[..n]);
                i += n;
            }
        }
    }
    let value: &'a [u8] = if changed {
        flags.set(FieldFlags::DECODED);
        out
    } else {
        input
    };
    flags.set(utf8_flags(value));
    (value, flags)
}

/// Trims the optional whitespace of HTTP header grammar (SP and HTAB).
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A sink that records everything, for the parser tests.

    use crate::field::{ApiParam, Field, FieldFlags, FieldKind, FieldSink, Finding, Role};

    /// One recorded field, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rec {
        pub kind: FieldKind,
        pub name: Vec<u8>,
        pub value: Vec<u8>,
        pub role: Option<Role>,
        pub flags: FieldFlags,
    }

    impl Rec {
        pub fn name_str(&self) -> String {
            String::from_utf8_lossy(&self.name).into_owned()
        }
        pub fn value_str(&self) -> String {
            String::from_utf8_lossy(&self.value).into_owned()
        }
    }

    #[derive(Debug, Default)]
    pub struct Collect {
        pub fields: Vec<Rec>,
        pub findings: Vec<Finding>,
        /// Inference-API parameters with their values, as lossy strings.
        pub params: Vec<(ApiParam, String)>,
    }

    impl FieldSink for Collect {
        fn field(&mut self, f: &Field<'_>) {
            self.fields.push(Rec {
                kind: f.kind,
                name: f.name.to_vec(),
                value: f.value.to_vec(),
                role: f.role,
                flags: f.flags,
            });
        }
        fn finding(&mut self, f: Finding) {
            self.findings.push(f);
        }
        fn param(&mut self, p: ApiParam, v: &[u8]) {
            self.params
                .push((p, String::from_utf8_lossy(v).into_owned()));
        }
    }

    impl Collect {
        /// `(name, value)` of every field of `kind`, as lossy strings.
        pub fn pairs(&self, kind: FieldKind) -> Vec<(String, String)> {
            self.fields
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| (r.name_str(), r.value_str()))
                .collect()
        }

        pub fn get(&self, kind: FieldKind, name: &str) -> Option<&Rec> {
            self.fields
                .iter()
                .find(|r| r.kind == kind && r.name == name.as_bytes())
        }

        pub fn has(&self, f: Finding) -> bool {
            self.findings.contains(&f)
        }
    }
    /// An expected `(name, value)` pair, as [`Collect::pairs`] returns them.
    pub fn p(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::Collect;
    use super::*;
    use crate::field::FieldKind;

    fn dec(input: &str, plus: bool) -> (String, FieldFlags) {
        let mut out = Vec::new();
        let (v, f) = percent_decode(input.as_bytes(), plus, &mut out);
        (String::from_utf8_lossy(v).into_owned(), f)
    }

    #[test]
    fn percent_decode_cases() {
        assert_eq!(dec("abc", true), ("abc".into(), FieldFlags::default()));
        assert_eq!(dec("a%20b", false), ("a b".into(), FieldFlags::DECODED));
        assert_eq!(dec("a+b", true), ("a b".into(), FieldFlags::DECODED));
        assert_eq!(dec("a+b", false), ("a+b".into(), FieldFlags::default()));
        assert_eq!(dec("%2B", true), ("+".into(), FieldFlags::DECODED));
        assert_eq!(dec("%3c%3E", false), ("<>".into(), FieldFlags::DECODED));
        assert_eq!(dec("%2541", false), ("%41".into(), FieldFlags::DECODED));
        for bad in ["%zz", "%4", "a%", "%", "%u0041", "%%"] {
            let (v, f) = dec(bad, true);
            assert_eq!(v, bad, "{bad}");
            assert_eq!(f, FieldFlags::MALFORMED_ESCAPE, "{bad}");
        }
        let (v, f) = dec("%41%zz", false);
        assert_eq!(v, "A%zz");
        assert!(f.has(FieldFlags::DECODED) && f.has(FieldFlags::MALFORMED_ESCAPE));
        let (_, f) = dec("%ff%fe", false);
        assert!(f.has(FieldFlags::INVALID_UTF8) && f.has(FieldFlags::DECODED));
        let mut out = Vec::new();
        let (v, f) = percent_decode(b"\xff", false, &mut out);
        assert_eq!(v, b"\xff");
        assert_eq!(f, FieldFlags::INVALID_UTF8);
        assert_eq!(dec("%C3%A9", false), ("é".into(), FieldFlags::DECODED));
    }

    fn field<'a>(value: &'a [u8], flags: FieldFlags) -> Field<'a> {
        Field {
            kind: FieldKind::Json,
            name: b"",
            value,
            role: None,
            flags,
        }
    }

    #[test]
    fn emitter_field_limit() {
        let mut sink = Collect::default();
        let limits = ParseLimits {
            max_fields: 2,
            ..ParseLimits::default()
        };
        let mut em = Emitter::new(&mut sink, limits);
        assert!(em.field(&field(b"a", FieldFlags::default())));
        assert!(em.field(&field(b"b", FieldFlags::default())));
        assert!(!em.field(&field(b"c", FieldFlags::default())));
        assert!(!em.field(&field(b"d", FieldFlags::default())));
        assert!(em.stopped());
        assert_eq!(em.field_count(), 2);
        assert_eq!(sink.fields.len(), 2);
        assert_eq!(sink.findings, vec![Finding::TooManyFields]);
    }

    #[test]
    fn emitter_decoded_limit_truncates_at_char_boundary() {
        let mut sink = Collect::default();
        let limits = ParseLimits {
            max_decoded_bytes: 6,
            ..ParseLimits::default()
        };
        let mut em = Emitter::new(&mut sink, limits);
        // Undecoded values do not count.
        assert!(em.field(&field(b"0123456789", FieldFlags::default())));
        assert!(em.field(&field(b"abc", FieldFlags::DECODED)));
        // 3 bytes of room; "é" straddles the cut and is left out whole.
        assert!(!em.field(&field("xyéz".as_bytes(), FieldFlags::DECODED)));
        assert!(!em.field(&field(b"q", FieldFlags::DECODED)));
        assert_eq!(sink.fields.len(), 3);
        assert_eq!(sink.fields[2].value, b"xy");
        assert!(sink.fields[2].flags.has(FieldFlags::TRUNCATED));
        assert_eq!(sink.findings, vec![Finding::DecodedTooLarge]);
    }

    #[test]
    fn emitter_dedups_findings_and_derives_them_from_flags() {
        let mut sink = Collect::default();
        let mut em = Emitter::new(&mut sink, ParseLimits::default());
        em.finding(Finding::InvalidJson { offset: 3 });
        em.finding(Finding::InvalidJson { offset: 9 });
        em.field(&field(b"%zz", FieldFlags::MALFORMED_ESCAPE));
        em.field(&field(b"%zz", FieldFlags::MALFORMED_ESCAPE));
        em.field(&field(b"\xff", FieldFlags::INVALID_UTF8));
        assert_eq!(
            sink.findings,
            vec![
                Finding::InvalidJson { offset: 3 },
                Finding::MalformedEscape,
                Finding::InvalidUtf8
            ]
        );
    }

    #[test]
    fn trims_ows() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
    }
}
