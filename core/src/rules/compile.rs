//! The rule compiler: groups rules by (targets, roles, transform chain) and builds, per
//! group, one multi-pattern regex, and per transform-chain node the literal prefilters that
//! decide which rules may match.
//!
//! Budget reasoning (see DESIGN.md's measured facts): a CRS-sized regex set in one lazy DFA
//! with default settings costs tens of milliseconds and gigabytes of cache, so every regex
//! here is byte-oriented (ASCII classes), carries no capture states unless it must report a
//! span, has a bounded cache, and only runs on a field after the prefilter said some of its
//! rules may match.
//!
//! The prefilter is ours: each rule has a condition in disjunctive normal form over literal
//! sets (see `prefilter.rs`); a rule is a candidate once, for one of its phrases, a literal
//! of every required set was seen. The search is delegated: one-byte literals (rare
//! punctuation) with `memchr`; multi-byte literals with aho-corasick (Teddy to find the
//! first occurrence, then one overlapping DFA pass) when the chain lowercased the value, or
//! a regex-automata literal set in `(?i-u)` mode otherwise (it keeps Teddy, where
//! aho-corasick's ASCII case-insensitive mode falls back to a byte-at-a-time automaton).
//! Prefilters are keyed by (chain node, field kind, role), and when a field's chains all
//! produce the same bytes (ordinary text: the decoders found nothing), one merged pass
//! serves them all.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use super::detect::Detector;
use super::prefilter::required_literals;
use super::{Category, RuleDef, Target};
use crate::error::{CompileError, CompileErrorKind};
use crate::field::{Field, FieldKind, Role};
use crate::transform::Transform;

/// Lazy-DFA cache bound per multi-pattern regex. Past it the meta regex falls back to
/// slower but still linear engines instead of growing.
const MULTI_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Cache bound per single-rule regex (used only to find a span after a match).
const SINGLE_CACHE_BYTES: usize = 256 * 1024;
/// NFA size bound per regex, so a hostile rule file cannot exhaust memory at build time.
const NFA_SIZE_LIMIT: usize = 16 * 1024 * 1024;

/// A bit set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RoleMask(pub u8);

impl RoleMask {
    pub(crate) const DEFAULT: RoleMask =
        RoleMask((1 << Role::User as u8) | (1 << Role::Tool as u8));

    fn from_roles(r: &[Role]) -> RoleMask {
        RoleMask(r.iter().fold(0, |m, r| m | (1 << *r as u8)))
    }

    #[inline]
    pub(crate) fn admits(self, role: Option<Role>) -> bool {
        match role {
            None => true,
            Some(r) => self.0 & (1 << r as u8) != 0,
        }
    }
}

/// Transform chains as a trie: chains sharing a prefix share nodes, so per field the shared
/// prefix is computed once. Node 0 is the identity.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransformTrie {
    /// `(parent, transform)` per node; node 0's entry is unused.
    pub(crate) nodes: Vec<(u32, Option<Transform>)>,
}

impl TransformTrie {
    fn new() -> TransformTrie {
        TransformTrie {
            nodes: vec![(0, None)],
        }
    }

    fn insert(&mut self, chain: &[Transform]) -> u32 {
        let mut at = 0u32;
        for t in chain {
            let found = self
                .nodes
                .iter()
                .enumerate()
                .skip(1)
                .position(|(_, (p, tt))| *p == at && *tt == Some(*t));
            at = match found {
                Some(i) => (i + 1) as u32,
                None => {
                    self.nodes.push((at, Some(*t)));
                    (self.nodes.len() - 1) as u32
                }
            };
        }
        at
    }

    /// Whether the chain ending at `node` leaves no ASCII upper case behind.
    fn lowercases(&self, node: u32) -> bool {
        // Only the last case-affecting transform matters; decoders after a Lowercase can
        // reintroduce upper case (`%41`), so Lowercase must be last among them.
        let mut n = node;
        while n != 0 {
            let (p, t) = self.nodes[n as usize];
            match t {
                Some(Transform::Lowercase) | Some(Transform::CmdLine) => return true,
                Some(Transform::CompressWhitespace)
                | Some(Transform::RemoveWhitespace)
                | Some(Transform::RemoveNulls)
                | Some(Transform::NormalizePath) => {}
                _ => return false,
            }
            n = p;
        }
        false
    }
}

/// How a rule decides.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Index into [`Program::singles`].
    Regex(u32),
    Detector(Detector),
    LengthOver(u64),
}

/// A rule ready to run.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) id: u32,
    pub(crate) name: Arc<str>,
    pub(crate) category: Category,
    pub(crate) score: u32,
    pub(crate) chain: u32,
    pub(crate) op: Op,
}

/// Finds the leftmost literal occurrence at or after a position.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Case-sensitive (the chain lowercased the value): an aho-corasick DFA searched with
    /// overlapping matches in one pass. Measured against a leftmost-first search restarted
    /// after each hit (Teddy-accelerated, but ~1,000 instructions per call): prose hits
    /// common literals hundreds of times per 4 KiB, and the single DFA pass (a few
    /// instructions per byte) is several times cheaper.
    Exact {
        /// Leftmost-first with Teddy: finds where the first literal starts, at SIMD speed,
        /// and usually that there is none.
        first: aho_corasick::AhoCorasick,
        /// Overlapping DFA search from there on.
        all: aho_corasick::AhoCorasick,
    },
    /// ASCII case-insensitive: a regex-automata literal set in `(?i-u)` mode, which keeps
    /// Teddy, where aho-corasick's own case-insensitive mode falls back to a byte-at-a-time
    /// automaton.
    Folded(Regex),
}

/// "A literal of required set `bit` of the regex rule in slot `slot` was seen." Slots
/// number the regex rules of all groups consecutively (`Group::base` + local index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Hit {
    slot: u32,
    bit: u32,
    group: u32,
}

/// The prefilter of one transform-chain node, shared by every group on that node: the
/// value is the same for all of them, so it is searched once per field.
#[derive(Debug, Default)]
pub(crate) struct NodePrefilter {
    /// Multi-byte literals, searched leftmost-first.
    probe: Option<Probe>,
    /// Per literal: the hits it stands for. A leftmost-first scan reports one literal per
    /// start position, so each literal also carries the hits of every literal that could
    /// match at the same position (see [`may_overlap`]); that keeps "no candidate" a proof
    /// of "no match".
    lit_hits: Vec<Vec<Hit>>,
    /// One-byte literals (rare punctuation), found with memchr: Teddy's nibble fingerprints
    /// turn single bytes like `` ` `` and `"` into false hits on every space.
    byte_hits: Vec<(u8, Vec<Hit>)>,
}

const NO_PREFILTER: u32 = u32::MAX;

/// The roles a field can have, as prefilter keys (index 0: not a prompt field).
const ROLE_KEYS: [Option<Role>; 5] = [
    None,
    Some(Role::System),
    Some(Role::User),
    Some(Role::Assistant),
    Some(Role::Tool),
];
const PF_KEYS: usize = 15 * ROLE_KEYS.len();

fn role_key(r: Option<Role>) -> usize {
    match r {
        None => 0,
        Some(r) => 1 + r as usize,
    }
}

impl NodePrefilter {
    fn build<'a>(
        entries: impl Iterator<Item = &'a (Vec<u8>, Hit)>,
        lowercased: bool,
    ) -> Result<NodePrefilter, CompileError> {
        let mut lits: Vec<Vec<u8>> = Vec::new();
        let mut own: Vec<Vec<Hit>> = Vec::new();
        let mut byte_hits: Vec<(u8, Vec<Hit>)> = Vec::new();
        for (l, hit) in entries {
            if let [b] = l.as_slice() {
                match byte_hits.iter_mut().find(|(x, _)| x == b) {
                    Some((_, v)) => v.push(*hit),
                    None => byte_hits.push((*b, vec![*hit])),
                }
            } else {
                match lits.iter().position(|x| x == l) {
                    Some(p) => own[p].push(*hit),
                    None => {
                        lits.push(l.clone());
                        own.push(vec![*hit]);
                    }
                }
            }
        }
        let lit_hits: Vec<Vec<Hit>> = (0..lits.len())
            .map(|i| {
                let mut v: Vec<Hit> = (0..lits.len())
                    .filter(|&j| j == i || may_overlap(&lits[i], &lits[j]))
                    .flat_map(|j| own[j].iter().copied())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let err =
            |e: String| CompileError::new(CompileErrorKind::TooLarge, format!("prefilter: {e}"));
        let probe = if lits.is_empty() {
            None
        } else if lowercased {
            Some(Probe::Exact {
                first: aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(&lits)
                    .map_err(|e| err(e.to_string()))?,
                all: aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::Standard)
                    .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                    .build(&lits)
                    .map_err(|e| err(e.to_string()))?,
            })
        } else {
            // Literals are stored lowercased; the value is not, so match folded.
            let pats: Vec<String> = lits
                .iter()
                .map(|l| format!("(?i-u:{})", escape_bytes(l)))
                .collect();
            Some(Probe::Folded(
                regex_builder(MatchKind::LeftmostFirst, SINGLE_CACHE_BYTES)
                    .build_many(&pats)
                    .map_err(|e| err(e.to_string()))?,
            ))
        };
        Ok(NodePrefilter {
            probe,
            lit_hits,
            byte_hits,
        })
    }
}

/// Rules sharing targets, roles and transform chain.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) targets: Vec<Target>,
    pub(crate) roles: RoleMask,
    pub(crate) chain: u32,
    /// Indices into [`Program::rules`] of regex rules, in pattern-id order of `multi`.
    pub(crate) regex_rules: Vec<u32>,
    /// All regex rules as one pattern set (all matches reported).
    pub(crate) multi: Option<Regex>,
    /// First slot of this group's regex rules.
    pub(crate) base: u32,
    /// Per local regex rule: one mask per branch of its prefilter condition, one bit per
    /// required literal set; the rule is a candidate once some branch's bits are all set.
    /// An empty list means the rule has no usable literals and always runs.
    pub(crate) branch_masks: Vec<Vec<u32>>,
    /// Detector and length rules (indices into [`Program::rules`]).
    pub(crate) other_rules: Vec<u32>,
    /// The shortest value any rule of the group can match (0 with detectors).
    pub(crate) min_len: usize,
}

impl Group {
    /// Whether some field of this kind and role can be read by the group (names aside).
    fn can_select(&self, kind: FieldKind, role: Option<Role>) -> bool {
        self.roles.admits(role)
            && self
                .targets
                .iter()
                .any(|t| t.kinds & (1 << kind as u16) != 0)
    }

    /// Whether the group reads `f`. Roles are not checked here: the scan only visits
    /// groups listed for the field's (kind, role), where the role check already happened.
    #[inline]
    pub(crate) fn selects(&self, f: &Field<'_>) -> bool {
        self.targets.iter().any(|t| t.selects(f))
    }
}

/// A compiled set of rules for one or more routes.
#[derive(Debug)]
pub(crate) struct Program {
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) groups: Vec<Group>,
    pub(crate) trie: TransformTrie,
    pub(crate) singles: Vec<Regex>,
    /// Prefilters, shared where their group lists are identical.
    pub(crate) prefilters: Vec<NodePrefilter>,
    /// Prefilter id per (chain node, field kind, role key), or [`NO_PREFILTER`].
    pub(crate) pf_index: Vec<u32>,
    /// Per (field kind, role key): a prefilter over the groups of all lowercasing chain nodes
    /// at once and those nodes, used when their values are identical for a field (nodes
    /// that keep case are still probed on their own).
    pub(crate) merged: Vec<Option<(u32, Vec<u32>)>>,
    /// Total regex-rule slots.
    pub(crate) slots: usize,
    /// Group indices per (field kind, role key), so a field only visits groups that can
    /// select it.
    pub(crate) by_kind: Vec<Vec<u32>>,
}

/// Whether `a` and `b` can both match at the same position: then one is a prefix of the
/// other. The probe resumes one byte after each reported match *start*, so every literal
/// occurrence is either reported or starts where a prefix-related one was reported;
/// linking those pairs keeps the scan exact without overlapping search.
pub(crate) fn may_overlap(a: &[u8], b: &[u8]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Escapes bytes for a regex with Unicode off: printable ASCII via `regex_syntax::escape`,
/// everything else as `\xNN`, so literals with non-ASCII or control bytes stay exact.
fn escape_bytes(l: &[u8]) -> String {
    let mut s = String::with_capacity(l.len() * 2);
    for &b in l {
        if b.is_ascii_graphic() || b == b' ' {
            s.push_str(&regex_syntax::escape(
                std::str::from_utf8(&[b]).unwrap_or(""),
            ));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

fn regex_builder(kind: MatchKind, cache: usize) -> meta::Builder {
    regex_builder_pf(kind, cache, true)
}

/// Rule regexes run only after our prefilter saw their literals, usually in ordinary text
/// where those literals are common; regex-automata's own prefilter would then stop the
/// lazy DFA at every occurrence and restart it (measured: two thirds of the regex time on
/// a 4 KiB prompt), so rule regexes scan with the DFA alone.
fn rule_regex_builder(kind: MatchKind, cache: usize) -> meta::Builder {
    regex_builder_pf(kind, cache, false)
}

fn regex_builder_pf(kind: MatchKind, cache: usize, prefilter: bool) -> meta::Builder {
    // Multi-pattern sets only answer "which patterns match", so they carry no capture
    // states at all; single-rule regexes need the implicit group to report a span.
    let captures = if kind == MatchKind::All {
        regex_automata::nfa::thompson::WhichCaptures::None
    } else {
        regex_automata::nfa::thompson::WhichCaptures::Implicit
    };
    let mut b = Regex::builder();
    b.syntax(syntax_config()).configure(
        Regex::config()
            .match_kind(kind)
            .utf8_empty(false)
            .which_captures(captures)
            .nfa_size_limit(Some(NFA_SIZE_LIMIT))
            .hybrid_cache_capacity(cache)
            .auto_prefilter(prefilter),
    );
    b
}

/// The regex source of a regex or literals rule.
fn pattern_of(def: &RuleDef) -> Option<String> {
    if let Some(r) = &def.regex {
        return Some(r.clone());
    }
    def.literals.as_ref().map(|ls| {
        ls.iter()
            .map(|l| regex_syntax::escape(l))
            .collect::<Vec<_>>()
            .join("|")
    })
}

/// Validates and compiles one rule's regex, rejecting what we cannot run in linear time.
pub(crate) fn compile_single(def: &RuleDef, pat: &str) -> Result<Regex, CompileError> {
    // Parse first for a precise message (look-around and back-references are syntax errors
    // in regex-syntax, which is exactly the guarantee we want).
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pat)
        .map_err(|e| {
            CompileError::new(CompileErrorKind::InvalidRegex, format!("{e}")).with_rule(def.id)
        })?;
    rule_regex_builder(MatchKind::LeftmostFirst, SINGLE_CACHE_BYTES)
        .build(pat)
        .map_err(|e| {
            let kind = if e.size_limit().is_some() {
                CompileErrorKind::TooLarge
            } else {
                CompileErrorKind::InvalidRegex
            };
            CompileError::new(kind, format!("{e}")).with_rule(def.id)
        })
}

impl Program {
    /// Compiles the given rules (already filtered for the route).
    pub(crate) fn build(defs: &[&RuleDef]) -> Result<Program, CompileError> {
        let mut trie = TransformTrie::new();
        let mut rules = Vec::with_capacity(defs.len());
        let mut singles = Vec::new();
        let mut literal_sets = Vec::new();
        // Per regex (index = single): the shortest value it can match.
        let mut min_lens: Vec<usize> = Vec::new();
        type Key = (Vec<Target>, RoleMask, u32);
        let mut groups: BTreeMap<Key, Vec<u32>> = BTreeMap::new();
        for def in defs {
            let chain = trie.insert(&def.transforms);
            let mut targets: Vec<Target> = def
                .targets
                .iter()
                .map(|t| Target::parse(t).map_err(|e| e.with_rule(def.id)))
                .collect::<Result<_, _>>()?;
            targets.sort();
            targets.dedup();
            let roles = def
                .roles
                .as_deref()
                .map(RoleMask::from_roles)
                .unwrap_or(RoleMask::DEFAULT);
            let op = if let Some(pat) = pattern_of(def) {
                let re = compile_single(def, &pat)?;
                let hir = regex_syntax::ParserBuilder::new()
                    .unicode(false)
                    .utf8(false)
                    .build()
                    .parse(&pat)
                    .ok();
                literal_sets.push(hir.as_ref().map(required_literals).unwrap_or_default());
                min_lens.push(
                    hir.as_ref()
                        .and_then(|h| h.properties().minimum_len())
                        .unwrap_or(0),
                );
                singles.push(re);
                Op::Regex((singles.len() - 1) as u32)
            } else if let Some(d) = &def.detector {
                Op::Detector(Detector::by_name(d).ok_or_else(|| {
                    CompileError::new(CompileErrorKind::UnknownReference, "unknown detector")
                        .with_rule(def.id)
                })?)
            } else if let Some(n) = def.length_over {
                Op::LengthOver(n)
            } else {
                return Err(CompileError::new(
                    CompileErrorKind::InvalidValue,
                    "rule has no operator",
                )
                .with_rule(def.id));
            };
            groups
                .entry((targets, roles, chain))
                .or_default()
                .push(rules.len() as u32);
            rules.push(CompiledRule {
                id: def.id,
                name: Arc::from(def.name.as_str()),
                category: def.category,
                score: def.effective_score(),
                chain,
                op,
            });
        }
        let mut out_groups = Vec::with_capacity(groups.len());
        // Per chain node: literal → hits, and one-byte literal → hits.
        // Per group: every (literal, hit) its rules contribute to a prefilter.
        let mut group_lits: Vec<Vec<(Vec<u8>, Hit)>> = Vec::new();
        let mut slots = 0u32;
        for ((targets, roles, chain), members) in groups {
            let mut regex_rules = Vec::new();
            let mut other_rules = Vec::new();
            let mut patterns = Vec::new();
            for &ri in &members {
                match rules[ri as usize].op {
                    Op::Regex(si) => {
                        regex_rules.push(ri);
                        patterns.push(si);
                    }
                    _ => other_rules.push(ri),
                }
            }
            let base = slots;
            slots += regex_rules.len() as u32;
            let mut branch_masks: Vec<Vec<u32>> = Vec::with_capacity(patterns.len());
            let mut entries: Vec<(Vec<u8>, Hit)> = Vec::new();
            for (local, &si) in patterns.iter().enumerate() {
                let mut masks = Vec::new();
                let mut next_bit = 0u32;
                for branch in &literal_sets[si as usize] {
                    let mut mask = 0u32;
                    for set in branch {
                        let hit = Hit {
                            slot: base + local as u32,
                            bit: 1 << next_bit,
                            group: out_groups.len() as u32,
                        };
                        mask |= hit.bit;
                        next_bit += 1;
                        entries.extend(set.iter().map(|l| (l.clone(), hit)));
                    }
                    masks.push(mask);
                }
                branch_masks.push(masks);
            }
            let multi = if regex_rules.is_empty() {
                None
            } else {
                let sources: Vec<String> = regex_rules
                    .iter()
                    .map(|&ri| pattern_of(defs[ri as usize]).unwrap_or_default())
                    .collect();
                Some(
                    rule_regex_builder(MatchKind::All, MULTI_CACHE_BYTES)
                        .build_many(&sources)
                        .map_err(|e| {
                            CompileError::new(
                                CompileErrorKind::TooLarge,
                                format!("rule group: {e}"),
                            )
                        })?,
                )
            };
            group_lits.push(entries);
            // Transforms never lengthen a value, so a field shorter than every rule's
            // shortest possible match cannot match any of them.
            let min_len = if other_rules.is_empty() {
                patterns
                    .iter()
                    .map(|&si| min_lens[si as usize])
                    .min()
                    .unwrap_or(0)
            } else {
                0
            };
            out_groups.push(Group {
                targets,
                roles,
                chain,
                regex_rules,
                multi,
                base,
                branch_masks,
                other_rules,
                min_len,
            });
        }
        // One prefilter per (chain node, field kind, role) over exactly the groups such a
        // field can select, so a prompt field never searches for literals of rules that
        // only read headers; identical group lists share one prefilter.
        let mut prefilters: Vec<NodePrefilter> = Vec::new();
        let mut by_groups: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
        // The prefilter over exactly these groups, built once per distinct group list.
        let mut intern = |members: Vec<u32>, lowercased: bool| -> Result<u32, CompileError> {
            if let Some(&id) = by_groups.get(&members) {
                return Ok(id);
            }
            let entries = members
                .iter()
                .flat_map(|&gi| group_lits[gi as usize].iter());
            prefilters.push(NodePrefilter::build(entries, lowercased)?);
            let id = (prefilters.len() - 1) as u32;
            by_groups.insert(members, id);
            Ok(id)
        };
        let mut pf_index = vec![NO_PREFILTER; trie.nodes.len() * PF_KEYS];
        for node in 0..trie.nodes.len() {
            for kind in FieldKind::ALL {
                for (ri, role) in ROLE_KEYS.iter().enumerate() {
                    let members: Vec<u32> = out_groups
                        .iter()
                        .enumerate()
                        .filter(|(gi, g)| {
                            g.chain as usize == node
                                && !group_lits[*gi].is_empty()
                                && g.can_select(kind, *role)
                        })
                        .map(|(gi, _)| gi as u32)
                        .collect();
                    if members.is_empty() {
                        continue;
                    }
                    let id = intern(members, trie.lowercases(node as u32))?;
                    pf_index
                        [(node * FieldKind::ALL.len() + kind as usize) * ROLE_KEYS.len() + ri] = id;
                }
            }
        }
        // Per (field kind, role): one prefilter over every lowercasing chain node's groups,
        // for fields where all those nodes produce the same bytes.
        let mut merged = Vec::with_capacity(FieldKind::ALL.len() * ROLE_KEYS.len());
        for kind in FieldKind::ALL {
            for role in ROLE_KEYS {
                let members: Vec<u32> = out_groups
                    .iter()
                    .enumerate()
                    .filter(|(gi, g)| {
                        !group_lits[*gi].is_empty()
                            && trie.lowercases(g.chain)
                            && g.can_select(kind, role)
                    })
                    .map(|(gi, _)| gi as u32)
                    .collect();
                let mut nodes: Vec<u32> = members
                    .iter()
                    .map(|&gi| out_groups[gi as usize].chain)
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                if nodes.len() < 2 {
                    merged.push(None);
                    continue;
                }
                let id = intern(members, true)?;
                merged.push(Some((id, nodes)));
            }
        }
        let mut by_kind = vec![Vec::new(); FieldKind::ALL.len() * ROLE_KEYS.len()];
        for (gi, g) in out_groups.iter().enumerate() {
            for k in FieldKind::ALL {
                for (ri, role) in ROLE_KEYS.iter().enumerate() {
                    if g.can_select(k, *role) {
                        by_kind[k as usize * ROLE_KEYS.len() + ri].push(gi as u32);
                    }
                }
            }
        }
        Ok(Program {
            rules,
            groups: out_groups,
            trie,
            singles,
            prefilters,
            pf_index,
            merged,
            slots: slots as usize,
            by_kind,
        })
    }

    /// Fresh per-worker caches for this program.
    pub(crate) fn new_caches(&self) -> ProgramCaches {
        ProgramCaches {
            multi: self
                .groups
                .iter()
                .map(|g| g.multi.as_ref().map(Regex::create_cache))
                .collect(),
            singles: self.singles.iter().map(Regex::create_cache).collect(),
            probes: self
                .prefilters
                .iter()
                .map(|p| match &p.probe {
                    Some(Probe::Folded(r)) => Some(r.create_cache()),
                    _ => None,
                })
                .collect(),
            patset: PatternSet::new(
                self.groups
                    .iter()
                    .map(|g| g.regex_rules.len())
                    .max()
                    .unwrap_or(0),
            ),
            candidates: vec![false; self.slots],
            hits: vec![0; self.slots],
            active: vec![false; self.groups.len()],
            selected: Vec::with_capacity(self.groups.len()),
            probed: vec![false; self.trie.nodes.len()],
            pending: vec![0; self.trie.nodes.len()],
        }
    }
}

/// Per-worker mutable search state for one [`Program`]. Every vector is sized at creation,
/// so scanning never allocates.
#[derive(Debug, Clone)]
pub(crate) struct ProgramCaches {
    multi: Vec<Option<meta::Cache>>,
    singles: Vec<meta::Cache>,
    /// Per chain node, for folded probes.
    probes: Vec<Option<meta::Cache>>,
    patset: PatternSet,
    /// Per slot: candidate for the current field.
    candidates: Vec<bool>,
    /// Per slot: required-set bits seen in the current field.
    hits: Vec<u32>,
    /// Per group: selected by the current field.
    active: Vec<bool>,
    /// Groups selected by the current field, in order.
    selected: Vec<u32>,
    /// Per chain node: prefilter already run for the current field.
    probed: Vec<bool>,
    /// Per chain node: selected rules on it that are not yet candidates.
    pending: Vec<u32>,
}

const STATE_NONE: u8 = 0;
const STATE_SAME: u8 = 1;
const STATE_OWN: u8 = 2;
const STATE_ALIAS: u8 = 3;

/// Per-field transform results, keyed by trie node.
#[derive(Debug, Default, Clone)]
pub(crate) struct TransformCache {
    bufs: Vec<Vec<u8>>,
    /// `STATE_NONE`: not computed; `STATE_SAME`: same value as the parent; `STATE_OWN`:
    /// in its own buffer; `STATE_ALIAS`: same value as node `alias[i]`.
    state: Vec<u8>,
    alias: Vec<u32>,
    /// `(source node, transform, result node)` computed for the current field.
    memo: Vec<(u32, Option<Transform>, u32)>,
}

impl TransformCache {
    /// Forgets the previous field's results (keeps the buffers).
    #[inline]
    pub(crate) fn reset(&mut self, nodes: usize) {
        if self.state.len() < nodes {
            self.memo.reserve(nodes);
            self.state.resize(nodes, STATE_NONE);
            self.alias.resize(nodes, 0);
            self.bufs.resize_with(nodes, Vec::new);
        }
        self.state[..nodes].fill(STATE_NONE);
        self.memo.clear();
    }

    fn compute(&mut self, trie: &TransformTrie, input: &[u8], node: u32) {
        if node == 0 || self.state[node as usize] != 0 {
            return;
        }
        let (parent, t) = trie.nodes[node as usize];
        self.compute(trie, input, parent);
        let src_node = self.resolve(trie, parent);
        // Different chains often reach the same bytes (a decoder that found nothing to
        // decode passes its input through), so "this transform on that value" is looked
        // up before it is computed again: `[url_decode, lowercase]` and
        // `[normalize_unicode, lowercase]` share one lowercase pass on ordinary text.
        if let Some(&(_, _, k)) = self
            .memo
            .iter()
            .find(|(s, mt, _)| *s == src_node && *mt == t)
        {
            self.state[node as usize] = STATE_ALIAS;
            self.alias[node as usize] = k;
            return;
        }
        self.memo.push((src_node, t, node));
        let mut out = std::mem::take(&mut self.bufs[node as usize]);
        let src: &[u8] = if src_node == 0 {
            input
        } else {
            &self.bufs[src_node as usize]
        };
        let changed = t.is_some_and(|t| t.apply(src, &mut out));
        self.bufs[node as usize] = out;
        self.state[node as usize] = if changed { STATE_OWN } else { STATE_SAME };
    }

    /// The node whose buffer holds `node`'s value (0 = the input itself). Two nodes with
    /// the same resolution hold byte-identical values.
    pub(crate) fn resolve(&self, trie: &TransformTrie, mut node: u32) -> u32 {
        loop {
            match self.state.get(node as usize) {
                _ if node == 0 => return 0,
                Some(&STATE_SAME) => node = trie.nodes[node as usize].0,
                Some(&STATE_ALIAS) => node = self.alias[node as usize],
                _ => return node,
            }
        }
    }

    /// The value of `input` after the chain ending at `node`, computing shared prefixes once
    /// per field.
    pub(crate) fn value<'a>(
        &'a mut self,
        trie: &TransformTrie,
        input: &'a [u8],
        node: u32,
    ) -> &'a [u8] {
        self.compute(trie, input, node);
        match self.resolve(trie, node) {
            0 => input,
            n => &self.bufs[n as usize],
        }
    }
}

/// What a scan reports for each matching rule: the rule index, the transformed value and the
/// match span in it.
pub(crate) type OnMatch<'m> = dyn FnMut(u32, &[u8], (usize, usize)) + 'm;

/// Candidate counts at or below this run single-rule regexes instead of the group's
/// multi-pattern regex: one or two targeted searches beat a full overlapping pass.
const SINGLES_MAX: usize = 2;

impl Program {
    /// Runs every group that selects `field` and reports matches.
    pub(crate) fn scan(
        &self,
        caches: &mut ProgramCaches,
        tc: &mut TransformCache,
        field: &Field<'_>,
        prefilter_on: bool,
        on_match: &mut OnMatch<'_>,
    ) {
        let groups = &self.by_kind[field.kind as usize * ROLE_KEYS.len() + role_key(field.role)];
        if groups.is_empty() {
            return;
        }
        tc.reset(self.trie.nodes.len());
        // 1. Which groups read this field; reset their slots.
        caches.selected.clear();
        for &gi in groups {
            let g = &self.groups[gi as usize];
            if field.value.len() < g.min_len || !g.selects(field) {
                continue;
            }
            caches.selected.push(gi);
            caches.active[gi as usize] = true;
            let (b, n) = (g.base as usize, g.regex_rules.len());
            for l in 0..n {
                // Rules without literals (and every rule with the prefilter off) are
                // candidates from the start.
                let always = !prefilter_on || g.branch_masks[l].is_empty();
                caches.candidates[b + l] = always;
                caches.hits[b + l] = 0;
                if !always {
                    caches.pending[g.chain as usize] += 1;
                }
            }
        }
        // 2. One prefilter pass per chain node that has selected rules waiting on it — or a
        // single pass for all of them when their values came out byte-identical, the common
        // case for ordinary text, where the decoders find nothing to decode.
        if prefilter_on {
            let key = field.kind as usize * ROLE_KEYS.len() + role_key(field.role);
            if let Some((pf, nodes)) = &self.merged[key] {
                let mut same = None;
                let mut waiting = 0;
                for &n in nodes {
                    if caches.pending[n as usize] == 0 {
                        continue;
                    }
                    tc.value(&self.trie, field.value, n);
                    let r = tc.resolve(&self.trie, n);
                    waiting += caches.pending[n as usize];
                    if *same.get_or_insert(r) != r {
                        same = Some(u32::MAX);
                    }
                }
                if let Some(r) = same.filter(|&r| r != u32::MAX) {
                    // Only nodes with waiting rules belong to selected groups; the cleanup
                    // at the end resets exactly those.
                    for &n in nodes {
                        if caches.pending[n as usize] > 0 {
                            caches.probed[n as usize] = true;
                        }
                    }
                    let value = tc.value(&self.trie, field.value, r);
                    self.probe_node(caches, waiting, *pf as usize, value);
                }
            }
            for i in 0..caches.selected.len() {
                let node = self.groups[caches.selected[i] as usize].chain as usize;
                if caches.probed[node] || caches.pending[node] == 0 {
                    continue;
                }
                caches.probed[node] = true;
                let pf = self.pf_index[node * PF_KEYS + key];
                if pf == NO_PREFILTER {
                    continue;
                }
                let value = tc.value(&self.trie, field.value, node as u32);
                let waiting = caches.pending[node];
                self.probe_node(caches, waiting, pf as usize, value);
            }
        }
        // 3. Run the rules.
        for i in 0..caches.selected.len() {
            let gi = caches.selected[i] as usize;
            let g = &self.groups[gi];
            let value = tc.value(&self.trie, field.value, g.chain);
            for &ri in &g.other_rules {
                let span = match self.rules[ri as usize].op {
                    Op::Detector(d) => d.run(value),
                    Op::LengthOver(n) => (value.len() as u64 > n).then_some((0, value.len())),
                    Op::Regex(_) => None,
                };
                if let Some(span) = span {
                    on_match(ri, value, span);
                }
            }
            let Some(multi) = &g.multi else { continue };
            let (b, n) = (g.base as usize, g.regex_rules.len());
            let cand = &mut caches.candidates[b..b + n];
            let count = cand.iter().filter(|c| **c).count();
            if count == 0 {
                continue;
            }
            let input = Input::new(value);
            if count > SINGLES_MAX {
                let cache = caches.multi[gi]
                    .as_mut()
                    .expect("cache exists for every multi regex");
                caches.patset.clear();
                multi.which_overlapping_matches_with(cache, &input, &mut caches.patset);
                for (l, c) in cand.iter_mut().enumerate() {
                    *c = *c && caches.patset.contains(regex_automata::PatternID::must(l));
                }
            }
            for l in 0..n {
                if !caches.candidates[b + l] {
                    continue;
                }
                let ri = g.regex_rules[l];
                let Op::Regex(si) = self.rules[ri as usize].op else {
                    continue;
                };
                let si = si as usize;
                if let Some(m) = self.singles[si].search_with(&mut caches.singles[si], &input) {
                    on_match(ri, value, (m.start(), m.end()));
                }
            }
        }
        // 4. Leave the per-field state clean for the next field.
        for &gi in &caches.selected {
            caches.active[gi as usize] = false;
            let node = self.groups[gi as usize].chain as usize;
            caches.probed[node] = false;
            caches.pending[node] = 0;
        }
    }

    /// Searches one chain node's value for its literals and turns rules whose prefilter
    /// condition is met into candidates. Stops early once no selected rule is waiting.
    /// `waiting` is the number of selected, not-yet-candidate rules this prefilter can
    /// decide (over one chain node, or several whose values are identical).
    fn probe_node(&self, caches: &mut ProgramCaches, waiting: u32, pf_id: usize, value: &[u8]) {
        let pf = &self.prefilters[pf_id];
        let ProgramCaches {
            candidates,
            hits,
            active,
            pending,
            probes,
            ..
        } = caches;
        let groups = &self.groups;
        let mut mark = |h: &Hit, left: &mut u32| {
            let slot = h.slot as usize;
            if candidates[slot] {
                return;
            }
            // Hits for groups this field does not select are ignored.
            if !active[h.group as usize] {
                return;
            }
            let g = &groups[h.group as usize];
            hits[slot] |= h.bit;
            let masks = &g.branch_masks[slot - g.base as usize];
            if masks.iter().any(|&m| hits[slot] & m == m) {
                candidates[slot] = true;
                pending[g.chain as usize] = pending[g.chain as usize].saturating_sub(1);
                *left = left.saturating_sub(1);
            }
        };
        let mut waiting = waiting;
        let pending = &mut waiting;
        for (b, hs) in &pf.byte_hits {
            if *pending == 0 {
                return;
            }
            if memchr::memchr(*b, value).is_some() {
                for h in hs {
                    mark(h, pending);
                }
            }
        }
        match (&pf.probe, probes[pf_id].as_mut()) {
            (Some(Probe::Exact { first, all }), _) => {
                // No literal starts before the leftmost match, so the overlapping search
                // (which reports every occurrence of every literal) can start there.
                let Some(f) = first.find(value) else { return };
                let input = aho_corasick::Input::new(value).span(f.start()..value.len());
                for m in all.find_overlapping_iter(input) {
                    for h in &pf.lit_hits[m.pattern().as_usize()] {
                        mark(h, pending);
                    }
                    if *pending == 0 {
                        break;
                    }
                }
            }
            (Some(Probe::Folded(re)), Some(pc)) => {
                let mut at = 0;
                while *pending > 0 && at < value.len() {
                    // Resuming one byte after each reported match *start* (not its end)
                    // finds literals that overlap it; see `may_overlap` for those starting
                    // at that byte.
                    let Some(m) = re.search_with(pc, &Input::new(value).range(at..)) else {
                        break;
                    };
                    for h in &pf.lit_hits[m.pattern().as_usize()] {
                        mark(h, pending);
                    }
                    at = m.start() + 1;
                }
            }
            _ => {}
        }
    }

    /// Runs one rule on one value (for inline rule tests); returns the span if it matches.
    pub(crate) fn test_value(
        &self,
        caches: &mut ProgramCaches,
        tc: &mut TransformCache,
        rule: u32,
        value: &[u8],
    ) -> Option<(usize, usize)> {
        let r = &self.rules[rule as usize];
        tc.reset(self.trie.nodes.len());
        let v = tc.value(&self.trie, value, r.chain);
        match r.op {
            Op::Detector(d) => d.run(v),
            Op::LengthOver(n) => (v.len() as u64 > n).then_some((0, v.len())),
            Op::Regex(si) => self.singles[si as usize]
                .search_with(&mut caches.singles[si as usize], &Input::new(v))
                .map(|m| (m.start(), m.end())),
        }
    }
}
