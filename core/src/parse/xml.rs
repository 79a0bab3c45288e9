//! XML bodies (SOAP, XML-RPC, `application/*+xml`): text nodes, CDATA sections and
//! attribute values.
//!
//! This is not a validating parser. It reads what an application would read as data —
//! the text between tags and the values of attributes — and hands each to the emitter as an
//! [`FieldKind::Xml`] field, so the argument rules see `<a probe="' or 1=1">` the way they
//! see a form value. Markup the application does not treat as data (comments, processing
//! instructions, the DOCTYPE) is skipped here; the engine also inspects the raw body, where
//! rules for DOCTYPE tricks such as external entities look.
//!
//! One pass, left to right, no recursion. The only state is a stack of open element names
//! (offsets into the input, in a reused buffer, bounded by the depth limit) so text after a
//! child element is still named after its parent. Malformed markup ends the walk quietly:
//! what was read before it has been emitted, and the raw body is inspected anyway.

use memchr::{memchr, memmem};

use super::{utf8_flags, Emitter, ParseScratch};
use crate::field::{Field, FieldFlags, FieldKind};
use crate::transform::{decode_marked, push_char};

/// Reusable state of the XML walker.
#[derive(Debug, Default)]
pub(crate) struct XmlScratch {
    /// Open elements as `(start, end)` offsets of their names in the input.
    open: Vec<(u32, u32)>,
}

impl XmlScratch {
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.open.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// The end of a name starting at `i` (names stop at space, `/`, `>`, `=` and quotes).
fn name_end(input: &[u8], mut i: usize) -> usize {
    while i < input.len() && !is_space(input[i]) && !b"/>=\"'<".contains(&input[i]) {
        i += 1;
    }
    i
}

fn skip_space(input: &[u8], mut i: usize) -> usize {
    while i < input.len() && is_space(input[i]) {
        i += 1;
    }
    i
}

/// Decodes the five predefined entities and numeric character references into `out`;
/// returns `input` itself when there is none. An unknown or malformed reference is kept
/// as written.
fn decode<'a>(input: &'a [u8], out: &'a mut Vec<u8>) -> (&'a [u8], FieldFlags) {
    if !decode_marked(input, out, b'&', reference) {
        return (input, utf8_flags(input));
    }
    let mut flags = FieldFlags::DECODED;
    flags.set(utf8_flags(out));
    (out, flags)
}

/// Decodes the reference at the start of `s` (which begins with `&`), returning how many
/// bytes it took, or `None` (nothing written) if it is not one. Unlike HTML, XML has five
/// named entities and always ends a reference with `;`.
fn reference(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    // References are short; a `;` further than 12 bytes away ends no reference.
    let window = &s[1..s.len().min(12)];
    let semi = memchr(b';', window)?;
    let c = match &window[..semi] {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"quot" => '"',
        b"apos" => '\'',
        [b'#', b'x' | b'X', hex @ ..] if !hex.is_empty() => std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)?,
        [b'#', dec @ ..] if !dec.is_empty() => std::str::from_utf8(dec)
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .and_then(char::from_u32)?,
        _ => return None,
    };
    push_char(out, c);
    Some(semi + 2)
}

/// Emits one XML value; returns whether the walk may continue.
fn emit(
    name: &[u8],
    raw: &[u8],
    decode_refs: bool,
    value_buf: &mut Vec<u8>,
    em: &mut Emitter<'_>,
) -> bool {
    if raw.is_empty() {
        return true;
    }
    let (value, flags) = if decode_refs {
        decode(raw, value_buf)
    } else {
        (raw, utf8_flags(raw))
    };
    em.field(&Field {
        kind: FieldKind::Xml,
        name,
        value,
        role: None,
        flags,
    })
}

/// Walks an XML document, emitting text nodes (named after the enclosing element), CDATA
/// sections and attribute values (named after the attribute) as [`FieldKind::Xml`] fields.
pub fn walk(input: &[u8], scratch: &mut ParseScratch, em: &mut Emitter<'_>) {
    let max_depth = em.limits().max_depth as usize;
    let ParseScratch { value, xml, .. } = scratch;
    let open = &mut xml.open;
    open.clear();
    let mut i = 0usize;
    // Offsets fit in u32: bodies are far below 4 GiB; a longer input is walked only up to
    // that point rather than risking wrapped offsets.
    let input = &input[..input.len().min(u32::MAX as usize)];
    let current = |open: &Vec<(u32, u32)>| -> (usize, usize) {
        open.last()
            .map(|&(s, e)| (s as usize, e as usize))
            .unwrap_or((0, 0))
    };
    while i < input.len() {
        let lt = match memchr(b'<', &input[i..]) {
            Some(n) => i + n,
            None => input.len(),
        };
        let text = &input[i..lt];
        if text.iter().any(|&b| !is_space(b)) {
            let (s, e) = current(open);
            if !emit(&input[s..e], text, true, value, em) {
                return;
            }
        }
        if lt >= input.len() {
            return;
        }
        let rest = &input[lt..];
        if rest.starts_with(b"<!--") {
            match memmem::find(&rest[4..], b"-->") {
                Some(n) => i = lt + 4 + n + 3,
                None => return,
            }
        } else if rest.starts_with(b"<![CDATA[") {
            let body = &rest[9..];
            let (content, next) = match memmem::find(body, b"]]>") {
                Some(n) => (&body[..n], lt + 9 + n + 3),
                None => (body, input.len()),
            };
            let (s, e) = current(open);
            if !content.is_empty() && !emit(&input[s..e], content, false, value, em) {
                return;
            }
            i = next;
        } else if rest.starts_with(b"<?") {
            match memmem::find(&rest[2..], b"?>") {
                Some(n) => i = lt + 2 + n + 2,
                None => return,
            }
        } else if rest.starts_with(b"<!") {
            // A declaration; the DOCTYPE's internal subset may hold `>` inside brackets
            // and quotes.
            let (mut depth, mut quote, mut j) = (0u32, 0u8, lt + 2);
            loop {
                let Some(&b) = input.get(j) else { return };
                j += 1;
                if quote != 0 {
                    if b == quote {
                        quote = 0;
                    }
                } else if b == b'"' || b == b'\'' {
                    quote = b;
                } else if b == b'[' {
                    depth += 1;
                } else if b == b']' {
                    depth = depth.saturating_sub(1);
                } else if b == b'>' && depth == 0 {
                    break;
                }
            }
            i = j;
        } else if rest.starts_with(b"</") {
            open.pop();
            match memchr(b'>', &rest[2..]) {
                Some(n) => i = lt + 2 + n + 1,
                None => return,
            }
        } else {
            let ns = lt + 1;
            let ne = name_end(input, ns);
            if ne == ns {
                // A lone `<` in text (not well-formed, but data all the same).
                let (s, e) = current(open);
                let end = memchr(b'<', &input[ns..]).map_or(input.len(), |n| ns + n);
                if !emit(&input[s..e], &input[lt..end], true, value, em) {
                    return;
                }
                i = end;
                continue;
            }
            let mut j = ne;
            let mut self_closing = false;
            loop {
                j = skip_space(input, j);
                match input.get(j) {
                    None => return,
                    Some(b'>') => {
                        j += 1;
                        break;
                    }
                    Some(b'/') => {
                        if input.get(j + 1) == Some(&b'>') {
                            self_closing = true;
                            j += 2;
                            break;
                        }
                        j += 1;
                    }
                    Some(_) => {
                        let an = j;
                        let ae = name_end(input, an).max(an + 1);
                        j = skip_space(input, ae);
                        if input.get(j) != Some(&b'=') {
                            continue;
                        }
                        j = skip_space(input, j + 1);
                        let (vs, ve, next) = match input.get(j) {
                            Some(&q @ (b'"' | b'\'')) => match memchr(q, &input[j + 1..]) {
                                Some(n) => (j + 1, j + 1 + n, j + 2 + n),
                                None => return,
                            },
                            Some(_) => {
                                let mut k = j;
                                while k < input.len() && !is_space(input[k]) && input[k] != b'>' {
                                    k += 1;
                                }
                                (j, k, k)
                            }
                            None => return,
                        };
                        if !emit(&input[an..ae], &input[vs..ve], true, value, em) {
                            return;
                        }
                        j = next;
                    }
                }
            }
            if !self_closing && open.len() < max_depth {
                open.push((ns as u32, ne as u32));
            }
            i = j;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::ParseLimits;
    use crate::parse::testutil::{p, Collect};

    fn run(input: &[u8]) -> Collect {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, ParseLimits::default());
        walk(input, &mut scratch, &mut em);
        sink
    }

    #[test]
    fn text_attributes_and_cdata() {
        let c = run(br#"<?xml version="1.0"?>
<!-- a comment -->
<root id="7"><a probe="x &amp; y">hi &lt;b&gt;</a> tail <b/><c><![CDATA[<raw>&amp;]]></c></root>"#);
        assert_eq!(
            c.pairs(FieldKind::Xml),
            vec![
                p("id", "7"),
                p("probe", "x & y"),
                p("a", "hi <b>"),
                p("root", " tail "),
                p("c", "<raw>&amp;"),
            ]
        );
        let probe = c.get(FieldKind::Xml, "probe").unwrap();
        assert!(probe.flags.has(FieldFlags::DECODED));
    }

    #[test]
    fn doctype_with_internal_subset_is_skipped() {
        let c = run(br#"<!DOCTYPE r [ <!ENTITY x SYSTEM "file:///etc/passwd"> ]><r>&x;</r>"#);
        assert_eq!(c.pairs(FieldKind::Xml), vec![p("r", "&x;")]);
    }

    #[test]
    fn numeric_references_and_soap_names() {
        let c = run(b"<soap:Body><m:q a='&#x27;&#32;or'>&#60;svg&#62;</m:q></soap:Body>");
        assert_eq!(
            c.pairs(FieldKind::Xml),
            vec![p("a", "' or"), p("m:q", "<svg>")]
        );
    }

    #[test]
    fn malformed_markup_ends_quietly() {
        for input in [
            &b"<a b=\"unterminated"[..],
            b"<a><!-- never closed",
            b"<a",
            b"<<<>>>",
            b"< a = >",
            b"<!DOCTYPE [[[",
        ] {
            let c = run(input);
            assert!(c.findings.is_empty());
        }
        let c = run(b"1 < 2 and <x>3</x>");
        assert_eq!(
            c.pairs(FieldKind::Xml),
            vec![p("", "1 "), p("", "< 2 and "), p("x", "3")]
        );
    }

    #[test]
    fn warm_scratch_does_not_grow() {
        let input = b"<a><b x='&lt;'>&amp;<c/></b></a>";
        let mut scratch = ParseScratch::default();
        let mut sink = Collect::default();
        let mut cap = None;
        for _ in 0..3 {
            let mut em = Emitter::new(&mut sink, ParseLimits::default());
            walk(input, &mut scratch, &mut em);
            assert_eq!(*cap.get_or_insert(scratch.capacity()), scratch.capacity());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            run(&input);
        }

        #[test]
        fn never_panics_on_markup(input in "[<>/=\"'!?\\[\\]a-c &;#x0-9-]{0,80}") {
            run(input.as_bytes());
        }
    }
}
