//! Detectors: checks that a regular expression expresses badly, written as code.
//!
//! A detector reads the transformed value and returns the span of its first finding. Each
//! must be linear in the value's length and must not allocate.

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    /// Text a human cannot see but a model reads: Unicode tag characters (U+E0000–U+E007F),
    /// bidi overrides and isolates, or zero-width characters splitting words.
    InvisibleText,
    /// ASCII control characters other than tab, CR and LF (NUL, ESC, backspace, …) in text.
    ControlChars,
    /// A short token or cycle of short tokens repeated dozens of times in a row (`ö ö ö …`),
    /// sent to drown the guarded instructions or burn tokens; see
    /// [`prompt_scorer`](super::prompt_scorer).
    TokenFlood,
    /// SQL injection: the value, read as a bare operand or as the rest of a single- or
    /// double-quoted string, leaves that context and continues as SQL.
    Sqli,
    /// Markup that would run script if the value landed in HTML text or an attribute value:
    /// active elements, event handlers, script URLs (the `xss` module).
    XssContext,
}

impl Detector {
    /// Every detector.
    pub const ALL: [Detector; 5] = [
        Detector::InvisibleText,
        Detector::ControlChars,
        Detector::TokenFlood,
        Detector::Sqli,
        Detector::XssContext,
    ];

    /// The name used in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Detector::InvisibleText => "invisible_text",
            Detector::ControlChars => "control_chars",
            Detector::TokenFlood => "token_flood",
            Detector::Sqli => "sqli",
            Detector::XssContext => "xss_context",
        }
    }

    /// Looks a detector up by name.
    pub fn by_name(name: &str) -> Option<Detector> {
        Detector::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// Runs the detector; returns the span of the first finding.
    pub fn run(self, value: &[u8]) -> Option<(usize, usize)> {
        match self {
            Detector::InvisibleText => invisible_text(value),
            Detector::ControlChars => control_char(value).map(|i| (i, i + 1)),
            Detector::TokenFlood => super::prompt_scorer::token_flood(value),
            Detector::Sqli => super::sqli::sqli(value),
            Detector::XssContext => super::xss::detect(value),
        }
    }
}

/// The first control byte other than tab, CR and LF. Eight bytes are tested at once for
/// any byte below 0x20 (the classic "has less than" bit trick, exact for that test), and
/// only the rare words with one are looked at byte by byte: the plain byte loop cost about
/// 1 ns a byte.
fn control_char(v: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let is_control = |b: u8| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
    let words = v.chunks_exact(8);
    let tail = words.remainder();
    for (k, w) in words.enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let x = u64::from_le_bytes(bytes);
        // A byte below 0x20 sets its high bit here (x < 0x80 for it, so no false hit from
        // bytes >= 0x80 thanks to `!x`); a borrow may mark a higher byte too, which only
        // costs a look.
        if x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0 {
            if let Some(i) = w.iter().position(|&b| is_control(b)) {
                return Some(8 * k + i);
            }
        }
    }
    let base = v.len() - tail.len();
    tail.iter().position(|&b| is_control(b)).map(|i| base + i)
}

/// Zero-width characters become a finding only when this many split words, because a single
/// ZWJ is normal inside emoji sequences and a single ZWNJ in Persian or Hindi text.
const ZERO_WIDTH_MIN: usize = 3;

fn invisible_text(v: &[u8]) -> Option<(usize, usize)> {
    // All targets are 3- or 4-byte UTF-8 sequences starting with 0xE2, 0xEF or 0xF3, so
    // ASCII-only text is rejected by one memchr3 pass.
    let mut zero_width = 0usize;
    let mut first_zw = None;
    let mut at = 0;
    while let Some(off) = memchr::memchr3(0xE2, 0xEF, 0xF3, &v[at..]) {
        let i = at + off;
        let rest = &v[i..];
        match rest {
            // U+E0000..U+E007F: F3 A0 80 80 ..= F3 A0 81 BF
            [0xF3, 0xA0, 0x80 | 0x81, _, ..] => return Some((i, i + 4)),
            // U+202A..U+202E: E2 80 AA..AE; U+2066..U+2069: E2 81 A6..A9
            [0xE2, 0x80, 0xAA..=0xAE, ..] | [0xE2, 0x81, 0xA6..=0xA9, ..] => {
                return Some((i, i + 3))
            }
            // U+200B..U+200D: E2 80 8B..8D; U+2060: E2 81 A0; U+FEFF: EF BB BF
            [0xE2, 0x80, 0x8B..=0x8D, ..] | [0xE2, 0x81, 0xA0, ..] | [0xEF, 0xBB, 0xBF, ..] => {
                zero_width += 1;
                first_zw.get_or_insert(i);
                if zero_width >= ZERO_WIDTH_MIN {
                    return first_zw.map(|s| (s, i + 3));
                }
            }
            _ => {}
        }
        at = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible() {
        let d = Detector::InvisibleText;
        assert_eq!(d.run(b"plain text"), None);
        assert!(d.run("hi \u{E0041}\u{E0042}".as_bytes()).is_some());
        assert!(d.run("abc \u{202E}gnp.exe".as_bytes()).is_some());
        assert!(d.run("i\u{200B}g\u{200B}n\u{200B}ore".as_bytes()).is_some());
        // One joiner in an emoji is normal.
        assert_eq!(d.run("👩\u{200D}💻 writes code".as_bytes()), None);
        assert_eq!(d.run("truncated \u{E2}".as_bytes()), None);
        assert_eq!(d.run(&[0xF3, 0xA0]), None);
    }

    proptest::proptest! {
        #[test]
        fn control_matches_byte_loop(v in proptest::collection::vec(
            proptest::prop_oneof![proptest::prelude::any::<u8>(), proptest::strategy::Just(b'a')], 0..80)) {
            let naive = v.iter().position(|&b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'));
            proptest::prop_assert_eq!(control_char(&v), naive);
        }
    }

    #[test]
    fn control() {
        assert_eq!(Detector::ControlChars.run(b"a\tb\r\n"), None);
        assert_eq!(Detector::ControlChars.run(b"a\x00b"), Some((1, 2)));
        assert_eq!(
            Detector::by_name("control_chars"),
            Some(Detector::ControlChars)
        );
    }
}
