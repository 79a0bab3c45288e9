//! Required-literal extraction for the prefilter.
//!
//! For a regex we compute a set of literals such that every match contains at least one of
//! them. If a field contains none of a rule's literals, the rule cannot match there — the
//! only statement a prefilter may make ("definitely no"). We keep our own literal → rule map
//! because regex-automata's built-in prefilter drops pattern identity.

use regex_syntax::hir::{Class, Hir, HirKind, Repetition};

/// At most this many literals per rule; larger sets stop paying for themselves.
const MAX_SET: usize = 128;
/// Classes of at most this many characters expand into literal sets (`['"]` → `'`, `"`).
const MAX_CLASS: usize = 4;

/// A set of alternatives, one of which every match contains; ASCII-lowercased.
pub(crate) type LiteralSet = Vec<Vec<u8>>;

/// At most this many required sets are kept per rule. All of them must be hit before the
/// rule becomes a candidate ("ignore" *and* "instructions"), which is what keeps
/// natural-language rules from running their regex on every ordinary prompt.
pub(crate) const MAX_CONJ: usize = 3;

/// Most branches kept for a rule written as an alternation of phrases.
pub(crate) const MAX_BRANCHES: usize = 32;

/// Most literal sets over all branches of a rule: the compiler gives each its own bit in a
/// `u64` hit mask.
pub(crate) const MAX_SETS: usize = u64::BITS as usize;

/// A rule's prefilter condition in disjunctive normal form: the rule can match only if, for
/// some branch, every literal set of that branch has a literal in the value. Empty means
/// "no usable condition": the rule always runs.
pub(crate) type Dnf = Vec<Vec<LiteralSet>>;

/// Computes the prefilter condition of `hir`. A top-level alternation of phrases
/// (`ignore … instructions|your new task is`) keeps one conjunction per phrase, so each
/// phrase needs all of its own words; anything else is one conjunction.
pub(crate) fn required_literals(hir: &Hir) -> Dnf {
    if let Some(branches) = dnf(hir) {
        if branches.len() <= MAX_BRANCHES
            && branches.iter().map(Vec::len).sum::<usize>() <= MAX_SETS
        {
            return branches;
        }
    }
    let conj = prune(required_all(hir));
    if conj.is_empty() {
        Vec::new()
    } else {
        vec![conj]
    }
}

/// Parses a rule pattern the way every rule regex is compiled: bytes, not Unicode, so
/// classes stay byte classes and non-UTF-8 literals are allowed.
pub(crate) fn parse_pattern(pattern: &str) -> Result<Hir, Box<regex_syntax::Error>> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(Box::new)
}

/// Rewrites `hir` for values whose whitespace is canonical: after `compress_whitespace`
/// (and nothing but `lowercase` later) every whitespace run is exactly one space, so a
/// whitespace class matches only ` `, `\s+` matches exactly ` ` and `\s*` matches nothing
/// or ` `. Phrases then extract as whole literals (`stay in character` instead of three
/// words that ordinary prose contains one by one), which is what keeps natural-language
/// rules from becoming candidates on every prompt.
pub(crate) fn canonical_whitespace(hir: &Hir) -> Hir {
    let space = || Hir::literal(b" ".to_vec());
    match hir.kind() {
        HirKind::Class(c) if only_whitespace(c) => space(),
        HirKind::Repetition(r) if matches!(r.sub.kind(), HirKind::Class(c) if only_whitespace(c)) => {
            if r.min >= 1 {
                space()
            } else {
                Hir::repetition(Repetition {
                    min: 0,
                    max: Some(1),
                    greedy: true,
                    sub: Box::new(space()),
                })
            }
        }
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(canonical_whitespace(&r.sub)),
            ..r.clone()
        }),
        HirKind::Capture(c) => canonical_whitespace(&c.sub),
        HirKind::Concat(cs) => Hir::concat(cs.iter().map(canonical_whitespace).collect()),
        HirKind::Alternation(alts) => {
            Hir::alternation(alts.iter().map(canonical_whitespace).collect())
        }
        _ => hir.clone(),
    }
}

/// Whether a class contains a space and nothing but ASCII whitespace (`\s`, `[ \t]`).
fn only_whitespace(c: &Class) -> bool {
    let ranges = class_ranges(c);
    ranges
        .iter()
        .all(|&(lo, hi)| (lo..=hi).all(|x| x == 32 || (9..=13).contains(&x)))
        && ranges.iter().any(|&(lo, hi)| lo <= 32 && 32 <= hi)
}

/// A class's ranges as code points (bytes for a byte class).
fn class_ranges(c: &Class) -> Vec<(u32, u32)> {
    match c {
        Class::Bytes(b) => b
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        Class::Unicode(u) => u
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
    }
}

fn dnf(hir: &Hir) -> Option<Dnf> {
    match hir.kind() {
        HirKind::Capture(c) => dnf(&c.sub),
        HirKind::Alternation(alts) => {
            let mut out = Vec::new();
            for a in alts {
                out.extend(dnf(a)?);
                if out.len() > MAX_BRANCHES {
                    return None;
                }
            }
            Some(out)
        }
        HirKind::Concat(cs) => {
            // `\b(?:a|b)` and `^(?:a|b)$`: zero-width assertions around one alternation.
            let mut rest = cs.iter().filter(|c| !matches!(c.kind(), HirKind::Look(_)));
            match (rest.next(), rest.next()) {
                (Some(only), None)
                    if matches!(only.kind(), HirKind::Alternation(_) | HirKind::Capture(_)) =>
                {
                    dnf(only)
                }
                _ => conj(hir),
            }
        }
        _ => conj(hir),
    }
}

fn conj(hir: &Hir) -> Option<Dnf> {
    let c = prune(required_all(hir));
    (!c.is_empty()).then(|| vec![c])
}

/// Frequent English words: a literal set containing one is hit several times in every
/// ordinary prompt, and each hit costs a search call. Such sets are kept only when a
/// conjunction has nothing rarer; dropping a set from a conjunction is always sound.
const COMMON: &[&str] = &[
    "the", "and", "you", "your", "for", "that", "this", "with", "from", "have", "are", "was",
    "were", "not", "but", "all", "any", "can", "will", "what", "when", "which", "there", "their",
    "about", "would", "make", "like", "just", "know", "take", "into", "year", "some", "could",
    "them", "than", "then", "now", "only", "its", "over", "also", "back", "after", "use", "two",
    "how", "our", "work", "first", "well", "way", "even", "new", "want", "because", "these",
    "give", "most", "text", "rules", "system", "given", "start", "before", "above", "message",
    "mode", "set", "get", "out", "one", "time", "more", "write", "list", "show", "say", "tell",
    "her", "him", "his", "she", "they", "who", "should", "must", "act", "enter", "enable",
    "without", "until", "times", "prompt",
];

fn is_common(set: &LiteralSet) -> bool {
    has_word(set, COMMON) || has_word(set, STOP)
}

/// The most frequent words of all: a set holding one of these is hit in nearly every
/// sentence, so it is dropped whenever anything else is left to require.
const STOP: &[&str] = &[
    "the", "and", "you", "your", "for", "that", "this", "with", "from", "are", "was", "were",
    "not", "but", "all", "any", "can", "what", "its", "our", "now", "new", "how", "who", "they",
    "have", "has", "will", "there", "their", "then", "than", "them", "one",
];

fn has_word(set: &LiteralSet, words: &[&str]) -> bool {
    set.iter()
        .any(|l| words.iter().any(|c| c.as_bytes() == l.as_slice()))
}

/// Drops frequent-word sets from a conjunction that has a rarer one; a conjunction of
/// only frequent words keeps those that are not stop words (or, failing that, all of
/// them), since together they still filter well.
fn prune(mut conj: Vec<LiteralSet>) -> Vec<LiteralSet> {
    if conj.iter().any(|s| !is_common(s)) {
        conj.retain(|s| !is_common(s));
    } else if conj.iter().any(|s| !has_word(s, STOP)) {
        conj.retain(|s| !has_word(s, STOP));
    }
    conj
}

fn worth(set: &LiteralSet) -> bool {
    !set.is_empty() && set.len() <= MAX_SET && set.iter().all(|l| useful(l))
}

/// Whether a literal is selective enough to be worth searching for: long enough, or made
/// only of bytes that ordinary prose rarely contains. One-byte literals are searched with
/// memchr rather than the literal automaton, so any byte that is not a letter, digit,
/// space or sentence punctuation is worth it (`\0`, `<`, `$`, `|`, quotes); two-byte
/// literals of punctuation (`..`, `//`, `$(`) are rare in prose as pairs even where one of
/// their bytes is common.
fn useful(l: &[u8]) -> bool {
    match l {
        [] => false,
        [b] => !b.is_ascii_alphanumeric() && !b" .,-:;!?()/".contains(b),
        [a, b] => a.is_ascii_punctuation() && b.is_ascii_punctuation(),
        _ => true,
    }
}

/// The exact single string `hir` matches (case-folded), if it matches only one (up to ASCII
/// case).
fn exact(hir: &Hir) -> Option<Vec<u8>> {
    match hir.kind() {
        // Zero-width: an assertion only narrows where the surrounding literal can be.
        HirKind::Empty | HirKind::Look(_) => Some(Vec::new()),
        HirKind::Literal(l) => Some(l.0.to_ascii_lowercase()),
        HirKind::Class(c) => single_char(c),
        HirKind::Capture(c) => exact(&c.sub),
        HirKind::Concat(cs) => {
            let mut out = Vec::new();
            for c in cs {
                out.extend(exact(c)?);
            }
            Some(out)
        }
        HirKind::Repetition(r) if r.min == r.max.unwrap_or(u32::MAX) && r.min <= 8 => {
            let one = exact(&r.sub)?;
            Some(one.repeat(r.min as usize))
        }
        _ => None,
    }
}

/// A class matching one byte/char, or one ASCII letter in both cases.
fn single_char(c: &Class) -> Option<Vec<u8>> {
    let ranges = class_ranges(c);
    let encode = |cp: u32| -> Option<Vec<u8>> {
        match c {
            Class::Bytes(_) => Some(vec![cp as u8]),
            Class::Unicode(_) => {
                let ch = char::from_u32(cp)?;
                let mut b = [0u8; 4];
                Some(ch.encode_utf8(&mut b).as_bytes().to_vec())
            }
        }
    };
    match ranges.as_slice() {
        [(a, b)] if a == b => encode(*a).map(|v| v.to_ascii_lowercase()),
        [(a, b), (c, d)] if a == b && c == d => {
            let (x, y) = (*a, *c);
            if x < 128 && y < 128 && (x as u8).eq_ignore_ascii_case(&(y as u8)) {
                Some(vec![(x as u8).to_ascii_lowercase()])
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The finite set of strings `hir` matches (case-folded), if it is small: an exact string, an
/// alternation of exact strings, or a class of a few characters.
fn exact_set(hir: &Hir) -> Option<LiteralSet> {
    if let Some(e) = exact(hir) {
        return Some(vec![e]);
    }
    match hir.kind() {
        HirKind::Capture(c) => exact_set(&c.sub),
        HirKind::Class(c) => small_class(c),
        HirKind::Repetition(r) if r.min == 0 && r.max == Some(1) => {
            let mut set = exact_set(&r.sub)?;
            set.push(Vec::new());
            Some(set)
        }
        HirKind::Alternation(alts) => {
            let mut out = Vec::new();
            for a in alts {
                out.extend(exact_set(a)?);
                if out.len() > MAX_SET {
                    return None;
                }
            }
            out.sort();
            out.dedup();
            Some(out)
        }
        HirKind::Concat(cs) => {
            let mut cur: LiteralSet = vec![Vec::new()];
            for c in cs {
                cur = product(&cur, &exact_set(c)?)?;
            }
            Some(cur)
        }
        _ => None,
    }
}

/// The characters of a small class, ASCII-case-folded.
fn small_class(c: &Class) -> Option<LiteralSet> {
    let mut out: LiteralSet = Vec::new();
    let mut push = |v: Vec<u8>| {
        let v = v.to_ascii_lowercase();
        if !out.contains(&v) {
            out.push(v);
        }
    };
    match c {
        Class::Bytes(b) => {
            for r in b.ranges() {
                if (r.end() - r.start()) as usize >= MAX_CLASS * 2 {
                    return None;
                }
                for x in r.start()..=r.end() {
                    push(vec![x]);
                }
            }
        }
        Class::Unicode(u) => {
            for r in u.ranges() {
                if (r.end() as u32 - r.start() as u32) as usize >= MAX_CLASS * 2 {
                    return None;
                }
                for x in r.start()..=r.end() {
                    let mut b = [0u8; 4];
                    push(x.encode_utf8(&mut b).as_bytes().to_vec());
                }
            }
        }
    }
    (out.len() <= MAX_CLASS).then_some(out)
}

/// Every concatenation of one string of `a` with one of `b`, if that stays small.
fn product(a: &LiteralSet, b: &LiteralSet) -> Option<LiteralSet> {
    if a.len() * b.len() > MAX_SET {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut v = x.clone();
            v.extend_from_slice(y);
            out.push(v);
        }
    }
    Some(out)
}

/// The best single required set of `hir` (for alternation branches).
fn required(hir: &Hir) -> Option<LiteralSet> {
    required_all(hir).into_iter().next()
}

fn required_all(hir: &Hir) -> Vec<LiteralSet> {
    if let Some(e) = exact(hir) {
        let set = vec![e];
        return if worth(&set) { vec![set] } else { Vec::new() };
    }
    match hir.kind() {
        HirKind::Capture(c) => required_all(&c.sub),
        // `\.{2,3}` requires `..`: the mandatory copies of an exact piece, concatenated.
        HirKind::Repetition(r) if (2..=8).contains(&r.min) && exact(&r.sub).is_some() => {
            let one = exact(&r.sub).unwrap_or_default();
            let set = vec![one.repeat(r.min as usize)];
            if worth(&set) {
                vec![set]
            } else {
                required_all(&r.sub)
            }
        }
        HirKind::Repetition(r) if r.min >= 1 => required_all(&r.sub),
        HirKind::Alternation(alts) => {
            let mut out: LiteralSet = Vec::new();
            for a in alts {
                match required(a) {
                    Some(s) => out.extend(s),
                    None => return Vec::new(),
                }
                if out.len() > MAX_SET {
                    return Vec::new();
                }
            }
            out.sort();
            out.dedup();
            // A literal that contains another is implied by it; keep the shorter one only.
            let snapshot = out.clone();
            out.retain(|l| {
                !snapshot
                    .iter()
                    .any(|s| s != l && memchr::memmem::find(l, s).is_some())
            });
            if worth(&out) {
                vec![out]
            } else {
                Vec::new()
            }
        }
        HirKind::Concat(cs) => {
            // Adjacent pieces with small exact sets multiply into longer literals
            // (`on(?:load|error)` → `onload`, `onerror`); anything else ends the run. Every
            // run and every child's own required sets are required by the whole concat.
            let mut cands: Vec<LiteralSet> = Vec::new();
            let mut run: Option<LiteralSet> = None;
            for c in cs {
                if let Some(set) = exact_set(c) {
                    let next = match &run {
                        None => Some(set.clone()),
                        Some(r) => product(r, &set),
                    };
                    match next {
                        Some(n) => run = Some(n),
                        None => {
                            cands.extend(run.take());
                            run = Some(set);
                        }
                    }
                    continue;
                }
                cands.extend(run.take());
                cands.extend(required_all(c));
            }
            cands.extend(run.take());
            cands.retain(worth);
            cands.sort_by_key(|s| std::cmp::Reverse(key(s)));
            cands.dedup();
            cands.truncate(MAX_CONJ);
            cands
        }
        _ => Vec::new(),
    }
}

/// Ranks sets: longer shortest literal first (fewer false candidates), then smaller sets.
fn key(s: &LiteralSet) -> (usize, usize) {
    let min = s.iter().map(Vec::len).min().unwrap_or(0).min(8);
    (min, usize::MAX - s.len())
}

/// The prefilter condition of a regex source, as used by the compiler (for tooling): a match
/// is possible only if, for some branch, every set of that branch has a literal present.
pub fn literals_of(pattern: &str) -> Vec<Vec<Vec<String>>> {
    let Ok(hir) = parse_pattern(pattern) else {
        return Vec::new();
    };
    required_literals(&hir)
        .into_iter()
        .map(|branch| {
            branch
                .into_iter()
                .map(|s| {
                    s.into_iter()
                        .map(|l| String::from_utf8_lossy(&l).into_owned())
                        .collect()
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(p: &str) -> Vec<Vec<String>> {
        let mut d = literals_of(p);
        assert!(d.len() <= 1, "{p}: {d:?}");
        d.pop().unwrap_or_default()
    }

    fn one(v: &[&str]) -> Vec<Vec<String>> {
        vec![v.iter().map(|s| s.to_string()).collect()]
    }

    #[test]
    fn extraction() {
        assert_eq!(
            lits("(?i)union\\s+select"),
            vec![vec!["select".to_string()], vec!["union".to_string()]]
        );
        assert_eq!(lits("abc"), one(&["abc"]));
        let handlers = vec![
            vec!["onerror".to_string(), "onload".to_string()],
            vec!["=".to_string()],
        ];
        assert_eq!(lits("(?i)(onload|onerror)\\s*="), handlers);
        assert_eq!(lits("(?i)on(load|error)\\s*="), handlers);
        // Short words are dropped; rare punctuation is kept.
        assert!(lits("\\bor\\s*\\d").is_empty());
        assert_eq!(lits("['\"]\\s*or"), one(&["\"", "'"]));
        assert_eq!(lits("\\.\\./"), one(&["../"]));
        // Mandatory repetitions, punctuation pairs and rare bytes are kept.
        assert_eq!(lits("\\.{2,3}[/\\\\]"), one(&[".."]));
        assert_eq!(lits("\\x00"), one(&["\0"]));
        assert_eq!(lits("[a-z]//"), one(&["//"]));
        assert!(lits("\\w\\.\\d").is_empty());
        assert_eq!(lits("x['\"]or"), one(&["x\"or", "x'or"]));
        assert!(lits("\\w+").is_empty());
        assert!(lits("a|\\d").is_empty());
        assert!(lits("(?:x)?").is_empty());
        assert_eq!(lits("(?i)<script"), one(&["<script"]));
        // A literal containing another is implied by it.
        assert_eq!(
            literals_of("\\s(?:abc|abcd\\d)"),
            vec![vec![vec!["abc".to_string()]]]
        );
        // Conjunctions: every set is required, best first, at most MAX_CONJ.
        // Frequent words ("now") are dropped when rarer sets exist.
        assert_eq!(
            lits("(?i)ignore\\s+(?:all\\s+)?previous\\s+instructions\\s+now"),
            vec![
                vec!["previous".to_string()],
                vec!["instructions".to_string()],
                vec!["ignore".to_string()]
            ]
        );
    }

    #[test]
    fn canonical_whitespace_turns_phrases_into_literals() {
        let canon = |p: &str| {
            let hir = parse_pattern(p).unwrap();
            required_literals(&canonical_whitespace(&hir))
                .into_iter()
                .map(|b| {
                    b.into_iter()
                        .map(|s| {
                            s.into_iter()
                                .map(|l| String::from_utf8(l).unwrap())
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            canon(r"\bstay\s+in\s+character\b"),
            vec![vec![vec!["stay in character".to_string()]]]
        );
        assert_eq!(
            canon(r"new\s*:"),
            vec![vec![vec!["new :".to_string(), "new:".to_string()]]]
        );
        // Classes mixing whitespace with other bytes are left alone.
        assert_eq!(
            canon(r"alpha[\s,]omega"),
            vec![vec![vec!["alpha".to_string()], vec!["omega".to_string()]]]
        );
    }

    #[test]
    fn phrase_alternations_keep_one_conjunction_per_phrase() {
        let d = literals_of("\\b(?:your\\s+new\\s+task|new\\s+rules\\s*:|act\\s+as\\s+dan)");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            d,
            vec![vec![s(&["task"])], vec![s(&["rules"])], vec![s(&["dan"])],]
        );
        // A branch without any literal makes the whole rule unfiltered.
        assert!(literals_of("abc\\s+def|\\d+").is_empty());
    }
}
