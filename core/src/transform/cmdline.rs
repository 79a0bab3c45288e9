//! Command-line normalization for OS-command injection detection.
//!
//! Shells and `cmd.exe` accept many spellings of one command; rules are easier to write
//! against a single canonical one. The choices, and why:
//!
//! * `\`, `"`, `'` and `^` are **deleted**. In POSIX shells quotes and backslashes can be
//!   inserted anywhere in a word without changing it (`c'a't`, `c\at`, `"ca"t` all run
//!   `cat`); `^` is the `cmd.exe` escape character with the same effect (`c^a^t`). The cost is
//!   that Windows paths lose their backslashes (`c:\windows` → `c:windows`), which rules
//!   written for this transform have to expect.
//! * `,` counts as **whitespace**: `cmd.exe` treats it as an argument delimiter
//!   (`cmd,/c,dir`). `;` is **kept**: `cmd.exe` also splits on it, but to a POSIX shell it
//!   separates commands, and "a separator followed by a command" is exactly what rules look
//!   for; turning `x;id` into `x id` would make it indistinguishable from prose.
//! * Whitespace runs (space, `\t`, `\n`, `\r`, `\f`, `\v`) become **one space**; leading
//!   and trailing whitespace stays as one space rather than being trimmed, so a word
//!   boundary is never invented or lost at the edges.
//! * A space before `/` or `(` is **dropped**: `cmd /c` and `cmd/c` are the same to
//!   `cmd.exe`, as are `system (` and `system(` to most interpreters, so only the form
//!   without the space needs a pattern. The side effect is that arguments run into paths
//!   (`ls -la /tmp` → `ls -la/tmp`), so patterns must not expect a space before a `/`.
//! * ASCII is **lowercased**: Windows commands are case-insensitive. Non-ASCII bytes are
//!   left alone.

use super::block::{self, Block, Window, B};

/// Class flag: an ordinary byte, kept (lowercased).
const OTHER: u8 = 1;
/// Class flag: whitespace or a delimiter that counts as whitespace.
const SPACE: u8 = 2;
/// Class flag: deleted.
const DELETE: u8 = 4;
/// Class flag: an ordinary byte that swallows a space before it (`/`, `(`).
const TIGHT: u8 = 8;

/// The class of every byte, as a table so the scalar loop does one lookup per byte.
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    t[b'\\' as usize] = DELETE;
    t[b'"' as usize] = DELETE;
    t[b'\'' as usize] = DELETE;
    t[b'^' as usize] = DELETE;
    t[b' ' as usize] = SPACE;
    t[b'\t' as usize] = SPACE;
    t[b'\n' as usize] = SPACE;
    t[b'\r' as usize] = SPACE;
    t[0x0b] = SPACE;
    t[0x0c] = SPACE;
    t[b',' as usize] = SPACE;
    t[b'/' as usize] = OTHER | TIGHT;
    t[b'(' as usize] = OTHER | TIGHT;
    t
};

/// What a byte becomes when it is kept: ASCII lowercased, and a space for the whitespace
/// class.
static MAP: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if CLASS[b] & OTHER != 0 {
            (b as u8).to_ascii_lowercase()
        } else {
            b' '
        };
        b += 1;
    }
    t
};

/// Whitespace class, by comparisons (for the vectorized rule).
#[inline(always)]
fn is_space(b: u8) -> bool {
    (b == b' ') | (b.wrapping_sub(b'\t') <= b'\r' - b'\t') | (b == b',')
}

/// Deleted class, by comparisons.
#[inline(always)]
fn is_delete(b: u8) -> bool {
    // `b | 2` is 0x5e for `\\` (0x5c) and `^` (0x5e) only.
    ((b | 2) == b'^') | (b == b'"') | (b == b'\'')
}

/// What becomes of each byte, decided from the byte and the next one.
///
/// With the deleted bytes gone, every decision is local: a whitespace-class byte becomes
/// a space that is kept only if it ends its run and the next byte does not swallow it;
/// everything else is lowercased. With deleted bytes, only a whitespace byte right before
/// one cannot be decided from the next byte; this rule drops it, and [`cmd_line`]
/// decides it again with [`space_kept`].
#[inline(always)]
fn rule([_, _, b, n]: Window) -> (u8, bool) {
    // Without branches, so that it vectorizes.
    let space = is_space(b);
    let lower = b | (u8::from(b.wrapping_sub(b'A') < 26) << 5);
    let swallowed = is_space(n) | (n == b'/') | (n == b'(') | is_delete(n);
    (
        if space { b' ' } else { lower },
        !is_delete(b) & !(space & swallowed),
    )
}

/// Whether the whitespace-class byte at `input[i]` is kept: when the next byte that is not
/// deleted does not continue the run or swallow the space, or when there is none.
#[inline]
fn space_kept(input: &[u8], i: usize) -> bool {
    input[i + 1..]
        .iter()
        .find(|&&b| CLASS[usize::from(b)] != DELETE)
        .is_none_or(|&b| CLASS[usize::from(b)] == OTHER)
}

/// [`rule`] at `input[i]`, with the whitespace byte before a deleted one decided.
#[inline]
fn verdict_at(input: &[u8], i: usize) -> (u8, bool) {
    let b = input[i];
    let c = CLASS[usize::from(b)];
    let keep = if c == SPACE {
        space_kept(input, i)
    } else {
        c != DELETE
    };
    (MAP[usize::from(b)], keep)
}

/// Whether the output can start to differ from the input at `w[2]`. Conservative: it may
/// hold where nothing ends up changing; the caller compares.
///
/// A space is a hit unless what follows keeps it as is (the end, or an ordinary character
/// other than `/` and `(`).
#[inline(always)]
fn starts_change([_, _, b, n]: Window) -> bool {
    // Beyond the end `n` is 0, an ordinary byte, which keeps a final space as it is.
    let kept_space = b == b' ' && CLASS[usize::from(n)] == OTHER;
    b.is_ascii_uppercase() || (CLASS[usize::from(b)] & OTHER == 0 && !kept_space)
}

/// A cheap test that holds wherever [`starts_change`] does.
#[inline(always)]
fn suspect(b: u8, n: u8) -> bool {
    // `(x | 2) == 0x5e` is `\` or `^`; `(x | 5) == 0x27` is `"`, `'`, `#` or `&`.
    let odd = |x: u8| ((x | 2) == 0x5e) | ((x | 5) == 0x27);
    b.is_ascii_uppercase()
        | (b <= b'\r')
        | (b == b',')
        | odd(b)
        | ((b == b' ') & ((n <= b'/') | odd(n)))
}

/// `cmd_line`.
///
/// Each output byte is an input byte (possibly lowercased) or one space standing for a
/// non-empty run of whitespace-class bytes, so the output is never longer.
pub(super) fn cmd_line(input: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(start) = block::first_change(input, suspect, starts_change) else {
        return false;
    };
    let n = input.len();
    block::prepare(input, start, out);
    let buf = &mut out[..];
    let mut w = start;
    let mut i = start;
    // The first two bytes have incomplete windows.
    while i < n.min(2) {
        let (b, keep) = verdict_at(input, i);
        buf[w] = b;
        w += usize::from(keep);
        i += 1;
    }
    let mut block = Block::new();
    while i + B < n {
        let mut mask = block.map(input, i, &rule);
        // Whitespace the rule dropped because a deleted byte follows may be kept after
        // all. Dropped bytes are few (in prose, none), so they are checked one by one.
        let mut dropped = mask;
        while dropped != 0 {
            let j = dropped.trailing_zeros() as usize;
            if CLASS[usize::from(input[i + j])] == SPACE
                && CLASS[usize::from(input[i + j + 1])] == DELETE
                && space_kept(input, i + j)
            {
                mask = block.keep(j, mask);
            }
            dropped &= dropped - 1;
        }
        // `w <= i`, and `out` has room for the overshoot.
        w += block.emit(mask, &mut buf[w..]);
        i += B;
    }
    while i < n {
        let (b, keep) = verdict_at(input, i);
        buf[w] = b;
        w += usize::from(keep);
        i += 1;
    }
    out.truncate(w);
    out.as_slice() != input
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, long_text, rich_bytes, run};
    use super::super::Transform;
    use proptest::prelude::*;

    #[rustfmt::skip]
    const FOCUS: &[&[u8]] = &[
        b" ", b" ", b"  ", b"\t", b",", b";", b"\\", b"\"", b"'", b"^", b"/", b"(", b"a",
        b"B", b"cmd", b"\xc3\x89",
    ];

    /// Naive version: one pass per rule, in the order the module documentation gives.
    fn oracle(input: &[u8]) -> Vec<u8> {
        let deleted: Vec<u8> = input
            .iter()
            .copied()
            .filter(|b| !b"\\\"'^".contains(b))
            .collect();
        let spaced: Vec<u8> = deleted
            .iter()
            .map(|&b| {
                if b" \t\n\r\x0b\x0c,".contains(&b) {
                    b' '
                } else {
                    b
                }
            })
            .collect();
        let mut collapsed = spaced;
        collapsed.dedup_by(|a, b| *a == b' ' && *b == b' ');
        let mut tight = Vec::new();
        for (i, &b) in collapsed.iter().enumerate() {
            let next = collapsed.get(i + 1);
            if b == b' ' && (next == Some(&b'/') || next == Some(&b'(')) {
                continue;
            }
            tight.push(b);
        }
        tight.iter().map(|b| b.to_ascii_lowercase()).collect()
    }

    fn cmd(s: &str) -> String {
        String::from_utf8(run(Transform::CmdLine, s.as_bytes())).unwrap()
    }

    #[test]
    fn examples() {
        assert_eq!(cmd("c^a^t /etc/pa's's'wd"), "cat/etc/passwd");
        assert_eq!(cmd("C\\at \"/etc/passwd\""), "cat/etc/passwd");
        assert_eq!(cmd("cmd,/c,dir"), "cmd/c dir");
        assert_eq!(cmd("CMD.EXE   /C  \"dir\""), "cmd.exe/c dir");
        assert_eq!(cmd("id;whoami"), "id;whoami");
        assert_eq!(cmd("; ls\t-la"), "; ls -la");
        assert_eq!(cmd("system ('id')"), "system(id)");
        assert_eq!(cmd("a ' /b"), "a/b");
        assert_eq!(cmd("ping  "), "ping ");
        assert_eq!(cmd("ls -la /tmp"), "ls -la/tmp");
        let mut out = Vec::new();
        assert!(!Transform::CmdLine.apply(b"echo hello", &mut out));
        assert!(!Transform::CmdLine.apply(b"trailing ", &mut out));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_oracle(input in prop_oneof![from_pieces(FOCUS), rich_bytes(), any_bytes()]) {
            check(Transform::CmdLine, &input, &oracle(&input))?;
        }

        #[test]
        fn long_matches_oracle(input in long_text(FOCUS, 12, 400)) {
            check(Transform::CmdLine, &input, &oracle(&input))?;
        }
    }
}
