//! The literal automata of the rule prefilters and their interleaved walk.
//!
//! aho-corasick builds the automata. For the dense DFA (prompt fields, the hot path) its
//! transitions are then copied into [`LaneDfa`], a layout made for the walk below: the
//! table's length is a power of two, so a masked index needs no bounds check, and a match
//! state is flagged in the high bit of the ids that lead to it, so the walk tests all its
//! lanes with one OR instead of a compare per lane. Callgrind put aho-corasick's own
//! `next_state` (bounds check, special-state compare, lane pointers spilled) at ~10
//! instructions per lane and byte; see `benches/RESULTS.md` for what this layout gives.

use aho_corasick::automaton::Automaton;
use aho_corasick::Anchored;

/// The automaton of a prefilter: a dense DFA (one table load per byte) where speed
/// matters, a contiguous NFA (a fraction of the memory, a few loads per byte) for large
/// literal sets of fields that are not prompts.
#[derive(Debug)]
pub(crate) enum LiteralAutomaton {
    Dfa(LaneDfa),
    Nfa(aho_corasick::nfa::contiguous::NFA),
}

impl LiteralAutomaton {
    /// A dense DFA over `lits` (standard match semantics: every occurrence).
    pub(crate) fn dfa(lits: &[Vec<u8>]) -> Result<LiteralAutomaton, aho_corasick::BuildError> {
        let dfa = aho_corasick::dfa::Builder::new()
            .match_kind(aho_corasick::MatchKind::Standard)
            .prefilter(false)
            .build(lits)?;
        match LaneDfa::new(&dfa, lits) {
            Some(d) => Ok(LiteralAutomaton::Dfa(d)),
            // Past 2^31 table entries (8 GiB), or no unanchored start: never seen, but an
            // NFA still answers.
            None => Self::nfa(lits),
        }
    }

    /// A contiguous NFA over `lits`.
    pub(crate) fn nfa(lits: &[Vec<u8>]) -> Result<LiteralAutomaton, aho_corasick::BuildError> {
        Ok(LiteralAutomaton::Nfa(
            aho_corasick::nfa::contiguous::Builder::new()
                .match_kind(aho_corasick::MatchKind::Standard)
                .prefilter(false)
                .build(lits)?,
        ))
    }
}

/// Set in a transition's target when the target is a match state.
const MATCH: u32 = 1 << 31;

/// A dense DFA for the lane walk: state ids are a state's index times `stride` (a power of
/// two at least the number of byte classes), the transition of state `s` on byte `b` is
/// `trans[(s + class[b]) & (len - 1)]` with [`MATCH`] set when it leads to a match state (the
/// mask drops that bit again, and proves the index in bounds).
#[derive(Debug)]
pub(crate) struct LaneDfa {
    /// Transitions; the length is a power of two (the tail past the last state is never
    /// read: the ids in the table are all below it).
    trans: Vec<u32>,
    /// The byte classes: every byte that occurs in a literal has its own class, all other
    /// bytes share class 0 (from any state they lead where the start state leads, since no
    /// literal continues with them).
    class: [u8; 256],
    /// log2 of the stride.
    shift: u32,
    /// The literals (pattern indices) ending at each state, by state index, as ranges of
    /// `pids`.
    ends: Vec<(u32, u32)>,
    pids: Vec<u32>,
    /// The longest literal's length.
    max_len: usize,
}

impl LaneDfa {
    /// Copies `dfa` (built from `lits`) by a breadth-first walk from its start state;
    /// `None` if the table would not fit below the [`MATCH`] bit or `dfa` has no
    /// unanchored start.
    fn new(dfa: &aho_corasick::dfa::DFA, lits: &[Vec<u8>]) -> Option<LaneDfa> {
        let mut used = [false; 256];
        for l in lits {
            for &b in l {
                used[usize::from(b)] = true;
            }
        }
        // Class 0 for the bytes no literal has, unless every byte is used (then each
        // byte is its own class and there is no "other").
        let mut class = [0u8; 256];
        let mut reps: Vec<u8> = Vec::new();
        let all = used.iter().all(|&u| u);
        if !all {
            reps.push(used.iter().position(|&u| !u).unwrap_or(0) as u8);
        }
        for b in 0..=255u8 {
            if used[usize::from(b)] {
                class[usize::from(b)] = reps.len() as u8;
                reps.push(b);
            }
        }
        let stride = reps.len().next_power_of_two();
        let shift = stride.trailing_zeros();
        // An unanchored start always exists for a DFA built with the default start kind;
        // without one the caller falls back to the NFA rather than walk nothing.
        let start = dfa.start_state(Anchored::No).ok()?;
        // Our index + 1 of each aho-corasick state id seen (0: not seen yet). Its ids are
        // offsets into its own table, so a vector is a cheap map (a hash map took half of
        // the engine's build time here).
        let mut index: Vec<u32> = Vec::new();
        let slot = |index: &mut Vec<u32>, sid: aho_corasick::automaton::StateID| {
            let i = sid.as_usize();
            if i >= index.len() {
                index.resize(i + 1, 0);
            }
            i
        };
        let mut order = vec![start];
        let i = slot(&mut index, start);
        index[i] = 1;
        let mut trans: Vec<u32> = Vec::new();
        let mut ends = Vec::new();
        let mut pids = Vec::new();
        let mut k = 0;
        while k < order.len() {
            let sid = order[k];
            let from = pids.len() as u32;
            if dfa.is_match(sid) {
                for m in 0..dfa.match_len(sid) {
                    pids.push(dfa.match_pattern(sid, m).as_u32());
                }
            }
            ends.push((from, pids.len() as u32));
            let row = trans.len();
            if !Self::fits(k + 1, stride) {
                return None;
            }
            trans.resize(row + stride, 0);
            for (c, &b) in reps.iter().enumerate() {
                let next = dfa.next_state(Anchored::No, sid, b);
                let i = slot(&mut index, next);
                if index[i] == 0 {
                    order.push(next);
                    index[i] = order.len() as u32;
                }
                let n = index[i] - 1;
                trans[row + c] = (n << shift) | if dfa.is_match(next) { MATCH } else { 0 };
            }
            k += 1;
        }
        // Padded to a power of two: zeroed by the allocator (fresh pages for a large
        // table), so the padding, never read, costs address space rather than memory.
        let mut table = vec![0u32; trans.len().next_power_of_two()];
        table[..trans.len()].copy_from_slice(&trans);
        Some(LaneDfa {
            trans: table,
            class,
            shift,
            ends,
            pids,
            max_len: dfa.max_pattern_len(),
        })
    }

    /// Whether the table fits the layout (ids below the [`MATCH`] bit).
    fn fits(states: usize, stride: usize) -> bool {
        states
            .checked_mul(stride)
            .and_then(usize::checked_next_power_of_two)
            .is_some_and(|n| n <= MATCH as usize)
    }
}

/// Independent walks interleaved by [`scan_literals`] over long values. A walk waits on one
/// table load per byte, mostly an L2 hit for a prompt prefilter's DFA; eight walks in flight
/// kept the load ports busier than four (about a third less time per 4 KiB on the bench
/// machine) and sixteen gained nothing more.
const LANES: usize = 8;

/// Reports every literal of `dfa` that occurs in `value` (as `first` + its pattern index,
/// in no particular order) until `on_hit` returns `true`. Each is reported once: `seen`
/// (a bit per reported index, cleared by the caller) remembers those reported, checked
/// here rather than behind the `dyn` call because ordinary prose repeats common literals
/// hundreds of times.
///
/// A DFA walk is a chain of dependent table loads, one per byte, so a single walk runs at
/// load latency rather than at the core's throughput. The value is cut into [`LANES`]
/// slices (four, or one, when the value is too short for that many) walked in lockstep;
/// each slice starts `max_pattern_len` bytes early so that a literal crossing a cut is
/// still seen whole by the lane it ends in.
pub(crate) fn scan_literals(
    automaton: &LiteralAutomaton,
    value: &[u8],
    seen: (&mut [u64], usize),
    on_hit: &mut dyn FnMut(usize) -> bool,
) {
    match automaton {
        LiteralAutomaton::Dfa(a) => scan_literals_with(a, value, seen, on_hit),
        LiteralAutomaton::Nfa(a) => scan_literals_with(a, value, seen, on_hit),
    }
}

fn scan_literals_with<A: Walk>(
    dfa: &A,
    value: &[u8],
    seen: (&mut [u64], usize),
    on_hit: &mut dyn FnMut(usize) -> bool,
) {
    let back = dfa.max_len().saturating_sub(1);
    // Each lane re-walks `back` bytes of its predecessor: worth it only when a lane's own
    // part is well longer than that.
    if value.len() / LANES > back * 2 {
        scan_lanes::<A, LANES>(dfa, value, back, seen, on_hit);
    } else if value.len() / 4 > back * 2 {
        scan_lanes::<A, 4>(dfa, value, back, seen, on_hit);
    } else {
        scan_lanes::<A, 1>(dfa, value, back, seen, on_hit);
    }
}

/// The walk of [`scan_literals`] with `N` lanes.
fn scan_lanes<A: Walk, const N: usize>(
    dfa: &A,
    value: &[u8],
    back: usize,
    (seen, first): (&mut [u64], usize),
    on_hit: &mut dyn FnMut(usize) -> bool,
) {
    let Some(start) = dfa.start() else {
        return;
    };
    // Reports the literals ending at a match state that were not reported before; `true`
    // to stop.
    let mut report = |seen: &mut [u64], sid| {
        dfa.each_match(sid, |p| {
            let pid = first + p;
            let (w, bit) = (pid / 64, 1u64 << (pid % 64));
            if seen[w] & bit != 0 {
                return false;
            }
            seen[w] |= bit;
            on_hit(pid)
        })
    };
    // Lane k covers ends in (k*chunk, (k+1)*chunk] (the last lane up to the end) and
    // starts `back` bytes before its first end (lane 0 at 0). The lockstep part walks
    // `chunk` bytes of each lane from N equal-length slices.
    let chunk = value.len() / N;
    let begin = |k: usize| (k * chunk).saturating_sub(back);
    let lanes: [&[u8]; N] = std::array::from_fn(|k| &value[begin(k)..][..chunk]);
    let mut sid = [start; N];
    // Reports the match states among the lanes' states; `true` to stop.
    let mut report_all = |seen: &mut [u64], sid: [A::State; N]| {
        sid.into_iter().any(|s| dfa.is_match(s) && report(seen, s))
    };
    if N == LANES {
        // The lanes' bytes interleaved, a block of rows at a time (one row: byte i of
        // every lane): the walk then reads every lane through one pointer. With a pointer
        // per lane, eight pointers, eight states and the tables do not fit in the
        // registers and the pointers were reloaded on every step; interleaved (SSE2
        // transpose, ~0.6 instructions per byte) the whole scan runs ~6 % fewer
        // instructions (callgrind, 4 KiB prompt).
        let lanes8: [&[u8]; LANES] = std::array::from_fn(|k| lanes[k]);
        let mut rows = [0u8; ROWS * LANES];
        let mut i = 0;
        while i < chunk {
            let m = ROWS.min(chunk - i);
            let rows = &mut rows[..m * N];
            interleave(&lanes8, i, rows);
            let mut sid8: [A::State; LANES] = std::array::from_fn(|k| sid[k]);
            let mut at = 0;
            while at < m {
                at += walk_rows(dfa, &mut sid8, &rows[at * LANES..], seen, first);
                if at <= m && report_all(seen, std::array::from_fn(|k| sid8[k])) {
                    return;
                }
            }
            sid = std::array::from_fn(|k| sid8[k]);
            i += m;
        }
    } else {
        // Fewer lanes (short values): their pointers fit in the registers.
        #[allow(clippy::needless_range_loop)]
        for i in 0..chunk {
            let bytes: [u8; N] = std::array::from_fn(|k| lanes[k][i]);
            if step(dfa, &mut sid, &bytes) && report_all(seen, sid) {
                return;
            }
        }
    }
    // Finish each lane on its own: lanes 1.. still have `back` bytes, the last lane the
    // remainder of the value as well.
    for (k, mut s) in sid.into_iter().enumerate() {
        let end = if k + 1 == N {
            value.len()
        } else {
            (k + 1) * chunk
        };
        for &b in &value[begin(k) + chunk..end] {
            s = dfa.next(s, b);
            if dfa.is_match(s) && report(seen, s) {
                return;
            }
        }
    }
}

/// Rows interleaved at a time by the eight-lane walk (a 1 KiB block on the stack, zeroed
/// per walk).
const ROWS: usize = 128;

/// Steps every lane once on its byte; whether any lane may now be in a match state.
#[inline(always)]
fn step<A: Walk, const N: usize>(dfa: &A, sid: &mut [A::State; N], bytes: &[u8; N]) -> bool {
    let mut special = 0;
    for k in 0..N {
        sid[k] = dfa.next(sid[k], bytes[k]);
        special |= dfa.special(sid[k]);
    }
    special != 0
}

/// Walks `rows` (eight lanes, one byte each per row) until a step reaches a match state
/// with a literal not yet in `seen`: returns the rows walked, that one included, or one
/// more than there are if none did.
///
/// Out of line, with its own test for literals already seen: prose reaches a match state
/// every three rows or so (the literals include short words such as " to " and "use "),
/// almost always for a literal reported before, and when the scan inlined the walk, the
/// values of its report path kept the eight states out of the registers: every state was
/// stored and reloaded on every step. Here most of them stay in registers (callgrind, 4
/// KiB prompt: the whole inspect ~1.4 % fewer instructions).
#[inline(never)]
fn walk_rows<A: Walk>(
    dfa: &A,
    sid: &mut [A::State; LANES],
    rows: &[u8],
    seen: &[u64],
    first: usize,
) -> usize {
    let mut s = *sid;
    let mut n = 0;
    for row in rows.chunks_exact(LANES) {
        n += 1;
        let row: &[u8; LANES] = row.try_into().expect("LANES bytes");
        if step(dfa, &mut s, row) && any_fresh(dfa, s, seen, first) {
            *sid = s;
            return n;
        }
    }
    *sid = s;
    n + 1
}

/// Whether one of the states `sid` is a match state with a literal not in `seen`.
#[inline(always)]
fn any_fresh<A: Walk>(dfa: &A, sid: [A::State; LANES], seen: &[u64], first: usize) -> bool {
    sid.into_iter().any(|s| {
        dfa.is_match(s)
            && dfa.each_match(s, |p| {
                let pid = first + p;
                seen.get(pid / 64)
                    .is_some_and(|w| w & (1 << (pid % 64)) == 0)
            })
    })
}

/// Writes bytes `from..from + rows.len() / LANES` of every lane row by row: byte
/// `from + i` of lane `k` at `rows[i * LANES + k]`.
fn interleave(lanes: &[&[u8]; LANES], from: usize, rows: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = crate::simd::v3() {
        done = simd.vectorize(Interleave {
            simd,
            lanes: *lanes,
            from,
            rows: &mut *rows,
        });
    }
    for (i, row) in rows.chunks_exact_mut(LANES).enumerate().skip(done) {
        for (k, b) in row.iter_mut().enumerate() {
            *b = lanes[k][from + i];
        }
    }
}

/// The SSE2 transpose of eight lanes, 16 bytes of each at a time (three rounds of byte,
/// word and double-word unpacks), as pulp's callable (see `cost::tokens::wide` for why
/// not a closure). Returns the rows written (a multiple of 16).
#[cfg(target_arch = "x86_64")]
struct Interleave<'a, 'r> {
    simd: pulp::x86::V3,
    lanes: [&'a [u8]; LANES],
    from: usize,
    rows: &'r mut [u8],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Interleave<'_, '_> {
    type Output = usize;

    #[inline(always)]
    fn call(self) -> usize {
        let sse2 = self.simd.sse2;
        let n = self.rows.len() / 8;
        // Each lane's part, sliced once so that the loads below need no bounds checks.
        let src: [&[u8]; 8] = std::array::from_fn(|k| &self.lanes[k][self.from..self.from + n]);
        let mut done = 0;
        for (block, out) in self.rows.chunks_exact_mut(16 * 8).enumerate() {
            let i = block * 16;
            let a = [
                load16(src[0], i),
                load16(src[1], i),
                load16(src[2], i),
                load16(src[3], i),
                load16(src[4], i),
                load16(src[5], i),
                load16(src[6], i),
                load16(src[7], i),
            ];
            // Bytes of lane pairs (b), then words of pair pairs (c), then double words of
            // the two halves (d): d[2m] and d[2m + 1] hold rows 4m .. 4m + 3, two each.
            let zero = sse2._mm_setzero_si128();
            let (mut b, mut c, mut d) = ([zero; 8], [zero; 8], [zero; 8]);
            for j in 0..4 {
                b[2 * j] = sse2._mm_unpacklo_epi8(a[2 * j], a[2 * j + 1]);
                b[2 * j + 1] = sse2._mm_unpackhi_epi8(a[2 * j], a[2 * j + 1]);
            }
            for g in [0, 4] {
                for h in 0..2 {
                    let (x, y) = (b[g + h], b[g + h + 2]);
                    c[g + 2 * h] = sse2._mm_unpacklo_epi16(x, y);
                    c[g + 2 * h + 1] = sse2._mm_unpackhi_epi16(x, y);
                }
            }
            for m in 0..4 {
                d[2 * m] = sse2._mm_unpacklo_epi32(c[m], c[m + 4]);
                d[2 * m + 1] = sse2._mm_unpackhi_epi32(c[m], c[m + 4]);
            }
            // Two rows per vector.
            for (o, v) in out.chunks_exact_mut(16).zip(d) {
                o.copy_from_slice(&pulp::cast::<_, [u8; 16]>(v));
            }
            done = i + 16;
        }
        done
    }
}

/// The 16 bytes of `s` at `i` (zeros past its end, which the caller never asks for).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn load16(s: &[u8], i: usize) -> core::arch::x86_64::__m128i {
    let bytes: [u8; 16] = s
        .get(i..)
        .and_then(<[u8]>::first_chunk::<16>)
        .copied()
        .unwrap_or([0; 16]);
    pulp::cast(bytes)
}

/// One walk step and the match test, as the lane walk needs them.
trait Walk {
    type State: Copy;
    fn start(&self) -> Option<Self::State>;
    fn max_len(&self) -> usize;
    fn next(&self, s: Self::State, b: u8) -> Self::State;
    /// Nonzero when `s` may be a match state (OR-ed over lanes, tested once per step).
    fn special(&self, s: Self::State) -> u32;
    fn is_match(&self, s: Self::State) -> bool;
    /// Calls `f` with each literal ending at `s` until it returns `true`; returns that.
    fn each_match(&self, s: Self::State, f: impl FnMut(usize) -> bool) -> bool;
}

impl Walk for LaneDfa {
    // usize rather than the table's u32: the index arithmetic then needs no zero-extending
    // copy of each state on each step.
    type State = usize;

    #[inline(always)]
    fn start(&self) -> Option<usize> {
        // `None` for an empty table (never built): tested before the walk, it also lets
        // the compiler see the masked index in bounds.
        (!self.trans.is_empty()).then_some(0)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    #[inline(always)]
    fn next(&self, s: usize, b: u8) -> usize {
        // The mask is taken from the length (not stored) so that the compiler sees the
        // index in bounds, given the non-empty test of `start` before the walk.
        let t = &self.trans;
        t[(s + usize::from(self.class[usize::from(b)])) & (t.len().wrapping_sub(1))] as usize
    }

    #[inline(always)]
    fn special(&self, s: usize) -> u32 {
        s as u32 & MATCH
    }

    #[inline(always)]
    fn is_match(&self, s: usize) -> bool {
        s as u32 & MATCH != 0
    }

    #[inline(always)]
    fn each_match(&self, s: usize, mut f: impl FnMut(usize) -> bool) -> bool {
        let (from, to) = self.ends[((s as u32 & !MATCH) >> self.shift) as usize];
        (from..to).any(|i| self.pids.get(i as usize).is_some_and(|&p| f(p as usize)))
    }
}

impl Walk for aho_corasick::nfa::contiguous::NFA {
    type State = aho_corasick::automaton::StateID;

    fn start(&self) -> Option<Self::State> {
        self.start_state(Anchored::No).ok()
    }

    fn max_len(&self) -> usize {
        self.max_pattern_len()
    }

    #[inline(always)]
    fn next(&self, s: Self::State, b: u8) -> Self::State {
        self.next_state(Anchored::No, s, b)
    }

    #[inline(always)]
    fn special(&self, s: Self::State) -> u32 {
        u32::from(self.is_special(s))
    }

    #[inline(always)]
    fn is_match(&self, s: Self::State) -> bool {
        Automaton::is_match(self, s)
    }

    fn each_match(&self, s: Self::State, mut f: impl FnMut(usize) -> bool) -> bool {
        (0..self.match_len(s)).any(|k| f(self.match_pattern(s, k).as_usize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dfa(lits: &[Vec<u8>]) -> LiteralAutomaton {
        LiteralAutomaton::dfa(lits).unwrap()
    }

    fn nfa(lits: &[Vec<u8>]) -> LiteralAutomaton {
        LiteralAutomaton::nfa(lits).unwrap()
    }

    proptest! {
        /// The interleaved walk finds exactly the literals a naive search finds, whatever
        /// the length of the value and wherever the lane cuts fall, and reports each once
        /// (offset by `first`), and never one its caller had marked seen before.
        #[test]
        fn scan_literals_finds_every_literal(
            lits in proptest::collection::vec(proptest::collection::vec(b'a'..=b'd', 1..6), 1..8),
            value in proptest::collection::vec(b'a'..=b'e', 0..600),
            first in 0usize..70,
            marked in proptest::option::of(0usize..8),
        ) {
            for d in [dfa(&lits), nfa(&lits)] {
                let mut reported = vec![0; lits.len()];
                let mut bits = vec![0u64; 2];
                if let Some(m) = marked {
                    bits[(first + m) / 64] |= 1 << ((first + m) % 64);
                }
                scan_literals(&d, &value, (&mut bits, first), &mut |p| {
                    reported[p - first] += 1;
                    false
                });
                for (i, l) in lits.iter().enumerate() {
                    let naive = value.windows(l.len()).any(|w| w == l.as_slice());
                    let want = usize::from(naive && marked != Some(i));
                    prop_assert_eq!(reported[i], want, "literal {:?}", l);
                }
            }
        }

        /// The same over any bytes, with literals that share prefixes and suffixes and
        /// values that repeat them: the byte classes and the copied transitions (failure
        /// paths included) agree with a naive search.
        #[test]
        fn lane_dfa_finds_what_a_naive_search_finds(
            lits in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec![0u8, b'a', b'b', 0x7f, 0x80, 0xff]), 1..5),
                1..10),
            value in proptest::collection::vec(
                proptest::sample::select(vec![0u8, b'a', b'b', b'c', 0x7f, 0x80, 0xfe, 0xff]), 0..300),
        ) {
            let d = dfa(&lits);
            let mut reported = vec![false; lits.len()];
            scan_literals(&d, &value, (&mut [0], 0), &mut |p| {
                reported[p] = true;
                false
            });
            for (i, l) in lits.iter().enumerate() {
                let naive = value.windows(l.len()).any(|w| w == l.as_slice());
                prop_assert_eq!(reported[i], naive, "literal {:?}", l);
            }
        }
    }

    /// Literals that use every byte value: no byte is left for the shared "other" class.
    #[test]
    fn lane_dfa_with_every_byte_in_a_literal() {
        let lits: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b, b]).collect();
        let d = dfa(&lits);
        let value: Vec<u8> = (0..=255u8).chain([7, 7, 200, 9, 200]).collect();
        let mut reported = vec![false; lits.len()];
        let mut bits = [0u64; 4];
        scan_literals(&d, &value, (&mut bits, 0), &mut |p| {
            reported[p] = true;
            false
        });
        let found: Vec<usize> = (0..256).filter(|&p| reported[p]).collect();
        assert_eq!(found, vec![7]);
    }

    /// The row layout of the eight-lane walk: every byte where the naive layout puts it,
    /// for lane lengths around the SIMD block and from any offset.
    #[test]
    fn interleave_matches_naive() {
        let value: Vec<u8> = (0..4000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 200] {
            for from in [0usize, 1, 5] {
                let lanes: [&[u8]; 8] = std::array::from_fn(|k| &value[k * 300..][..from + len]);
                let mut rows = vec![0xAAu8; len * 8];
                interleave(&lanes, from, &mut rows);
                for i in 0..len {
                    for k in 0..8 {
                        assert_eq!(rows[i * 8 + k], lanes[k][from + i], "len {len} from {from}");
                    }
                }
            }
        }
    }

    /// Literals across lane cuts and across the blocks of rows the walk interleaves at a
    /// time, in a value long enough for several blocks per lane.
    #[test]
    fn literals_found_across_row_blocks() {
        let lits = vec![b"needle".to_vec(), b"pin".to_vec()];
        let d = dfa(&lits);
        let len = 8 * ROWS * 3 + 77;
        let chunk = len / 8;
        let mut spots: Vec<usize> = Vec::new();
        for k in 0..8 {
            for r in [0, ROWS, 2 * ROWS] {
                let at = k * chunk + r;
                spots.extend([at.saturating_sub(3), at, at + 1]);
            }
        }
        spots.push(len - 6);
        for at in spots {
            let mut v = vec![b'x'; len];
            v[at..at + 6].copy_from_slice(b"needle");
            let mut found = Vec::new();
            scan_literals(&d, &v, (&mut [0], 0), &mut |p| {
                found.push(p);
                false
            });
            assert_eq!(found, vec![0], "at {at}");
        }
    }

    /// Stopping: `on_hit` returning `true` ends the walk.
    #[test]
    fn scan_stops_when_asked() {
        let lits = vec![b"ab".to_vec(), b"cd".to_vec()];
        let d = dfa(&lits);
        let mut n = 0;
        scan_literals(&d, &b"ab cd ".repeat(100), (&mut [0], 0), &mut |_| {
            n += 1;
            true
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn scan_literals_sees_literals_across_lane_cuts() {
        let lits = vec![b"needle".to_vec()];
        let d = dfa(&lits);
        for len in [64usize, 150, 257, 1000, 4096] {
            for at in 0..len - 6 {
                let mut v = vec![b'x'; len];
                v[at..at + 6].copy_from_slice(b"needle");
                let mut n = 0;
                scan_literals(&d, &v, (&mut [0], 0), &mut |_| {
                    n += 1;
                    false
                });
                assert_eq!(n, 1, "len {len} at {at}");
            }
        }
    }
}
