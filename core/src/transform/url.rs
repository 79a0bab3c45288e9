//! Percent-decoding, with and without the IIS `%uXXXX` form.

use memchr::memchr2;

use super::{combine_surrogates, hex_byte, hex_u16, push_char};

/// `url_decode` and (with `uni`) `url_decode_uni`.
///
/// Every escape is at least as long as what it decodes to (`%XX` is 3 bytes for 1, `%uXXXX`
/// 6 for at most 3, a `%u` surrogate pair 12 for 4), so the output never grows.
pub(super) fn url_decode(input: &[u8], out: &mut Vec<u8>, uni: bool) -> bool {
    let Some(first) = memchr2(b'%', b'+', input) else {
        return false;
    };
    out.clear();
    out.reserve(input.len());
    out.extend_from_slice(&input[..first]);
    let mut changed = false;
    let mut i = first;
    loop {
        // `input[i]` is '%' or '+'.
        if input[i] == b'+' {
            out.push(b' ');
            changed = true;
            i += 1;
        } else if let Some(n) = decode_percent(input, i, uni, out) {
            changed = true;
            i += n;
        } else {
            out.push(b'%');
            i += 1;
        }
        match memchr2(b'%', b'+', &input[i..]) {
            Some(off) => {
                out.extend_from_slice(&input[i..i + off]);
                i += off;
            }
            None => {
                out.extend_from_slice(&input[i..]);
                return changed;
            }
        }
    }
}

/// Decodes the escape starting with the `%` at `input[i]`, returning how many bytes it
/// took, or `None` (nothing written) when it is malformed.
fn decode_percent(input: &[u8], i: usize, uni: bool, out: &mut Vec<u8>) -> Option<usize> {
    if uni {
        if let Some(n) = decode_percent_u(input, i, out) {
            return Some(n);
        }
    }
    out.push(hex_byte(input, i + 1)?);
    Some(3)
}

/// The code unit of a `%uXXXX` at `input[i]`.
fn unit_at(input: &[u8], i: usize) -> Option<u16> {
    if input.get(i) != Some(&b'%') || !matches!(input.get(i + 1), Some(b'u' | b'U')) {
        return None;
    }
    hex_u16(input, i + 2)
}

fn decode_percent_u(input: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    let unit = unit_at(input, i)?;
    let (c, n) = match unit {
        0xD800..=0xDBFF => (combine_surrogates(unit, unit_at(input, i + 6)?)?, 12),
        _ => (char::from_u32(u32::from(unit))?, 6),
    };
    // IIS folds fullwidth ASCII to ASCII when it decodes %u, so the backend sees ASCII.
    let c = match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
        _ => c,
    };
    push_char(out, c);
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, long_text, rich_bytes, run};
    use super::super::Transform;
    use proptest::prelude::*;

    #[rustfmt::skip]
    const FOCUS: &[&[u8]] = &[
        b"%", b"%u", b"%U", b"+", b"0", b"2", b"e", b"F", b"z", b"D83D", b"DE00", b"ff21",
        b"%uD83D", b"%udc00", b"%uff0e", b"%u002e", b"%2", b"%2e", b"%C3", b"%a9", b"a",
        b"%uD83D%uDE00", b"%uD83D%u0041", b"%41", b"%u0041", b"%U00e9", b"%uFF5E", b"%uff5f",
        b"%uFF01", b"%uff00",
    ];

    /// Deliberately naive percent-decoder: index walk, `from_str_radix`, `decode_utf16`.
    fn oracle(input: &[u8], uni: bool) -> Vec<u8> {
        let is_hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_hexdigit());
        let unit = |j: usize| -> Option<u16> {
            let s = input.get(j..j + 6)?;
            if s[0] == b'%' && (s[1] == b'u' || s[1] == b'U') && is_hex(&s[2..]) {
                u16::from_str_radix(std::str::from_utf8(&s[2..]).ok()?, 16).ok()
            } else {
                None
            }
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if b == b'+' {
                out.push(b' ');
                i += 1;
                continue;
            }
            if b == b'%' {
                if uni {
                    if let Some(u) = unit(i) {
                        let mut units = vec![u];
                        let mut len = 6;
                        if (0xD800..0xDC00).contains(&u) {
                            if let Some(v) = unit(i + 6) {
                                units.push(v);
                                len = 12;
                            }
                        }
                        let decoded: Result<String, _> = char::decode_utf16(units).collect();
                        if let Ok(s) = decoded {
                            for ch in s.chars() {
                                let ch = if ('！'..='～').contains(&ch) {
                                    char::from_u32(ch as u32 - 0xFF01 + 0x21).unwrap()
                                } else {
                                    ch
                                };
                                out.extend_from_slice(ch.to_string().as_bytes());
                            }
                            i += len;
                            continue;
                        }
                    }
                }
                if let Some(s) = input.get(i + 1..i + 3) {
                    if is_hex(s) {
                        let v = u8::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
            }
            out.push(b);
            i += 1;
        }
        out
    }

    #[test]
    fn url_decode_examples() {
        let t = Transform::UrlDecode;
        assert_eq!(run(t, b"a%20b+c"), b"a b c");
        assert_eq!(run(t, b"%3Cscript%3e"), b"<script>");
        // One application decodes one layer.
        assert_eq!(run(t, b"%252e%252e%252f"), b"%2e%2e%2f");
        assert_eq!(run(t, b"..%2f..%2fetc"), b"../../etc");
        // Malformed escapes stay literal.
        assert_eq!(run(t, b"100%"), b"100%");
        assert_eq!(run(t, b"%zz%4"), b"%zz%4");
        assert_eq!(run(t, b"%%41"), b"%A");
        // %u is not decoded without the IIS variant.
        assert_eq!(run(t, b"%u002e"), b"%u002e");
        // Overlong UTF-8 is decoded to its bytes and left for later stages to judge.
        assert_eq!(run(t, b"%c0%ae"), b"\xc0\xae");
        assert_eq!(run(t, b"%00"), b"\0");
        let mut out = Vec::new();
        assert!(!t.apply(b"plain text", &mut out));
        assert!(!t.apply(b"50%off", &mut out));
        assert!(out.len() <= 6);
    }

    #[test]
    fn url_decode_uni_examples() {
        let t = Transform::UrlDecodeUni;
        assert_eq!(run(t, b"%u002e%u002E%U002f"), b"../");
        assert_eq!(run(t, b"%u003cscript%u003e"), b"<script>");
        assert_eq!(run(t, b"%u00e9"), "é".as_bytes());
        assert_eq!(run(t, b"%u4e2d"), "中".as_bytes());
        // Fullwidth forms fold to ASCII.
        assert_eq!(run(t, b"%uff33%uff25%uff2c"), b"SEL");
        assert_eq!(run(t, b"%uff0e%uff0e%uff0f"), b"../");
        // Surrogate pairs combine; lone surrogates stay literal.
        assert_eq!(run(t, b"%uD83D%uDE00"), "😀".as_bytes());
        assert_eq!(run(t, b"%uD83Dx"), b"%uD83Dx");
        assert_eq!(run(t, b"%uDE00"), b"%uDE00");
        // Plain escapes still work, and %u with bad hex falls back to literal.
        assert_eq!(run(t, b"%41%u00zz"), b"A%u00zz");
        assert_eq!(run(t, b"%u00"), b"%u00");
        assert_eq!(run(t, b"%252e"), b"%2e");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn url_decode_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::UrlDecode, &input, &oracle(&input, false))?;
        }

        #[test]
        fn long_matches_oracle(input in long_text(FOCUS, 20, 400)) {
            check(Transform::UrlDecode, &input, &oracle(&input, false))?;
            check(Transform::UrlDecodeUni, &input, &oracle(&input, true))?;
        }

        #[test]
        fn url_decode_uni_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::UrlDecodeUni, &input, &oracle(&input, true))?;
        }
    }
}
