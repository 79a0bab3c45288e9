//! The rule IR: one shape for native rules now and imported SecLang rules later.
//!
//! A rule says *where* to look ([`Target`]s), *how* to prepare the value (a chain of
//! [`Transform`]s) and *what* to look for (a regex, literals, a detector or a length). The compiler
//! ([`compile`]) groups rules by target set and transform chain and builds one multi-pattern
//! automaton per group.

pub mod compile;
pub mod detect;
mod literals;
pub mod prefilter;
pub mod prompt_model;
pub mod prompt_scorer;
mod sqli;
mod xss;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, CompileErrorKind};
use crate::field::{Field, FieldKind, FieldKindSet, Role};
use crate::transform::Transform;

/// A stable rule identifier.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct RuleId(pub u32);

/// Attack and abuse categories; scores are kept per category.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Category {
    /// Protocol violations and malformed requests.
    Protocol = 0,
    /// SQL injection.
    Sqli,
    /// NoSQL operator injection.
    Nosqli,
    /// Cross-site scripting.
    Xss,
    /// Path traversal and local file inclusion.
    Lfi,
    /// Remote file inclusion.
    Rfi,
    /// OS command injection.
    Rce,
    /// PHP code injection.
    Php,
    /// Java, EL, OGNL, JNDI and deserialization attacks.
    Java,
    /// Node.js injection and prototype pollution.
    Nodejs,
    /// Server-side template injection.
    Ssti,
    /// Server-side request forgery.
    Ssrf,
    /// Session fixation.
    SessionFixation,
    /// Known scanners and attack tools.
    Scanner,
    /// Prompt injection (instruction override, role reassignment, template tokens).
    PromptInjection,
    /// Jailbreaks (personas, developer mode).
    Jailbreak,
    /// System-prompt extraction.
    PromptExtraction,
    /// Invisible or encoded text smuggling.
    Smuggling,
    /// Prompts that ask for unbounded output.
    ResourceAbuse,
    /// Anything else.
    Other,
}

impl Category {
    /// Number of categories.
    pub const COUNT: usize = 20;

    /// Every category, in discriminant order.
    pub const ALL: [Category; Category::COUNT] = [
        Category::Protocol,
        Category::Sqli,
        Category::Nosqli,
        Category::Xss,
        Category::Lfi,
        Category::Rfi,
        Category::Rce,
        Category::Php,
        Category::Java,
        Category::Nodejs,
        Category::Ssti,
        Category::Ssrf,
        Category::SessionFixation,
        Category::Scanner,
        Category::PromptInjection,
        Category::Jailbreak,
        Category::PromptExtraction,
        Category::Smuggling,
        Category::ResourceAbuse,
        Category::Other,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Protocol => "protocol",
            Category::Sqli => "sqli",
            Category::Nosqli => "nosqli",
            Category::Xss => "xss",
            Category::Lfi => "lfi",
            Category::Rfi => "rfi",
            Category::Rce => "rce",
            Category::Php => "php",
            Category::Java => "java",
            Category::Nodejs => "nodejs",
            Category::Ssti => "ssti",
            Category::Ssrf => "ssrf",
            Category::SessionFixation => "session_fixation",
            Category::Scanner => "scanner",
            Category::PromptInjection => "prompt_injection",
            Category::Jailbreak => "jailbreak",
            Category::PromptExtraction => "prompt_extraction",
            Category::Smuggling => "smuggling",
            Category::ResourceAbuse => "resource_abuse",
            Category::Other => "other",
        }
    }

    /// Parses [`Category::as_str`].
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Severity, which sets a rule's default anomaly score.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Score 5: on its own enough to deny at the default threshold.
    #[default]
    Critical,
    /// Score 4.
    Error,
    /// Score 3.
    Warning,
    /// Score 2.
    Notice,
}

impl Severity {
    /// The anomaly score of this severity.
    pub fn score(self) -> u32 {
        match self {
            Severity::Critical => 5,
            Severity::Error => 4,
            Severity::Warning => 3,
            Severity::Notice => 2,
        }
    }
}

/// A rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleDef {
    /// Unique id.
    pub id: u32,
    /// Short kebab-case name.
    pub name: String,
    /// What the rule detects and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Category.
    pub category: Category,
    /// Severity (sets the default score).
    #[serde(default)]
    pub severity: Severity,
    /// Score override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
    /// Paranoia level 1–4.
    #[serde(default = "one")]
    pub paranoia: u8,
    /// Field selectors: `args`, `arg_names`, `headers`, `header:user-agent`, `cookies`,
    /// `path`, `query`, `json`, `json:/messages/*/content`, `prompt`, `body`, `filenames`, …
    pub targets: Vec<String>,
    /// Roles of chat prompt fields this rule reads (default: `user`, `tool`); assistant
    /// echoes and system prompts are skipped unless listed, to avoid false positives on
    /// model output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    /// Transforms applied in order before matching.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    /// A regular expression (byte-oriented, ASCII classes; `(?u:…)` for Unicode). No
    /// look-around or back-references: matching is linear time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Literal strings, any of which matches (compared after the transforms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literals: Option<Vec<String>>,
    /// A built-in detector by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<String>,
    /// Matches when the value is longer than this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_over: Option<u64>,
    /// Count the rule only on cross-site requests: no `Referer`, or one whose host differs
    /// from `Host`. For signs that are harmless when the application links to itself (a
    /// session id in a URL) and an attack when a foreign page or a bare link plants them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_site: bool,
    /// Inline examples checked by `edgeward test`.
    #[serde(default, skip_serializing_if = "RuleTests::is_empty")]
    pub tests: RuleTests,
}

fn one() -> u8 {
    1
}

/// Inline rule tests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTests {
    /// Values the rule must match.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
    /// Values the rule must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_match: Vec<String>,
}

impl RuleTests {
    fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.no_match.is_empty()
    }
}

/// A rule file: `apiVersion`, `kind: RuleSet`, `rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFile {
    /// Must be `edgeward.dev/v1`.
    pub api_version: String,
    /// Must be `RuleSet`.
    pub kind: String,
    /// Name and labels.
    pub metadata: crate::policy::Metadata,
    /// The rules.
    pub rules: Vec<RuleDef>,
}

impl RuleFile {
    /// Parses a rule file, with located errors.
    pub fn parse(text: &str, name: &str) -> Result<RuleFile, CompileError> {
        let f: RuleFile = crate::policy::parse_located(text, name)?;
        if f.api_version != crate::policy::API_VERSION || f.kind != "RuleSet" {
            return Err(CompileError::new(
                CompileErrorKind::UnsupportedVersion,
                format!(
                    "expected apiVersion {} and kind RuleSet",
                    crate::policy::API_VERSION
                ),
            )
            .at(crate::policy::locate(text, name, "kind")));
        }
        for (i, r) in f.rules.iter().enumerate() {
            if let Err(e) = r.check() {
                let path = format!("rules[{i}]");
                return Err(e
                    .at(crate::policy::locate(text, name, &path))
                    .with_rule(r.id));
            }
        }
        Ok(f)
    }
}

impl RuleDef {
    /// Checks what serde cannot: exactly one operator, sane paranoia, parseable targets.
    pub(crate) fn check(&self) -> Result<(), CompileError> {
        let o = self;
        let n = o.regex.is_some() as u8
            + o.literals.is_some() as u8
            + o.detector.is_some() as u8
            + o.length_over.is_some() as u8;
        if n != 1 {
            return Err(CompileError::new(
                CompileErrorKind::InvalidValue,
                "a rule needs exactly one of regex, literals, detector, lengthOver",
            )
            .with_rule(self.id));
        }
        if !(1..=4).contains(&self.paranoia) {
            return Err(CompileError::new(
                CompileErrorKind::InvalidValue,
                "paranoia must be 1..=4",
            )
            .with_rule(self.id));
        }
        if self.targets.is_empty() {
            return Err(
                CompileError::new(CompileErrorKind::InvalidValue, "a rule needs targets")
                    .with_rule(self.id),
            );
        }
        for t in &self.targets {
            Target::parse(t).map_err(|e| e.with_rule(self.id))?;
        }
        if let Some(d) = &self.detector {
            if detect::Detector::by_name(d).is_none() {
                return Err(CompileError::new(
                    CompileErrorKind::UnknownReference,
                    format!("unknown detector `{d}`"),
                )
                .with_rule(self.id));
            }
        }
        if let Some(l) = &self.literals {
            if l.is_empty() || l.iter().any(|s| s.is_empty()) {
                return Err(CompileError::new(
                    CompileErrorKind::InvalidValue,
                    "literals must be non-empty strings",
                )
                .with_rule(self.id));
            }
        }
        Ok(())
    }

    /// The rule's anomaly score.
    pub fn effective_score(&self) -> u32 {
        self.score.unwrap_or_else(|| self.severity.score())
    }
}

/// A compiled field selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Kinds of field selected.
    pub kinds: u16,
    /// Name filter: exact (ASCII case-insensitive) for headers, cookies and parameters; a
    /// glob (`*` within a segment, `**` across) for JSON pointers.
    pub name: Option<String>,
    /// `prompt` selects only chat prompt fields (role is set).
    pub prompt_only: bool,
}

impl Target {
    /// Parses a selector string.
    pub fn parse(s: &str) -> Result<Target, CompileError> {
        let (head, name) = match s.split_once(':') {
            Some((h, n)) if !n.is_empty() => (h, Some(n)),
            Some(_) => {
                return Err(CompileError::new(
                    CompileErrorKind::InvalidValue,
                    format!("selector `{s}` has an empty name"),
                ))
            }
            None => (s, None),
        };
        use FieldKind as K;
        let kinds: FieldKindSet = match head {
            "args" => [K::Query, K::Form, K::Json, K::Multipart, K::Xml]
                .into_iter()
                .collect(),
            "arg_names" => [K::QueryName, K::FormName, K::JsonKey, K::MultipartName]
                .into_iter()
                .collect(),
            "headers" => [K::Header].into_iter().collect(),
            "cookies" => [K::Cookie].into_iter().collect(),
            "cookie_names" => [K::CookieName].into_iter().collect(),
            "filenames" => [K::MultipartFilename].into_iter().collect(),
            "prompt" => [K::Json].into_iter().collect(),
            "request" => FieldKind::ALL.into_iter().collect(),
            other => match FieldKind::from_prefix(other) {
                Some(k) => [k].into_iter().collect(),
                None => {
                    return Err(CompileError::new(
                        CompileErrorKind::InvalidValue,
                        format!("unknown field selector `{s}`"),
                    ))
                }
            },
        };
        if name.is_some() && head == "prompt" {
            return Err(CompileError::new(
                CompileErrorKind::InvalidValue,
                "`prompt` takes no name",
            ));
        }
        let json = head == "json" || head == "json_key";
        Ok(Target {
            kinds: kinds.0,
            name: name.map(|n| {
                if json {
                    n.to_string()
                } else {
                    n.to_ascii_lowercase()
                }
            }),
            prompt_only: head == "prompt",
        })
    }

    /// Whether a field is selected (ignoring roles).
    #[inline]
    pub fn selects(&self, f: &Field<'_>) -> bool {
        if !FieldKindSet(self.kinds).contains(f.kind) {
            return false;
        }
        if self.prompt_only && f.role.is_none() {
            return false;
        }
        match &self.name {
            None => true,
            Some(n) => match f.kind {
                FieldKind::Json | FieldKind::JsonKey => glob_match(n.as_bytes(), f.name),
                _ => n.as_bytes().eq_ignore_ascii_case(f.name),
            },
        }
    }
}

/// Glob over `/`-separated names: `*` matches within one segment, `**` any run.
pub(crate) fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point per star kind keeps this linear-ish and
    // recursion-free; patterns are short and written by the policy author.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize, bool)> = None;
    while i < s.len() {
        if p + 1 < pat.len() && pat[p] == b'*' && pat[p + 1] == b'*' {
            star = Some((p + 2, i, true));
            p += 2;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p + 1, i, false));
            p += 1;
        } else if p < pat.len() && (pat[p] == s[i] || pat[p].eq_ignore_ascii_case(&s[i])) {
            p += 1;
            i += 1;
        } else if let Some((sp, si, deep)) = star {
            if !deep && s[si] == b'/' {
                return false;
            }
            p = sp;
            i = si + 1;
            star = Some((sp, si + 1, deep));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldFlags;

    fn field<'a>(kind: FieldKind, name: &'a [u8], role: Option<Role>) -> Field<'a> {
        Field {
            kind,
            name,
            value: b"",
            role,
            flags: FieldFlags::default(),
        }
    }

    #[test]
    fn selectors() {
        let t = Target::parse("header:User-Agent").unwrap();
        assert!(t.selects(&field(FieldKind::Header, b"user-agent", None)));
        assert!(!t.selects(&field(FieldKind::Header, b"referer", None)));
        let t = Target::parse("json:/messages/*/content").unwrap();
        assert!(t.selects(&field(FieldKind::Json, b"/messages/3/content", None)));
        assert!(!t.selects(&field(FieldKind::Json, b"/messages/3/x/content", None)));
        let t = Target::parse("json:/messages/**").unwrap();
        assert!(t.selects(&field(FieldKind::Json, b"/messages/3/x/content", None)));
        let t = Target::parse("prompt").unwrap();
        assert!(t.selects(&field(FieldKind::Json, b"/m", Some(Role::User))));
        assert!(!t.selects(&field(FieldKind::Json, b"/model", None)));
        let t = Target::parse("args").unwrap();
        assert!(t.selects(&field(FieldKind::Query, b"q", None)));
        assert!(!t.selects(&field(FieldKind::Header, b"q", None)));
        assert!(Target::parse("nonsense").is_err());
        assert!(Target::parse("header:").is_err());
        assert!(Target::parse("prompt:x").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"/a/*/c", b"/a/b/c"));
        assert!(!glob_match(b"/a/*/c", b"/a/b/d/c"));
        assert!(glob_match(b"/a/**/c", b"/a/b/d/c"));
        assert!(glob_match(b"**", b"/anything/at/all"));
        assert!(glob_match(b"/v1/*", b"/v1/models"));
        assert!(!glob_match(b"/v1/*", b"/v2/models"));
        assert!(glob_match(b"*.example.com", b"api.example.com"));
    }

    #[test]
    fn rule_checks() {
        let base = RuleDef {
            id: 1,
            name: "x".into(),
            description: String::new(),
            category: Category::Sqli,
            severity: Severity::Critical,
            score: None,
            paranoia: 1,
            targets: vec!["args".into()],
            roles: None,
            transforms: vec![],
            regex: Some("a".into()),
            literals: None,
            detector: None,
            length_over: None,
            cross_site: false,
            tests: RuleTests::default(),
        };
        assert!(base.check().is_ok());
        let mut r = base.clone();
        r.literals = Some(vec!["b".into()]);
        assert_eq!(r.check().unwrap_err().code(), "policy.invalid_value");
        let mut r = base.clone();
        r.regex = None;
        r.detector = Some("nope".into());
        assert_eq!(r.check().unwrap_err().code(), "policy.unknown_reference");
        let mut r = base;
        r.paranoia = 7;
        assert!(r.check().is_err());
    }
}
