//! Value transformations applied before rule matching (the WAF `t:` functions).
//!
//! A rule names a chain of [`Transform`]s; the engine applies them to a field value and
//! matches the result. Every transform runs on the hot path of every request, so they share
//! a few rules that callers are allowed to rely on:
//!
//! * **Nothing to do costs no writes.** Each transform first makes a cheap scan (`memchr`
//!   for its trigger bytes, `is_ascii`, …) and, when that shows the value would come out
//!   unchanged, returns `false` without touching `out`. The only allocation is growth of
//!   `out`, which the caller reuses across fields and requests.
//! * **Output is never longer than input.** Decoders shrink or keep the length, and the
//!   normalizers (`lowercase`, `normalize_unicode`, …) are restricted to mappings that do the
//!   same. A chain of transforms therefore never needs more than the original value's length,
//!   which is what bounds the engine's per-request memory.
//! * **One application decodes one layer.** `%252e` becomes `%2e`, not `.`; a rule that
//!   wants two layers lists the transform twice, so the cost stays visible in the policy.
//! * **Linear time, no panics, any bytes.** Invalid UTF-8 and malformed escapes are kept
//!   literally rather than rejected: the value is attacker-controlled and a transform that
//!   gave up would hide it.

mod b64;
pub(crate) mod block;
mod cmdline;
mod escape;
mod html;
mod path;
mod text;
mod unicode;
mod url;

use serde::{Deserialize, Serialize};

/// A value transformation applied before rule matching (WAF `t:` functions).
///
/// Every transform returns a value no longer than its input; see the [module
/// documentation](self) for the other guarantees.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Percent-decoding: `%XX` becomes the byte, `+` becomes a space; malformed escapes
    /// (`%zz`, `%4`) are kept literally.
    UrlDecode,
    /// [`Transform::UrlDecode`] plus the IIS `%uXXXX` form, decoded to UTF-8 (surrogate pairs
    /// combined, lone surrogates kept literally). Fullwidth ASCII `%uff01`–`%uff5e` becomes
    /// plain ASCII, as IIS does.
    UrlDecodeUni,
    /// HTML character references: `&#60;`, `&#x3c;`, `&#X3C;` and named ones (`&lt;`,
    /// `&colon;`, `&Tab;`, …), with or without the trailing `;`, decoded to UTF-8. Names
    /// match case-insensitively; `&ltscript` decodes the way browsers do (`<script`).
    HtmlEntityDecode,
    /// ASCII lowercase; other bytes are untouched, so the length never changes.
    Lowercase,
    /// Each run of whitespace (space, `\t`, `\n`, `\r`, `\f`, `\v`, U+00A0) becomes one space.
    CompressWhitespace,
    /// Deletes all whitespace (the set of [`Transform::CompressWhitespace`]).
    RemoveWhitespace,
    /// Deletes NUL bytes.
    RemoveNulls,
    /// Folds Unicode evasion back to ASCII: fullwidth and other compatibility forms, common
    /// Cyrillic/Greek homoglyphs, mathematical alphanumerics, exotic spaces; deletes
    /// zero-width, bidi-control, tag and variation-selector characters and combining marks.
    /// Invalid UTF-8 passes through unchanged.
    NormalizeUnicode,
    /// Runs of 16 or more base64 / base64url characters (with optional `=` padding) that
    /// decode to mostly printable text are replaced by that text; other runs are kept.
    Base64Segments,
    /// JavaScript string escapes: `\xHH` and `\OOO` (to the byte), `\uHHHH` and `\u{H…}`
    /// (to UTF-8, surrogate pairs combined), `\n` `\t` `\r` `\b` `\f` `\v`, and `\c` for any
    /// other `c`.
    JsDecode,
    /// CSS escapes: a backslash and 1–6 hex digits (plus one optional whitespace) to UTF-8,
    /// backslash-newline removed, backslash and any other character to that character.
    CssDecode,
    /// Path normalization: `\` becomes `/`, `//` collapses, `.` segments go, `..` removes the
    /// previous segment (never above the root; a leading `../` chain of a relative path is
    /// kept so traversal stays visible).
    NormalizePath,
    /// Command-line normalization for OS-command detection: deletes `\ " ' ^`, treats `,`
    /// and `;` as whitespace, collapses whitespace to one space, drops a space before `/`
    /// and `(`, and lowercases ASCII.
    CmdLine,
}

impl Transform {
    /// Whether the transform leaves every plain value (ASCII without `%` `+` `&` `\\` and
    /// NUL) unchanged: the decoders, which only act on those bytes. Checked against
    /// `apply` by a property test.
    pub(crate) fn identity_on_plain(self) -> bool {
        matches!(
            self,
            Transform::UrlDecode
                | Transform::UrlDecodeUni
                | Transform::HtmlEntityDecode
                | Transform::RemoveNulls
                | Transform::NormalizeUnicode
                | Transform::JsDecode
                | Transform::CssDecode
        )
    }

    /// Every transform.
    pub const ALL: [Transform; 13] = [
        Transform::UrlDecode,
        Transform::UrlDecodeUni,
        Transform::HtmlEntityDecode,
        Transform::Lowercase,
        Transform::CompressWhitespace,
        Transform::RemoveWhitespace,
        Transform::RemoveNulls,
        Transform::NormalizeUnicode,
        Transform::Base64Segments,
        Transform::JsDecode,
        Transform::CssDecode,
        Transform::NormalizePath,
        Transform::CmdLine,
    ];

    /// Stable snake_case name (same as serde).
    pub fn name(self) -> &'static str {
        match self {
            Transform::UrlDecode => "url_decode",
            Transform::UrlDecodeUni => "url_decode_uni",
            Transform::HtmlEntityDecode => "html_entity_decode",
            Transform::Lowercase => "lowercase",
            Transform::CompressWhitespace => "compress_whitespace",
            Transform::RemoveWhitespace => "remove_whitespace",
            Transform::RemoveNulls => "remove_nulls",
            Transform::NormalizeUnicode => "normalize_unicode",
            Transform::Base64Segments => "base64_segments",
            Transform::JsDecode => "js_decode",
            Transform::CssDecode => "css_decode",
            Transform::NormalizePath => "normalize_path",
            Transform::CmdLine => "cmd_line",
        }
    }

    /// Applies the transform.
    ///
    /// If the value changes, writes the complete new value into `out` (clearing it first)
    /// and returns `true`. If the value would not change, returns `false` and leaves `out`
    /// in an unspecified state — the caller keeps using `input`.
    ///
    /// The new value is never longer than `input`. Never panics, on any bytes (invalid UTF-8
    /// included), and runs in time linear in `input.len()`.
    pub fn apply(self, input: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Transform::UrlDecode => url::url_decode(input, out, false),
            Transform::UrlDecodeUni => url::url_decode(input, out, true),
            Transform::HtmlEntityDecode => html::html_entity_decode(input, out),
            Transform::Lowercase => text::lowercase(input, out),
            Transform::CompressWhitespace => text::compress_whitespace(input, out),
            Transform::RemoveWhitespace => text::remove_whitespace(input, out),
            Transform::RemoveNulls => text::remove_nulls(input, out),
            Transform::NormalizeUnicode => unicode::normalize_unicode(input, out),
            Transform::Base64Segments => b64::base64_segments(input, out),
            Transform::JsDecode => escape::js_decode(input, out),
            Transform::CssDecode => escape::css_decode(input, out),
            Transform::NormalizePath => path::normalize_path(input, out),
            Transform::CmdLine => cmdline::cmd_line(input, out),
        }
    }
}

/// The value of an ASCII hex digit.
#[inline]
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte spelled by the two hex digits at `s[i..i + 2]`, if both are there.
#[inline]
fn hex_byte(s: &[u8], i: usize) -> Option<u8> {
    let hi = hex_val(*s.get(i)?)?;
    let lo = hex_val(*s.get(i + 1)?)?;
    Some((hi << 4) | lo)
}

/// The 16-bit value spelled by the four hex digits at `s[i..i + 4]`.
#[inline]
fn hex_u16(s: &[u8], i: usize) -> Option<u16> {
    let hi = hex_byte(s, i)?;
    let lo = hex_byte(s, i + 2)?;
    Some((u16::from(hi) << 8) | u16::from(lo))
}

/// Appends `c` as UTF-8.
#[inline]
pub(crate) fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Combines a UTF-16 surrogate pair into a scalar value.
#[inline]
fn combine_surrogates(hi: u16, lo: u16) -> Option<char> {
    if !(0xD800..=0xDBFF).contains(&hi) || !(0xDC00..=0xDFFF).contains(&lo) {
        return None;
    }
    char::from_u32(0x10000 + (((u32::from(hi) - 0xD800) << 10) | (u32::from(lo) - 0xDC00)))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared pieces of the per-family tests: input strategies and the property check
    //! every transform must pass against its oracle.

    use super::Transform;
    use proptest::prelude::*;

    /// Pieces rich in the bytes the decoders treat specially, so random concatenations hit
    /// escape boundaries, truncated escapes and multibyte characters far more often than
    /// uniform random bytes do.
    #[rustfmt::skip]
    const PIECES: &[&[u8]] = &[
        b"%", b"+", b"0", b"1", b"7", b"9", b"a", b"c", b"e", b"f", b"A", b"C", b"F", b"g",
        b"u", b"U", b"x", b"X", b"&", b"#", b";", b"\\", b"/", b".", b"..", b"./", b"../",
        b" ", b"  ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\0", b"=", b"{", b"}", b"(",
        b")", b",", b"'", b"\"", b"^", b"lt", b"LT", b"amp", b"quot", b"nbsp", b"colon",
        b"Tab", b"%2e", b"%25", b"%u", b"%uD83D", b"%uDE00", b"%uff21", b"&#", b"&#x", b"3c",
        b"60", b"\\u", b"\\x", b"\\u{", b"D800", b"dc00", b"10FFFF", b"110000", b"\r\n",
        b"ignore", b"SELECT", b"cmd", b"etc", b"Zm9vYmFy", b"aWdub3Jl", b"-", b"_",
        // Multibyte characters the Unicode folding handles, and some it leaves alone:
        // é, NBSP, ZWSP, fullwidth S, Cyrillic i, tag 'A', bold A, BOM, fi ligature,
        // combining acute, a CJK ideograph, an emoji.
        b"\xc3\xa9", b"\xc2\xa0", b"\xe2\x80\x8b", b"\xef\xbc\xb3", b"\xd1\x96",
        b"\xf3\xa0\x81\x81", b"\xf0\x9d\x90\x80", b"\xef\xbb\xbf", b"\xef\xac\x81",
        b"\xcc\x81", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80",
        // Invalid or truncated UTF-8.
        b"\xc0", b"\xff", b"\xe2\x80", b"\xc2", b"\xa0", b"\xed\xa0\x80",
    ];

    /// Concatenations of [`PIECES`].
    pub(crate) fn rich_bytes() -> impl Strategy<Value = Vec<u8>> {
        from_pieces(PIECES)
    }

    /// Concatenations of a family's own small set of pieces: the fewer the pieces, the
    /// more often two specific ones (a high and a low surrogate escape, say) end up
    /// adjacent.
    pub(crate) fn from_pieces(pieces: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(pieces), 0..32).prop_map(|v| v.concat())
    }

    /// Long concatenations (up to `max` pieces) of words and `rare` pieces, where a rare
    /// piece comes about once in `every`: long stretches without one exercise the
    /// block-wise paths, and the rare ones their edges.
    pub(crate) fn long_text(
        rare: &'static [&'static [u8]],
        every: u32,
        max: usize,
    ) -> impl Strategy<Value = Vec<u8>> {
        const COMMON: &[&[u8]] = &[
            b"the",
            b"Quick",
            b"brown",
            b" ",
            b" ",
            b" ",
            b"fox",
            b"JUMPS",
            b"a",
            b".",
            b"0",
            b"over",
            b"lazy",
            b"dog",
            b"\xc3\xa9",
        ];
        let piece = prop_oneof![
            every => prop::sample::select(COMMON),
            1 => prop::sample::select(rare),
        ];
        prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
    }

    /// Uniformly random bytes.
    pub(crate) fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..256)
    }

    /// The value a caller sees after applying `t`.
    pub(crate) fn run(t: Transform, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if t.apply(input, &mut out) {
            out
        } else {
            input.to_vec()
        }
    }

    /// Checks `t` on `input` against the oracle's answer `expected`: same value, never
    /// longer, and `apply` reports a change exactly when there is one.
    pub(crate) fn check(t: Transform, input: &[u8], expected: &[u8]) -> Result<(), TestCaseError> {
        // Junk in `out` proves `apply` clears it before writing.
        let mut out = b"junk".to_vec();
        let changed = t.apply(input, &mut out);
        let got: &[u8] = if changed { &out } else { input };
        prop_assert_eq!(
            got.escape_ascii().to_string(),
            expected.escape_ascii().to_string(),
            "{} on {}",
            t.name(),
            input.escape_ascii()
        );
        prop_assert!(got.len() <= input.len());
        prop_assert_eq!(changed, expected != input, "change flag of {}", t.name());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use testutil::{any_bytes, rich_bytes};

    #[test]
    fn names_match_serde() {
        for t in Transform::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            let back: Transform = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t);
        }
        let mut names: Vec<_> = Transform::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Transform::ALL.len());
    }

    #[test]
    fn helpers() {
        assert_eq!(hex_byte(b"%2e", 1), Some(0x2e));
        assert_eq!(hex_byte(b"%2", 1), None);
        assert_eq!(hex_u16(b"FF5e", 0), Some(0xff5e));
        assert_eq!(combine_surrogates(0xD83D, 0xDE00), Some('😀'));
        assert_eq!(combine_surrogates(0xDE00, 0xD83D), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The transforms the engine skips on plain values really leave them unchanged, and
        /// the others never turn a plain value into one a decoder would act on.
        #[test]
        fn plain_values_pass_decoders_unchanged(
            input in prop::collection::vec(
                (0u8..0x80).prop_filter("plain", |b| !b"%+&\\\0".contains(b)), 0..200),
        ) {
            prop_assert!(crate::rules::compile::is_plain(&input));
            let mut out = Vec::new();
            for t in Transform::ALL {
                let changed = t.apply(&input, &mut out);
                if t.identity_on_plain() {
                    prop_assert!(!changed || out == input, "{} changed {:?}", t.name(),
                        String::from_utf8_lossy(&input));
                } else if changed && t != Transform::Base64Segments {
                    prop_assert!(crate::rules::compile::is_plain(&out), "{} made {:?} unplain",
                        t.name(), String::from_utf8_lossy(&input));
                }
            }
        }

        /// Chains of transforms never grow the value and never panic.
        #[test]
        fn chains_never_grow(
            input in prop_oneof![rich_bytes(), any_bytes()],
            chain in prop::collection::vec(prop::sample::select(&Transform::ALL[..]), 1..6),
        ) {
            let mut cur = input.clone();
            let mut out = Vec::new();
            for t in chain {
                if t.apply(&cur, &mut out) {
                    prop_assert!(out.len() <= cur.len(), "{} grew the value", t.name());
                    std::mem::swap(&mut cur, &mut out);
                }
            }
            prop_assert!(cur.len() <= input.len());
        }
    }
}

/// The shared driver of the escape decoders: copies the input, handing each `marker` byte
/// (`\\` for JS/CSS, `&` for HTML) to `decode`, which returns how many bytes it consumed
/// or `None` (nothing written) to keep the marker literally. Returns whether anything was
/// decoded; on `false`, `out` is unspecified.
pub(crate) fn decode_marked(
    input: &[u8],
    out: &mut Vec<u8>,
    marker: u8,
    decode: impl Fn(&[u8], &mut Vec<u8>) -> Option<usize>,
) -> bool {
    let Some(first) = memchr::memchr(marker, input) else {
        return false;
    };
    out.clear();
    out.reserve(input.len());
    out.extend_from_slice(&input[..first]);
    let mut changed = false;
    let mut i = first;
    loop {
        // `input[i]` is the marker.
        match decode(&input[i..], out) {
            Some(n) => {
                changed = true;
                i += n;
            }
            None => {
                out.push(marker);
                i += 1;
            }
        }
        match memchr::memchr(marker, &input[i..]) {
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
