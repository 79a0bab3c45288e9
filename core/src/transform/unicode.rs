//! Unicode folding against evasion: lookalikes back to ASCII, invisibles removed.
//!
//! This is not full NFKC. It covers the ranges attackers use to slip a keyword past a
//! byte-level pattern (fullwidth forms, mathematical alphanumerics, Cyrillic and Greek
//! lookalikes, zero-width and bidi characters, tag characters, …) and maps each of them to
//! ASCII or to nothing. Restricting outputs to ASCII keeps the mapping small, keeps the
//! length invariant trivially true (an ASCII byte is never longer than the character it
//! replaces) and needs no Unicode data tables. The homoglyph part deliberately goes beyond
//! NFKC (`а` Cyrillic → `a`), so patterns written in Cyrillic or Greek must not be matched
//! after this transform.

/// What one character becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// Kept as is.
    Keep,
    /// Removed.
    Drop,
    /// Replaced by an ASCII byte.
    Ascii(u8),
    /// Replaced by a short ASCII string (ligatures, leaders); never longer than the
    /// character's UTF-8 form.
    Str(&'static str),
}

/// The well-formed UTF-8 character starting at `input[i]` (a non-ASCII byte), as its
/// code point and length, or `None` where no character starts (the byte is kept as is).
///
/// Checking well-formedness at every non-ASCII byte and skipping one byte where it fails
/// finds the same characters as `utf8_chunks`: the bytes it reports invalid are a lead
/// byte and continuation bytes, and a continuation byte never starts a character.
#[inline(always)]
fn char_at(input: &[u8], i: usize) -> Option<(u32, usize)> {
    let b0 = u32::from(input[i]);
    // The six payload bits of the continuation byte at `i + k`.
    let cont = |k: usize| {
        let c = u32::from(*input.get(i + k)?) ^ 0x80;
        (c < 0x40).then_some(c)
    };
    if b0 < 0xe0 {
        // 0x80..0xC1 are continuation bytes or overlong leads.
        let cp = ((b0 & 0x1f) << 6) | cont(1)?;
        (b0 >= 0xc2).then_some((cp, 2))
    } else if b0 < 0xf0 {
        let cp = ((b0 & 0x0f) << 12) | (cont(1)? << 6) | cont(2)?;
        // Overlong forms and surrogates are not characters.
        (cp >= 0x800 && !(0xd800..=0xdfff).contains(&cp)).then_some((cp, 3))
    } else {
        let cp = ((b0 & 0x07) << 18) | (cont(1)? << 12) | (cont(2)? << 6) | cont(3)?;
        (b0 < 0xf8 && (0x1_0000..=0x10_ffff).contains(&cp)).then_some((cp, 4))
    }
}

/// How the character at the non-ASCII byte `input[i]` folds, and how many bytes it
/// spans (one for a byte that starts no character, which is kept).
#[inline(always)]
fn fold_at(input: &[u8], i: usize) -> (Fold, usize) {
    match char_at(input, i) {
        // Two-byte characters, most non-English text, straight from the table.
        Some((cp, 2)) => (
            match TWO_BYTE[cp as usize] {
                TABLE_KEEP => Fold::Keep,
                TABLE_DROP => Fold::Drop,
                b => Fold::Ascii(b),
            },
            2,
        ),
        Some((cp, len)) => match char::from_u32(cp) {
            Some(c) => (fold_fast(c), len),
            None => (Fold::Keep, len),
        },
        None => match overlong_ascii(input, i) {
            Some((b, len)) => (Fold::Ascii(b), len),
            None => (Fold::Keep, 1),
        },
    }
}

/// An overlong encoding of an ASCII character at `input[i]` (`C0 A7` for `'`, `E0 80 AE`
/// for `.`), as the byte and the sequence's length. Such sequences are not UTF-8, but old
/// and lenient decoders (IIS, early Java) turned them into the character they spell, which
/// made them a classic way to slip quotes and dots past byte-level filters; folding them
/// lets rules see what such a back end would see.
#[inline(always)]
fn overlong_ascii(input: &[u8], i: usize) -> Option<(u8, usize)> {
    let cont = |k: usize| {
        let c = *input.get(i + k)? ^ 0x80;
        (c < 0x40).then_some(c)
    };
    // The code point's bits above the continuation bytes' must all be zero.
    let (high, len) = match input[i] {
        b0 @ (0xc0 | 0xc1) => (b0 & 1, 2),
        0xe0 => (cont(1)?, 3),
        0xf0 if cont(1)? == 0 => (cont(2)?, 4),
        _ => return None,
    };
    let low = cont(len - 1)?;
    (high < 2).then_some(((high << 6) | low, len))
}

/// The index of the first non-ASCII byte at or after `i`, or `input.len()`.
#[inline(always)]
fn skip_ascii(input: &[u8], mut i: usize) -> usize {
    // A word at a time, then byte by byte (text in most scripts has short ASCII runs:
    // spaces and punctuation).
    while let Some(word) = input.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let high = word & 0x8080_8080_8080_8080;
        if high != 0 {
            return i + (high.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < input.len() && input[i].is_ascii() {
        i += 1;
    }
    i
}

/// `normalize_unicode`.
///
/// Characters are decoded in place (see [`char_at`]); the first that folds starts the
/// rewrite, which writes into `out` sized once, never longer than the input since every
/// fold is.
pub(super) fn normalize_unicode(input: &[u8], out: &mut Vec<u8>) -> bool {
    // `is_ascii` checks a word at a time; most values are ASCII and end here.
    if input.is_ascii() {
        return false;
    }
    let n = input.len();
    let mut i = skip_ascii(input, 0);
    let start = loop {
        if i >= n {
            return false;
        }
        let (fold, len) = fold_at(input, i);
        if fold != Fold::Keep {
            break i;
        }
        i = skip_ascii(input, i + len);
    };
    out.clear();
    out.extend_from_slice(input);
    let buf = &mut out[..];
    let mut w = start;
    let mut i = start;
    while i < n {
        // `w <= i`: writes never pass the read position.
        let b = input[i];
        if b.is_ascii() {
            buf[w] = b;
            w += 1;
            i += 1;
            continue;
        }
        // Two-byte characters (Greek, Cyrillic, Latin-1, …) straight from the table.
        if let (0xc2..=0xdf, Some(&b1)) = (b, input.get(i + 1)) {
            if b1 & 0xc0 == 0x80 {
                let cp = (usize::from(b & 0x1f) << 6) | usize::from(b1 & 0x3f);
                let dst = <&mut [u8; 2]>::try_from(&mut buf[w..w + 2]).expect("2 bytes");
                match TWO_BYTE[cp] {
                    TABLE_KEEP => {
                        *dst = [b, b1];
                        w += 2;
                    }
                    TABLE_DROP => {}
                    a => {
                        dst[0] = a;
                        w += 1;
                    }
                }
                i += 2;
                continue;
            }
        }
        // Three-byte characters on pages without foldable ones (CJK, Indic, …) are kept.
        if let (0xe0..=0xef, Some(&[b1, b2, b3])) = (b, input.get(i + 1..i + 4)) {
            let cp =
                (u32::from(b & 0x0f) << 12) | (u32::from(b1 & 0x3f) << 6) | u32::from(b2 & 0x3f);
            let page = (cp >> 8) as usize;
            if (b1 & 0xc0 == 0x80)
                & (b2 & 0xc0 == 0x80)
                & (cp >= 0x800)
                & !(0xd800..=0xdfff).contains(&cp)
                & (FOLD_PAGES[page / 64] & (1 << (page % 64)) == 0)
            {
                // The fourth byte is copied too, and overwritten next.
                let dst = <&mut [u8; 4]>::try_from(&mut buf[w..w + 4]).expect("4 bytes");
                *dst = [b, b1, b2, b3];
                w += 3;
                i += 3;
                continue;
            }
        }
        let (fold, len) = fold_at(input, i);
        match fold {
            Fold::Keep => {
                // A fixed-size copy (possibly of bytes past the character, which later
                // writes replace) rather than a call for a few bytes.
                if let (Some(dst), Some(src)) = (buf.get_mut(w..w + 4), input.get(i..i + 4)) {
                    dst.copy_from_slice(src);
                } else {
                    buf[w..w + len].copy_from_slice(&input[i..i + len]);
                }
                w += len;
            }
            Fold::Drop => {}
            Fold::Ascii(b) => {
                buf[w] = b;
                w += 1;
            }
            Fold::Str(s) => {
                buf[w..w + s.len()].copy_from_slice(s.as_bytes());
                w += s.len();
            }
        }
        i += len;
    }
    out.truncate(w);
    // Every fold of a non-ASCII character differs from it, so the value changed.
    true
}

/// [`fold_cp`] for U+0080..U+07FF (every two-byte UTF-8 character: Latin-1, Greek,
/// Cyrillic, Armenian, combining marks), where most foldable characters and most
/// non-English text live. A lookup is much cheaper than the large `match`. Entries are
/// [`TABLE_KEEP`], [`TABLE_DROP`] or the ASCII replacement.
static TWO_BYTE: [u8; 0x800] = {
    let mut t = [TABLE_KEEP; 0x800];
    let mut cp = 0x80;
    while cp < 0x800 {
        t[cp as usize] = match fold_cp(cp) {
            Fold::Keep => TABLE_KEEP,
            Fold::Drop => TABLE_DROP,
            Fold::Ascii(b) => b,
            // Fails the build if a multi-byte replacement is ever added in this range.
            Fold::Str(_) => panic!("TWO_BYTE cannot hold a string replacement"),
        };
        cp += 1;
    }
    t
};

/// [`TWO_BYTE`]: the character is kept. (No fold produces NUL.)
const TABLE_KEEP: u8 = 0;
/// [`TWO_BYTE`]: the character is removed. (No fold produces a non-ASCII byte.)
const TABLE_DROP: u8 = 0xff;

/// The 256-code-point pages from U+0800 up that hold a character [`fold_cp`] changes, as
/// a bitmap over the BMP. Text in most scripts (CJK, Indic, Thai, …) never reaches the
/// large `match`.
static FOLD_PAGES: [u64; 4] = {
    const PAGES: &[usize] = &[
        0x11, 0x16, 0x17, 0x18, 0x20, 0x21, 0x22, 0x23, 0x24, 0x29, 0x30, 0x31, 0xfb, 0xfe, 0xff,
    ];
    let mut bits = [0u64; 4];
    let mut i = 0;
    while i < PAGES.len() {
        bits[PAGES[i] / 64] |= 1 << (PAGES[i] % 64);
        i += 1;
    }
    bits
};

/// [`fold_cp`], through the fast paths.
#[inline(always)]
fn fold_fast(c: char) -> Fold {
    let cp = c as u32;
    if cp < 0x800 {
        return match TWO_BYTE[cp as usize] {
            TABLE_KEEP => Fold::Keep,
            TABLE_DROP => Fold::Drop,
            b => Fold::Ascii(b),
        };
    }
    let page = (cp >> 8) as usize;
    let may_fold = match page {
        // Kana and CJK punctuation share these pages with only four foldable characters.
        0x30 => matches!(cp, 0x3000 | 0x3008 | 0x3009),
        0x31 => cp == 0x3164,
        0..=0xff => FOLD_PAGES[page / 64] & (1 << (page % 64)) != 0,
        _ => matches!(page, 0x1d4..=0x1d7 | 0x1f1 | 0xe00 | 0xe01),
    };
    if may_fold {
        fold_cp(cp)
    } else {
        Fold::Keep
    }
}

/// `b'A' + n` or `b'a' + n` for the n-th letter.
#[inline]
const fn letter(base: u8, n: u32) -> Fold {
    // `n < 26` at every call site; the clamp only keeps a future mistake from producing
    // non-letters silently.
    Fold::Ascii(base + if n > 25 { 25 } else { n as u8 })
}

/// The folding of one non-ASCII code point; `const` so [`TWO_BYTE`] is built from it at
/// compile time.
const fn fold_cp(cp: u32) -> Fold {
    use Fold::{Ascii, Drop, Keep, Str};
    match cp {
        // Spaces: NFKC folds these to U+0020; the Ogham space mark and the line/paragraph
        // separators are added because they split words just as well.
        0x00a0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000 => {
            Ascii(b' ')
        }

        // Characters that can be slipped inside a word without visibly splitting it: soft
        // hyphen, combining marks (they stack on the previous letter; dropping them goes
        // beyond NFKC and turns decomposed `é` into `e`, harmless for matching), Arabic
        // letter mark, Hangul fillers, Khmer inherent vowels, Mongolian selectors,
        // zero-width space/joiners, LRM/RLM, bidi embeddings and isolates, word joiner and
        // invisible operators, deprecated format controls, variation selectors, BOM, tags.
        0x00ad
        | 0x0300..=0x036f
        | 0x061c
        | 0x115f
        | 0x1160
        | 0x17b4
        | 0x17b5
        | 0x180b..=0x180f
        | 0x200b..=0x200f
        | 0x202a..=0x202e
        | 0x2060..=0x206f
        | 0x3164
        | 0xfe00..=0xfe0f
        | 0xfeff
        | 0xffa0
        | 0xe0000..=0xe007f
        | 0xe0100..=0xe01ef => Drop,

        // Fullwidth ASCII.
        0xff01..=0xff5e => Ascii((cp - 0xfee0) as u8),

        // Small form variants (NFKC targets).
        0xfe50 => Ascii(b','),
        0xfe52 => Ascii(b'.'),
        0xfe54 => Ascii(b';'),
        0xfe55 => Ascii(b':'),
        0xfe56 => Ascii(b'?'),
        0xfe57 => Ascii(b'!'),
        0xfe59 => Ascii(b'('),
        0xfe5a => Ascii(b')'),
        0xfe5b => Ascii(b'{'),
        0xfe5c => Ascii(b'}'),
        0xfe5f => Ascii(b'#'),
        0xfe60 => Ascii(b'&'),
        0xfe61 => Ascii(b'*'),
        0xfe62 => Ascii(b'+'),
        0xfe63 => Ascii(b'-'),
        0xfe64 => Ascii(b'<'),
        0xfe65 => Ascii(b'>'),
        0xfe66 => Ascii(b'='),
        0xfe68 => Ascii(b'\\'),
        0xfe69 => Ascii(b'$'),
        0xfe6a => Ascii(b'%'),
        0xfe6b => Ascii(b'@'),

        // Punctuation lookalikes that "best fit" code-page conversions turn into the ASCII
        // syntax characters (quotes, dashes, slashes, angle brackets, leaders).
        0x02bc | 0x2018 | 0x2019 | 0x201a | 0x201b | 0x2032 | 0x2035 => Ascii(b'\''),
        0x201c | 0x201d | 0x201e | 0x201f | 0x2033 | 0x2036 => Ascii(b'"'),
        0x2010..=0x2015 | 0x2212 => Ascii(b'-'),
        0x2044 | 0x2215 | 0x29f8 => Ascii(b'/'),
        0x2216 | 0x29f9 => Ascii(b'\\'),
        0x02c2 | 0x2039 | 0x2329 | 0x3008 => Ascii(b'<'),
        0x02c3 | 0x203a | 0x232a | 0x3009 => Ascii(b'>'),
        0x01c3 => Ascii(b'!'),
        0x2024 => Ascii(b'.'),
        0x2025 => Str(".."),
        0x2026 => Str("..."),

        // Latin ligatures (NFKC).
        0xfb00 => Str("ff"),
        0xfb01 => Str("fi"),
        0xfb02 => Str("fl"),
        0xfb03 => Str("ffi"),
        0xfb04 => Str("ffl"),
        0xfb05 | 0xfb06 => Str("st"),

        // Superscript and subscript digits (NFKC).
        0x00b9 => Ascii(b'1'),
        0x00b2 => Ascii(b'2'),
        0x00b3 => Ascii(b'3'),
        0x2070 => Ascii(b'0'),
        0x2074..=0x2079 => Ascii(b'0' + (cp - 0x2070) as u8),
        0x2080..=0x2089 => Ascii(b'0' + (cp - 0x2080) as u8),

        // Latin lookalikes.
        0x0131 => Ascii(b'i'),
        0x0237 => Ascii(b'j'),
        0x0251 => Ascii(b'a'),
        0x0261 => Ascii(b'g'),

        // Greek lookalikes.
        0x0391 => Ascii(b'A'),
        0x0392 => Ascii(b'B'),
        0x0395 => Ascii(b'E'),
        0x0396 => Ascii(b'Z'),
        0x0397 => Ascii(b'H'),
        0x0399 => Ascii(b'I'),
        0x039a => Ascii(b'K'),
        0x039c => Ascii(b'M'),
        0x039d => Ascii(b'N'),
        0x039f => Ascii(b'O'),
        0x03a1 => Ascii(b'P'),
        0x03a4 => Ascii(b'T'),
        0x03a5 => Ascii(b'Y'),
        0x03a7 => Ascii(b'X'),
        0x03b1 => Ascii(b'a'),
        0x03b9 => Ascii(b'i'),
        0x03ba => Ascii(b'k'),
        0x03bd => Ascii(b'v'),
        0x03bf => Ascii(b'o'),
        0x03c1 => Ascii(b'p'),
        0x03c5 => Ascii(b'u'),
        0x03c7 => Ascii(b'x'),
        0x03f2 => Ascii(b'c'),
        0x03f3 => Ascii(b'j'),
        0x03f9 => Ascii(b'C'),

        // Cyrillic lookalikes.
        0x0405 => Ascii(b'S'),
        0x0406 => Ascii(b'I'),
        0x0408 => Ascii(b'J'),
        0x0410 => Ascii(b'A'),
        0x0412 => Ascii(b'B'),
        0x0415 => Ascii(b'E'),
        0x041a => Ascii(b'K'),
        0x041c => Ascii(b'M'),
        0x041d => Ascii(b'H'),
        0x041e => Ascii(b'O'),
        0x0420 => Ascii(b'P'),
        0x0421 => Ascii(b'C'),
        0x0422 => Ascii(b'T'),
        0x0423 => Ascii(b'Y'),
        0x0425 => Ascii(b'X'),
        0x0430 => Ascii(b'a'),
        0x0435 => Ascii(b'e'),
        0x043e => Ascii(b'o'),
        0x0440 => Ascii(b'p'),
        0x0441 => Ascii(b'c'),
        0x0443 => Ascii(b'y'),
        0x0445 => Ascii(b'x'),
        0x0455 => Ascii(b's'),
        0x0456 => Ascii(b'i'),
        0x0458 => Ascii(b'j'),
        0x04bb => Ascii(b'h'),
        0x04cf => Ascii(b'l'),
        0x04af => Ascii(b'y'),
        0x0501 => Ascii(b'd'),
        0x051b => Ascii(b'q'),
        0x051d => Ascii(b'w'),

        // Armenian lookalikes.
        0x0585 => Ascii(b'o'),
        0x057d => Ascii(b'u'),

        // Letterlike symbols, including the ones that fill the holes of the mathematical
        // alphanumeric block below (script, fraktur and double-struck capitals).
        0x2102 | 0x212d => Ascii(b'C'),
        0x210a => Ascii(b'g'),
        0x210b..=0x210d => Ascii(b'H'),
        0x210e => Ascii(b'h'),
        0x2110 | 0x2111 => Ascii(b'I'),
        0x2112 => Ascii(b'L'),
        0x2113 => Ascii(b'l'),
        0x2115 => Ascii(b'N'),
        0x2119 => Ascii(b'P'),
        0x211a => Ascii(b'Q'),
        0x211b..=0x211d => Ascii(b'R'),
        0x2124 | 0x2128 => Ascii(b'Z'),
        0x212a => Ascii(b'K'),
        0x212c => Ascii(b'B'),
        0x212f => Ascii(b'e'),
        0x2130 => Ascii(b'E'),
        0x2131 => Ascii(b'F'),
        0x2133 => Ascii(b'M'),
        0x2134 => Ascii(b'o'),
        0x2139 => Ascii(b'i'),

        // Enclosed alphanumerics: circled digits and letters (NFKC), and the squared,
        // negative and regional-indicator letters that render as boxed capitals.
        0x2460..=0x2468 => Ascii(b'1' + (cp - 0x2460) as u8),
        0x24ea => Ascii(b'0'),
        0x24b6..=0x24cf => letter(b'A', cp - 0x24b6),
        0x24d0..=0x24e9 => letter(b'a', cp - 0x24d0),
        0x1f130..=0x1f149 => letter(b'A', cp - 0x1f130),
        0x1f150..=0x1f169 => letter(b'A', cp - 0x1f150),
        0x1f170..=0x1f189 => letter(b'A', cp - 0x1f170),
        0x1f1e6..=0x1f1ff => letter(b'A', cp - 0x1f1e6),

        // Mathematical alphanumeric symbols: 13 styles of A–Z a–z, then dotless i/j, then
        // 5 styles of 0–9 (NFKC). The reserved holes are unassigned, so mapping them too
        // costs nothing.
        0x1d400..=0x1d6a3 => {
            let n = (cp - 0x1d400) % 52;
            if n < 26 {
                letter(b'A', n)
            } else {
                letter(b'a', n - 26)
            }
        }
        0x1d6a4 => Ascii(b'i'),
        0x1d6a5 => Ascii(b'j'),
        0x1d7ce..=0x1d7ff => Ascii(b'0' + ((cp - 0x1d7ce) % 10) as u8),

        _ => Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, rich_bytes, run};
    use super::super::Transform;
    use super::{fold_cp, Fold};

    fn fold_char(c: char) -> Fold {
        fold_cp(c as u32)
    }
    use proptest::prelude::*;

    /// Naive driver: decodes one character at a time by trying `from_utf8` on windows of
    /// 1–4 bytes, so invalid bytes are found independently of `utf8_chunks`. The character
    /// table itself is shared; its content is pinned by the examples and the exhaustive
    /// length test.
    fn oracle(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        'outer: while i < input.len() {
            for len in 1..=4 {
                let Some(window) = input.get(i..i + len) else {
                    break;
                };
                if let Ok(s) = std::str::from_utf8(window) {
                    let c = s.chars().next().unwrap();
                    match fold_char(c) {
                        _ if c.is_ascii() => out.push(c as u8),
                        Fold::Keep => out.extend_from_slice(window),
                        Fold::Drop => {}
                        Fold::Ascii(b) => out.push(b),
                        Fold::Str(s) => out.extend_from_slice(s.as_bytes()),
                    }
                    i += len;
                    continue 'outer;
                }
            }
            // Overlong forms of ASCII: decoded bit by bit, whatever their length.
            let lead_bits = [(2, 0x1f), (3, 0x0f), (4, 0x07)];
            for (len, mask) in lead_bits {
                let Some(seq) = input.get(i..i + len) else {
                    break;
                };
                let marker = match len {
                    2 => 0xc0,
                    3 => 0xe0,
                    _ => 0xf0,
                };
                if seq[0] & !mask != marker || seq[1..].iter().any(|&c| c & 0xc0 != 0x80) {
                    continue;
                }
                let cp = seq[1..].iter().fold(u32::from(seq[0] & mask), |cp, &c| {
                    (cp << 6) | u32::from(c & 0x3f)
                });
                if cp < 0x80 {
                    out.push(cp as u8);
                    i += len;
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    fn norm(s: &str) -> String {
        String::from_utf8(run(Transform::NormalizeUnicode, s.as_bytes())).unwrap()
    }

    #[test]
    fn examples() {
        assert_eq!(norm("ＳＥＬＥＣＴ ｆｒｏｍ"), "SELECT from");
        assert_eq!(norm("＜script＞"), "<script>");
        // Cyrillic і, о, е.
        assert_eq!(norm("іgnоrе"), "ignore");
        assert_eq!(norm("рaѕѕwоrd"), "password");
        assert_eq!(norm("ΑΡΙ"), "API");
        assert_eq!(norm("ig\u{200b}nore\u{200d} all\u{feff}"), "ignore all");
        assert_eq!(norm("sys\u{ad}tem"), "system");
        // Overlong forms of ASCII decode to the character; other invalid bytes stay.
        let raw = |b: &[u8]| run(Transform::NormalizeUnicode, b);
        assert_eq!(raw(b"1\xc0\xa7 or \xc0\xa71"), b"1' or '1");
        assert_eq!(raw(b"\xe0\x80\xae\xe0\x81\x81/\xf0\x80\x80\xaf"), b".A//");
        assert_eq!(raw(b"\xc1\xbf\xc0\x80"), b"\x7f\x00");
        assert_eq!(
            raw(b"\xc0\xc0\xe0\x82\x80\xf0\x80\x82\x80\xc0"),
            b"\xc0\xc0\xe0\x82\x80\xf0\x80\x82\x80\xc0"
        );
        assert_eq!(
            norm("\u{202e}evil\u{202c}\u{2066}x\u{2069}\u{200e}"),
            "evilx"
        );
        // Tag characters spelling hidden text are removed entirely.
        assert_eq!(norm("hi\u{e0001}\u{e0069}\u{e0067}\u{e007f}!"), "hi!");
        assert_eq!(norm("𝐢𝐠𝐧𝐨𝐫𝐞 𝑎𝑙𝑙 𝟏𝟐"), "ignore all 12");
        assert_eq!(norm("𝕚𝕘𝕟𝕠𝕣𝕖 ℍ"), "ignore H");
        assert_eq!(norm("ⓘⓖⓝⓞⓡⓔ"), "ignore");
        assert_eq!(norm("ﬁle x²"), "file x2");
        assert_eq!(norm("a\u{3000}b\u{a0}c\u{2003}d"), "a b c d");
        assert_eq!(norm("i\u{0307}gnore\u{fe0f}"), "ignore");
        assert_eq!(norm("‥／etc"), "../etc");
        // Genuine non-Latin text without lookalikes is untouched.
        assert_eq!(norm("中文 😀 é"), "中文 😀 é");
        assert!(!Transform::NormalizeUnicode.apply("日本語".as_bytes(), &mut Vec::new()));
        assert!(!Transform::NormalizeUnicode.apply(b"ascii only", &mut Vec::new()));
        // Invalid UTF-8 passes through around folded characters.
        let mut v = b"\xff".to_vec();
        v.extend_from_slice("Ａ".as_bytes());
        v.extend_from_slice(b"\xc0");
        assert_eq!(run(Transform::NormalizeUnicode, &v), b"\xffA\xc0");
    }

    #[test]
    fn every_fold_is_ascii_and_no_longer() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            let len = match fold_char(c) {
                Fold::Keep => continue,
                Fold::Drop => 0,
                Fold::Ascii(b) => {
                    assert!(b.is_ascii(), "{c:?}");
                    1
                }
                Fold::Str(s) => {
                    assert!(s.is_ascii(), "{c:?}");
                    s.len()
                }
            };
            assert!(!c.is_ascii(), "ASCII {c:?} must be kept");
            assert!(len <= c.len_utf8(), "{c:?} grows");
        }
    }

    #[test]
    fn fast_paths_agree_with_the_table() {
        for c in (0x80..=0x10ffffu32).filter_map(char::from_u32) {
            assert_eq!(super::fold_fast(c), fold_char(c), "{c:?} ({:#x})", c as u32);
        }
    }

    #[test]
    fn math_alphanumerics_cover_all_styles() {
        for style in 0..13u32 {
            for n in 0..26u32 {
                let upper = char::from_u32(0x1d400 + style * 52 + n).unwrap();
                let lower = char::from_u32(0x1d400 + style * 52 + 26 + n).unwrap();
                assert_eq!(fold_char(upper), Fold::Ascii(b'A' + n as u8));
                assert_eq!(fold_char(lower), Fold::Ascii(b'a' + n as u8));
            }
        }
        assert_eq!(fold_char('𝟗'), Fold::Ascii(b'9'));
        assert_eq!(fold_char('𝟿'), Fold::Ascii(b'9'));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_oracle(input in prop_oneof![rich_bytes(), any_bytes()]) {
            check(Transform::NormalizeUnicode, &input, &oracle(&input))?;
        }

        #[test]
        fn matches_oracle_on_text(s in "\\PC{0,40}") {
            check(Transform::NormalizeUnicode, s.as_bytes(), &oracle(s.as_bytes()))?;
        }
    }
}
