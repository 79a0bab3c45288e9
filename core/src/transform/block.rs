//! Block-wise kernels for the transforms that map and delete single bytes by a local rule.
//!
//! A *local rule* decides what becomes of byte `i` from a small window around it: the two
//! bytes before, the byte itself and the byte after (0 beyond either end of the input). It
//! answers with the byte to write and whether to keep it.
//!
//! The kernels evaluate the rule over 64 windows at a time with plain array loops, which
//! the compiler turns into SIMD compares and selects, and then write the kept bytes:
//!
//! * a block that keeps everything is stored whole;
//! * a block with a few deletions (prose: one space in six bytes) is written as the runs
//!   between them, each with overlapping 16-byte stores, so the cost is per run, not per
//!   byte;
//! * a block with many deletions is compacted byte by byte without branches: every byte is
//!   stored, and the write position advances only past kept ones.

/// Bytes per block.
pub(crate) const B: usize = 64;

/// Slack after the mapped bytes of a block, so a run can be copied in 16-byte pieces.
const RUN_SLACK: usize = 16;

/// A block with more deletions than this is compacted byte by byte.
const SPARSE_MAX: u32 = 16;

/// The window of byte `i`: `[input[i - 2], input[i - 1], input[i], input[i + 1]]`, with 0
/// beyond the ends.
pub(super) type Window = [u8; 4];

/// What a local rule makes of one byte: the byte to write and whether it is kept.
pub(super) type Verdict = (u8, bool);

/// The window of `input[i]`, bounds-checked (for the edges).
#[inline]
fn window_at(input: &[u8], i: usize) -> Window {
    let at = |j: Option<usize>| j.and_then(|j| input.get(j)).copied().unwrap_or(0);
    [
        at(i.checked_sub(2)),
        at(i.checked_sub(1)),
        input[i],
        at(i.checked_add(1)),
    ]
}

/// Whether `rule` changes byte `w[2]`: drops it or writes something else.
#[inline(always)]
pub(super) fn changes(rule: &impl Fn(Window) -> Verdict, w: Window) -> bool {
    let (b, keep) = rule(w);
    !keep | (b != w[2])
}

/// Bytes per block of the search in [`first_change`].
const SCAN: usize = 64;

/// The index of the first byte whose window satisfies `hit`.
///
/// `suspect(byte, next)` is a cheap test that must hold at that byte or at the one before
/// it (it may hold elsewhere too). Whole blocks are tested with it, with a non-short-circuiting OR that
/// vectorizes; only a suspect block is checked with `hit`, byte by byte. For a rule,
/// `hit` is [`changes`], and the result is the first byte the rule changes.
#[inline(always)]
pub(super) fn first_change(
    input: &[u8],
    suspect: impl Fn(u8, u8) -> bool,
    hit: impl Fn(Window) -> bool,
) -> Option<usize> {
    let n = input.len();
    let exact = |p: usize| hit(window_at(input, p));
    if n <= SCAN + 1 {
        return (0..n).find(|&p| exact(p));
    }
    // Blocks of SCAN bytes, the last one overlapping its predecessor, then the final byte
    // (the only one without a next byte).
    let last = n - 1 - SCAN;
    let mut i = 0;
    loop {
        // Two overlapping loads, rather than one window, give one vector load per lane
        // group instead of shuffles.
        let here: &[u8; SCAN] = input[i..i + SCAN].try_into().expect("SCAN bytes");
        let next: &[u8; SCAN] = input[i + 1..i + SCAN + 1].try_into().expect("SCAN bytes");
        let mut any = false;
        for j in 0..SCAN {
            any |= suspect(here[j], next[j]);
        }
        if any {
            // One byte further, for a suspect last byte whose successor is the hit.
            if let Some(p) = (i..=i + SCAN).find(|&p| exact(p)) {
                return Some(p);
            }
        }
        if i == last {
            break;
        }
        i = (i + SCAN).min(last);
    }
    Some(n - 1).filter(|&p| exact(p))
}

/// The high bit of each byte of `x`, gathered into the low 8 bits.
#[inline(always)]
fn high_bits(x: u64) -> u64 {
    // Byte k's bit 7 (bit 8k + 7) times 2^(7(7 - k)) lands on bit 56 + k; no other partial
    // products reach the top byte.
    ((x & 0x8080_8080_8080_8080).wrapping_mul(0x0002_0408_1020_4081)) >> 56
}

/// Copies the run `src[from..to]` to `dst[at..]` in 16-byte pieces, which may write up to
/// 15 bytes past the run. `at <= from < B`, and `src` and `dst` have `RUN_SLACK` bytes
/// after the first `B`.
#[inline(always)]
fn copy_run(
    src: &[u8; B + RUN_SLACK],
    from: usize,
    to: usize,
    dst: &mut [u8; B + RUN_SLACK],
    at: usize,
) {
    // The masks and clamps are no-ops that let the compiler drop the bounds checks.
    let (mut s, mut d) = (from & (B - 1), at & (B - 1));
    dst[d..d + 16].copy_from_slice(&src[s..s + 16]);
    while s + 16 < to {
        s = (s + 16).min(B);
        d = (d + 16).min(B);
        dst[d..d + 16].copy_from_slice(&src[s..s + 16]);
    }
}

/// One block of `B` bytes mapped by a rule, ready to be written out.
pub(super) struct Block {
    /// The bytes the rule wrote, then `RUN_SLACK` bytes of slack.
    bytes: [u8; B + RUN_SLACK],
    /// 0x80 where the rule deleted the byte, else 0.
    dropped: [u8; B],
}

impl Block {
    /// An empty block, to be filled by [`Block::map`].
    pub(super) fn new() -> Self {
        Block {
            bytes: [0; B + RUN_SLACK],
            dropped: [0; B],
        }
    }

    /// Applies `rule` to `input[i..i + B]`, which must have two bytes before it and one
    /// after it (`2 <= i` and `i + B < input.len()`); returns the deletions as a bit mask.
    #[inline(always)]
    pub(super) fn map(&mut self, input: &[u8], i: usize, rule: &impl Fn(Window) -> Verdict) -> u64 {
        // One load per window position, rather than one window, gives vector loads
        // instead of shuffles.
        let w0 = <&[u8; B]>::try_from(&input[i - 2..i - 2 + B]).expect("B bytes");
        let w1 = <&[u8; B]>::try_from(&input[i - 1..i - 1 + B]).expect("B bytes");
        let w2 = <&[u8; B]>::try_from(&input[i..i + B]).expect("B bytes");
        let w3 = <&[u8; B]>::try_from(&input[i + 1..i + 1 + B]).expect("B bytes");
        for j in 0..B {
            let (b, keep) = rule([w0[j], w1[j], w2[j], w3[j]]);
            self.bytes[j] = b;
            self.dropped[j] = if keep { 0 } else { 0x80 };
        }
        let mut mask = 0u64;
        for (c, word) in self.dropped.chunks_exact(8).enumerate() {
            mask |= high_bits(u64::from_le_bytes(word.try_into().expect("8 bytes"))) << (8 * c);
        }
        mask
    }

    /// Keeps byte `j` after all, with the byte the rule wrote for it; returns `mask` updated
    /// to match.
    #[inline]
    pub(super) fn keep(&mut self, j: usize, mask: u64) -> u64 {
        self.dropped[j % B] = 0;
        mask & !(1 << (j % B))
    }

    /// Writes the kept bytes to the start of `dst` (which has `B + RUN_SLACK` bytes; the
    /// slack may be overwritten) and returns how many there are. `mask` is what
    /// [`Block::map`] returned.
    #[inline(always)]
    pub(super) fn emit(&self, mut mask: u64, dst: &mut [u8]) -> usize {
        let dst = <&mut [u8; B + RUN_SLACK]>::try_from(&mut dst[..B + RUN_SLACK])
            .expect("a block and its slack");
        if mask == 0 {
            dst[..B].copy_from_slice(&self.bytes[..B]);
            B
        } else if mask.count_ones() <= SPARSE_MAX {
            // The runs between deletions.
            let (mut from, mut at) = (0, 0);
            while mask != 0 {
                let to = mask.trailing_zeros() as usize;
                copy_run(&self.bytes, from, to, dst, at);
                at += to - from;
                from = to + 1;
                mask &= mask - 1;
            }
            if from < B {
                copy_run(&self.bytes, from, B, dst, at);
            }
            at + B - from
        } else {
            let mut k = 0;
            for j in 0..B {
                // `k <= j < B`; the mask only spares the bounds check.
                dst[k & (B - 1)] = self.bytes[j];
                k += usize::from(self.dropped[j] == 0);
            }
            k
        }
    }
}

/// The bytes of `bytes` that satisfy `pred`, as a bit mask (bit `j` for byte `j`). The
/// flags go through an array, which vectorizes.
#[inline(always)]
pub(crate) fn mask_of(bytes: &[u8; B], pred: impl Fn(u8) -> bool) -> u64 {
    let mut flags = [0u8; B];
    for (f, &b) in flags.iter_mut().zip(bytes) {
        *f = if pred(b) { 0x80 } else { 0 };
    }
    let mut mask = 0u64;
    for (c, word) in flags.chunks_exact(8).enumerate() {
        mask |= high_bits(u64::from_le_bytes(word.try_into().expect("8 bytes"))) << (8 * c);
    }
    mask
}

/// Applies `rule` to `input[from..]`, writing the kept bytes into `out` after an unchanged
/// copy of `input[..from]`. `out` ends up holding exactly the result.
#[inline(always)]
pub(super) fn rewrite(
    input: &[u8],
    from: usize,
    out: &mut Vec<u8>,
    rule: impl Fn(Window) -> Verdict,
) {
    let n = input.len();
    prepare(input, from, out);
    let buf = &mut out[..];
    let mut w = from;
    let mut i = from;
    // The first two bytes have incomplete windows.
    while i < n.min(2) {
        let (b, keep) = rule(window_at(input, i));
        buf[w] = b;
        w += usize::from(keep);
        i += 1;
    }
    let mut block = Block::new();
    while i + B < n {
        let mask = block.map(input, i, &rule);
        // `w <= i`, and `out` has RUN_SLACK bytes beyond the input's length.
        w += block.emit(mask, &mut buf[w..]);
        i += B;
    }
    while i < n {
        let (b, keep) = rule(window_at(input, i));
        buf[w] = b;
        w += usize::from(keep);
        i += 1;
    }
    out.truncate(w);
}

/// Sizes `out` for a rewrite of `input` that starts at `from`: `input[..from]` copied,
/// room for the rest and for [`Block::emit`]'s overshoot (`RUN_SLACK` bytes).
#[inline]
pub(super) fn prepare(input: &[u8], from: usize, out: &mut Vec<u8>) {
    // Every position is written before it is read back, so whatever `out` held is fine;
    // `resize` only initializes what the vector never held, instead of clearing it all.
    out.resize(input.len() + RUN_SLACK, 0);
    out[..from].copy_from_slice(&input[..from]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule that uses all of the window (drops a byte up to `b` equal to its predecessor
    /// unless the one before is `q` or the next is `!`, and uppercases `a` after `x`),
    /// checked against a direct evaluation at many lengths, densities and starting points.
    #[test]
    fn kernels_match_direct_evaluation() {
        let rule = |w: Window| {
            let b = if w[2] == b'a' && w[1] == b'x' {
                b'A'
            } else {
                w[2]
            };
            let dup = w[2] == w[1] && w[2] <= b'b' && w[0] != b'q';
            (b, !dup || w[3] == b'!')
        };
        // Every change is at a byte up to `b`.
        let suspect = |b: u8, _| b <= b'b';
        let mut seed = 7u32;
        for alphabet in [&b"aaxq!b"[..], b"cdefghijklmnopqrstuvwxyzaxb!"] {
            for len in (0..300).step_by(7).chain(126..134) {
                for _ in 0..10 {
                    let input: Vec<u8> = (0..len)
                        .map(|_| {
                            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                            alphabet[(seed >> 16) as usize % alphabet.len()]
                        })
                        .collect();
                    let direct: Vec<Verdict> =
                        (0..len).map(|i| rule(window_at(&input, i))).collect();
                    let first = direct
                        .iter()
                        .zip(&input)
                        .position(|(&(b, k), &x)| !k || b != x);
                    assert_eq!(
                        first_change(&input, suspect, |w| changes(&rule, w)),
                        first,
                        "{input:?}"
                    );
                    for from in (0..=len).step_by(5) {
                        let mut want = input[..from].to_vec();
                        want.extend(direct[from..].iter().filter(|v| v.1).map(|v| v.0));
                        let mut out = b"junk".repeat(len / 3);
                        rewrite(&input, from, &mut out, rule);
                        assert_eq!(out, want, "{input:?} from {from}");
                    }
                }
            }
        }
    }
}
