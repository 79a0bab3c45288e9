//! HTML character reference decoding.
//!
//! Browsers decode references leniently: the `;` is optional for numeric references and for
//! the "legacy" named ones (`&lt`, `&amp`, `&nbsp`, …), and a legacy name is recognised even
//! when letters follow it (`&ltscript` is `<script` in text content). Matching has to see
//! what the browser sees, so this decoder is at least as lenient: every name in the table
//! is accepted without `;` when the letters end there, and names match case-insensitively
//! (`&LT;` and `&QUOT;` are real HTML; `&Lt;`, which HTML reads as `≪`, is decoded as `<`,
//! an over-decoding that can only add matches).

use super::{decode_marked, push_char};

/// A named reference.
struct Entity {
    /// The name as HTML spells it (matched case-insensitively).
    name: &'static str,
    /// The decoded text. Never longer than `&` + name, so decoding never grows the value.
    value: &'static str,
    /// Whether browsers recognise the name as a prefix of a longer run of letters.
    legacy: bool,
}

const fn e(name: &'static str, value: &'static str, legacy: bool) -> Entity {
    Entity {
        name,
        value,
        legacy,
    }
}

/// The named references worth decoding for attack detection: HTML/JS/URL syntax characters
/// (the HTML5 names for punctuation exist precisely so they can be written without the
/// character), whitespace and invisible characters, and the common legacy names.
static ENTITIES: &[Entity] = &[
    e("lt", "<", true),
    e("gt", ">", true),
    e("amp", "&", true),
    e("quot", "\"", true),
    e("apos", "'", false),
    e("nbsp", "\u{a0}", true),
    e("shy", "\u{ad}", true),
    e("copy", "\u{a9}", true),
    e("reg", "\u{ae}", true),
    e("laquo", "\u{ab}", true),
    e("raquo", "\u{bb}", true),
    e("iexcl", "\u{a1}", true),
    e("colon", ":", false),
    e("semi", ";", false),
    e("comma", ",", false),
    e("period", ".", false),
    e("excl", "!", false),
    e("quest", "?", false),
    e("num", "#", false),
    e("dollar", "$", false),
    e("percnt", "%", false),
    e("ast", "*", false),
    e("midast", "*", false),
    e("plus", "+", false),
    e("equals", "=", false),
    e("lpar", "(", false),
    e("rpar", ")", false),
    e("lsqb", "[", false),
    e("lbrack", "[", false),
    e("rsqb", "]", false),
    e("rbrack", "]", false),
    e("lcub", "{", false),
    e("lbrace", "{", false),
    e("rcub", "}", false),
    e("rbrace", "}", false),
    e("sol", "/", false),
    e("bsol", "\\", false),
    e("verbar", "|", false),
    e("vert", "|", false),
    e("VerticalLine", "|", false),
    e("grave", "`", false),
    e("DiacriticalGrave", "`", false),
    e("Hat", "^", false),
    e("lowbar", "_", false),
    e("UnderBar", "_", false),
    e("commat", "@", false),
    e("Tab", "\t", false),
    e("NewLine", "\n", false),
    e("hyphen", "\u{2010}", false),
    e("dash", "\u{2010}", false),
    e("minus", "\u{2212}", false),
    e("lsquo", "\u{2018}", false),
    e("rsquo", "\u{2019}", false),
    e("ldquo", "\u{201c}", false),
    e("rdquo", "\u{201d}", false),
    e("ensp", "\u{2002}", false),
    e("emsp", "\u{2003}", false),
    e("thinsp", "\u{2009}", false),
    e("NonBreakingSpace", "\u{a0}", false),
    e("zwnj", "\u{200c}", false),
    e("zwj", "\u{200d}", false),
    e("lrm", "\u{200e}", false),
    e("rlm", "\u{200f}", false),
    e("ZeroWidthSpace", "\u{200b}", false),
    e("NoBreak", "\u{2060}", false),
];

/// The longest name in [`ENTITIES`]; a longer run of letters can only match a legacy prefix.
const MAX_NAME: usize = 16;

/// `html_entity_decode`.
pub(super) fn html_entity_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    decode_marked(input, out, b'&', decode_reference)
}

/// Decodes the reference at the start of `s` (which begins with `&`), returning how many
/// bytes it took, or `None` (nothing written) if it is not one.
fn decode_reference(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if s.get(1) == Some(&b'#') {
        return decode_numeric(s, out);
    }
    // Reading one letter past the longest name is enough to tell an exact match from a
    // prefix, and bounds the work per '&'.
    let run_len = s[1..]
        .iter()
        .take(MAX_NAME + 1)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let run = &s[1..1 + run_len];
    if run.is_empty() {
        return None;
    }
    if let Some(ent) = ENTITIES
        .iter()
        .find(|ent| ent.name.len() == run.len() && ent.name.as_bytes().eq_ignore_ascii_case(run))
    {
        out.extend_from_slice(ent.value.as_bytes());
        let n = 1 + run.len();
        return Some(if s.get(n) == Some(&b';') { n + 1 } else { n });
    }
    let ent = ENTITIES
        .iter()
        .filter(|ent| {
            ent.legacy
                && ent.name.len() < run.len()
                && ent
                    .name
                    .as_bytes()
                    .eq_ignore_ascii_case(&run[..ent.name.len()])
        })
        .max_by_key(|ent| ent.name.len())?;
    out.extend_from_slice(ent.value.as_bytes());
    Some(1 + ent.name.len())
}

/// `&#DDD` / `&#xHHH`, optional `;`. Code points browsers would replace (NUL, surrogates,
/// beyond U+10FFFF) are kept literally. Leading zeros are allowed, as in browsers; the
/// value saturates so long digit runs cannot overflow.
fn decode_numeric(s: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let (radix, start) = match s.get(2) {
        Some(b'x' | b'X') => (16, 3),
        _ => (10, 2),
    };
    let mut value: u32 = 0;
    let mut j = start;
    while let Some(d) = s.get(j).and_then(|&b| char::from(b).to_digit(radix)) {
        value = (value * radix + d).min(0x11_0000);
        j += 1;
    }
    if j == start {
        return None;
    }
    // The shortest spelling of an n-byte UTF-8 character has more than n bytes
    // (`&#128` → 2, `&#x800` → 3, `&#x10000` → 4), so this never grows the value.
    let c = char::from_u32(value).filter(|&c| c != '\0')?;
    push_char(out, c);
    Some(if s.get(j) == Some(&b';') { j + 1 } else { j })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, rich_bytes, run};
    use super::super::Transform;
    use super::ENTITIES;
    use proptest::prelude::*;

    #[rustfmt::skip]
    const FOCUS: &[&[u8]] = &[
        b"&", b"&#", b"&#x", b"&#X", b"#", b";", b"0", b"6", b"9", b"3c", b"D800", b"110000",
        b"lt", b"LT", b"gt", b"amp", b"nbsp", b"colon", b"Tab", b"newline", b"x", b"q", b" ",
        b"ZeroWidthSpace", b"DiacriticalGrave", b"&lt;", b"&LT", b"&ltx", b"&colon;", b"&#60;",
        b"&#x3C", b"&#0;", b"&amp;", b"&Tab;", b"&#x1F600;",
    ];

    /// Naive decoder: reads whole runs into `String`s and compares lowercased names.
    fn oracle(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] != b'&' {
                out.push(input[i]);
                i += 1;
                continue;
            }
            let rest = &input[i + 1..];
            if rest.first() == Some(&b'#') {
                let hex = matches!(rest.get(1), Some(b'x') | Some(b'X'));
                let digits_at = if hex { 2 } else { 1 };
                let digits: String = rest[digits_at.min(rest.len())..]
                    .iter()
                    .map(|&b| b as char)
                    .take_while(|c| {
                        if hex {
                            c.is_ascii_hexdigit()
                        } else {
                            c.is_ascii_digit()
                        }
                    })
                    .collect();
                if !digits.is_empty() {
                    let trimmed = digits.trim_start_matches('0');
                    let value = if trimmed.len() > 7 {
                        None
                    } else if trimmed.is_empty() {
                        Some(0)
                    } else {
                        u32::from_str_radix(trimmed, if hex { 16 } else { 10 }).ok()
                    };
                    if let Some(c) = value.and_then(char::from_u32).filter(|&c| c != '\0') {
                        out.extend_from_slice(c.to_string().as_bytes());
                        let mut used = 1 + digits_at + digits.len();
                        if input.get(i + used) == Some(&b';') {
                            used += 1;
                        }
                        i += used;
                        continue;
                    }
                }
                out.push(b'&');
                i += 1;
                continue;
            }
            let name: String = rest
                .iter()
                .map(|&b| b as char)
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let lower = name.to_lowercase();
            if let Some(ent) = ENTITIES.iter().find(|e| e.name.to_lowercase() == lower) {
                out.extend_from_slice(ent.value.as_bytes());
                i += 1 + name.len();
                if input.get(i) == Some(&b';') {
                    i += 1;
                }
                continue;
            }
            let prefix = (1..name.len()).rev().find_map(|l| {
                ENTITIES
                    .iter()
                    .find(|e| e.legacy && e.name.to_lowercase() == lower[..l])
            });
            if let Some(ent) = prefix {
                out.extend_from_slice(ent.value.as_bytes());
                i += 1 + ent.name.len();
                continue;
            }
            out.push(b'&');
            i += 1;
        }
        out
    }

    fn dec(s: &str) -> String {
        String::from_utf8(run(Transform::HtmlEntityDecode, s.as_bytes())).unwrap()
    }

    #[test]
    fn examples() {
        assert_eq!(dec("&lt;script&gt;"), "<script>");
        assert_eq!(dec("&#60;&#x3c;&#X3C;&#x3C;&#0060;"), "<<<<<");
        // Without semicolons, as browsers accept them.
        assert_eq!(dec("&#x3cscript&#x3e"), "<script>");
        assert_eq!(dec("&#60script&#62"), "<script>");
        assert_eq!(dec("&lt script&gt"), "< script>");
        assert_eq!(dec("&ltscript&gt"), "<script>");
        // Mixed case.
        assert_eq!(dec("&LT;&Gt;&QuOt;&AMP;"), "<>\"&");
        assert_eq!(
            dec("javascript&colon;alert&lpar;1&rpar;"),
            "javascript:alert(1)"
        );
        assert_eq!(dec("java&Tab;script&NewLine;"), "java\tscript\n");
        assert_eq!(dec("a&nbsp;b"), "a\u{a0}b");
        assert_eq!(dec("&#x1F600;"), "😀");
        // One layer per application.
        assert_eq!(dec("&amp;lt;"), "&lt;");
        // Not references: kept.
        assert_eq!(dec("a & b && c"), "a & b && c");
        assert_eq!(
            dec("&unknown; &#; &#x; &#xZZ;"),
            "&unknown; &#; &#x; &#xZZ;"
        );
        // `colon` is not a legacy name, so it is not decoded as a prefix.
        assert_eq!(dec("&colonx"), "&colonx");
        let invalid = "&#0; &#xD800; &#x110000; &#99999999999999999999;";
        assert_eq!(dec(invalid), invalid);
        assert!(!Transform::HtmlEntityDecode.apply(b"R&D &unknown", &mut Vec::new()));
    }

    #[test]
    fn table_is_sound() {
        for ent in ENTITIES {
            assert!(ent.value.len() <= ent.name.len() + 1, "{} grows", ent.name);
            assert!(ent.name.len() <= super::MAX_NAME, "{}", ent.name);
            assert!(ent.name.bytes().all(|b| b.is_ascii_alphanumeric()));
            let twins = ENTITIES
                .iter()
                .filter(|o| o.name.eq_ignore_ascii_case(ent.name))
                .count();
            assert_eq!(twins, 1, "{} is ambiguous without case", ent.name);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::HtmlEntityDecode, &input, &oracle(&input))?;
        }
    }
}
