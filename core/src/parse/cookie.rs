//! The `Cookie` request header.
//!
//! Browsers send `name=value` pairs separated by `; ` and never percent-encode them, but
//! many frameworks (PHP, Rails, Express's `cookie` module) percent-decode cookie values, and
//! attackers encode payloads there for exactly that reason. So a value with valid `%XX`
//! escapes is emitted decoded (flagged [`FieldFlags::DECODED`]) instead of raw: the decoded
//! form is what such a back end acts on, and rules that want the raw form can still see it
//! is escaped from the flag. `+` is left alone (only form bodies and query strings mean a
//! space by it). A `%` that is not an escape is legal in a cookie, so it is kept without
//! [`FieldFlags::MALFORMED_ESCAPE`] and without a finding.

use memchr::memchr;

use super::{percent_decode, trim_ows, Emitter, ParseScratch};
use crate::field::{Field, FieldFlags, FieldKind};

/// Walks a `Cookie` header value such as `a=1; b="two"; c`.
///
/// Splits on `;`, trims spaces and tabs around names and values, and strips one pair of
/// surrounding double quotes from a value (RFC 6265 `cookie-value`). A pair without `=` is
/// a value with an empty name, as RFC 6265bis parses it. A `;` inside quotes still splits:
/// no browser sends one, and splitting keeps every byte inspected either way. For each pair
/// it emits a [`FieldKind::CookieName`] field (value = name; skipped when the name is empty)
/// and a [`FieldKind::Cookie`] field (name = cookie name). Names and values are
/// percent-decoded as the module documentation explains.
pub fn walk(header_value: &[u8], scratch: &mut ParseScratch, em: &mut Emitter<'_>) {
    let mut rest = header_value;
    while !rest.is_empty() {
        let (pair, next) = match memchr(b';', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let pair = trim_ows(pair);
        if pair.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match memchr(b'=', pair) {
            Some(i) => (trim_ows(&pair[..i]), trim_ows(&pair[i + 1..])),
            None => (&[][..], pair),
        };
        let raw_value = match raw_value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        let (name, name_flags) = decode(raw_name, &mut scratch.name);
        if !name.is_empty()
            && !em.field(&Field {
                kind: FieldKind::CookieName,
                name,
                value: name,
                role: None,
                flags: name_flags,
            })
        {
            return;
        }
        let (value, value_flags) = decode(raw_value, &mut scratch.value);
        if !em.field(&Field {
            kind: FieldKind::Cookie,
            name,
            value,
            role: None,
            flags: value_flags,
        }) {
            return;
        }
    }
}

fn decode<'a>(raw: &'a [u8], out: &'a mut Vec<u8>) -> (&'a [u8], FieldFlags) {
    let (v, mut flags) = percent_decode(raw, false, out);
    flags.0 &= !FieldFlags::MALFORMED_ESCAPE.0;
    (v, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{Finding, ParseLimits};
    use crate::parse::testutil::{p, Collect};

    fn run(input: &[u8]) -> Collect {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, ParseLimits::default());
        walk(input, &mut scratch, &mut em);
        sink
    }

    #[test]
    fn simple_pairs() {
        let c = run(b"a=1; b=2;c=3");
        assert_eq!(
            c.pairs(FieldKind::Cookie),
            vec![p("a", "1"), p("b", "2"), p("c", "3")]
        );
        assert_eq!(
            c.pairs(FieldKind::CookieName),
            vec![p("a", "a"), p("b", "b"), p("c", "c")]
        );
        assert!(c.findings.is_empty());
        assert!(c.fields.iter().all(|r| r.flags == FieldFlags::default()));
    }

    #[test]
    fn quotes_spaces_and_missing_equals() {
        let c = run(b" sid = \"abc def\" ;; \t lone ; e=; q=\"\"; half=\"x ;");
        assert_eq!(
            c.pairs(FieldKind::Cookie),
            vec![
                p("sid", "abc def"),
                p("", "lone"),
                p("e", ""),
                p("q", ""),
                p("half", "\"x")
            ]
        );
        assert_eq!(
            c.pairs(FieldKind::CookieName),
            vec![p("sid", "sid"), p("e", "e"), p("q", "q"), p("half", "half")]
        );
    }

    #[test]
    fn escaped_values_are_emitted_decoded() {
        let c = run(b"x=%3Cscript%3Ealert(1)%3C/script%3E; plus=a+b; pct=100%; n%61me=v");
        let x = c.get(FieldKind::Cookie, "x").unwrap();
        assert_eq!(x.value_str(), "<script>alert(1)</script>");
        assert_eq!(x.flags, FieldFlags::DECODED);
        let plus = c.get(FieldKind::Cookie, "plus").unwrap();
        assert_eq!(plus.value_str(), "a+b");
        assert_eq!(plus.flags, FieldFlags::default());
        let pct = c.get(FieldKind::Cookie, "pct").unwrap();
        assert_eq!(pct.value_str(), "100%");
        assert_eq!(pct.flags, FieldFlags::default());
        assert!(c.get(FieldKind::Cookie, "name").is_some());
        assert!(c.findings.is_empty());
    }

    #[test]
    fn invalid_utf8_flagged() {
        let c = run(b"a=\xff\xfe; b=%C3%28");
        assert!(c
            .get(FieldKind::Cookie, "a")
            .unwrap()
            .flags
            .has(FieldFlags::INVALID_UTF8));
        let b = c.get(FieldKind::Cookie, "b").unwrap();
        assert!(b.flags.has(FieldFlags::INVALID_UTF8) && b.flags.has(FieldFlags::DECODED));
        assert_eq!(c.findings, vec![Finding::InvalidUtf8]);
    }

    #[test]
    fn empty_and_separators_only() {
        assert!(run(b"").fields.is_empty());
        assert!(run(b" ; ;; ").fields.is_empty());
    }

    #[test]
    fn warm_scratch_does_not_grow() {
        let mut scratch = ParseScratch::default();
        let mut sink = Collect::default();
        let mut cap = None;
        for _ in 0..3 {
            let mut em = Emitter::new(&mut sink, ParseLimits::default());
            walk(b"s%69d=%3Cx%3E; b=plain", &mut scratch, &mut em);
            assert_eq!(*cap.get_or_insert(scratch.capacity()), scratch.capacity());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            run(&input);
        }
    }
}
