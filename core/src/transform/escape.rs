//! Backslash escapes: JavaScript and CSS.

use super::{combine_surrogates, decode_marked, hex_byte, hex_u16, hex_val, push_char};

/// Copies the input, handing each backslash to `escape` (see [`decode_marked`]).
fn decode_backslashes(
    input: &[u8],
    out: &mut Vec<u8>,
    escape: impl Fn(&[u8], &mut Vec<u8>) -> Option<usize>,
) -> bool {
    decode_marked(input, out, b'\\', escape)
}

/// `js_decode`.
///
/// `\xHH` and octal escapes become the raw byte rather than U+00HH in UTF-8: the same
/// spelling is used for byte strings in C, Python and shells, where it means the byte, and
/// for ASCII (everything an attack payload needs) both readings agree.
pub(super) fn js_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    decode_backslashes(input, out, js_escape)
}

/// One JavaScript escape at the start of `s` (which begins with `\`). Every escape is at
/// least as long as its result: 2 bytes for 1, `\xHH` 4 for 1, `\uHHHH` 6 for at most 3,
/// a surrogate pair 12 for 4, `\u{…}` at least 2 more than its digits.
fn js_escape(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let &c = s.get(1)?;
    let byte = match c {
        b'x' => {
            out.push(hex_byte(s, 2)?);
            return Some(4);
        }
        b'u' => return js_unicode(s, out),
        b'0'..=b'7' => {
            // Legacy octal: at most 0o377, so three digits only after a leading 0–3.
            let max = if c <= b'3' { 3 } else { 2 };
            let mut value = 0u8;
            let mut n = 0;
            while n < max {
                match s.get(1 + n) {
                    Some(&d @ b'0'..=b'7') => {
                        value = value * 8 + (d - b'0');
                        n += 1;
                    }
                    _ => break,
                }
            }
            out.push(value);
            return Some(1 + n);
        }
        b'n' => b'\n',
        b't' => b'\t',
        b'r' => b'\r',
        b'b' => 0x08,
        b'f' => 0x0c,
        b'v' => 0x0b,
        // Identity escape: `\'`, `\\`, `\a`, and a backslash before a newline.
        other => other,
    };
    out.push(byte);
    Some(2)
}

fn js_unicode(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if s.get(2) == Some(&b'{') {
        let mut value: u32 = 0;
        let mut j = 3;
        while let Some(d) = s.get(j).and_then(|&b| hex_val(b)) {
            value = (value * 16 + u32::from(d)).min(0x11_0000);
            j += 1;
        }
        if j == 3 || s.get(j) != Some(&b'}') {
            return None;
        }
        push_char(out, char::from_u32(value)?);
        return Some(j + 1);
    }
    let unit = hex_u16(s, 2)?;
    if (0xD800..=0xDBFF).contains(&unit) {
        if s.get(6..8) != Some(&b"\\u"[..]) {
            return None;
        }
        let c = combine_surrogates(unit, hex_u16(s, 8)?)?;
        push_char(out, c);
        return Some(12);
    }
    // A lone low surrogate has no UTF-8 form; `from_u32` refuses it and it stays literal.
    push_char(out, char::from_u32(u32::from(unit))?);
    Some(6)
}

/// `css_decode`.
pub(super) fn css_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    decode_backslashes(input, out, css_escape)
}

/// One CSS escape at the start of `s` (which begins with `\`).
///
/// `k` hex digits spell at most `16^k - 1`, whose UTF-8 form is never longer than the
/// `k + 1` bytes of the escape. Values CSS replaces by U+FFFD (zero, surrogates, beyond
/// U+10FFFF) are kept literally instead, because U+FFFD (3 bytes) could be longer than
/// `\0` and because the literal text is what a human reviewer wants to see.
fn css_escape(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let &c = s.get(1)?;
    if hex_val(c).is_some() {
        let mut value: u32 = 0;
        let mut j = 1;
        while j <= 6 {
            match s.get(j).and_then(|&b| hex_val(b)) {
                Some(d) => {
                    value = value * 16 + u32::from(d);
                    j += 1;
                }
                None => break,
            }
        }
        let ch = char::from_u32(value).filter(|&ch| ch != '\0')?;
        push_char(out, ch);
        // One whitespace after the digits belongs to the escape (it ends the hex run).
        match s.get(j) {
            Some(b'\r') if s.get(j + 1) == Some(&b'\n') => j += 2,
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0c) => j += 1,
            _ => {}
        }
        return Some(j);
    }
    match c {
        // Backslash-newline is a line continuation: both vanish.
        b'\n' | 0x0c => Some(2),
        b'\r' if s.get(2) == Some(&b'\n') => Some(3),
        b'\r' => Some(2),
        // Any other character stands for itself (`ja\vascript` is `javascript`).
        other => {
            out.push(other);
            Some(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, rich_bytes, run};
    use super::super::Transform;
    use proptest::prelude::*;

    #[rustfmt::skip]
    const FOCUS: &[&[u8]] = &[
        b"\\", b"\\", b"0", b"3", b"4", b"7", b"8", b"a", b"F", b"x", b"u", b"{", b"}", b"n",
        b"D83D", b"DE00", b"\\uD83D", b"\\uDE00", b"\\u{", b"10FFFF", b"110000", b" ",
        b"\r\n", b"\r", b"\n", b"\x0c", b"\t", b"\xc3\xa9", b"\\377", b"\\400", b"\\08",
        b"\\3", b"\\u0041", b"\\u{41}", b"\\x41", b"\\xZ", b"\\uD83D\\uDE00", b"\\uD83D\\u0041",
        b"\\41 ", b"\\41\r\n", b"\\0", b"\\D800", b"\\10FFFF", b"\\1100000", b"\\\n",
    ];

    fn hex_at(rest: &[u8], at: usize, n: usize) -> Option<u32> {
        let s = rest.get(at..at + n)?;
        if !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
    }

    fn push(out: &mut Vec<u8>, c: char) {
        out.extend_from_slice(c.to_string().as_bytes());
    }

    /// Naive JavaScript unescaper, one escape kind per branch, using `from_str_radix` and
    /// `decode_utf16`.
    fn oracle_js(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] != b'\\' || i + 1 == input.len() {
                out.push(input[i]);
                i += 1;
                continue;
            }
            let rest = &input[i + 1..];
            match rest[0] {
                b'x' => {
                    if let Some(v) = hex_at(rest, 1, 2) {
                        out.push(v as u8);
                        i += 4;
                        continue;
                    }
                }
                b'u' if rest.get(1) == Some(&b'{') => {
                    let digits: Vec<u8> = rest[2..]
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_hexdigit)
                        .collect();
                    if !digits.is_empty() && rest.get(2 + digits.len()) == Some(&b'}') {
                        let text = String::from_utf8(digits.clone()).unwrap();
                        let trimmed = text.trim_start_matches('0');
                        let value = if trimmed.is_empty() {
                            Some(0)
                        } else if trimmed.len() > 6 {
                            None
                        } else {
                            u32::from_str_radix(trimmed, 16).ok()
                        };
                        if let Some(c) = value.and_then(char::from_u32) {
                            push(&mut out, c);
                            i += 4 + digits.len();
                            continue;
                        }
                    }
                }
                b'u' => {
                    if let Some(u) = hex_at(rest, 1, 4) {
                        let mut units = vec![u as u16];
                        if (0xD800..0xDC00).contains(&u) && rest.get(5..7) == Some(&b"\\u"[..]) {
                            if let Some(lo) = hex_at(rest, 7, 4) {
                                units.push(lo as u16);
                            }
                        }
                        if let Some(Ok(c)) = char::decode_utf16(units).next() {
                            push(&mut out, c);
                            i += if c as u32 > 0xFFFF { 12 } else { 6 };
                            continue;
                        }
                    }
                }
                b'0'..=b'7' => {
                    let limit = if rest[0] <= b'3' { 3 } else { 2 };
                    let digits: String = rest
                        .iter()
                        .take(limit)
                        .map(|&b| b as char)
                        .take_while(|c| ('0'..='7').contains(c))
                        .collect();
                    out.push(u8::from_str_radix(&digits, 8).unwrap());
                    i += 1 + digits.len();
                    continue;
                }
                other => {
                    let mapped = match other {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'b' => 8,
                        b'f' => 12,
                        b'v' => 11,
                        x => x,
                    };
                    out.push(mapped);
                    i += 2;
                    continue;
                }
            }
            out.push(b'\\');
            i += 1;
        }
        out
    }

    /// Naive CSS unescaper.
    fn oracle_css(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] != b'\\' || i + 1 == input.len() {
                out.push(input[i]);
                i += 1;
                continue;
            }
            let rest = &input[i + 1..];
            let ndigits = rest
                .iter()
                .take(6)
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            if ndigits > 0 {
                let value = hex_at(rest, 0, ndigits).unwrap();
                match char::from_u32(value).filter(|&c| c != '\0') {
                    Some(c) => {
                        push(&mut out, c);
                        let after = &rest[ndigits..];
                        let ws = if after.starts_with(b"\r\n") {
                            2
                        } else if after.first().is_some_and(|b| b" \t\n\r\x0c".contains(b)) {
                            1
                        } else {
                            0
                        };
                        i += 1 + ndigits + ws;
                    }
                    None => {
                        out.push(b'\\');
                        i += 1;
                    }
                }
                continue;
            }
            if rest.starts_with(b"\r\n") {
                i += 3;
            } else if rest[0] == b'\n' || rest[0] == b'\r' || rest[0] == 0x0c {
                i += 2;
            } else {
                out.push(rest[0]);
                i += 2;
            }
        }
        out
    }

    fn js(s: &str) -> Vec<u8> {
        run(Transform::JsDecode, s.as_bytes())
    }

    fn css(s: &str) -> Vec<u8> {
        run(Transform::CssDecode, s.as_bytes())
    }

    #[test]
    fn js_examples() {
        assert_eq!(js(r"\u0041\u0042"), b"AB");
        assert_eq!(js(r"\x3cscript\x3E"), b"<script>");
        assert_eq!(js(r"\u{41}\u{0000000042}\u{1F600}"), "AB😀".as_bytes());
        assert_eq!(js(r"\uD83D\uDE00"), "😀".as_bytes());
        assert_eq!(js(r"\74\141\0"), b"<a\0");
        assert_eq!(js(r"\477"), b"'7");
        assert_eq!(js(r"\n\t\r\b\f\v"), b"\n\t\r\x08\x0c\x0b");
        assert_eq!(js(r"\'\\\a\e"), b"'\\ae");
        assert_eq!(js(r"\u00e9"), "é".as_bytes());
        assert_eq!(js(r"\xe9"), b"\xe9");
        // Malformed escapes keep their backslash.
        let malformed = r"\x4 \u12 \u{} \u{110000} \u{41 \uDE00 \uD800x";
        assert_eq!(js(malformed), malformed.as_bytes());
        assert_eq!(js("end\\"), b"end\\");
        // One layer per application.
        assert_eq!(js(r"\\u0041"), br"\u0041");
        assert!(!Transform::JsDecode.apply(b"no escapes", &mut Vec::new()));
        assert!(!Transform::JsDecode.apply(b"trailing\\", &mut Vec::new()));
    }

    #[test]
    fn css_examples() {
        assert_eq!(css(r"\6a\61\76\61script"), b"javascript");
        assert_eq!(css(r"\00006a ava"), b"java");
        assert_eq!(css(r"ja\vascript"), b"javascript");
        assert_eq!(css("a\\\nb"), b"ab");
        assert_eq!(css("\\41\r\nB"), b"AB");
        assert_eq!(css(r"\e9 t\E9"), "ét\u{e9}".as_bytes());
        assert_eq!(css(r"\1F600"), "😀".as_bytes());
        // Seven digits: the escape takes six, the seventh is text.
        assert_eq!(css(r"\0000411"), b"A1");
        // Invalid values and a trailing backslash stay literal.
        assert_eq!(css(r"\0 \D800 \110000"), br"\0 \D800 \110000");
        assert_eq!(css("x\\"), b"x\\");
        assert!(!Transform::CssDecode.apply(b"color: red", &mut Vec::new()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn js_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::JsDecode, &input, &oracle_js(&input))?;
        }

        #[test]
        fn css_matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::CssDecode, &input, &oracle_css(&input))?;
        }
    }
}
