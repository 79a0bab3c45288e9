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

use super::find_first;

/// An ordinary byte: kept as is.
const OTHER: u8 = 0;
/// An ASCII capital: kept, but lowercased.
const UPPER: u8 = 1;
/// Deleted.
const DELETE: u8 = 2;
/// Whitespace or a delimiter that counts as whitespace.
const SPACE: u8 = 3;

/// The class of every byte, as a table so the loops do one lookup per byte.
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut c = b'A';
    while c <= b'Z' {
        t[c as usize] = UPPER;
        c += 1;
    }
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
    t
};

#[inline]
fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// The first byte at which the output may start to differ from the input, such that the
/// rewrite can start there with no pending space. Conservative: it may return a position
/// where nothing ends up changing; the caller compares.
///
/// A space is flagged itself unless what follows keeps it as is (the end, or an ordinary
/// character other than `/` and `(`), so when the flagged byte follows an unflagged space,
/// that space was already correct as output and nothing is pending.
fn first_change(input: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        i += find_first(&input[i..], |b| class(b) != OTHER)?;
        let kept_space = input[i] == b' '
            && input
                .get(i + 1)
                .is_none_or(|&n| class(n) == OTHER && n != b'/' && n != b'(');
        if !kept_space {
            return Some(i);
        }
        i += 1;
    }
}

/// `cmd_line`.
///
/// Each output byte is an input byte (possibly lowercased) or one space standing for a
/// non-empty run of whitespace-class bytes, so the output is never longer.
pub(super) fn cmd_line(input: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(start) = first_change(input) else {
        return false;
    };
    // `out` starts as a copy and is rewritten in place, through a plain slice so the
    // compiler knows the writes cannot touch the `Vec` itself. The write position never
    // passes the read position: a space is written only for an earlier whitespace byte
    // that wrote nothing itself.
    out.clear();
    out.extend_from_slice(input);
    let buf = &mut out[..];
    let mut w = start;
    let mut pending_space = false;
    for &b in &input[start..] {
        let c = class(b);
        if c >= DELETE {
            pending_space |= c == SPACE;
            continue;
        }
        if pending_space {
            if b != b'/' && b != b'(' {
                buf[w] = b' ';
                w += 1;
            }
            pending_space = false;
        }
        buf[w] = b.to_ascii_lowercase();
        w += 1;
    }
    if pending_space {
        buf[w] = b' ';
        w += 1;
    }
    out.truncate(w);
    out.as_slice() != input
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, from_pieces, rich_bytes, run};
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
    }
}
