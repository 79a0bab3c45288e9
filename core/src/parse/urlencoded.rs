//! Query strings and `application/x-www-form-urlencoded` bodies.
//!
//! Pairs are split on `&` only. `;` was a separator in old HTML recommendations, and some
//! back ends once honoured it, but WHATWG URL, Python (since 3.9.2), Go (since 1.17) and
//! most frameworks no longer do. Splitting on `&` alone loses nothing for inspection: a
//! back end that also splits on `;` sees `a=1;b=<payload>` as two pairs, and here the
//! payload is still inspected, as part of `a`'s value.

use std::hash::BuildHasher;

use memchr::memchr;

use super::{percent_decode, Emitter, ParseScratch};
use crate::field::{Field, FieldFlags, FieldKind};

/// Walks a query string (without the leading `?`) or a form body.
///
/// Splits on `&` (see the module documentation for `;`), then each pair at its first `=`;
/// `+` becomes a space and percent-escapes are decoded ([`percent_decode`]); a malformed
/// escape is kept literally and flagged, which also reports one
/// [`Finding::MalformedEscape`](crate::field::Finding::MalformedEscape) per request.
/// Repeated keys are each emitted, empty pairs (`&&`) are skipped, and a key without `=`
/// gets an empty value. For each pair it emits a `name_kind` field (name and value both the
/// decoded name; skipped when the name is empty, as there is nothing to inspect) and then a
/// `value_kind` field (name = decoded name, value = decoded value).
pub fn walk(
    input: &[u8],
    value_kind: FieldKind,
    name_kind: FieldKind,
    scratch: &mut ParseScratch,
    em: &mut Emitter<'_>,
) {
    walk_pairs(input, value_kind, name_kind, false, scratch, em);
}

/// Walks a body that is not declared as a form but may be read as one (no `Content-Type`,
/// `text/plain`, an unknown type): many frameworks parse such bodies as form data anyway,
/// so a payload must not hide in them from the argument rules. Emits `FormName`/`Form`
/// fields like [`walk`], but since the body was never declared to be urlencoded its
/// malformed escapes and invalid UTF-8 are not protocol violations: those flags are
/// dropped, and the walk stops quietly before it would exhaust the request's field or
/// decoded-byte budget rather than reporting an overflow.
pub fn walk_guessed(input: &[u8], scratch: &mut ParseScratch, em: &mut Emitter<'_>) {
    walk_pairs(
        input,
        FieldKind::Form,
        FieldKind::FormName,
        true,
        scratch,
        em,
    );
}

fn walk_pairs(
    input: &[u8],
    value_kind: FieldKind,
    name_kind: FieldKind,
    guessed: bool,
    scratch: &mut ParseScratch,
    em: &mut Emitter<'_>,
) {
    let quiet = |mut f: FieldFlags| {
        if guessed {
            f.0 &= !(FieldFlags::MALFORMED_ESCAPE.0 | FieldFlags::INVALID_UTF8.0);
        }
        f
    };
    // Hashes of the distinct names seen so far (the first `NAMES` of them), to notice a
    // name given twice.
    let mut names = [0u64; NAMES];
    let mut distinct = 0;
    let mut repeated = 0u64;
    let mut rest = input;
    while !rest.is_empty() {
        let Some((pair, next)) = next_pair(rest) else {
            break;
        };
        rest = next;
        let (raw_name, raw_value) = split_pair(pair);
        if guessed {
            // Two fields at most, each no longer than its raw bytes.
            let limits = em.limits();
            if em.field_count() + 2 > limits.max_fields
                || em.decoded_bytes() + pair.len() as u64 > limits.max_decoded_bytes
            {
                return;
            }
        }
        let (name, name_flags) = percent_decode(raw_name, true, &mut scratch.name);
        let name_flags = quiet(name_flags);
        if !name.is_empty() {
            // A guessed form is never joined: its walk checks the budgets per pair and stops
            // quietly, which one more field after the walk would break. So its names need
            // no tracking.
            if !guessed {
                let h = name_hash(name);
                match names[..distinct].iter().position(|&n| n == h) {
                    Some(k) => repeated |= 1 << k,
                    None if distinct < NAMES => {
                        names[distinct] = h;
                        distinct += 1;
                    }
                    None => {}
                }
            }
            if !em.field(&Field {
                kind: name_kind,
                name,
                value: name,
                role: None,
                flags: name_flags,
            }) {
                return;
            }
        }
        let (value, value_flags) = percent_decode(raw_value, true, &mut scratch.value);
        let value_flags = quiet(value_flags);
        if !em.field(&Field {
            kind: value_kind,
            name,
            value,
            role: None,
            flags: value_flags,
        }) {
            return;
        }
    }
    if repeated != 0 {
        let walked = &input[..input.len() - rest.len()];
        join_repeated(walked, &names, repeated, value_kind, scratch, em);
    }
}

/// How many distinct parameter names a walk remembers to notice repeats.
const NAMES: usize = 64;

fn name_hash(name: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x9a7e_55e1_0c4b_2f31).hash_one(name)
}

/// The next non-empty `name=value` pair of `rest` and what follows it.
fn next_pair(mut rest: &[u8]) -> Option<(&[u8], &[u8])> {
    while !rest.is_empty() {
        let (pair, next) = match memchr(b'&', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        if !pair.is_empty() {
            return Some((pair, next));
        }
        rest = next;
    }
    None
}

fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match memchr(b'=', pair) {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[][..]),
    }
}

/// Emits, for each name given more than once, one more field: its values joined with
/// commas, which is what ASP.NET and several other frameworks hand the application for
/// `?id=a&id=b`. An attack split over the repetitions (`id=1' UNION/*&id=*/SELECT …`)
/// only exists in that joined value, so the rules must see it.
///
/// Runs only when a repeat was seen, over the part of the input the walk reached; each
/// repeated name costs one more pass over it.
fn join_repeated(
    walked: &[u8],
    names: &[u64; NAMES],
    repeated: u64,
    kind: FieldKind,
    scratch: &mut ParseScratch,
    em: &mut Emitter<'_>,
) {
    for (k, &target) in names.iter().enumerate() {
        if repeated & (1 << k) == 0 {
            continue;
        }
        let mut joined = std::mem::take(&mut scratch.joined);
        joined.clear();
        let mut flags = FieldFlags::DECODED;
        let mut raw_name = None;
        let mut rest = walked;
        while let Some((pair, next)) = next_pair(rest) {
            rest = next;
            let (raw, raw_value) = split_pair(pair);
            let (name, _) = percent_decode(raw, true, &mut scratch.name);
            if name.is_empty() || name_hash(name) != target {
                continue;
            }
            if raw_name.is_some() {
                joined.push(b',');
            }
            raw_name.get_or_insert(raw);
            let (value, f) = percent_decode(raw_value, true, &mut scratch.value);
            joined.extend_from_slice(value);
            flags.set(f);
        }
        let ok = raw_name.is_none_or(|raw| {
            let (name, _) = percent_decode(raw, true, &mut scratch.name);
            em.field(&Field {
                kind,
                name,
                value: &joined,
                role: None,
                flags,
            })
        });
        scratch.joined = joined;
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{Finding, ParseLimits};
    use crate::parse::testutil::{p, Collect};

    fn run(input: &[u8]) -> Collect {
        run_with(input, ParseLimits::default())
    }

    fn run_with(input: &[u8], limits: ParseLimits) -> Collect {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, limits);
        walk(
            input,
            FieldKind::Query,
            FieldKind::QueryName,
            &mut scratch,
            &mut em,
        );
        sink
    }

    #[test]
    fn basic_pairs_and_names() {
        let c = run(b"a=1&b=two+words&c=%3Cscript%3E");
        assert_eq!(
            c.pairs(FieldKind::Query),
            vec![p("a", "1"), p("b", "two words"), p("c", "<script>")]
        );
        assert_eq!(
            c.pairs(FieldKind::QueryName),
            vec![p("a", "a"), p("b", "b"), p("c", "c")]
        );
        assert!(c.findings.is_empty());
        let b = c.get(FieldKind::Query, "b").unwrap();
        assert_eq!(b.flags, FieldFlags::DECODED);
        let a = c.get(FieldKind::Query, "a").unwrap();
        assert_eq!(a.flags, FieldFlags::default());
        // Names come before their values, in input order.
        assert_eq!(c.fields[0].kind, FieldKind::QueryName);
        assert_eq!(c.fields[1].kind, FieldKind::Query);
    }

    #[test]
    fn repeated_empty_and_bare_keys() {
        let c = run(b"&&a=1&&a=2&flag&=orphan&b=&");
        assert_eq!(
            c.pairs(FieldKind::Query),
            vec![
                p("a", "1"),
                p("a", "2"),
                p("flag", ""),
                p("", "orphan"),
                p("b", ""),
                // The repeated name's values joined, as ASP.NET hands them over.
                p("a", "1,2"),
            ]
        );
        assert_eq!(
            c.pairs(FieldKind::QueryName),
            vec![p("a", "a"), p("a", "a"), p("flag", "flag"), p("b", "b")]
        );
        assert!(run(b"").fields.is_empty());
        assert!(run(b"&&&").fields.is_empty());
    }

    #[test]
    fn repeated_parameters_are_also_seen_joined() {
        let c = run(b"id=1%27+UNION%2F*&x=1&id=*%2FSELECT+pw&ID=3&x=2&id=");
        assert_eq!(
            c.pairs(FieldKind::Query)[6..],
            [p("id", "1' UNION/*,*/SELECT pw,"), p("x", "1,2")]
        );
        let joined = &c.fields[c.fields.len() - 2];
        assert!(joined.flags.has(FieldFlags::DECODED));
        // Nothing repeated, nothing added; a joined value counts against the budgets.
        assert_eq!(run(b"a=1&b=2").fields.len(), 4);
        let c = run_with(
            b"a=1&a=2",
            ParseLimits {
                max_fields: 4,
                ..ParseLimits::default()
            },
        );
        assert_eq!(c.findings, vec![Finding::TooManyFields]);
    }

    #[test]
    fn only_first_equals_splits() {
        let c = run(b"q=a=b==c");
        assert_eq!(c.pairs(FieldKind::Query), vec![p("q", "a=b==c")]);
    }

    #[test]
    fn semicolon_is_not_a_separator() {
        let c = run(b"a=1;b=2");
        assert_eq!(c.pairs(FieldKind::Query), vec![p("a", "1;b=2")]);
    }

    #[test]
    fn plus_and_encoded_names() {
        let c = run(b"first+name=J%C3%BCrgen+M&x%2By=%2B");
        assert_eq!(
            c.pairs(FieldKind::Query),
            vec![p("first name", "Jürgen M"), p("x+y", "+")]
        );
        let n = c.get(FieldKind::QueryName, "first name").unwrap();
        assert!(n.flags.has(FieldFlags::DECODED));
    }

    #[test]
    fn malformed_escapes_kept_and_flagged_once() {
        let c = run(b"a=%zz&b=%4&c=x%&d=%41");
        assert_eq!(
            c.pairs(FieldKind::Query),
            vec![p("a", "%zz"), p("b", "%4"), p("c", "x%"), p("d", "A")]
        );
        for n in ["a", "b", "c"] {
            let f = c.get(FieldKind::Query, n).unwrap();
            assert!(f.flags.has(FieldFlags::MALFORMED_ESCAPE), "{n}");
            assert!(!f.flags.has(FieldFlags::DECODED), "{n}");
        }
        assert_eq!(c.findings, vec![Finding::MalformedEscape]);
    }

    #[test]
    fn invalid_utf8_is_flagged() {
        let c = run(b"a=%ff&b=\xfe\xff&c=ok");
        assert!(c
            .get(FieldKind::Query, "a")
            .unwrap()
            .flags
            .has(FieldFlags::INVALID_UTF8));
        let b = c.get(FieldKind::Query, "b").unwrap();
        assert_eq!(b.value, b"\xfe\xff");
        assert_eq!(b.flags, FieldFlags::INVALID_UTF8);
        assert_eq!(c.findings, vec![Finding::InvalidUtf8]);
    }

    #[test]
    fn stops_at_field_limit() {
        let limits = ParseLimits {
            max_fields: 3,
            ..ParseLimits::default()
        };
        let c = run_with(b"a=1&b=2&c=3", limits);
        assert_eq!(c.fields.len(), 3);
        assert_eq!(c.findings, vec![Finding::TooManyFields]);
    }

    #[test]
    fn guessed_bodies_report_nothing_and_stop_before_the_limits() {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let limits = ParseLimits {
            max_fields: 5,
            ..ParseLimits::default()
        };
        let mut em = Emitter::new(&mut sink, limits);
        walk_guessed(b"100% sure=%ff&b=2&c=3&d=4", &mut scratch, &mut em);
        assert!(!em.stopped());
        assert_eq!(
            sink.pairs(FieldKind::Form),
            vec![p("100% sure", "\u{fffd}"), p("b", "2")]
        );
        assert!(sink.findings.is_empty());
        assert!(sink.fields.iter().all(|f| f.flags.0
            & (FieldFlags::MALFORMED_ESCAPE.0 | FieldFlags::INVALID_UTF8.0)
            == 0));
    }

    #[test]
    fn form_kinds_are_used() {
        let mut sink = Collect::default();
        let mut scratch = ParseScratch::default();
        let mut em = Emitter::new(&mut sink, ParseLimits::default());
        walk(
            b"x=1",
            FieldKind::Form,
            FieldKind::FormName,
            &mut scratch,
            &mut em,
        );
        assert_eq!(sink.pairs(FieldKind::Form), vec![p("x", "1")]);
        assert_eq!(sink.pairs(FieldKind::FormName), vec![p("x", "x")]);
    }

    #[test]
    fn warm_scratch_does_not_grow() {
        let input = b"a=%3Cb%3E+c&name%20x=v+w";
        let mut scratch = ParseScratch::default();
        let mut sink = Collect::default();
        let mut cap = None;
        for _ in 0..3 {
            let mut em = Emitter::new(&mut sink, ParseLimits::default());
            walk(
                input,
                FieldKind::Query,
                FieldKind::QueryName,
                &mut scratch,
                &mut em,
            );
            assert_eq!(*cap.get_or_insert(scratch.capacity()), scratch.capacity());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let c = run(&input);
            // Every value byte of the input is inspected somewhere: decoding only shrinks.
            let total: usize = c.fields.iter().filter(|r| r.kind == FieldKind::Query).map(|r| r.value.len()).sum();
            proptest::prop_assert!(total <= input.len());
        }
    }
}
