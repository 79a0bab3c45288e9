//! `multipart/form-data` bodies (RFC 7578 over RFC 2046).
//!
//! The walk is one forward pass: a prebuilt substring finder locates each `--boundary`,
//! and a candidate counts as a delimiter only at the start of a line and when followed by
//! `--` (the close delimiter) or by optional blanks and a line end. Line ends may be CRLF or
//! a bare LF, since clients and test tools send both. The preamble before the first
//! delimiter and the epilogue after the close delimiter are ignored, as every back end
//! ignores them.
//!
//! Where structure is wrong, the walker reports [`Finding::MalformedMultipart`] but still
//! emits what it parsed, leaning towards emitting bytes as content rather than dropping
//! them: a part whose headers never end is emitted whole as content, and a stray boundary
//! string inside a part stays part of that part's content.

use memchr::memchr;
use memchr::memmem::Finder;

use super::{percent_decode, trim_ows, utf8_flags, Emitter, ParseScratch};
use crate::field::{Field, FieldFlags, FieldKind, Finding};

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// Extracts the `boundary` parameter from a `Content-Type` value.
///
/// The parameter name is matched case-insensitively and its value may be a token or a
/// quoted string. Returns `None` when it is missing, empty, longer than 70 bytes, contains
/// a byte outside RFC 2046's `bchars` (or ends in a space), when the parameter list is
/// malformed (an unterminated quote), or when `boundary` appears twice: back ends disagree
/// on which one wins, so a body framed by either cannot be parsed with confidence. The media
/// type itself is not checked; that is the caller's routing decision.
pub fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let params_start = memchr(b';', content_type)? + 1;
    let mut found = None;
    for param in Params::new(&content_type[params_start..]) {
        let (name, value) = param.ok()?;
        if !name.eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(value.raw);
    }
    let b = found?;
    let valid = !b.is_empty()
        && b.len() <= MAX_BOUNDARY
        && b.last() != Some(&b' ')
        && b.iter().all(|&c| is_bchar(c));
    valid.then_some(b)
}

fn is_bchar(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'\''
                | b'('
                | b')'
                | b'+'
                | b'_'
                | b','
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b'='
                | b'?'
                | b' '
        )
}

/// A parameter value as it appears on the wire.
#[derive(Debug, Clone, Copy)]
struct RawValue<'a> {
    /// The bytes between the quotes (quoted) or the token (unquoted).
    raw: &'a [u8],
    /// Whether `raw` may hold `\"` or `\\` pairs to undo.
    escaped: bool,
}

/// The `; name=value` parameters of a header value, as `(name, value)` pairs.
///
/// Quoted values end at the first unescaped `"`; inside them only `\"` and `\\` are
/// escapes. Other backslashes are literal, because browsers never escape and old ones sent
/// Windows paths such as `filename="C:\dir\a.txt"`. An unterminated quote yields one error
/// and ends the iteration.
struct Params<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Params<'a> {
    fn new(list: &'a [u8]) -> Self {
        Params {
            rest: list,
            failed: false,
        }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<(&'a [u8], RawValue<'a>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            let s = trim_ows(self.rest);
            if s.is_empty() {
                return None;
            }
            if s[0] == b';' {
                self.rest = &s[1..];
                continue;
            }
            // The name runs to '=' or ';'; a name without '=' is skipped.
            let stop = s.iter().position(|&b| b == b'=' || b == b';');
            let Some(eq) = stop.filter(|&i| s[i] == b'=') else {
                self.rest = stop.map_or(&[][..], |i| &s[i..]);
                continue;
            };
            let name = trim_ows(&s[..eq]);
            let after = trim_ows(&s[eq + 1..]);
            if let Some(inner) = after.strip_prefix(b"\"") {
                let mut i = 0;
                let mut escaped = false;
                loop {
                    match inner.get(i) {
                        None => {
                            self.failed = true;
                            return Some(Err(()));
                        }
                        Some(b'"') => break,
                        Some(b'\\') if matches!(inner.get(i + 1), Some(b'"' | b'\\')) => {
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => i += 1,
                    }
                }
                self.rest = &inner[i + 1..];
                // Anything between the closing quote and the next ';' is ignored.
                self.rest = memchr(b';', self.rest).map_or(&[][..], |j| &self.rest[j..]);
                return Some(Ok((
                    name,
                    RawValue {
                        raw: &inner[..i],
                        escaped,
                    },
                )));
            }
            let end = memchr(b';', after).unwrap_or(after.len());
            self.rest = &after[end..];
            return Some(Ok((
                name,
                RawValue {
                    raw: trim_ows(&after[..end]),
                    escaped: false,
                },
            )));
        }
    }
}

/// Undoes `\"` and `\\` in a quoted value; zero-copy when there are none.
fn unquote<'a>(v: RawValue<'a>, out: &'a mut Vec<u8>) -> (&'a [u8], FieldFlags) {
    if !v.escaped {
        return (v.raw, utf8_flags(v.raw));
    }
    out.clear();
    let mut i = 0;
    while i < v.raw.len() {
        let b = v.raw[i];
        if b == b'\\' && matches!(v.raw.get(i + 1), Some(b'"' | b'\\')) {
            out.push(v.raw[i + 1]);
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let mut flags = utf8_flags(out);
    flags.set(FieldFlags::DECODED);
    (out, flags)
}

/// Decodes an RFC 5987 `filename*` value: `charset'language'percent-encoded`. The bytes
/// are decoded whatever the charset claims; non-UTF-8 results are flagged.
fn ext_value<'a>(v: RawValue<'a>, out: &'a mut Vec<u8>) -> (&'a [u8], FieldFlags) {
    let raw = v.raw;
    let encoded = memchr(b'\'', raw)
        .and_then(|a| memchr(b'\'', &raw[a + 1..]).map(|b| &raw[a + b + 2..]))
        .unwrap_or(raw);
    percent_decode(encoded, false, out)
}

/// The `Content-Disposition` parameters the walker cares about.
#[derive(Debug, Default)]
struct Disposition<'a> {
    name: Option<RawValue<'a>>,
    filename: Option<RawValue<'a>>,
    filename_ext: Option<RawValue<'a>>,
    /// A parameter repeated or the list malformed.
    malformed: bool,
}

fn parse_disposition(value: &[u8]) -> Disposition<'_> {
    let mut d = Disposition::default();
    // The disposition type (`form-data`) comes before the first ';' and is not checked.
    let Some(semi) = memchr(b';', value) else {
        return d;
    };
    for param in Params::new(&value[semi + 1..]) {
        let Ok((name, v)) = param else {
            d.malformed = true;
            break;
        };
        let slot = if name.eq_ignore_ascii_case(b"name") {
            &mut d.name
        } else if name.eq_ignore_ascii_case(b"filename") {
            &mut d.filename
        } else if name.eq_ignore_ascii_case(b"filename*") {
            &mut d.filename_ext
        } else {
            continue;
        };
        if slot.is_some() {
            d.malformed = true;
        } else {
            *slot = Some(v);
        }
    }
    d
}

/// What follows a `--boundary` match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// `--boundary--`: the close delimiter.
    Close,
    /// An open delimiter; the next part starts at this offset.
    Open(usize),
    /// The body ends right after the boundary.
    Eof,
    /// Something else follows: the match is not a delimiter.
    Junk,
}

fn tail(body: &[u8], after: usize) -> Tail {
    let rest = &body[after..];
    if rest.starts_with(b"--") {
        return Tail::Close;
    }
    let blanks = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let at = after + blanks;
    match &body[at..] {
        [] => Tail::Eof,
        [b'\n', ..] => Tail::Open(at + 1),
        [b'\r', b'\n', ..] => Tail::Open(at + 2),
        _ => Tail::Junk,
    }
}

/// A delimiter found in the body.
#[derive(Debug, Clone, Copy)]
struct Delim {
    /// Where the previous part's content ends (before the line break that belongs to the
    /// delimiter).
    content_end: usize,
    /// Where `--boundary` starts.
    at: usize,
    tail: Tail,
}

/// Finds the next real delimiter at or after `from`; `stray` is set when a boundary string
/// was seen that is not a delimiter.
fn next_delim(body: &[u8], from: usize, finder: &Finder<'_>, stray: &mut bool) -> Option<Delim> {
    let dlen = finder.needle().len();
    let mut search = from;
    loop {
        let at = search + finder.find(body.get(search..)?)?;
        search = at + 1;
        if at > 0 && body[at - 1] != b'\n' {
            *stray = true;
            continue;
        }
        let t = tail(body, at + dlen);
        if t == Tail::Junk {
            *stray = true;
            continue;
        }
        let mut content_end = at;
        if content_end > 0 {
            content_end -= 1;
            if content_end > 0 && body[content_end - 1] == b'\r' {
                content_end -= 1;
            }
        }
        return Some(Delim {
            content_end,
            at,
            tail: t,
        });
    }
}

/// Walks the parts of a `multipart/form-data` body.
///
/// For each part it reads the headers up to the first empty line and interprets
/// `Content-Disposition` (`name=`, `filename=`, and the RFC 5987 `filename*=` form; quoted
/// or not), then emits, in order: [`FieldKind::MultipartName`] (name and value = the part
/// name; only when the part has a non-empty name), one [`FieldKind::MultipartFilename`]
/// per filename parameter (value = filename, name = part name; a part with both `filename`
/// and `filename*` gets two, because back ends disagree on which wins), and
/// [`FieldKind::Multipart`] (value = the raw part content, name = part name). Content is
/// never decoded or UTF-8 checked: binary uploads are normal. Other part headers, including
/// `Content-Transfer-Encoding` (deprecated for form data by RFC 7578), are ignored.
///
/// More than `max_parts` parts reports [`Finding::TooManyParts`] and stops. A missing
/// first or closing delimiter, headers without an end, a folded or colon-less header line,
/// a repeated `Content-Disposition` or parameter, or a boundary string that is not a
/// delimiter reports [`Finding::MalformedMultipart`]; what was parsed is still emitted.
pub fn walk(body: &[u8], boundary: &[u8], scratch: &mut ParseScratch, em: &mut Emitter<'_>) {
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
        em.finding(Finding::MalformedMultipart);
        return;
    }
    let ParseScratch {
        name: name_buf,
        value: value_buf,
        delim,
        ..
    } = scratch;
    delim.clear();
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let finder = Finder::new(delim.as_slice());

    // Boundary strings in the preamble are just preamble.
    let mut ignored = false;
    let Some(first) = next_delim(body, 0, &finder, &mut ignored) else {
        em.finding(Finding::MalformedMultipart);
        return;
    };
    let max_parts = em.limits().max_parts;
    let mut parts: u32 = 0;
    let mut current = first.tail;
    loop {
        let start = match current {
            Tail::Close => return,
            Tail::Open(start) => start,
            Tail::Eof | Tail::Junk => {
                em.finding(Finding::MalformedMultipart);
                return;
            }
        };
        parts += 1;
        if parts > max_parts {
            em.finding(Finding::TooManyParts);
            return;
        }
        let mut stray = false;
        let next = next_delim(body, start, &finder, &mut stray);
        if stray {
            em.finding(Finding::MalformedMultipart);
        }
        let (end, content_end) = match next {
            Some(d) => (d.at, d.content_end.max(start)),
            None => {
                em.finding(Finding::MalformedMultipart);
                (body.len(), body.len())
            }
        };
        if !part(body, start, end, content_end, name_buf, value_buf, em) {
            return;
        }
        match next {
            Some(d) => current = d.tail,
            None => return,
        }
    }
}

/// Parses and emits one part spanning `body[start..end]`, whose content (if the headers
/// end) stops at `content_end`. Returns whether the walk may continue.
fn part(
    body: &[u8],
    start: usize,
    end: usize,
    content_end: usize,
    name_buf: &mut Vec<u8>,
    value_buf: &mut Vec<u8>,
    em: &mut Emitter<'_>,
) -> bool {
    let region = &body[start..end];
    let mut i = 0;
    let mut headers_end = None;
    let mut disposition: Option<&[u8]> = None;
    let mut part_type: Option<&[u8]> = None;
    let mut malformed = false;
    while i < region.len() {
        let Some(nl) = memchr(b'\n', &region[i..]) else {
            break;
        };
        let raw_line = &region[i..i + nl];
        i += nl + 1;
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        if line.is_empty() {
            headers_end = Some(i);
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            // obs-fold: deprecated, and a way to hide a parameter from simple parsers.
            malformed = true;
            continue;
        }
        let Some(colon) = memchr(b':', line) else {
            malformed = true;
            continue;
        };
        if trim_ows(&line[..colon]).eq_ignore_ascii_case(b"content-disposition") {
            if disposition.is_some() {
                malformed = true;
            } else {
                disposition = Some(trim_ows(&line[colon + 1..]));
            }
        } else if trim_ows(&line[..colon]).eq_ignore_ascii_case(b"content-type") {
            part_type = Some(&line[colon + 1..]);
        }
    }
    let content = match headers_end {
        Some(h) => &body[start + h..content_end.max(start + h)],
        None => {
            malformed = true;
            &body[start..content_end]
        }
    };
    let d = disposition.map(parse_disposition).unwrap_or_default();
    if malformed || d.malformed {
        em.finding(Finding::MalformedMultipart);
    }
    if part_type
        .and_then(super::media::charset)
        .is_some_and(|cs| !super::media::charset_allowed(cs))
    {
        em.finding(Finding::MultipartCharset);
    }

    let (name, name_flags) = match d.name {
        Some(v) => unquote(v, name_buf),
        None => (&[][..], FieldFlags::default()),
    };
    if !name.is_empty()
        && !em.field(&Field {
            kind: FieldKind::MultipartName,
            name,
            value: name,
            role: None,
            flags: name_flags,
        })
    {
        return false;
    }
    if let Some(v) = d.filename {
        let (filename, flags) = unquote(v, value_buf);
        if !em.field(&Field {
            kind: FieldKind::MultipartFilename,
            name,
            value: filename,
            role: None,
            flags,
        }) {
            return false;
        }
    }
    if let Some(v) = d.filename_ext {
        let (filename, flags) = ext_value(v, value_buf);
        if !em.field(&Field {
            kind: FieldKind::MultipartFilename,
            name,
            value: filename,
            role: None,
            flags,
        }) {
            return false;
        }
    }
    em.field(&Field {
        kind: FieldKind::Multipart,
        name,
        value: content,
        role: None,
        flags: FieldFlags::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::ParseLimits;
    use crate::parse::testutil::{p, Collect};

    fn run_with(body: &[u8], boundary: &[u8], limits: ParseLimits) -> Collect {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, limits);
        walk(body, boundary, &mut scratch, &mut em);
        sink
    }

    fn run(body: &[u8], boundary: &[u8]) -> Collect {
        run_with(body, boundary, ParseLimits::default())
    }

    #[test]
    fn boundary_param() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"multipart/form-data; boundary=abc123", Some(b"abc123")),
            (b"multipart/form-data;boundary=abc", Some(b"abc")),
            (b"multipart/form-data; BOUNDARY=\"a b:c\"", Some(b"a b:c")),
            (
                b"multipart/form-data; charset=utf-8; Boundary = xyz ; x=1",
                Some(b"xyz"),
            ),
            (
                b"multipart/form-data; x=\"; boundary=fake\"; boundary=real",
                Some(b"real"),
            ),
            (
                b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                Some(b"----WebKitFormBoundary7MA4YWxkTrZu0gW"),
            ),
            (b"multipart/form-data", None),
            (b"multipart/form-data; charset=utf-8", None),
            (b"multipart/form-data; boundary=", None),
            (b"multipart/form-data; boundary=\"\"", None),
            (b"multipart/form-data; boundary=\"abc", None),
            (b"multipart/form-data; boundary=\"ab \"", None),
            (b"multipart/form-data; boundary=a\"b", None),
            (b"multipart/form-data; boundary=\"a\\\"b\"", None),
            (b"multipart/form-data; boundary=a; boundary=b", None),
            (b"multipart/form-data; boundary=a{b", None),
        ];
        for (ct, want) in cases {
            assert_eq!(boundary(ct), *want, "{}", String::from_utf8_lossy(ct));
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(70));
        assert_eq!(boundary(long.as_bytes()).map(<[u8]>::len), Some(70));
        let too_long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert_eq!(boundary(too_long.as_bytes()), None);
    }

    const CRLF_BODY: &[u8] = b"preamble garbage\r\n\
--XyZ\r\n\
Content-Disposition: form-data; name=\"field1\"\r\n\
\r\n\
value one\r\n\
--XyZ\r\n\
content-disposition: form-data; name=upload; filename=\"a.txt\"\r\n\
Content-Type: application/octet-stream\r\n\
\r\n\
\x00\xff binary\r\n\r\n\
--XyZ--\r\n\
epilogue";

    #[test]
    fn crlf_body() {
        let c = run(CRLF_BODY, b"XyZ");
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(
            c.pairs(FieldKind::MultipartName),
            vec![p("field1", "field1"), p("upload", "upload")]
        );
        assert_eq!(
            c.pairs(FieldKind::MultipartFilename),
            vec![p("upload", "a.txt")]
        );
        let contents: Vec<_> = c
            .fields
            .iter()
            .filter(|r| r.kind == FieldKind::Multipart)
            .map(|r| (r.name_str(), r.value.clone()))
            .collect();
        assert_eq!(
            contents,
            vec![
                ("field1".to_string(), b"value one".to_vec()),
                ("upload".to_string(), b"\x00\xff binary\r\n".to_vec()),
            ]
        );
        assert!(c.fields.iter().all(|r| r.flags == FieldFlags::default()));
    }

    #[test]
    fn lf_body_and_empty_content() {
        let body = b"--b\nContent-Disposition: form-data; name=a\n\nx\n--b\nContent-Disposition: form-data; name=\"e\"\n\n\n--b--\n";
        let c = run(body, b"b");
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("a", "x"), p("e", "")]);
    }

    #[test]
    fn empty_content_with_only_two_line_breaks_is_accepted() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n--b--";
        let c = run(body, b"b");
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("e", "")]);
    }

    #[test]
    fn filename_forms() {
        let body = b"--b\r\n\
Content-Disposition: form-data; name=\"f\"; filename=\"C:\\dir\\a \\\"q\\\".txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt\r\n\
\r\n\
data\r\n\
--b--\r\n";
        let c = run(body, b"b");
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        let names: Vec<_> = c
            .fields
            .iter()
            .filter(|r| r.kind == FieldKind::MultipartFilename)
            .map(|r| (r.name_str(), r.value_str(), r.flags))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "f".to_string(),
                    "C:\\dir\\a \"q\".txt".to_string(),
                    FieldFlags::DECODED
                ),
                (
                    "f".to_string(),
                    "€ rates.txt".to_string(),
                    FieldFlags::DECODED
                ),
            ]
        );
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("f", "data")]);
    }

    #[test]
    fn unquoted_filename_and_no_name() {
        let body =
            b"--b\r\nContent-Disposition: form-data; filename=x.php\r\n\r\n<?php ?>\r\n--b--";
        let c = run(body, b"b");
        assert!(c.pairs(FieldKind::MultipartName).is_empty());
        assert_eq!(c.pairs(FieldKind::MultipartFilename), vec![p("", "x.php")]);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("", "<?php ?>")]);
    }

    #[test]
    fn missing_final_boundary() {
        let body = b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nfirst\r\n--b\r\nContent-Disposition: form-data; name=b\r\n\r\ntrailing payload";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(
            c.pairs(FieldKind::Multipart),
            vec![p("a", "first"), p("b", "trailing payload")]
        );
    }

    #[test]
    fn boundary_at_end_without_close() {
        let c = run(
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b",
            b"b",
        );
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("a", "v")]);
    }

    #[test]
    fn no_delimiter_at_all() {
        let c = run(b"just some text --b inside", b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert!(c.fields.is_empty());
        let c = run(b"", b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
    }

    #[test]
    fn headers_without_end_are_emitted_as_content() {
        let body = b"--b\r\nContent-Disposition: form-data; name=a\r\nX: <script>\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        let content = c.get(FieldKind::Multipart, "a").unwrap();
        assert_eq!(
            content.value_str(),
            "Content-Disposition: form-data; name=a\r\nX: <script>"
        );
    }

    #[test]
    fn stray_boundary_stays_in_content() {
        let body = b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx --b y\r\n--bogus\r\nz\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(
            c.pairs(FieldKind::Multipart),
            vec![p("a", "x --b y\r\n--bogus\r\nz")]
        );
    }

    #[test]
    fn folded_and_duplicate_headers_are_malformed() {
        let body = b"--b\r\nContent-Disposition: form-data;\r\n name=\"hidden\"\r\n\r\nv\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("", "v")]);

        let body = b"--b\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\nv\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("a", "v")]);

        let body = b"--b\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nv\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::MalformedMultipart]);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("a", "v")]);
    }

    #[test]
    fn transport_padding_after_boundary() {
        let body = b"--b  \r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b-- \r\n";
        let c = run(body, b"b");
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(c.pairs(FieldKind::Multipart), vec![p("a", "v")]);
    }

    #[test]
    fn max_parts() {
        let mut body = Vec::new();
        for i in 0..5 {
            body.extend_from_slice(
                format!("--b\r\nContent-Disposition: form-data; name=p{i}\r\n\r\nv{i}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--b--\r\n");
        let limits = ParseLimits {
            max_parts: 3,
            ..ParseLimits::default()
        };
        let c = run_with(&body, b"b", limits);
        assert_eq!(c.findings, vec![Finding::TooManyParts]);
        assert_eq!(
            c.pairs(FieldKind::Multipart),
            vec![p("p0", "v0"), p("p1", "v1"), p("p2", "v2")]
        );
        let c = run_with(&body, b"b", ParseLimits::default());
        assert!(c.findings.is_empty());
        assert_eq!(c.pairs(FieldKind::Multipart).len(), 5);
    }

    #[test]
    fn invalid_utf8_name_flagged_but_content_not() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"\xff\"\r\n\r\n\xff\r\n--b--";
        let c = run(body, b"b");
        assert_eq!(c.findings, vec![Finding::InvalidUtf8]);
        let n = c
            .fields
            .iter()
            .find(|r| r.kind == FieldKind::MultipartName)
            .unwrap();
        assert!(n.flags.has(FieldFlags::INVALID_UTF8));
        let v = c
            .fields
            .iter()
            .find(|r| r.kind == FieldKind::Multipart)
            .unwrap();
        assert_eq!(v.flags, FieldFlags::default());
    }

    #[test]
    fn bad_boundary_argument() {
        assert_eq!(
            run(b"--\r\n", b"").findings,
            vec![Finding::MalformedMultipart]
        );
        let long = vec![b'a'; 71];
        assert_eq!(run(b"x", &long).findings, vec![Finding::MalformedMultipart]);
    }

    #[test]
    fn warm_scratch_does_not_grow() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"a\\\"b\"; filename*=UTF-8''%41.txt\r\n\r\nv\r\n--b--";
        let mut scratch = ParseScratch::default();
        let mut sink = Collect::default();
        let mut cap = None;
        for _ in 0..3 {
            let mut em = Emitter::new(&mut sink, ParseLimits::default());
            walk(body, b"b", &mut scratch, &mut em);
            assert_eq!(*cap.get_or_insert(scratch.capacity()), scratch.capacity());
        }
        assert!(sink.findings.is_empty(), "{:?}", sink.findings);
        assert_eq!(
            sink.pairs(FieldKind::MultipartFilename)[0],
            p("a\"b", "A.txt")
        );
    }

    use proptest::prelude::*;

    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let tokens: Vec<&'static [u8]> = vec![
            b"--b",
            b"--b--",
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"Content-Disposition: form-data; ",
            b"name=\"",
            b"filename*=UTF-8''%41",
            b"\"",
            b"\\",
            b";",
            b"=",
            b"filename=",
            b":",
        ];
        prop_oneof![
            prop::sample::select(tokens).prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 0..4),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics(
            pieces in prop::collection::vec(piece(), 0..40),
            ct in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let body = pieces.concat();
            run(&body, b"b");
            boundary(&ct);
            let mut ct2 = b"multipart/form-data; boundary=".to_vec();
            ct2.extend_from_slice(&ct);
            if let Some(b) = boundary(&ct2) {
                run(&body, b);
            }
        }
    }
}
