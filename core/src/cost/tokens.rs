//! Prompt tokens: a fast estimate with a measured error interval, exact counts when they
//! matter, and the parts of a chat request that are not text (message overhead, images).
//!
//! Exact counting with tiktoken-rs runs at 8–35 MB/s and its encoders take 60–280 ms and
//! 13–26 MiB to build (`benches/RESULTS.md`), while a guard has about 20 µs for a whole request. So the cost stage
//! estimates first ([`estimate`], over 1 GB/s) and counts exactly ([`count_exact`]) only when
//! the estimate's interval straddles a decision boundary (a prompt-token cap or a remaining
//! budget). Every decision is then exact where it matters and cheap everywhere else.
//!
//! # Bytes that are not UTF-8
//!
//! The functions taking `&[u8]` never fail and never panic. The estimators classify raw bytes
//! and never decode, so invalid UTF-8 gets a defined estimate: every byte falls in a byte class
//! as it is, and the interval keeps its shape (at most one token per byte, which is what a
//! byte-level BPE gives a stray byte). The interval was measured on valid UTF-8 only: a host
//! that decodes such bytes lossily before counting exactly replaces each with the three-byte
//! U+FFFD and may count more than `high`.

use std::fmt;

/// The OpenAI BPE encodings a policy can map a model to.
///
/// Only these two matter for current OpenAI models: `o200k_base` for the GPT-4o, GPT-4.1,
/// GPT-5 and o-series families, `cl100k_base` for GPT-4, GPT-3.5 and the ada-002/3 embedding
/// models. Older encodings are left out on purpose: no model a guard sees still uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-5, o1/o3/o4.
    O200kBase,
    /// `cl100k_base`: GPT-4, GPT-3.5-turbo, text-embedding-3.
    Cl100kBase,
}

impl Encoding {
    /// Every encoding, for tests, benches and policy validation that must cover them all.
    pub const ALL: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

    /// The name tiktoken uses, so policies and logs speak the same language as OpenAI's docs.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// Parses a policy's encoding name (tiktoken's spelling, exact); `None` lets the policy
    /// compiler report an unknown name instead of guessing.
    pub fn from_name(s: &str) -> Option<Encoding> {
        match s {
            "o200k_base" => Some(Encoding::O200kBase),
            "cl100k_base" => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Exact counting
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tiktoken")]
mod exact {
    use super::Encoding;
    use std::sync::OnceLock;
    use tiktoken_rs::CoreBPE;

    // `None` inside the lock records that building failed (it only can if tiktoken-rs's
    // embedded tables were corrupt), so callers get `None` instead of a panic, once.
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

    pub(super) fn encoder(enc: Encoding) -> Option<&'static CoreBPE> {
        match enc {
            Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()),
            Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()),
        }
        .as_ref()
    }
}

/// True when exact counting is compiled in (feature `tiktoken`), so a host or the policy
/// compiler can tell "estimate only" apart from "exact near a boundary" up front.
pub fn exact_available() -> bool {
    cfg!(feature = "tiktoken")
}

/// Builds the encoder for `enc` now, so the first request that needs an exact count does not
/// pay its 60–140 ms start-up; returns whether exact counting is available for it.
///
/// Encoders are built once per process and shared by all threads; calling this again is free.
pub fn prepare(enc: Encoding) -> bool {
    #[cfg(feature = "tiktoken")]
    {
        exact::encoder(enc).is_some()
    }
    #[cfg(not(feature = "tiktoken"))]
    {
        let _ = enc;
        false
    }
}

/// The exact number of tokens OpenAI bills for `text` as ordinary text, or `None` without the
/// `tiktoken` feature (or, defensively, if tiktoken-rs panics on the input; the panic is
/// caught when panics unwind).
///
/// Special-token strings such as `<|endoftext|>` are counted as the text they are and never
/// interpreted: a user who types them into a prompt must not be able to change the count (or
/// inject a control token). The first call per encoding builds its encoder (see [`prepare`]).
pub fn count_exact(enc: Encoding, text: &str) -> Option<u64> {
    #[cfg(feature = "tiktoken")]
    {
        let bpe = exact::encoder(enc)?;
        // tiktoken-rs unwraps the result of its backtracking pre-tokenizer regex, which has a
        // step limit; no corpus text reaches it, but a request must never take a worker down,
        // so a panic in there becomes "no exact count" and the caller keeps the estimate.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bpe.encode_ordinary(text).len() as u64
        }))
        .ok()
    }
    #[cfg(not(feature = "tiktoken"))]
    {
        let _ = (enc, text);
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Estimation
// ---------------------------------------------------------------------------------------------

/// A token count with the interval the true count lies in, so a caller can decide on the
/// estimate alone when the whole interval is on one side of a limit, and count exactly only
/// when it straddles one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate {
    /// The point estimate, what budgets are charged when nothing is counted exactly.
    pub tokens: u64,
    /// No fewer tokens than this (by the measured bound).
    pub low: u64,
    /// No more tokens than this (by the measured bound).
    pub high: u64,
}

impl TokenEstimate {
    /// An exact count as a degenerate interval, so exact and estimated counts flow through
    /// the same decision code.
    pub fn exact(tokens: u64) -> TokenEstimate {
        TokenEstimate {
            tokens,
            low: tokens,
            high: tokens,
        }
    }

    /// Whether the interval decides `count <= limit` without an exact count: `Some(true)`
    /// when even `high` fits, `Some(false)` when even `low` exceeds it, `None` when it
    /// straddles the limit and only an exact count can tell.
    pub fn fits(&self, limit: u64) -> Option<bool> {
        if self.high <= limit {
            Some(true)
        } else if self.low > limit {
            Some(false)
        } else {
            None
        }
    }
}

/// Number of byte-class features the estimator counts (see [`ByteClasses`]).
pub const FEATURES: usize = 25;

/// Names of the features in [`ByteClasses::features`] order, for the calibration report.
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "nonempty",
    "bytes",
    "word_starts",
    "letters",
    "th_pairs",
    "digit_runs",
    "ng_pairs",
    "punct_runs",
    "spaces",
    "double_spaces",
    "newlines",
    "other_ws_ctrl",
    "vowels",
    "dense_bytes",
    "lead_latin",
    "lead_greek_cyrillic",
    "lead_2byte_other",
    "lead_e0_indic_thai",
    "lead_e1",
    "lead_e2_punct_symbols",
    "lead_e3_kana",
    "lead_cjk",
    "lead_hangul",
    "lead_3byte_other",
    "lead_4byte",
];

/// Byte-class counts of a text: the features the estimator's per-encoding weights apply to.
///
/// Public so the calibration example (`benches/examples/calibrate_tokens.rs`) fits the weights
/// on exactly the features the estimator computes, and so other token families can be fitted
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteClasses {
    counts: [u64; FEATURES],
}

/// Features 2..2 + FLAGS are per-byte flags of (previous byte, byte); index 0 (`nonempty`)
/// and 1 (`bytes`) come from the length.
const FLAGS: usize = 11;
const F_FIRST_FLAG: usize = 2;
/// Bytes in 16-byte blocks (from offset 1) without ASCII whitespace: long words, repeated
/// strings, base64, minified code. Their tokens per byte vary the most, so this feature
/// also widens the interval (prose has almost none).
const F_DENSE: usize = 13;
/// Flag features the interval reads on its own (see [`slack`]).
const F_LETTERS: usize = 3;
const F_PUNCT_RUNS: usize = 7;
const F_NEWLINES: usize = 10;
const F_CTRL: usize = 11;
const F_VOWELS: usize = 12;
/// UTF-8 lead bytes by script (the lead byte alone tells the Unicode block roughly): tokens
/// per character differ by a factor of three between scripts and encodings.
const F_FIRST_LEAD: usize = 14;
/// The block size of the dense feature ([`F_DENSE`]): part of the fitted features, so it
/// stays 16 whatever block size the counting loop uses.
const DENSE_BLOCK: usize = 16;

/// Number of lead-byte classes (features from [`F_FIRST_LEAD`] on).
const LEADS: usize = FEATURES - F_FIRST_LEAD;

/// The lead-byte class (offset from [`F_FIRST_LEAD`]) of every byte; [`LEADS`] (a slot that
/// is thrown away) for ASCII and continuation bytes, so counting needs no branch.
const LEAD_CLASS: [u8; 256] = {
    let mut t = [LEADS as u8; 256];
    let mut b = 0xc0;
    while b < 256 {
        t[b] = match b {
            0xc0..=0xcd => 0, // Latin-1, Latin Extended, IPA, combining marks
            0xce..=0xd3 => 1, // Greek, Cyrillic
            0xd4..=0xdf => 2, // Armenian, Hebrew, Arabic, Syriac, ...
            0xe0 => 3,        // Indic scripts, Thai, Lao, ...
            0xe1 => 4,        // Georgian, Hangul Jamo, Khmer, Vietnamese Latin, ...
            0xe2 => 5,        // general punctuation, symbols, arrows, box drawing
            0xe3 => 6,        // CJK symbols, kana
            0xe4..=0xe9 => 7, // CJK unified ideographs
            0xea..=0xed => 8, // Hangul syllables (and a few other blocks)
            0xee..=0xef => 9, // private use, fullwidth forms, specials
            _ => 10,          // four-byte sequences: emoji, rare CJK
        };
        b += 1;
    }
    t
};

/// Per-byte flags for the pair (previous byte, byte). Written as plain comparisons with no
/// table lookup so that the block loop below compiles to SIMD byte compares.
#[inline(always)]
fn flags(p: u8, b: u8) -> [u8; FLAGS] {
    let alpha = |x: u8| (x | 0x20).wrapping_sub(b'a') < 26;
    let digit = |x: u8| x.wrapping_sub(b'0') < 10;
    // ASCII graphic characters that are neither letters nor digits.
    let punct = |x: u8| (x.wrapping_sub(0x21) < 0x5e) & !alpha(x) & !digit(x);
    let (ab, ap) = (alpha(b), alpha(p));
    let (db, dp) = (digit(b), digit(p));
    let (pb, pp) = (punct(b), punct(p));
    let sb = b == b' ';
    let sp = p == b' ';
    let nb = b == b'\n';
    [
        (ab & !ap) as u8,
        ab as u8,
        // Letter pairs that tell English (mostly one token per word) from other Latin-script
        // languages (two or three): "th" is frequent almost only in English, "ng" in
        // Tagalog, Indonesian and German.
        (((p | 0x20) == b't') & ((b | 0x20) == b'h')) as u8,
        (db & !dp) as u8,
        (((p | 0x20) == b'n') & ((b | 0x20) == b'g')) as u8,
        (pb & !pp) as u8,
        sb as u8,
        (sb & sp) as u8,
        nb as u8,
        ((b < 0x20) & !nb | (b == 0x7f)) as u8,
        // Vowels among ASCII letters: natural text in Latin script has a third or more,
        // strings of random letters a fifth, so the ratio tells text the fit is valid for.
        {
            let f = b | 0x20;
            (f == b'a') | (f == b'e') | (f == b'i') | (f == b'o') | (f == b'u')
        } as u8,
    ]
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

#[cfg(target_arch = "x86_64")]
mod wide;

impl ByteClasses {
    /// Counts the byte classes of `text` in one pass (no decoding; any bytes are fine).
    pub fn of(text: &[u8]) -> ByteClasses {
        // With AVX2 (most x86-64 servers) an explicit kernel classifies bytes by nibble
        // tables (`wide`), about a third of the instructions of the portable block loop,
        // which the compiler vectorizes for the baseline (SSE2) and which stays the oracle.
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = crate::simd::v3() {
            return wide::of(simd, text);
        }
        Self::of_blocks::<16>(text)
    }

    /// [`ByteClasses::of`] without the AVX2 kernel, with blocks of `L` bytes (16 for
    /// SSE2; the tests also run 32); the counts do not depend on `L`.
    #[inline(always)]
    fn of_blocks<const L: usize>(text: &[u8]) -> ByteClasses {
        let Some(mut c) = length_counts(text) else {
            return ByteClasses::default();
        };
        let n = text.len();
        // Lead bytes by class, in four banks used in turn so that a run of one script does
        // not serialize on one counter; the last slot of each bank collects everything else.
        let mut leads = [[0u32; LEADS + 1]; 4];
        // The first byte's predecessor is NUL, which is in none of the classes that start
        // a run.
        one_byte(&mut c, &mut leads, 0, text[0]);
        // Blocks of `L` bytes with `L` byte-wide counters per flag, flushed before they can
        // overflow (255 blocks): this shape is what lets the compiler use SIMD compares.
        // Lead bytes are rare in most prompts and are classified by a table, only in blocks
        // that have any.
        let mut acc = [[0u8; L]; FLAGS];
        let mut blocks = 0u32;
        let mut i = 1;
        while i + L <= n {
            let cur: &[u8; L] = text[i..i + L].try_into().expect("L bytes");
            let prev: &[u8; L] = text[i - 1..i - 1 + L].try_into().expect("L bytes");
            let mut high = 0u8;
            let mut ws = [0u8; L];
            for j in 0..L {
                let f = flags(prev[j], cur[j]);
                for k in 0..FLAGS {
                    acc[k][j] += f[k];
                }
                ws[j] = u8::from(is_ws(cur[j]));
                high |= cur[j];
            }
            // Read as 128-bit words, whitespace-free parts are one compare each.
            for part in ws.chunks_exact(DENSE_BLOCK) {
                let part: [u8; DENSE_BLOCK] = part.try_into().expect("DENSE_BLOCK bytes");
                if u128::from_ne_bytes(part) == 0 {
                    c[F_DENSE] += DENSE_BLOCK as u64;
                }
            }
            if high >= 0xc0 {
                for (j, &b) in cur.iter().enumerate() {
                    leads[j & 3][usize::from(LEAD_CLASS[usize::from(b)])] += 1;
                }
            }
            blocks += 1;
            if blocks == 255 {
                flush(&mut c, &mut acc);
                blocks = 0;
            }
            i += L;
        }
        flush(&mut c, &mut acc);
        finish(&mut c, &mut leads, text, i);
        ByteClasses { counts: c }
    }

    /// Adds another text's counts: the estimate is linear in them, so the classes of a
    /// request's prompt fields can be summed before its model (and encoding) is known.
    pub fn add(&mut self, other: &ByteClasses) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// The counts in [`FEATURE_NAMES`] order, as the calibration fits them.
    pub fn features(&self) -> [u64; FEATURES] {
        self.counts
    }
}

/// The counts that come from the length alone (`nonempty`, `bytes`); `None` for an empty
/// text, whose counts are all zero.
#[inline(always)]
fn length_counts(text: &[u8]) -> Option<[u64; FEATURES]> {
    let mut c = [0u64; FEATURES];
    if text.is_empty() {
        return None;
    }
    c[0] = 1;
    c[1] = text.len() as u64;
    Some(c)
}

/// Counts the bytes from `i` on (fewer than one block of the caller's loop) one by one,
/// and adds the lead-byte banks to the counts.
#[inline(always)]
fn finish(c: &mut [u64; FEATURES], leads: &mut [[u32; LEADS + 1]; 4], text: &[u8], mut i: usize) {
    let n = text.len();
    // A 16-byte block left over after 32-byte blocks is still a dense candidate.
    while i + DENSE_BLOCK <= n {
        let block = &text[i..i + DENSE_BLOCK];
        if !block.iter().any(|&b| is_ws(b)) {
            c[F_DENSE] += DENSE_BLOCK as u64;
        }
        for &b in block {
            one_byte(c, leads, text[i - 1], b);
            i += 1;
        }
    }
    while i < n {
        one_byte(c, leads, text[i - 1], text[i]);
        i += 1;
    }
    add_leads(c, leads);
}

/// Adds the lead-byte banks of a block loop to the counts (each bank's last slot, the
/// bytes that are not leads, is dropped).
#[inline(always)]
fn add_leads(c: &mut [u64; FEATURES], leads: &[[u32; LEADS + 1]; 4]) {
    for bank in leads {
        for (c, &l) in c[F_FIRST_LEAD..].iter_mut().zip(bank) {
            *c += u64::from(l);
        }
    }
}

/// The counts of one byte `b` after `p`, for the bytes outside whole blocks.
#[inline(always)]
fn one_byte(c: &mut [u64; FEATURES], leads: &mut [[u32; LEADS + 1]; 4], p: u8, b: u8) {
    for (c, f) in c[F_FIRST_FLAG..].iter_mut().zip(flags(p, b)) {
        *c += u64::from(f);
    }
    leads[0][usize::from(LEAD_CLASS[usize::from(b)])] += 1;
}

#[inline(always)]
fn flush<const L: usize>(c: &mut [u64; FEATURES], acc: &mut [[u8; L]; FLAGS]) {
    for (c, lanes) in c[F_FIRST_FLAG..].iter_mut().zip(acc.iter_mut()) {
        *c += lanes.iter().map(|&x| u64::from(x)).sum::<u64>();
        *lanes = [0; L];
    }
}

/// Fitted weights and measured interval of the estimator for one encoding.
#[derive(Debug, Clone, Copy)]
struct Calibration {
    /// Tokens per unit of each feature, in [`FEATURE_NAMES`] order.
    weights: [f64; FEATURES],
    /// The true count is at most `est + max(ceil(over * est), over_abs) + ceil(over_dense *
    /// dense_bytes)`.
    over: f64,
    over_abs: u64,
    over_dense: f64,
    /// The true count is at least `est - max(ceil(under * est), under_abs) - ceil(under_dense
    /// * dense_bytes)`.
    under: f64,
    under_abs: u64,
    under_dense: f64,
}

// The constants below were fitted on 2026-11-27 from the 6,248 distinct chat-message texts of
// shared/corpora: weighted least squares (relative error) on a hash-split half, exact counts
// from tiktoken-rs 0.12.1; the interval constants are the worst misses on all texts (the
// held-out half alone was 99.85 % covered by the rule derived from the fit half). Results per
// corpus file and length band are in CALIBRATION.md beside this file. To refit after changing
// the features or the corpora:
//
//     cargo run --release -p edgeward-benches --example calibrate_tokens -- --write
//     cargo fmt --all
//
// CALIBRATION-BEGIN (generated by benches/examples/calibrate_tokens.rs; see CALIBRATION.md)
const O200K: Calibration = Calibration {
    weights: [
        0.527, 0.1712, 0.4784, -0.1261, -0.2878, 1.4137, 0.1379, 0.709, 0.1794, -0.2854, -0.0138,
        1.0278, 0.0113, 0.0606, 0.3285, -0.1169, -0.0525, -0.2577, -1.1035, 0.4468, 0.0837, 0.0332,
        0.0775, 0.2269, 1.2238,
    ],
    over: 0.605,
    over_abs: 28,
    over_dense: 0.025,
    under: 0.186,
    under_abs: 8,
    under_dense: 0.105,
};
const CL100K: Calibration = Calibration {
    weights: [
        0.2842, 0.201, 0.6978, -0.1629, -0.5141, 1.4921, 0.1684, 0.7725, -0.0932, -0.0373, -0.3058,
        0.991, 0.057, -0.005, 0.5938, 0.1031, 0.4405, 0.5582, -0.1112, 0.5659, 0.3478, 0.4328,
        0.5636, 1.3914, 1.3296,
    ],
    over: 0.836,
    over_abs: 37,
    over_dense: 0.0,
    under: 0.182,
    under_abs: 10,
    under_dense: 0.085,
};
// CALIBRATION-END

fn calibration(enc: Encoding) -> &'static Calibration {
    match enc {
        Encoding::O200kBase => &O200K,
        Encoding::Cl100kBase => &CL100K,
    }
}

/// The raw linear estimate for `enc` from byte classes, before rounding and clamping; public
/// so the calibration example can measure the estimator exactly as it runs.
pub fn raw_estimate(enc: Encoding, classes: &ByteClasses) -> f64 {
    let w = &calibration(enc).weights;
    w.iter()
        .zip(classes.counts)
        .map(|(w, c)| w * c as f64)
        .sum()
}

/// A fast estimate of the tokens of `text` under `enc`, with an interval that held for every
/// prompt in the calibration corpora (see `CALIBRATION.md` beside this file).
///
/// One pass over the bytes (over 1 GB/s): the point estimate is a linear function of
/// byte-class counts with weights fitted per encoding. The interval is
/// `est ± (max(ceil(rel * est), abs) + ceil(k * dense_bytes))` with separate measured
/// constants for each side (`dense_bytes`: bytes in whitespace-free 16-byte blocks, where
/// tokens per byte vary most), then
/// clamped to what is always true for UTF-8: at least one token for a non-empty text and at
/// most one token per byte. For bytes that are not UTF-8 see the module documentation.
pub fn estimate(enc: Encoding, text: &[u8]) -> TokenEstimate {
    let classes = ByteClasses::of(text);
    interval(
        enc,
        raw_estimate(enc, &classes),
        &classes,
        text.len() as u64,
    )
}

fn interval(enc: Encoding, raw: f64, classes: &ByteClasses, n: u64) -> TokenEstimate {
    let cal = calibration(enc);
    if n == 0 {
        return TokenEstimate::exact(0);
    }
    // `as` saturates and maps NaN to 0, so no weight can make this panic.
    let est = (raw.round().max(1.0) as u64).clamp(1, n);
    let dense = classes.counts[F_DENSE] as f64;
    let margin = |rel: f64, abs: u64, per_dense: f64| {
        ((rel * est as f64).ceil() as u64)
            .max(abs)
            .saturating_add((per_dense * dense).ceil() as u64)
    };
    let (up_slack, down_slack) = slack(classes);
    let up = margin(cal.over, cal.over_abs, cal.over_dense).saturating_add(up_slack);
    let down = margin(cal.under, cal.under_abs, cal.under_dense).saturating_add(down_slack);
    TokenEstimate {
        tokens: est,
        low: est.saturating_sub(down).max(1),
        high: est.saturating_add(up).min(n),
    }
}

/// Room added to each side of the calibrated interval for text unlike the prompts it was
/// measured on, so that crafted text cannot hide its tokens from a cap or a budget.
///
/// The calibrated margins hold for natural prompts; made-up text breaks them by a factor of
/// two to five (random letters or mixed case, base64, punctuation, rare CJK or Latin
/// letters, one letter per line: `core/tests/tokens.rs::crafted_text_stays_in_the_interval`).
/// Each term is zero or small on natural text and grows with what makes text unnatural, up to
/// the one bound that always holds, one token per byte:
///
/// - high: every byte of a whitespace-free 16-byte block, every newline, four tokens per
///   non-ASCII character (its longest UTF-8 form), and when the vowels among ASCII letters
///   are outside what natural Latin-script text has (a quarter to three fifths), every
///   letter;
/// - low: every newline and control or other whitespace byte (runs of them merge into one
///   token) and a quarter of the punctuation runs.
fn slack(classes: &ByteClasses) -> (u64, u64) {
    let c = &classes.counts;
    let letters = c[F_LETTERS];
    let vowels = c[F_VOWELS];
    let odd_vowels = letters >= 24
        && (vowels.saturating_mul(4) < letters
            || vowels.saturating_mul(5) > letters.saturating_mul(3));
    // Two tokens per non-ASCII character, four per four-byte one (tag characters and rare
    // emoji are one token per byte).
    let leads = &c[F_FIRST_LEAD..];
    let non_ascii = leads[..LEADS - 1]
        .iter()
        .sum::<u64>()
        .saturating_mul(2)
        .saturating_add(leads[LEADS - 1].saturating_mul(4));
    let up = (c[F_DENSE] / 4 * 3)
        .saturating_add(c[F_NEWLINES])
        .saturating_add(non_ascii)
        .saturating_add(if odd_vowels { letters } else { 0 });
    let down = c[F_NEWLINES]
        .saturating_add(c[F_CTRL])
        .saturating_add(c[F_PUNCT_RUNS] / 4);
    (up, down)
}

/// The estimate for the sum of `texts` non-empty texts whose byte classes were added
/// together ([`ByteClasses::add`]). The estimator is linear, so the point estimate is that
/// of the sum; the interval adds up the per-text intervals' widest form (the relative part
/// on the total, the absolute floor and one token of rounding per text), so it holds
/// wherever each text's interval holds.
pub fn estimate_classes(enc: Encoding, classes: &ByteClasses, texts: u64) -> TokenEstimate {
    let cal = calibration(enc);
    let n = classes.counts[1];
    if n == 0 || texts == 0 {
        return TokenEstimate::exact(0);
    }
    let est = (raw_estimate(enc, classes).round().max(1.0) as u64).clamp(texts.min(n), n);
    let dense = classes.counts[F_DENSE] as f64;
    let margin = |rel: f64, abs: u64, per_dense: f64| {
        ((rel * est as f64).ceil() as u64)
            .saturating_add(abs.saturating_add(1).saturating_mul(texts))
            .saturating_add((per_dense * dense).ceil() as u64)
    };
    let (up_slack, down_slack) = slack(classes);
    let up = margin(cal.over, cal.over_abs, cal.over_dense).saturating_add(up_slack);
    let down = margin(cal.under, cal.under_abs, cal.under_dense).saturating_add(down_slack);
    TokenEstimate {
        tokens: est,
        low: est.saturating_sub(down).max(texts.min(n)),
        high: est.saturating_add(up).min(n),
    }
}

/// [`estimate_ratio`] for summed byte classes: their bytes over bytes-per-token.
pub fn estimate_ratio_classes(
    bytes_per_token: f64,
    rel_error: f64,
    classes: &ByteClasses,
) -> TokenEstimate {
    ratio(bytes_per_token, rel_error, classes.counts[1])
}

/// Estimate for model families without an exact tokenizer here (Anthropic, Llama, Mistral,
/// ...): the policy gives a bytes-per-token ratio calibrated for the family and the relative
/// error it measured, and the interval is `tokens ± ceil(tokens * rel_error)`.
///
/// Defined for any input: a ratio that is not a positive finite number counts one token per
/// byte (the conservative end), a negative or non-finite `rel_error` counts as 0. Bytes are
/// counted as they are, so invalid UTF-8 is estimated like any other bytes.
pub fn estimate_ratio(bytes_per_token: f64, rel_error: f64, text: &[u8]) -> TokenEstimate {
    ratio(bytes_per_token, rel_error, text.len() as u64)
}

/// The ratio estimate of `n` bytes.
fn ratio(bytes_per_token: f64, rel_error: f64, n: u64) -> TokenEstimate {
    if n == 0 {
        return TokenEstimate::exact(0);
    }
    let bpt = if bytes_per_token.is_finite() && bytes_per_token > 0.0 {
        bytes_per_token
    } else {
        1.0
    };
    let rel = if rel_error.is_finite() && rel_error > 0.0 {
        rel_error
    } else {
        0.0
    };
    let tokens = ((n as f64 / bpt).ceil() as u64).max(1);
    // Round the margin up, but not for float noise (100 * 0.1 is 10.000000000000002).
    let margin = tokens as f64 * rel;
    let margin = (margin - margin * 1e-9).ceil() as u64;
    TokenEstimate {
        tokens,
        low: tokens.saturating_sub(margin),
        high: tokens.saturating_add(margin),
    }
}

// ---------------------------------------------------------------------------------------------
// Chat overhead and images
// ---------------------------------------------------------------------------------------------

/// Tokens a chat request costs beyond its texts: OpenAI wraps every message in role and
/// separator tokens and primes the reply, and bills them as prompt tokens.
///
/// The defaults are the values OpenAI documents for its current chat models (3 per message,
/// 1 more when a message sets `name`, 3 for the reply priming). They are a struct so a policy
/// can set other values for models that differ without a code change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatOverhead {
    /// Tokens around each message (role and separators).
    pub per_message: u32,
    /// Extra tokens when a message sets `name`.
    pub per_name: u32,
    /// Tokens that prime the assistant's reply, once per request.
    pub reply: u32,
}

impl Default for ChatOverhead {
    fn default() -> ChatOverhead {
        ChatOverhead {
            per_message: 3,
            per_name: 1,
            reply: 3,
        }
    }
}

impl ChatOverhead {
    /// The overhead of a request with `messages` messages of which `names` set `name`; 0 for
    /// a request without messages (there is no reply to prime for an empty list).
    pub fn tokens(&self, messages: u64, names: u64) -> u64 {
        if messages == 0 {
            return 0;
        }
        messages
            .saturating_mul(u64::from(self.per_message))
            .saturating_add(names.saturating_mul(u64::from(self.per_name)))
            .saturating_add(u64::from(self.reply))
    }
}

/// What images cost in prompt tokens, by OpenAI's documented tile rule.
///
/// Defaults are those of GPT-4o, GPT-4.1 and similar models: 85 tokens base plus 170 per
/// 512-px tile for `detail: high`, 85 for `detail: low`. Some models price tiles differently
/// (gpt-4o-mini: base 2833, 5667 per tile, low 2833), so the constants are a parameter that a
/// policy sets per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageCost {
    /// Tokens per image in high detail, on top of the tiles.
    pub base: u32,
    /// Tokens per 512×512 tile in high detail.
    pub per_tile: u32,
    /// Tokens per image in low detail (a fixed 512×512 thumbnail).
    pub low: u32,
}

impl Default for ImageCost {
    fn default() -> ImageCost {
        ImageCost {
            base: 85,
            per_tile: 170,
            low: 85,
        }
    }
}

impl ImageCost {
    /// gpt-4o-mini's image constants: about 33× the default token counts, because OpenAI
    /// prices a gpt-4o-mini image at roughly what GPT-4o charged for it, through more tokens
    /// that each cost less. Reserving the default counts for it would under-reserve 33×.
    pub const GPT_4O_MINI: ImageCost = ImageCost {
        base: 2833,
        per_tile: 5667,
        low: 2833,
    };
}

/// The `detail` of an image content part, which decides how it is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageDetail {
    /// A fixed low-resolution pass: [`ImageCost::low`] whatever the size.
    Low,
    /// Tiled at up to 2048×2048 / 768 px short side.
    High,
    /// The model chooses; counted as [`ImageDetail::High`] because a guard must reserve for
    /// the most the request can cost.
    Auto,
}

impl ImageDetail {
    /// Parses the request's `detail` string; absent or unknown values are `Auto`, as OpenAI
    /// treats a missing `detail`.
    pub fn from_name(s: &str) -> ImageDetail {
        match s {
            "low" => ImageDetail::Low,
            "high" => ImageDetail::High,
            _ => ImageDetail::Auto,
        }
    }
}

/// The most 512-px tiles an image can take after the high-detail resize: the short side is
/// at most 768 px (2 tiles) and the long side at most 2048 px (4 tiles).
pub const MAX_TILES: u64 = 8;

/// Prompt tokens for one image by OpenAI's tile rule.
///
/// `High` and `Auto`: scale down to fit 2048×2048 (keeping the aspect ratio), then scale down
/// so the short side is at most 768 px, count 512-px tiles, and charge `base + tiles *
/// per_tile`. Images are never scaled up, as in OpenAI's worked examples. With an unknown size
/// (`None`, or a zero side, which no real image has) it charges the documented worst case,
/// [`MAX_TILES`] tiles (1445 tokens with the defaults), so a reservation is never too small.
pub fn image_tokens(cost: &ImageCost, detail: ImageDetail, size: Option<(u32, u32)>) -> u64 {
    let base = u64::from(cost.base);
    let per_tile = u64::from(cost.per_tile);
    if detail == ImageDetail::Low {
        return u64::from(cost.low);
    }
    let tiles = match size {
        Some((w, h)) if w > 0 && h > 0 => high_detail_tiles(u64::from(w), u64::from(h)),
        _ => MAX_TILES,
    };
    base.saturating_add(tiles.saturating_mul(per_tile))
}

fn high_detail_tiles(mut w: u64, mut h: u64) -> u64 {
    // Integer scaling (floor, at least 1 px): u32 sides times 2048 cannot overflow u64.
    let long = w.max(h);
    if long > 2048 {
        w = (w * 2048 / long).max(1);
        h = (h * 2048 / long).max(1);
    }
    let short = w.min(h);
    if short > 768 {
        w = (w * 768 / short).max(1);
        h = (h * 768 / short).max(1);
    }
    w.div_ceil(512) * h.div_ceil(512)
}

/// Width and height from the header of an encoded PNG, JPEG, GIF or WebP image.
///
/// Reads only the header (for JPEG, segment headers up to the first SOF marker), does bounded
/// work on any input and returns `None` for unknown formats, truncated or garbage data and
/// zero sizes; the caller then charges the worst case.
pub fn image_size(data: &[u8]) -> Option<(u32, u32)> {
    sniff_size(&data)
}

/// Width and height of the image in a `data:image/...;base64,` URL, decoding only the few
/// base64 blocks that hold the header fields (base64 maps every 4 characters to 3 bytes, so
/// any byte range can be decoded in place); `None` for other URLs and undecodable data.
pub fn data_url_image_size(url: &[u8]) -> Option<(u32, u32)> {
    let rest = strip_prefix_ignore_case(url, b"data:")?;
    let comma = memchr::memchr(b',', rest)?;
    let meta = &rest[..comma];
    if !ends_with_ignore_case(meta, b";base64") {
        return None;
    }
    let payload = &rest[comma + 1..];
    // Trailing padding or whitespace does not count towards the data length.
    let end = payload
        .iter()
        .rposition(|&b| !matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    sniff_size(&Base64Source {
        chars: &payload[..end],
    })
}

/// Width and height of an image given as bare base64 (Anthropic's `source.data`, which has
/// no `data:` prefix), decoding only the header blocks like [`data_url_image_size`].
pub fn base64_image_size(b64: &[u8]) -> Option<(u32, u32)> {
    let end = b64
        .iter()
        .rposition(|&b| !matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    sniff_size(&Base64Source { chars: &b64[..end] })
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Random access to image bytes, so the same header parsers read a byte slice or decode
/// just the needed blocks of a base64 payload.
trait Source {
    /// Fills `out` with the bytes at `offset..offset + out.len()`; false if out of range
    /// or undecodable.
    fn read(&self, offset: usize, out: &mut [u8]) -> bool;
}

impl Source for &[u8] {
    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        match offset
            .checked_add(out.len())
            .and_then(|end| self.get(offset..end))
        {
            Some(s) => {
                out.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

struct Base64Source<'a> {
    /// Base64 characters with trailing padding removed.
    chars: &'a [u8],
}

/// Standard alphabet, padding optional: we decode windows in the middle of the payload,
/// where there is none, and the last window, whose padding was trimmed.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

impl Source for Base64Source<'_> {
    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        use base64::Engine as _;
        // Header reads are small; anything bigger is a parser bug, refused rather than
        // allocated.
        const MAX: usize = 48;
        if out.is_empty() {
            return true;
        }
        if out.len() > MAX {
            return false;
        }
        let Some(end) = offset.checked_add(out.len()) else {
            return false;
        };
        let first_block = offset / 3;
        let last_block = end.div_ceil(3);
        let (Some(c0), Some(c1)) = (first_block.checked_mul(4), last_block.checked_mul(4)) else {
            return false;
        };
        if c0 >= self.chars.len() {
            return false;
        }
        let chars = &self.chars[c0..c1.min(self.chars.len())];
        let mut buf = [0u8; MAX + 6];
        let Ok(len) = B64.decode_slice(chars, &mut buf) else {
            return false;
        };
        let skip = offset - first_block * 3;
        match buf[..len].get(skip..skip + out.len()) {
            Some(s) => {
                out.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

fn read_array<const N: usize, S: Source + ?Sized>(src: &S, offset: usize) -> Option<[u8; N]> {
    let mut a = [0u8; N];
    src.read(offset, &mut a).then_some(a)
}

fn nonzero(w: u32, h: u32) -> Option<(u32, u32)> {
    (w > 0 && h > 0).then_some((w, h))
}

fn sniff_size<S: Source + ?Sized>(src: &S) -> Option<(u32, u32)> {
    let head: [u8; 12] = read_array(src, 0).or_else(|| {
        // Short inputs: GIF and JPEG need fewer than 12 bytes to identify.
        let mut a = [0u8; 12];
        src.read(0, &mut a[..4]).then_some(a)
    })?;
    if head[..8] == *b"\x89PNG\r\n\x1a\n" {
        png_size(src)
    } else if head[..6] == *b"GIF87a" || head[..6] == *b"GIF89a" {
        let d: [u8; 4] = read_array(src, 6)?;
        nonzero(
            u32::from(u16::from_le_bytes([d[0], d[1]])),
            u32::from(u16::from_le_bytes([d[2], d[3]])),
        )
    } else if head[..3] == [0xff, 0xd8, 0xff] {
        jpeg_size(src)
    } else if head[..4] == *b"RIFF" && head[8..12] == *b"WEBP" {
        webp_size(src)
    } else {
        None
    }
}

fn png_size<S: Source + ?Sized>(src: &S) -> Option<(u32, u32)> {
    // Signature, then the IHDR chunk: length (13), "IHDR", width, height (big-endian).
    let ihdr: [u8; 16] = read_array(src, 8)?;
    if ihdr[4..8] != *b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let h = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    // PNG caps sides at 2^31 - 1.
    if w > i32::MAX as u32 || h > i32::MAX as u32 {
        return None;
    }
    nonzero(w, h)
}

fn jpeg_size<S: Source + ?Sized>(src: &S) -> Option<(u32, u32)> {
    // Walk the marker segments after SOI until a start-of-frame marker, which holds the
    // size. Each step moves forward by at least two bytes and the number of steps is capped,
    // so garbage costs bounded work (real files have a handful of segments before SOF).
    const MAX_SEGMENTS: usize = 1024;
    let mut pos = 2usize;
    for _ in 0..MAX_SEGMENTS {
        let [ff, mut marker]: [u8; 2] = read_array(src, pos)?;
        if ff != 0xff {
            return None;
        }
        pos += 2;
        // Fill bytes: any number of 0xFF before the marker code (bounded by the cap).
        let mut fill = 0;
        while marker == 0xff {
            fill += 1;
            if fill > 64 {
                return None;
            }
            [marker] = read_array(src, pos)?;
            pos += 1;
        }
        match marker {
            // Standalone markers without a length.
            0x01 | 0xd0..=0xd7 => continue,
            // End of image or start of scan before any frame header: no size to find.
            0xd9 | 0xda => return None,
            // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
            0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => {
                let f: [u8; 7] = read_array(src, pos)?;
                let h = u16::from_be_bytes([f[3], f[4]]);
                let w = u16::from_be_bytes([f[5], f[6]]);
                return nonzero(u32::from(w), u32::from(h));
            }
            _ => {
                let [a, b]: [u8; 2] = read_array(src, pos)?;
                let len = usize::from(u16::from_be_bytes([a, b]));
                if len < 2 {
                    return None;
                }
                pos = pos.checked_add(len)?;
            }
        }
    }
    None
}

fn webp_size<S: Source + ?Sized>(src: &S) -> Option<(u32, u32)> {
    // RIFF header (12 bytes), then the first chunk's FourCC and size, then its payload.
    let chunk: [u8; 4] = read_array(src, 12)?;
    match &chunk {
        b"VP8 " => {
            // Lossy: 3-byte frame tag, start code 9D 01 2A, then 14-bit width and height.
            let f: [u8; 10] = read_array(src, 20)?;
            if f[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
            let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
            nonzero(u32::from(w), u32::from(h))
        }
        b"VP8L" => {
            // Lossless: signature 0x2F, then width-1 and height-1 in 14 bits each (LSB first).
            let f: [u8; 5] = read_array(src, 20)?;
            if f[0] != 0x2f {
                return None;
            }
            let bits = u32::from_le_bytes([f[1], f[2], f[3], f[4]]);
            nonzero((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1)
        }
        b"VP8X" => {
            // Extended: flags and reserved (4 bytes), then canvas width-1 and height-1 as
            // 24-bit little-endian.
            let f: [u8; 10] = read_array(src, 20)?;
            let w = u32::from_le_bytes([f[4], f[5], f[6], 0]) + 1;
            let h = u32::from_le_bytes([f[7], f[8], f[9], 0]) + 1;
            nonzero(w, h)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn summed_interval_holds_the_sum_of_intervals(
            texts in proptest::collection::vec("[a-zA-Z ,.\\n0-9\u{e9}\u{4e2d}]{1,120}", 1..6)
        ) {
            for enc in Encoding::ALL {
                let mut sum = ByteClasses::default();
                let (mut lo, mut hi) = (0u64, 0u64);
                for t in &texts {
                    sum.add(&ByteClasses::of(t.as_bytes()));
                    let e = estimate(enc, t.as_bytes());
                    lo += e.low;
                    hi += e.high;
                }
                let s = estimate_classes(enc, &sum, texts.len() as u64);
                proptest::prop_assert!(s.low <= lo && hi <= s.high, "{:?} vs [{}, {}]", s, lo, hi);
                proptest::prop_assert!(s.low <= s.tokens && s.tokens <= s.high);
            }
        }
    }

    #[test]
    fn encoding_names_round_trip() {
        for e in Encoding::ALL {
            assert_eq!(Encoding::from_name(e.name()), Some(e));
            assert_eq!(e.to_string(), e.name());
        }
        assert_eq!(Encoding::from_name("p50k_base"), None);
        assert_eq!(Encoding::from_name("O200K_BASE"), None);
    }

    #[test]
    fn exact_matches_feature() {
        assert_eq!(exact_available(), cfg!(feature = "tiktoken"));
        assert_eq!(
            count_exact(Encoding::O200kBase, "hello world").is_some(),
            exact_available()
        );
    }

    /// The byte-class counts of the block loop equal a plain per-byte loop (the oracle) at
    /// every length around the block and flush boundaries.
    #[test]
    fn byte_classes_match_naive() {
        fn naive(t: &[u8]) -> [u64; FEATURES] {
            let mut c = [0u64; FEATURES];
            if t.is_empty() {
                return c;
            }
            c[0] = 1;
            c[1] = t.len() as u64;
            let mut p = 0u8;
            for &b in t {
                for (c, f) in c[F_FIRST_FLAG..].iter_mut().zip(flags(p, b)) {
                    *c += u64::from(f);
                }
                if b >= 0xc0 {
                    c[F_FIRST_LEAD + usize::from(LEAD_CLASS[usize::from(b)])] += 1;
                }
                p = b;
            }
            let mut i = 1;
            while i + DENSE_BLOCK <= t.len() {
                if !t[i..i + DENSE_BLOCK].iter().any(|&b| is_ws(b)) {
                    c[F_DENSE] += DENSE_BLOCK as u64;
                }
                i += DENSE_BLOCK;
            }
            c
        }
        let sample = "Hello World, camelCase 12345 — ünïcödé 漢字 😀\n\n  x\t\r\x01\x7f(){}";
        let mut text = Vec::new();
        while text.len() < 255 * 16 * 2 + 100 {
            text.extend_from_slice(sample.as_bytes());
            text.push(0xff); // invalid UTF-8 too
        }
        // Both block sizes (AVX2 and baseline) and the dispatching entry point, around the
        // flush boundaries of each (255 blocks of 16 and of 32 bytes).
        for len in (0..80)
            .chain(250 * 16..260 * 16)
            .chain(255 * 32 - 40..255 * 32 + 40)
            .chain([text.len()])
        {
            let t = &text[..len];
            let want = naive(t);
            assert_eq!(ByteClasses::of(t).features(), want, "len {len}");
            assert_eq!(
                ByteClasses::of_blocks::<16>(t).features(),
                want,
                "16, len {len}"
            );
            assert_eq!(
                ByteClasses::of_blocks::<32>(t).features(),
                want,
                "32, len {len}"
            );
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = crate::simd::v3() {
                assert_eq!(wide::of(simd, t).features(), want, "avx2, len {len}");
            }
        }
        // Every (previous byte, byte) pair, at every offset in a vector (the pairs are 2
        // bytes apart from the next, so their predecessors cross lane and block edges),
        // through the dispatching entry point and the portable loop.
        let mut all = Vec::with_capacity(3 * 256 * 256);
        for p in 0..=255u8 {
            for b in 0..=255u8 {
                all.extend_from_slice(&[p, b, b' ']);
            }
        }
        for start in 0..3 {
            let t = &all[start..];
            let want = naive(t);
            assert_eq!(
                ByteClasses::of(t).features(),
                want,
                "all pairs from {start}"
            );
            assert_eq!(ByteClasses::of_blocks::<16>(t).features(), want);
        }
    }

    /// The AVX2 kernel's nibble tables hold exactly the classes the portable flags test.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn nibble_tables_match_the_byte_classes() {
        for b in 0..=255u8 {
            let [a, w, p] = wide::classes_of(b);
            let alpha = b.is_ascii_alphabetic();
            assert_eq!(a & 0x03 != 0, alpha, "letter {b:#x}");
            assert_eq!(a & 0x04 != 0, b.is_ascii_digit(), "digit {b:#x}");
            assert_eq!(a & 0x18 != 0, b"aeiouAEIOU".contains(&b), "vowel {b:#x}");
            assert_eq!(a & 0x20 != 0, b | 0x20 == b't', "t {b:#x}");
            assert_eq!(a & 0x40 != 0, b | 0x20 == b'h', "h {b:#x}");
            assert_eq!(a & 0x80 != 0, b | 0x20 == b'n', "n {b:#x}");
            assert_eq!(w & 0x01 != 0, b | 0x20 == b'g', "g {b:#x}");
            assert_eq!(w & 0x02 != 0, b == b' ', "space {b:#x}");
            assert_eq!(w & 0x04 != 0, b == b'\n', "newline {b:#x}");
            assert_eq!(
                w & 0x38 != 0,
                (b < 0x20 && b != b'\n') || b == 0x7f,
                "control {b:#x}"
            );
            assert_eq!(w & 0x42 != 0, is_ws(b), "whitespace {b:#x}");
            assert_eq!(p != 0, b.is_ascii_punctuation(), "punctuation {b:#x}");
        }
    }

    #[test]
    fn estimate_edges() {
        for e in Encoding::ALL {
            assert_eq!(estimate(e, b""), TokenEstimate::exact(0));
            let one = estimate(e, b"a");
            assert_eq!((one.low, one.tokens, one.high), (1, 1, 1));
            let t = estimate(e, &[0xff; 100]);
            assert!(t.low <= t.tokens && t.tokens <= t.high && t.high <= 100);
        }
    }

    #[test]
    fn estimate_ratio_defined_everywhere() {
        let t = estimate_ratio(4.0, 0.1, &[b'x'; 400]);
        assert_eq!(
            t,
            TokenEstimate {
                tokens: 100,
                low: 90,
                high: 110
            }
        );
        assert_eq!(estimate_ratio(4.0, 0.1, b""), TokenEstimate::exact(0));
        assert_eq!(estimate_ratio(4.0, 0.0, b"abc").tokens, 1);
        for bpt in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(estimate_ratio(bpt, 0.2, b"abcd").tokens, 4);
        }
        let wide = estimate_ratio(4.0, 5.0, &[0xc3; 40]);
        assert_eq!((wide.low, wide.tokens, wide.high), (0, 10, 60));
        let nan = estimate_ratio(4.0, f64::NAN, b"abcdefgh");
        assert_eq!(nan, TokenEstimate::exact(2));
    }

    #[test]
    fn fits_decides_only_outside_the_interval() {
        let t = TokenEstimate {
            tokens: 100,
            low: 90,
            high: 110,
        };
        assert_eq!(t.fits(110), Some(true));
        assert_eq!(t.fits(89), Some(false));
        assert_eq!(t.fits(90), None);
        assert_eq!(t.fits(100), None);
    }

    #[test]
    fn chat_overhead_defaults() {
        let o = ChatOverhead::default();
        assert_eq!(o.tokens(0, 0), 0);
        assert_eq!(o.tokens(1, 0), 6);
        assert_eq!(o.tokens(2, 1), 10);
    }

    /// OpenAI's worked examples for the tile rule.
    #[test]
    fn image_tokens_documented_examples() {
        let c = ImageCost::default();
        assert_eq!(image_tokens(&c, ImageDetail::High, Some((1024, 1024))), 765);
        assert_eq!(
            image_tokens(&c, ImageDetail::High, Some((2048, 4096))),
            1105
        );
        assert_eq!(image_tokens(&c, ImageDetail::Low, Some((4096, 8192))), 85);
        assert_eq!(image_tokens(&c, ImageDetail::Auto, Some((1024, 1024))), 765);
        // Small images are not scaled up: one tile.
        assert_eq!(image_tokens(&c, ImageDetail::High, Some((512, 512))), 255);
        assert_eq!(image_tokens(&c, ImageDetail::High, Some((1, 1))), 255);
        // Unknown or zero size: the worst case, 8 tiles.
        assert_eq!(image_tokens(&c, ImageDetail::High, None), 1445);
        assert_eq!(image_tokens(&c, ImageDetail::Auto, Some((0, 10))), 1445);
        let mini = ImageCost::GPT_4O_MINI;
        assert_eq!(
            image_tokens(&mini, ImageDetail::High, Some((1024, 1024))),
            2833 + 4 * 5667
        );
        assert_eq!(image_tokens(&mini, ImageDetail::Low, None), 2833);
    }

    #[test]
    fn unknown_size_is_the_worst_case() {
        let c = ImageCost::default();
        let worst = image_tokens(&c, ImageDetail::High, None);
        for w in (1..=9000u32).step_by(97) {
            for h in (1..=9000u32).step_by(89) {
                assert!(image_tokens(&c, ImageDetail::High, Some((w, h))) <= worst);
            }
        }
        assert!(image_tokens(&c, ImageDetail::High, Some((u32::MAX, u32::MAX))) <= worst);
        assert!(image_tokens(&c, ImageDetail::High, Some((u32::MAX, 1))) <= worst);
    }
}
