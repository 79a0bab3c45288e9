//! Byte-level text transforms: case, whitespace, NUL bytes.

use memchr::{memchr, memchr2, memchr3, memchr_iter, memmem};

use super::find_first;

/// `lowercase`: ASCII only, so the length is unchanged and non-ASCII bytes (possibly
/// invalid UTF-8) are never reinterpreted.
pub(super) fn lowercase(input: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(first) = find_first(input, |b| b.is_ascii_uppercase()) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(input);
    out[first..].make_ascii_lowercase();
    true
}

/// ASCII whitespace, including `\v` (which `u8::is_ascii_whitespace` leaves out):
/// `\t` `\n` `\v` `\f` `\r` are the contiguous range 9–13.
#[inline]
fn is_ascii_ws(b: u8) -> bool {
    (b == b' ') | (b'\t'..=b'\r').contains(&b)
}

/// Whether byte `b` (between `prev` and `next`) starts a whitespace character (ASCII
/// whitespace, or the 0xC2 of U+00A0), and whether it is the 0xA0 that continues one.
/// Looking one byte either way lets the loops below treat every byte alike, without
/// branches on the data.
#[inline]
fn ws_at(prev: u8, b: u8, next: u8) -> (bool, bool) {
    (
        is_ascii_ws(b) | ((b == 0xc2) & (next == 0xa0)),
        (b == 0xa0) & (prev == 0xc2),
    )
}

/// Calls `f(prev, byte, next)` for each byte of `input[from..]`, with 0 beyond the ends.
#[inline]
fn each_with_neighbours(input: &[u8], from: usize, mut f: impl FnMut(u8, u8, u8)) {
    let mut prev = if from > 0 { input[from - 1] } else { 0 };
    let mut rest = input.get(from..).unwrap_or_default().iter().peekable();
    while let Some(&b) = rest.next() {
        let next = rest.peek().map_or(0, |&&n| n);
        f(prev, b, next);
        prev = b;
    }
}

/// `compress_whitespace`.
pub(super) fn compress_whitespace(input: &[u8], out: &mut Vec<u8>) -> bool {
    let has_c2 = memchr(0xc2, input).is_some();
    // Most values have only single spaces; vectorized searches prove that.
    if !has_c2
        && memchr3(b'\t', b'\n', b'\r', input).is_none()
        && memchr2(0x0b, 0x0c, input).is_none()
        && memmem::find(input, b"  ").is_none()
    {
        return false;
    }
    // `out` starts as a copy and is compacted in place (`w` never passes the read
    // position), through a plain slice so the compiler knows the writes cannot touch the
    // `Vec` itself.
    out.clear();
    out.extend_from_slice(input);
    let buf = &mut out[..];
    let mut w = 0;
    let mut in_ws = false;
    if has_c2 {
        each_with_neighbours(input, 0, |prev, b, next| {
            let (start, cont) = ws_at(prev, b, next);
            buf[w] = if start { b' ' } else { b };
            w += usize::from(!cont & !(start & in_ws));
            in_ws = start | cont;
        });
    } else {
        // Without U+00A0 every whitespace character is one byte.
        for &b in input {
            let ws = is_ascii_ws(b);
            buf[w] = if ws { b' ' } else { b };
            w += usize::from(!(ws & in_ws));
            in_ws = ws;
        }
    }
    out.truncate(w);
    // The prefilter can fire without a change (a 0xC2 that is not U+00A0, say).
    out.as_slice() != input
}

/// `remove_whitespace`.
pub(super) fn remove_whitespace(input: &[u8], out: &mut Vec<u8>) -> bool {
    let c2 = memchr(0xc2, input);
    let Some(first) = [
        memchr3(b' ', b'\t', b'\n', input),
        memchr3(b'\r', 0x0b, 0x0c, input),
        c2,
    ]
    .into_iter()
    .flatten()
    .min() else {
        return false;
    };
    out.clear();
    out.extend_from_slice(input);
    let buf = &mut out[..];
    let mut w = first;
    if c2.is_some() {
        each_with_neighbours(input, first, |prev, b, next| {
            let (start, cont) = ws_at(prev, b, next);
            buf[w] = b;
            w += usize::from(!start & !cont);
        });
    } else {
        for &b in &input[first..] {
            buf[w] = b;
            w += usize::from(!is_ascii_ws(b));
        }
    }
    out.truncate(w);
    w != input.len()
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
    use super::super::testutil::{any_bytes, check, from_pieces, rich_bytes, run};
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
        fn nulls_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::RemoveNulls, &input, &oracle_nulls(&input))?;
        }
    }
}
