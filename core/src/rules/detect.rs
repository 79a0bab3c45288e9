//! Detectors: checks that a regular expression expresses badly, written as code.
//!
//! A detector reads the transformed value and returns the span of its first finding. Each
//! must be linear in the value's length and must not allocate.

use crate::transform::block::{mask_of, B};

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
    /// The statistical prompt-attack model (see [`prompt_model`](super::prompt_model)) at
    /// its paranoia-1 threshold, chosen for a near-zero benign false-positive rate.
    PromptModel,
    /// The same model at its lower paranoia-2 threshold.
    PromptModelBroad,
}

impl Detector {
    /// Every detector.
    pub const ALL: [Detector; 7] = [
        Detector::InvisibleText,
        Detector::ControlChars,
        Detector::TokenFlood,
        Detector::Sqli,
        Detector::XssContext,
        Detector::PromptModel,
        Detector::PromptModelBroad,
    ];

    /// The name used in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Detector::InvisibleText => "invisible_text",
            Detector::ControlChars => "control_chars",
            Detector::TokenFlood => "token_flood",
            Detector::Sqli => "sqli",
            Detector::XssContext => "xss_context",
            Detector::PromptModel => "prompt_model",
            Detector::PromptModelBroad => "prompt_model_broad",
        }
    }

    /// Looks a detector up by name.
    pub fn by_name(name: &str) -> Option<Detector> {
        Detector::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// Runs the detector; returns the span of the first finding.
    pub fn run(self, value: &[u8]) -> Option<(usize, usize)> {
        self.run_shared(value, &mut None)
    }

    /// [`run`](Self::run) for several detectors on one value: `model_score` holds the
    /// prompt model's score of `value` once computed (start with `None`), so that its
    /// paranoia-1 and paranoia-2 rules score a field once.
    pub fn run_shared(self, value: &[u8], model_score: &mut Option<f64>) -> Option<(usize, usize)> {
        use super::prompt_model::{self, Level};
        match self {
            Detector::InvisibleText => invisible_text(value),
            Detector::ControlChars => control_char(value).map(|i| (i, i + 1)),
            Detector::TokenFlood => super::prompt_scorer::token_flood(value),
            Detector::Sqli => super::sqli::sqli(value),
            Detector::XssContext => super::xss::detect(value),
            Detector::PromptModel => prompt_model::detect_scored(value, Level::Strict, model_score),
            Detector::PromptModelBroad => {
                prompt_model::detect_scored(value, Level::Broad, model_score)
            }
        }
    }
}

/// The first control byte other than tab, CR and LF. Whole blocks are tested through a
/// bit mask, which vectorizes; the plain byte loop cost about 1 ns a byte.
fn control_char(v: &[u8]) -> Option<usize> {
    let is_control = |b: u8| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
    let blocks = v.chunks_exact(B);
    let tail = blocks.remainder();
    for (k, block) in blocks.enumerate() {
        let block = <&[u8; B]>::try_from(block).expect("chunks_exact gives B bytes");
        let m = mask_of(block, is_control);
        if m != 0 {
            return Some(k * B + m.trailing_zeros() as usize);
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
            proptest::prop_oneof![proptest::prelude::any::<u8>(), proptest::strategy::Just(b'a')], 0..200)) {
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
