//! Path normalization.

use memchr::{memchr2, memchr2_iter};

/// Whether normalization could change `input`: only a backslash, an empty segment (`//`) or
/// a segment starting with `.` can, so this is one `memchr2` pass over the separators.
fn needs_work(input: &[u8]) -> bool {
    if input.first() == Some(&b'.') {
        return true;
    }
    memchr2_iter(b'/', b'\\', input)
        .any(|i| input[i] == b'\\' || matches!(input.get(i + 1), Some(b'/' | b'.')))
}

/// `normalize_path`.
///
/// `out` doubles as the segment stack: segments are appended with `/` between them and a
/// `..` truncates back to the previous `/`, so no other buffer is needed and each segment
/// is written and removed at most once. `floor` marks what a `..` cannot remove: the root
/// `/` of an absolute path, or the leading `../` chain of a relative one (kept so that
/// `../../etc/passwd` still reads as a traversal).
///
/// Every kept segment and separator comes from the input and a trailing `/` is only added
/// where the input had one before a dropped segment, so the output is never longer.
pub(super) fn normalize_path(input: &[u8], out: &mut Vec<u8>) -> bool {
    if !needs_work(input) {
        return false;
    }
    out.clear();
    out.reserve(input.len());
    let is_sep = |b: &u8| *b == b'/' || *b == b'\\';
    let absolute = input.first().is_some_and(is_sep);
    if absolute {
        out.push(b'/');
    }
    let base = out.len();
    let mut floor = base;
    // Whether the last segment was one that normalization dropped; the directory it
    // named is kept visible as a trailing '/'.
    let mut trailing;
    // The segments, found with a vectorized search for the separators.
    let mut start = 0;
    loop {
        let end = memchr2(b'/', b'\\', &input[start..]).map_or(input.len(), |p| start + p);
        let seg = &input[start..end];
        match seg {
            b"" | b"." => trailing = true,
            b".." if out.len() > floor => {
                let cut = memchr::memrchr(b'/', &out[floor..]).map_or(floor, |p| floor + p);
                out.truncate(cut);
                trailing = true;
            }
            // Above the root: nothing to remove.
            b".." if absolute => trailing = true,
            _ => {
                if out.len() > base {
                    out.push(b'/');
                }
                out.extend_from_slice(seg);
                if seg == b".." {
                    floor = out.len();
                }
                trailing = false;
            }
        }
        if end == input.len() {
            break;
        }
        start = end + 1;
    }
    if trailing && out.last().is_some_and(|&b| b != b'/') {
        out.push(b'/');
    }
    out.as_slice() != input
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{any_bytes, check, rich_bytes, run};
    use super::super::Transform;
    use proptest::prelude::*;

    /// Naive normalizer: `String`-free but with an explicit stack of segment slices.
    fn oracle(input: &[u8]) -> Vec<u8> {
        let unified: Vec<u8> = input
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect();
        let absolute = unified.first() == Some(&b'/');
        let segments: Vec<&[u8]> = unified.split(|&b| b == b'/').collect();
        let mut stack: Vec<&[u8]> = Vec::new();
        let mut last_dropped = false;
        for seg in &segments {
            last_dropped = match *seg {
                b"" | b"." => true,
                b".." => match stack.last() {
                    Some(&top) if top != b".." => {
                        stack.pop();
                        true
                    }
                    _ if absolute => true,
                    _ => {
                        stack.push(seg);
                        false
                    }
                },
                _ => {
                    stack.push(seg);
                    false
                }
            };
        }
        let mut out = Vec::new();
        if absolute {
            out.push(b'/');
        }
        out.extend_from_slice(&stack.join(&b'/'));
        if last_dropped && !stack.is_empty() {
            out.push(b'/');
        }
        out
    }

    fn norm(s: &str) -> String {
        String::from_utf8(run(Transform::NormalizePath, s.as_bytes())).unwrap()
    }

    #[test]
    fn examples() {
        assert_eq!(norm("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(norm("\\windows\\system32\\..\\win.ini"), "/windows/win.ini");
        // Never above the root.
        assert_eq!(norm("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/static/../../../etc/passwd"), "/etc/passwd");
        // A relative traversal chain stays visible.
        assert_eq!(norm("../../etc/passwd"), "../../etc/passwd");
        assert_eq!(norm("a/../../etc/./passwd"), "../etc/passwd");
        assert_eq!(norm("..\\..\\boot.ini"), "../../boot.ini");
        assert_eq!(norm("./x"), "x");
        assert_eq!(norm("/a/b/"), "/a/b/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("a/.."), "");
        assert_eq!(norm(".."), "..");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/.hidden/..."), "/.hidden/...");
        let mut out = Vec::new();
        assert!(!Transform::NormalizePath.apply(b"/api/v1/chat", &mut out));
        assert!(!Transform::NormalizePath.apply(b"../etc", &mut out));
        assert!(!Transform::NormalizePath.apply(b"/.well-known/x", &mut out));
        assert!(!Transform::NormalizePath.apply(b"", &mut out));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_oracle(input in prop_oneof![rich_bytes(), any_bytes()]) {
            check(Transform::NormalizePath, &input, &oracle(&input))?;
        }

        #[test]
        fn matches_oracle_on_paths(
            ups in 0..3usize,
            parts in prop::collection::vec(
                prop::sample::select(
                    &["a", "bc", ".", "..", "../", "./", "..\\", "/", "\\", "//", "...", ".x"][..],
                ),
                0..24,
            )
        ) {
            let input = "../".repeat(ups) + &parts.concat();
            check(Transform::NormalizePath, input.as_bytes(), &oracle(input.as_bytes()))?;
        }
    }
}
