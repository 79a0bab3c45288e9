//! The AVX2 kernel of [`ByteClasses::of`].
//!
//! The portable block loop tests each class with its own chain of byte compares, for the
//! byte and again for its predecessor: about 180 instructions per 32 bytes (22k for the
//! prompts of a 4 KiB chat request), the largest single cost of the token estimate. Here a byte's classes come from two
//! 16-entry tables indexed by its low and its high nibble (`pshufb`): a class is a set of
//! "rectangles" low nibble ∈ L × high nibble ∈ H, one bit each, so the AND of the two
//! lookups holds every class at once. Three such tables hold the thirteen classes the
//! features need. A predecessor's classes are the previous vector's shifted in by one byte
//! (`alignr`), not a second classification, and counts accumulate in byte lanes flushed
//! every 255 blocks, as in the portable loop. About 100 instructions per 32 bytes (16k
//! for the same request; the eleven accumulators do not all fit in registers).
//!
//! Written with pulp's safe intrinsics (core has no `unsafe`); the portable loop stays the
//! fallback and the oracle it is tested against.

use core::arch::x86_64::__m256i;

use pulp::x86::V3;

use super::{one_byte, ByteClasses, FEATURES, FLAGS, F_DENSE, F_FIRST_FLAG, LEADS, LEAD_CLASS};

/// A class bit and its rectangles' nibble sets (bit `x` of `lo` for low nibble `x`).
type Rect = (u8, u16, u16);

/// Nibble sets.
const fn nib(xs: &[u8]) -> u16 {
    let mut m = 0u16;
    let mut i = 0;
    while i < xs.len() {
        m |= 1 << xs[i];
        i += 1;
    }
    m
}
const fn range(a: u8, b: u8) -> u16 {
    let mut m = 0u16;
    let mut x = a;
    while x <= b {
        m |= 1 << x;
        x += 1;
    }
    m
}
const LETTER_LO: u16 = range(1, 15);
const CASES: u16 = nib(&[4, 6]);
const CASES_HI: u16 = nib(&[5, 7]);

// Table A: letters (two rectangles), digits, vowels (two), t, h, n.
const ALPHA: u8 = 0x01 | 0x02;
const DIGIT: u8 = 0x04;
const VOWEL: u8 = 0x08 | 0x10;
const T: u8 = 0x20;
const H: u8 = 0x40;
const N: u8 = 0x80;
const TABLE_A: [Rect; 8] = [
    (0x01, LETTER_LO, CASES),           // A-O, a-o
    (0x02, range(0, 10), CASES_HI),     // P-Z, p-z
    (DIGIT, range(0, 9), nib(&[3])),    // 0-9
    (0x08, nib(&[1, 5, 9, 15]), CASES), // a e i o
    (0x10, nib(&[5]), CASES_HI),        // u
    (T, nib(&[4]), CASES_HI),           // t
    (H, nib(&[8]), CASES),              // h
    (N, nib(&[14]), CASES),             // n
];

// Table B: g, space, newline, other controls (three rectangles), other whitespace.
const G: u8 = 0x01;
const SPACE: u8 = 0x02;
const NEWLINE: u8 = 0x04;
const CTRL: u8 = 0x08 | 0x10 | 0x20;
const WS: u8 = SPACE | 0x40;
const TABLE_B: [Rect; 7] = [
    (G, nib(&[7]), CASES),
    (SPACE, nib(&[0]), nib(&[2])),
    (NEWLINE, nib(&[10]), nib(&[0])),
    (0x08, range(0, 15) & !nib(&[10]), nib(&[0])), // 0x00-0x0F but \n
    (0x10, range(0, 15), nib(&[1])),               // 0x10-0x1F
    (0x20, nib(&[15]), nib(&[7])),                 // 0x7F
    (0x40, nib(&[9, 10, 13]), nib(&[0])),          // \t \n \r
];

// Table C: ASCII punctuation (graphic, neither letter nor digit), five rectangles.
const PUNCT: u8 = 0x1f;
const TABLE_C: [Rect; 5] = [
    (0x01, range(1, 15), nib(&[2])),  // ! to /
    (0x02, range(10, 15), nib(&[3])), // : to ?
    (0x04, nib(&[0]), CASES),         // @ `
    (0x08, range(11, 14), CASES_HI),  // [ \ ] ^  { | } ~
    (0x10, nib(&[15]), nib(&[5])),    // _
];

/// The low- and high-nibble lookup tables of a set of rectangles.
const fn tables(rects: &[Rect]) -> ([u8; 16], [u8; 16]) {
    let (mut lo, mut hi) = ([0u8; 16], [0u8; 16]);
    let mut r = 0;
    while r < rects.len() {
        let (bit, l, h) = rects[r];
        let mut x = 0;
        while x < 16 {
            if l & (1 << x) != 0 {
                lo[x] |= bit;
            }
            if h & (1 << x) != 0 {
                hi[x] |= bit;
            }
            x += 1;
        }
        r += 1;
    }
    (lo, hi)
}

/// The classes of one byte, for the tests: what the vector lookups compute per lane.
#[cfg(test)]
pub(super) fn classes_of(b: u8) -> [u8; 3] {
    let one = |rects: &[Rect]| {
        let (lo, hi) = tables(rects);
        lo[usize::from(b & 15)] & hi[usize::from(b >> 4)]
    };
    [one(&TABLE_A), one(&TABLE_B), one(&TABLE_C)]
}

/// Which accumulated masks count bytes *without* the flag (cheaper to form than with):
/// the count is then the number of bytes minus the accumulated one.
const ABSENT: [bool; FLAGS] = [
    false, // word starts: letter after non-letter
    true,  // letters
    true,  // "th"
    false, // digit runs
    true,  // "ng"
    false, // punctuation runs
    true,  // spaces
    true,  // double spaces
    true,  // newlines
    true,  // other whitespace and controls
    true,  // vowels
];

/// [`ByteClasses::of`] with AVX2, on a CPU that has it (`simd` proves it).
pub(super) fn of(simd: V3, text: &[u8]) -> ByteClasses {
    simd.vectorize(Kernel { simd, text })
}

/// The kernel as pulp's callable. Not a closure: a closure goes through a `call_once` shim
/// that is not always inlined, and when it is not (this body is big enough) the kernel is
/// compiled without AVX2 and every intrinsic becomes a call (measured: 8x the
/// instructions).
struct Kernel<'t> {
    simd: V3,
    text: &'t [u8],
}

impl pulp::NullaryFnOnce for Kernel<'_> {
    type Output = ByteClasses;

    #[inline(always)]
    fn call(self) -> ByteClasses {
        of_here(self.simd, self.text)
    }
}

/// The lookup tables of the three class sets, in both 128-bit lanes (`pshufb` looks up
/// within a lane).
struct Tables {
    lo: [__m256i; 3],
    hi: [__m256i; 3],
}

impl Tables {
    #[inline(always)]
    fn new() -> Tables {
        let both_lanes = |t: [u8; 16]| -> __m256i {
            let mut w = [0u8; 32];
            w[..16].copy_from_slice(&t);
            w[16..].copy_from_slice(&t);
            pulp::cast(w)
        };
        const A: ([u8; 16], [u8; 16]) = tables(&TABLE_A);
        const B: ([u8; 16], [u8; 16]) = tables(&TABLE_B);
        const C: ([u8; 16], [u8; 16]) = tables(&TABLE_C);
        let (a, b, c) = (A, B, C);
        Tables {
            lo: [both_lanes(a.0), both_lanes(b.0), both_lanes(c.0)],
            hi: [both_lanes(a.1), both_lanes(b.1), both_lanes(c.1)],
        }
    }

    /// The class bytes of every lane of `v` in tables A, B and C.
    #[inline(always)]
    fn classify(&self, simd: V3, v: __m256i) -> [__m256i; 3] {
        let avx2 = simd.avx2;
        let low4 = splat(simd, 0x0f);
        let lo = avx2._mm256_and_si256(v, low4);
        let hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(v), low4);
        [
            self.look(simd, 0, lo, hi),
            self.look(simd, 1, lo, hi),
            self.look(simd, 2, lo, hi),
        ]
    }

    /// Table `k`'s classes of the lanes with nibbles `lo` and `hi`. (Helpers are functions
    /// marked `inline(always)`, not closures: a closure is compiled out of line, without
    /// AVX2, and every intrinsic in it becomes a call.)
    #[inline(always)]
    fn look(&self, simd: V3, k: usize, lo: __m256i, hi: __m256i) -> __m256i {
        let avx2 = simd.avx2;
        avx2._mm256_and_si256(
            avx2._mm256_shuffle_epi8(self.lo[k], lo),
            avx2._mm256_shuffle_epi8(self.hi[k], hi),
        )
    }
}

#[inline(always)]
fn splat(simd: V3, b: u8) -> __m256i {
    simd.avx._mm256_set1_epi8(b as i8)
}

/// 0xFF in the lanes whose class byte has none of `bits`, 0 in the others.
#[inline(always)]
fn none(simd: V3, x: __m256i, bits: u8) -> __m256i {
    let avx2 = simd.avx2;
    avx2._mm256_cmpeq_epi8(avx2._mm256_and_si256(x, splat(simd, bits)), splat(simd, 0))
}

/// Lane j of the result is lane j - 1 of `cur`; lane 0 is the last lane of `prev`.
#[inline(always)]
fn shift_in(simd: V3, prev: __m256i, cur: __m256i) -> __m256i {
    let avx2 = simd.avx2;
    avx2._mm256_alignr_epi8::<15>(cur, avx2._mm256_permute2x128_si256::<0x21>(prev, cur))
}

/// The six predecessor masks the pair flags read: no letter, digit, punctuation, t, n,
/// space.
#[inline(always)]
fn pair_masks(simd: V3, [a, b, p]: [__m256i; 3]) -> [__m256i; 6] {
    [
        none(simd, a, ALPHA),
        none(simd, a, DIGIT),
        none(simd, p, PUNCT),
        none(simd, a, T),
        none(simd, a, N),
        none(simd, b, SPACE),
    ]
}

/// What the block loop carries from block to block.
struct State {
    /// The previous block's [`pair_masks`].
    prev: [__m256i; 6],
    /// Per flag, per lane: masks counted since the last flush (at most 255).
    acc: [__m256i; FLAGS],
    /// Lead bytes by class, as in the portable loop.
    leads: [[u32; LEADS + 1]; 4],
}

/// Counts one block of 32 bytes into `st`; returns its non-whitespace mask (bit j for
/// byte j), from which the caller counts dense halves.
#[inline(always)]
fn block(simd: V3, tables: &Tables, st: &mut State, bytes: &[u8; 32]) -> u32 {
    let avx2 = simd.avx2;
    let cur: __m256i = pulp::cast(*bytes);
    let classes = tables.classify(simd, cur);
    let [ca, cb, _] = classes;
    let now = pair_masks(simd, classes);
    let [alpha, digit, punct, _, _, space] = now;
    // Written out: `array::map` is not inlined into the AVX2 context.
    let prev = &st.prev;
    let alpha_p = shift_in(simd, prev[0], now[0]);
    let digit_p = shift_in(simd, prev[1], now[1]);
    let punct_p = shift_in(simd, prev[2], now[2]);
    let t_p = shift_in(simd, prev[3], now[3]);
    let n_p = shift_in(simd, prev[4], now[4]);
    let space_p = shift_in(simd, prev[5], now[5]);
    let masks = [
        avx2._mm256_andnot_si256(alpha, alpha_p),
        alpha,
        avx2._mm256_or_si256(t_p, none(simd, ca, H)),
        avx2._mm256_andnot_si256(digit, digit_p),
        avx2._mm256_or_si256(n_p, none(simd, cb, G)),
        avx2._mm256_andnot_si256(punct, punct_p),
        space,
        avx2._mm256_or_si256(space, space_p),
        none(simd, cb, NEWLINE),
        none(simd, cb, CTRL),
        none(simd, ca, VOWEL),
    ];
    for (acc, m) in st.acc.iter_mut().zip(masks) {
        // A mask lane is 0 or -1: subtracting counts it.
        *acc = avx2._mm256_sub_epi8(*acc, m);
    }
    st.prev = now;
    // Lead bytes (0b11xx_xxxx): bit 7 and, shifted up, bit 6.
    let mut lead = avx2
        ._mm256_movemask_epi8(avx2._mm256_and_si256(cur, avx2._mm256_slli_epi16::<1>(cur)))
        as u32;
    while lead != 0 {
        let j = lead.trailing_zeros() as usize;
        st.leads[j & 3][usize::from(LEAD_CLASS[usize::from(bytes[j])])] += 1;
        lead &= lead - 1;
    }
    avx2._mm256_movemask_epi8(none(simd, cb, WS)) as u32
}

/// Byte that pads the last block: a continuation byte, in no class and not a lead, so a
/// padding lane counts as "absent" in every mask, which [`flush`] expects of every lane.
const PAD: u8 = 0x80;

#[inline(always)]
fn of_here(simd: V3, text: &[u8]) -> ByteClasses {
    let Some(mut c) = super::length_counts(text) else {
        return ByteClasses::default();
    };
    let n = text.len();
    let zero = splat(simd, 0);
    let tables = Tables::new();
    // The predecessor classes of the first block: text[0] in the last lane.
    let mut first = [0u8; 32];
    first[31] = text[0];
    let mut st = State {
        prev: pair_masks(simd, tables.classify(simd, pulp::cast(first))),
        acc: [zero; FLAGS],
        leads: [[0u32; LEADS + 1]; 4],
    };
    // The first byte's predecessor is NUL, which is in none of the classes that start a run.
    one_byte(&mut c, &mut st.leads, 0, text[0]);
    // Blocks from offset 1, so that their halves are the dense feature's 16-byte blocks.
    let mut blocks = 0u32;
    let mut i = 1;
    while let Some(bytes) = text.get(i..).and_then(<[u8]>::first_chunk::<32>) {
        let not_ws = block(simd, &tables, &mut st, bytes);
        c[F_DENSE] +=
            16 * (u64::from(not_ws & 0xffff == 0xffff) + u64::from(not_ws >> 16 == 0xffff));
        blocks += 1;
        if blocks == 255 {
            flush(simd, &mut c, &mut st.acc, blocks);
            blocks = 0;
        }
        i += 32;
    }
    // The rest (under 32 bytes) as one padded block; only a whole first half of real bytes
    // can be dense.
    if i < n {
        let rest = &text[i..];
        let mut bytes = [PAD; 32];
        bytes[..rest.len()].copy_from_slice(rest);
        let not_ws = block(simd, &tables, &mut st, &bytes);
        c[F_DENSE] += 16 * u64::from(rest.len() >= 16 && not_ws & 0xffff == 0xffff);
        blocks += 1;
    }
    flush(simd, &mut c, &mut st.acc, blocks);
    super::add_leads(&mut c, &st.leads);
    ByteClasses { counts: c }
}

/// Adds the byte lanes of `acc` to the flag counts (absent-counting masks turned into
/// present counts over the `blocks` blocks: padding lanes are absent from every mask, so
/// they cancel) and clears them.
#[inline(always)]
fn flush(simd: V3, c: &mut [u64; FEATURES], acc: &mut [__m256i; FLAGS], blocks: u32) {
    let bytes = 32 * u64::from(blocks);
    let zero = simd.avx._mm256_setzero_si256();
    for ((c, a), absent) in c[F_FIRST_FLAG..].iter_mut().zip(acc.iter_mut()).zip(ABSENT) {
        let sums: [u64; 4] = pulp::cast(simd.avx2._mm256_sad_epu8(*a, zero));
        let n: u64 = sums.iter().sum();
        *c += if absent { bytes - n } else { n };
        *a = zero;
    }
}
