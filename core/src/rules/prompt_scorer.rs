//! Prompt-shape checks that phrase rules cannot express.
//!
//! [`token_flood`] finds a run of one short token, or of a short cycle of two or three short
//! tokens, repeated dozens of times (`ö ö ö …`, `) ] } ) ] } …`). Such floods carry no
//! request of their own: they are sent to push the guarded instructions out of the model's
//! attention, to trigger glitch-token behaviour or simply to burn tokens. Prose, code and
//! tables do not repeat a two-to-four byte token this often in a row.
//!
//! The check is one pass over the value with no allocation; it reads tokens split at
//! spaces, so it is meant to run after `compress_whitespace` (it is still correct, only less
//! sensitive, on values with other whitespace).

use crate::transform::block::{mask_of, B};

/// Longest token, in bytes, that counts towards a flood: one or two symbols, a single
/// non-ASCII letter or one emoji. Longer tokens are words, and repeated words are left to
/// the unbounded-output rule.
const MAX_TOKEN: usize = 4;

/// Longest cycle of tokens followed (`a b c a b c …` has period 3).
const MAX_PERIOD: usize = 3;

/// How many consecutive tokens must repeat the token `period` places back before the
/// value counts as a flood. Forty is far above what matrices of zeros or ASCII art rows
/// produce in benign prompts seen so far, and far below the hundreds a flood uses.
const FLOOD_MIN: usize = 40;

/// Returns the span of the first token flood in `v`, if any.
///
/// Linear in `v.len()`: each token is compared with at most `MAX_PERIOD` (3) earlier tokens
/// of at most `MAX_TOKEN` (4) bytes. Never panics: every slice is taken from bounds found in
/// `v` itself.
pub fn token_flood(v: &[u8]) -> Option<(usize, usize)> {
    crate::simd::wide(
        #[inline(always)]
        || token_flood_here(v),
    )
}

/// The body of [`token_flood`], inlined into its AVX2 and baseline builds.
#[inline(always)]
fn token_flood_here(v: &[u8]) -> Option<(usize, usize)> {
    if may_flood(v) {
        token_walk(v)
    } else {
        None
    }
}

/// Fewest bytes between the ends of two consecutive five-byte runs without a space that
/// leaves room for a flood between them. A flood is at least `FLOOD_MIN + 1` tokens of at
/// least one byte, each followed by a space: `2 * FLOOD_MIN + 1` bytes in which no five
/// bytes in a row lack a space (its tokens are at most `MAX_TOKEN` bytes). Such a span
/// fits between run ends `e1 < e2` only when `e2 - e1 + 3 >= 2 * FLOOD_MIN + 1`.
const MIN_GAP: usize = 2 * FLOOD_MIN + 1 - 3;

/// Whether `v` has room for a flood: a stretch of at least `2 * FLOOD_MIN + 1` bytes with a
/// space in every five. Prose has a word of five or more letters every few words, so this
/// is false for nearly every prompt and the token walk (a few nanoseconds per token) is
/// skipped. Bit masks of non-space bytes, one block at a time, find the runs of five.
#[inline(always)]
fn may_flood(v: &[u8]) -> bool {
    const _: () = assert!(MAX_TOKEN == 4, "the run mask below looks for runs of 5");
    if v.len() < 2 * FLOOD_MIN + 1 {
        return false;
    }
    // End of the last run of five non-space bytes, as if one ended just before the value
    // (offset by 3 so that `end - last` is the gap even for the first run).
    let mut last = 0usize;
    let mut prev = 0u64;
    let full = v.chunks_exact(B);
    let mut tail = [b' '; B];
    tail[..full.remainder().len()].copy_from_slice(full.remainder());
    let chunks = full.map(|c| <&[u8; B]>::try_from(c).expect("chunks_exact gives B bytes"));
    for (k, chunk) in chunks.chain(std::iter::once(&tail)).enumerate() {
        let m = mask_of(chunk, |b| b != b' ');
        // Bit i: bytes i-4..=i (reaching into the previous chunk) are all non-space.
        let runs = m
            & (m << 1 | prev >> 63)
            & (m << 2 | prev >> 62)
            & (m << 3 | prev >> 61)
            & (m << 4 | prev >> 60);
        prev = m;
        // Gaps inside one chunk are under B = 64 < MIN_GAP bytes, so only the first run end
        // of each chunk can close a long enough gap; the last one becomes `last`.
        if runs != 0 {
            let first = k * B + runs.trailing_zeros() as usize + 3;
            if first - last >= MIN_GAP {
                return true;
            }
            last = k * B + (B - 1 - runs.leading_zeros() as usize) + 3;
        }
    }
    v.len() + 3 - last >= MIN_GAP
}

/// The exact flood search: one pass over the tokens.
fn token_walk(v: &[u8]) -> Option<(usize, usize)> {
    // The last MAX_PERIOD tokens as (start, end), most recent last; (0, 0) is "none yet"
    // and never equals a real short token because real tokens are non-empty.
    let mut last = [(0usize, 0usize); MAX_PERIOD];
    // For each period p (index p - 1): how many tokens in a row matched the one p back,
    // and where that run started.
    let mut run = [0usize; MAX_PERIOD];
    let mut run_start = [0usize; MAX_PERIOD];
    let mut at = 0;
    while at < v.len() {
        let end = memchr::memchr(b' ', &v[at..]).map_or(v.len(), |o| at + o);
        if end > at {
            let tok = (at, end);
            let short = end - at <= MAX_TOKEN;
            for p in 0..MAX_PERIOD {
                // `last[MAX_PERIOD - 1 - p]` is the token p + 1 places back.
                let (s, e) = last[MAX_PERIOD - 1 - p];
                let same = short && e > s && v.get(s..e) == v.get(tok.0..tok.1);
                if same {
                    if run[p] == 0 {
                        run_start[p] = s;
                    }
                    run[p] += 1;
                    if run[p] >= FLOOD_MIN {
                        return Some((run_start[p], end));
                    }
                } else {
                    run[p] = 0;
                }
            }
            last.rotate_left(1);
            last[MAX_PERIOD - 1] = tok;
        }
        at = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flood(unit: &str, n: usize) -> String {
        let mut s = String::from("hello there ");
        for _ in 0..n {
            s.push_str(unit);
            s.push(' ');
        }
        s.push_str("now say yes");
        s
    }

    #[test]
    fn floods() {
        assert!(token_flood(flood("ö", 60).as_bytes()).is_some());
        assert!(token_flood(flood(") ] }", 30).as_bytes()).is_some());
        assert!(token_flood(flood("👽", 50).as_bytes()).is_some());
        assert!(token_flood(flood("a b", 25).as_bytes()).is_some());
    }

    #[test]
    fn not_floods() {
        assert_eq!(token_flood(flood("ö", 20).as_bytes()), None);
        // Repeated words are not symbol floods.
        assert_eq!(token_flood(flood("hello", 100).as_bytes()), None);
        assert_eq!(token_flood(b""), None);
        assert_eq!(token_flood(b"   "), None);
        assert_eq!(
            token_flood(b"the cat sat on the mat and the dog sat on the log"),
            None
        );
    }

    proptest! {
        #[test]
        #[test]
        fn never_panics(v in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some((s, e)) = token_flood(&v) {
                prop_assert!(s <= e && e <= v.len());
            }
        }

        #[test]
        fn prefilter_is_exact(
            v in proptest::collection::vec(
                prop_oneof![4 => Just(b' '), 3 => Just(b'a'), 2 => Just(b'b'), 1 => Just(b'c')],
                0..700,
            )
        ) {
            prop_assert_eq!(token_flood(&v), token_walk(&v));
        }

        #[test]
        fn prefilter_is_exact_on_floods(
            pre in "[a-z ]{0,150}",
            unit in "[a-c]{1,4}( [a-c]{1,4}){0,2}",
            n in 30usize..60,
            post in "[a-z ]{0,150}",
        ) {
            let mut s = pre;
            for _ in 0..n {
                s.push(' ');
                s.push_str(&unit);
            }
            s.push_str(&post);
            prop_assert_eq!(token_flood(s.as_bytes()), token_walk(s.as_bytes()));
        }

        #[test]
        fn short_alphabet(v in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'a'), Just(b'b')], 0..600)) {
            if let Some((s, e)) = token_flood(&v) {
                prop_assert!(s <= e && e <= v.len());
            }
        }
    }
}
