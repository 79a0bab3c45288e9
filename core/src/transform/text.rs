//! Byte-level text transforms: case, whitespace, NUL bytes.

use memchr::{memchr, memchr_iter};

use super::block::{self, Verdict, Window};

/// `lowercase`: ASCII only, so the length is unchanged and non-ASCII bytes (possibly
/// invalid UTF-8) are never reinterpreted.
pub(super) fn lowercase(input: &[u8], out: &mut Vec<u8>) -> bool {
    crate::simd::wide(
        #[inline(always)]
        || lowercase_here(input, out),
    )
}

/// The body of [`lowercase`], inlined into its AVX2 and baseline builds.
#[inline(always)]
fn lowercase_here(input: &[u8], out: &mut Vec<u8>) -> bool {
    let upper = |b: u8| b.wrapping_sub(b'A') < 26;
    let Some(first) = block::first_change(input, |b, _| upper(b), |w| upper(w[2])) else {
        return false;
    };
    // One pass: the prefix is copied, the rest copied and lowercased together.
    out.clear();
    out.extend_from_slice(&input[..first]);
    out.extend(input[first..].iter().map(u8::to_ascii_lowercase));
    true
}

/// ASCII whitespace, including `\v` (which `u8::is_ascii_whitespace` leaves out):
/// `\t` `\n` `\v` `\f` `\r` are the contiguous range 9–13.
#[inline(always)]
fn is_ascii_ws(b: u8) -> bool {
    (b == b' ') | (b.wrapping_sub(b'\t') <= b'\r' - b'\t')
}

/// Whether the byte `b`, followed by `next`, starts a whitespace character (ASCII
/// whitespace, or the 0xC2 of U+00A0).
#[inline(always)]
fn ws_starts(b: u8, next: u8) -> bool {
    is_ascii_ws(b) | ((b == 0xc2) & (next == 0xa0))
}

/// Whether the byte `b`, after `prev`, is the 0xA0 that continues a U+00A0.
#[inline(always)]
fn ws_continues(prev: u8, b: u8) -> bool {
    (b == 0xa0) & (prev == 0xc2)
}

/// `compress_whitespace`: the first byte of each whitespace character becomes a space,
/// kept only when the previous character was not whitespace; a U+00A0's 0xA0 goes.
#[inline(always)]
fn compress_rule([p2, p, b, n]: Window) -> Verdict {
    let start = ws_starts(b, n);
    let prev_ws = ws_starts(p, b) | ws_continues(p2, p);
    let byte = if start { b' ' } else { b };
    (byte, !ws_continues(p, b) & !(start & prev_ws))
}

/// `remove_whitespace`: every byte of a whitespace character goes.
#[inline(always)]
fn remove_rule([_, p, b, n]: Window) -> Verdict {
    (b, !ws_starts(b, n) & !ws_continues(p, b))
}

/// `compress_whitespace`.
pub(super) fn compress_whitespace(input: &[u8], out: &mut Vec<u8>) -> bool {
    crate::simd::wide(
        #[inline(always)]
        || compress_whitespace_here(input, out),
    )
}

/// The body of [`compress_whitespace`], inlined into its AVX2 and baseline builds.
#[inline(always)]
fn compress_whitespace_here(input: &[u8], out: &mut Vec<u8>) -> bool {
    // The first change is exact: before it the output is the input, and a dropped or
    // rewritten byte there makes it differ.
    let suspect = |b: u8, next: u8| (b <= b'\r') | (b == 0xc2) | ((b == b' ') & (next == b' '));
    let Some(first) = block::first_change(input, suspect, |w| block::changes(&compress_rule, w))
    else {
        return false;
    };
    block::rewrite(input, first, out, compress_rule);
    true
}

/// `remove_whitespace`.
pub(super) fn remove_whitespace(input: &[u8], out: &mut Vec<u8>) -> bool {
    crate::simd::wide(
        #[inline(always)]
        || remove_whitespace_here(input, out),
    )
}

/// The body of [`remove_whitespace`], inlined into its AVX2 and baseline builds.
#[inline(always)]
fn remove_whitespace_here(input: &[u8], out: &mut Vec<u8>) -> bool {
    let suspect = |b: u8, _| is_ascii_ws(b) | (b == 0xc2);
    let Some(first) = block::first_change(input, suspect, |w| block::changes(&remove_rule, w))
    else {
        return false;
    };
    block::rewrite(input, first, out, remove_rule);
    true
}

/// `remove_nulls`.
pub(super) fn remove_nulls(input: &[u8], out: &mut Vec<u8>) -> bool {
    if memchr(0, input).is_none() {
        return false;
    }
    out.clear();
    out.reserve(input.len());
    let mut start = 0;
    for nul in memchr_iter(0, input) {
        out.extend_from_slice(&input[start..nul]);
        start = nul + 1;
    }
    out.extend_from_slice(&input[start..]);
    true
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, long_text, rich_bytes, run};
    use super::super::Transform;
    use proptest::prelude::*;

    #[rustfmt::skip]
    const FOCUS: &[&[u8]] = &[
        b" ", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\0", b"\xc2", b"\xa0",
        b"\xc2\xa0", b"a", b"Z", b"\xc3\x89",
    ];

    fn oracle_lowercase(input: &[u8]) -> Vec<u8> {
        input
            .iter()
            .map(|&b| match b {
                b'A'..=b'Z' => b + 32,
                _ => b,
            })
            .collect()
    }

    /// Splits into `None` (one whitespace character) and `Some(byte)`.
    fn units(input: &[u8]) -> Vec<Option<u8>> {
        let mut v = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i..].starts_with("\u{a0}".as_bytes()) {
                v.push(None);
                i += 2;
            } else if b" \t\n\r\x0b\x0c".contains(&input[i]) {
                v.push(None);
                i += 1;
            } else {
                v.push(Some(input[i]));
                i += 1;
            }
        }
        v
    }

    fn oracle_compress(input: &[u8]) -> Vec<u8> {
        let mut u = units(input);
        u.dedup_by(|a, b| a.is_none() && b.is_none());
        u.into_iter().map(|x| x.unwrap_or(b' ')).collect()
    }

    fn oracle_remove(input: &[u8]) -> Vec<u8> {
        units(input).into_iter().flatten().collect()
    }

    fn oracle_nulls(input: &[u8]) -> Vec<u8> {
        input.iter().copied().filter(|&b| b != 0).collect()
    }

    #[test]
    fn lowercase_examples() {
        assert_eq!(
            run(Transform::Lowercase, b"SeLeCt * FROM"),
            b"select * from"
        );
        // Non-ASCII is untouched, even where Unicode has a lowercase.
        assert_eq!(
            run(Transform::Lowercase, "ÉCOLE Ｓ".as_bytes()),
            "École Ｓ".as_bytes()
        );
        assert_eq!(run(Transform::Lowercase, b"\xffABC\xc0"), b"\xffabc\xc0");
        assert!(!Transform::Lowercase.apply(b"already lower 123", &mut Vec::new()));
    }

    #[test]
    fn whitespace_examples() {
        let c = Transform::CompressWhitespace;
        assert_eq!(run(c, b"union \t\n select"), b"union select");
        assert_eq!(run(c, "a\u{a0}\u{a0} b".as_bytes()), b"a b");
        assert_eq!(run(c, b"a\x0b\x0cb"), b"a b");
        assert_eq!(run(c, b"  lead and trail  "), b" lead and trail ");
        assert_eq!(run(c, b"tab\tonly"), b"tab only");
        // A lone 0xA0 (Latin-1 NBSP, invalid UTF-8) is not whitespace here.
        assert_eq!(run(c, b"a\xa0b"), b"a\xa0b");
        assert!(!c.apply(b"one space each", &mut Vec::new()));
        // Doubled whitespace at every offset, across the block edges of the scan and the
        // rewrite.
        for at in 0..200 {
            let mut v = b"word".repeat(75);
            v[at..at + 2].copy_from_slice(b"  ");
            let mut one = v.clone();
            one.remove(at);
            assert_eq!(run(c, &v), one, "{at}");
        }

        let r = Transform::RemoveWhitespace;
        assert_eq!(run(r, b"s e\tl\ne\rc t"), b"select");
        assert_eq!(run(r, "ig\u{a0}nore".as_bytes()), b"ignore");
        assert_eq!(run(r, b"\xc2 \xa0"), b"\xc2\xa0");
        assert!(!r.apply(b"nospace", &mut Vec::new()));
    }

    #[test]
    fn nulls_examples() {
        assert_eq!(
            run(Transform::RemoveNulls, b"ja\0va\0script\0"),
            b"javascript"
        );
        assert_eq!(run(Transform::RemoveNulls, b"\0\0"), b"");
        assert!(!Transform::RemoveNulls.apply(b"none", &mut Vec::new()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lowercase_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::Lowercase, &input, &oracle_lowercase(&input))?;
        }

        #[test]
        fn compress_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::CompressWhitespace, &input, &oracle_compress(&input))?;
        }

        #[test]
        fn remove_ws_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::RemoveWhitespace, &input, &oracle_remove(&input))?;
        }

        #[test]
        fn long_matches_oracles(input in long_text(FOCUS, 10, 400)) {
            check(Transform::Lowercase, &input, &oracle_lowercase(&input))?;
            check(Transform::CompressWhitespace, &input, &oracle_compress(&input))?;
            check(Transform::RemoveWhitespace, &input, &oracle_remove(&input))?;
            check(Transform::RemoveNulls, &input, &oracle_nulls(&input))?;
        }

        #[test]
        fn nulls_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::RemoveNulls, &input, &oracle_nulls(&input))?;
        }
    }
}
