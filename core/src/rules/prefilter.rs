//! Required-literal extraction for the prefilter.
//!
//! For a regex we compute a set of literals such that every match contains at least one of
//! them. If a field contains none of a rule's literals, the rule cannot match there — the
//! only statement a prefilter may make ("definitely no"). We keep our own literal → rule map
//! because regex-automata's built-in prefilter drops pattern identity.

use regex_syntax::hir::{Class, Hir, HirKind};

/// At most this many literals per rule; larger sets stop paying for themselves.
const MAX_SET: usize = 48;
/// Sets whose shortest literal is shorter than this match nearly every text (`or`, `'`),
/// so the rule runs without our prefilter and the regex engine's own one decides.
const MIN_LEN: usize = 3;
/// Classes of at most this many characters expand into literal sets (`['"]` → `'`, `"`).
const MAX_CLASS: usize = 4;

/// A set of alternatives, one of which every match contains; ASCII-lowercased.
pub(crate) type LiteralSet = Vec<Vec<u8>>;

/// Returns the best required-literal set of `hir`, or `None` if it has none worth using.
pub(crate) fn required_literals(hir: &Hir) -> Option<LiteralSet> {
    let set = required(hir)?;
    if set.is_empty() || set.iter().any(|l| !useful(l)) || set.len() > MAX_SET {
        return None;
    }
    Some(set)
}

/// Whether a literal is selective enough to be worth searching for: long enough, or made
/// only of punctuation that ordinary prose rarely contains (quotes, `<`, `$`, `{`, `|`),
/// which SIMD search skips over as fast as a long literal.
fn useful(l: &[u8]) -> bool {
    l.len() >= MIN_LEN
        || (!l.is_empty()
            && l.iter()
                .all(|&b| b.is_ascii_punctuation() && !b".,-:;!?()/".contains(&b)))
}

/// The exact single string `hir` matches (case-folded), if it matches only one (up to ASCII
/// case).
fn exact(hir: &Hir) -> Option<Vec<u8>> {
    match hir.kind() {
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
    let ranges: Vec<(u32, u32)> = match c {
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
    };
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

fn required(hir: &Hir) -> Option<LiteralSet> {
    if let Some(e) = exact(hir) {
        return if e.is_empty() { None } else { Some(vec![e]) };
    }
    match hir.kind() {
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        HirKind::Alternation(alts) => {
            let mut out: LiteralSet = Vec::new();
            for a in alts {
                out.extend(required(a)?);
                if out.len() > MAX_SET {
                    return None;
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
            Some(out)
        }
        HirKind::Concat(cs) => {
            // Adjacent pieces with small exact sets multiply into longer literals
            // (`on(?:load|error)` → `onload`, `onerror`); anything else ends the run.
            let mut best: Option<LiteralSet> = None;
            let mut run: Option<LiteralSet> = None;
            let consider = |cand: LiteralSet, best: &mut Option<LiteralSet>| {
                if better(&cand, best.as_ref()) {
                    *best = Some(cand);
                }
            };
            for c in cs {
                if let Some(set) = exact_set(c) {
                    let next = match &run {
                        None => Some(set.clone()),
                        Some(r) => product(r, &set),
                    };
                    match next {
                        Some(n) => {
                            run = Some(n);
                            continue;
                        }
                        None => {
                            if let Some(r) = run.take() {
                                consider(r, &mut best);
                            }
                            run = Some(set);
                            continue;
                        }
                    }
                }
                if let Some(r) = run.take() {
                    consider(r, &mut best);
                }
                if let Some(s) = required(c) {
                    consider(s, &mut best);
                }
            }
            if let Some(r) = run.take() {
                consider(r, &mut best);
            }
            best
        }
        _ => None,
    }
}

/// Prefers sets whose shortest literal is longer (fewer false candidates), then smaller sets.
fn better(cand: &LiteralSet, best: Option<&LiteralSet>) -> bool {
    let key = |s: &LiteralSet| {
        let min = s.iter().map(Vec::len).min().unwrap_or(0).min(8);
        (s.iter().all(|l| useful(l)), min, usize::MAX - s.len())
    };
    match best {
        None => true,
        Some(b) => key(cand) > key(b),
    }
}

/// The required-literal set of a regex source, as used by the compiler (for tooling).
pub fn literals_of(pattern: &str) -> Option<Vec<String>> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    required_literals(&hir).map(|s| {
        s.into_iter()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(p: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(p)
            .unwrap();
        required_literals(&hir).map(|s| {
            s.into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect()
        })
    }

    #[test]
    fn extraction() {
        assert_eq!(lits("(?i)union\\s+select"), Some(vec!["select".into()]));
        assert_eq!(lits("abc"), Some(vec!["abc".into()]));
        assert_eq!(
            lits("(?i)(onload|onerror)\\s*="),
            Some(vec!["onerror".into(), "onload".into()])
        );
        // Short words are dropped; rare punctuation is kept.
        assert_eq!(lits("\\bor\\s*\\d"), None);
        assert_eq!(lits("['\"]\\s*or"), Some(vec!["\"".into(), "'".into()]));
        assert_eq!(lits("\\.\\./"), Some(vec!["../".into()]));
        assert_eq!(lits("x['\"]or"), Some(vec!["x\"or".into(), "x'or".into()]));
        assert_eq!(lits("\\w+"), None);
        assert_eq!(lits("a|\\d"), None);
        assert_eq!(lits("(?:x)?"), None);
        assert_eq!(lits("(?i)<script"), Some(vec!["<script".into()]));
        // A literal containing another is implied by it.
        assert_eq!(lits("abc|abcd"), Some(vec!["abc".into()]));
    }
}
