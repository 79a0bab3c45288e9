//! Policy as code: one versioned document (YAML or JSON) that can live in Git and be applied
//! as a Kubernetes custom resource unchanged.
//!
//! Parsing uses `serde-saphyr`: `serde_yaml` is unmaintained, `serde_yml` was archived after
//! soundness problems, while serde-saphyr is maintained, built to be panic-free on hostile
//! input, reports line and column for every error, and exposes its deserializer so
//! `serde_path_to_error` can name the offending key. JSON is a subset of YAML's flow style, so
//! the same parser reads JSON policies and gives them the same located errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, CompileErrorKind, SourceLocation};
use crate::field::ParseLimits;
use crate::parse::ChatShape;
use crate::rules::{Category, RuleDef, RuleFile};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "edgeward.dev/v1";

/// The embedded default policy, as text.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../../rulesets/policies/default.yaml");

/// The native rule files compiled into the crate, as `(name, text)`.
pub const BUILTIN_RULE_FILES: &[(&str, &str)] = &[
    (
        "builtin:protocol.yaml",
        include_str!("../../rulesets/rules/protocol.yaml"),
    ),
    (
        "builtin:sqli.yaml",
        include_str!("../../rulesets/rules/sqli.yaml"),
    ),
    (
        "builtin:nosql.yaml",
        include_str!("../../rulesets/rules/nosql.yaml"),
    ),
    (
        "builtin:xss.yaml",
        include_str!("../../rulesets/rules/xss.yaml"),
    ),
    (
        "builtin:lfi.yaml",
        include_str!("../../rulesets/rules/lfi.yaml"),
    ),
    (
        "builtin:rce.yaml",
        include_str!("../../rulesets/rules/rce.yaml"),
    ),
    (
        "builtin:ssrf.yaml",
        include_str!("../../rulesets/rules/ssrf.yaml"),
    ),
    (
        "builtin:java.yaml",
        include_str!("../../rulesets/rules/java.yaml"),
    ),
    (
        "builtin:scanner.yaml",
        include_str!("../../rulesets/rules/scanner.yaml"),
    ),
    (
        "builtin:prompt.yaml",
        include_str!("../../rulesets/rules/prompt.yaml"),
    ),
];

/// A policy document: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    /// Must be `edgeward.dev/v1`.
    pub api_version: String,
    /// Must be `Policy`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// What the policy enforces.
    pub spec: Spec,
}

/// Kubernetes-style metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The policy's name.
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The policy body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Where rules come from.
    #[serde(default)]
    pub rules: RuleSources,
    /// Settings every route inherits.
    #[serde(default)]
    pub defaults: RouteSettings,
    /// Routes, matched in order; the first match wins. Requests matching none use `defaults`
    /// under the route name `default`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// False-positive exclusions: rule × route × field.
    #[serde(default)]
    pub exclusions: Vec<Exclusion>,
    /// The response a host sends when a request is denied.
    #[serde(default)]
    pub response: BlockResponse,
    /// The model table: how each model family's tokens are counted and what they cost,
    /// first matching row wins. Models matching no row are counted with `o200k_base` and
    /// cost nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<crate::cost::params::ModelEntry>,
    /// Who is calling: API keys, JWT issuers, trusted proxy headers, known principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::IdentityPolicy>,
    /// Per-tier settings (a principal's tier is its class: free, pro, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: crate::identity::Tiers,
    /// Rate limits, budgets and concurrency limits, each charged on the requests it
    /// matches, all-or-nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<crate::limits::stage::LimitRule>,
    /// How long reservations live before they expire unsettled.
    #[serde(default)]
    pub reservations: crate::limits::stage::Reservations,
    /// Where limits are counted: in process (the default) or in Redis, shared by replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::limits::stage::StoreSettings>,
    /// What decision events may contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::events::EventSettings>,
    /// How much the heavy-hitter (top-K) trackers remember.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heavy_hitters: Option<crate::heavy::HeavySettings>,
    /// Abuse signals: per-principal behaviour that looks like abuse (cost velocity,
    /// near-duplicate prompt bursts, refusal and logprobs shares), each with an action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<crate::signals::SignalSettings>,
}

/// Rule sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSources {
    /// Load the native rule files built into Edgeward.
    #[serde(default = "yes")]
    pub builtin: bool,
    /// Rule files (YAML/JSON), relative to the policy file.
    #[serde(default)]
    pub files: Vec<String>,
    /// Rules written inline.
    #[serde(default)]
    pub inline: Vec<RuleDef>,
}

fn yes() -> bool {
    true
}

impl Default for RuleSources {
    fn default() -> Self {
        RuleSources {
            builtin: true,
            files: Vec::new(),
            inline: Vec::new(),
        }
    }
}

/// Enforce or only observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deny requests that reach a threshold.
    #[default]
    Enforce,
    /// Never deny for inspection findings; the decision says what would have been denied.
    Monitor,
}

/// How a route's body is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Schema {
    /// Pick by `Content-Type`: JSON, form, multipart, XML; else by the first byte (JSON,
    /// XML), else raw and also read as a form when the body is text.
    #[default]
    Auto,
    /// OpenAI chat completions (and legacy completions): roles per message.
    OpenaiChat,
    /// OpenAI Responses API.
    OpenaiResponses,
    /// OpenAI embeddings.
    OpenaiEmbeddings,
    /// Anthropic messages.
    AnthropicMessages,
    /// Any JSON.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/form-data`.
    Multipart,
    /// XML (SOAP, XML-RPC): text and attribute values as fields, plus the raw body.
    Xml,
    /// The body is inspected as one opaque field.
    Raw,
}

impl Schema {
    /// The chat shape the JSON walker uses for this schema.
    pub fn chat_shape(self) -> ChatShape {
        match self {
            Schema::OpenaiChat => ChatShape::OpenaiChat,
            Schema::OpenaiResponses => ChatShape::OpenaiResponses,
            Schema::OpenaiEmbeddings => ChatShape::OpenaiEmbeddings,
            Schema::AnthropicMessages => ChatShape::AnthropicMessages,
            _ => ChatShape::None,
        }
    }

    /// Whether the schema expects a JSON body.
    pub fn is_json(self) -> bool {
        matches!(
            self,
            Schema::OpenaiChat
                | Schema::OpenaiResponses
                | Schema::OpenaiEmbeddings
                | Schema::AnthropicMessages
                | Schema::Json
        )
    }
}

/// What to do with a body larger than `maxBodyBytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// Deny with 413.
    #[default]
    Refuse,
    /// Inspect only the first `maxBodyBytes` and record a `body_truncated` finding, so an
    /// attack placed past the limit never passes silently.
    InspectPrefix,
}

/// Size limits checked before any content is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Largest body accepted.
    pub max_body_bytes: u64,
    /// What to do with larger bodies.
    pub on_oversize: OnOversize,
    /// Most headers accepted (431 above).
    pub max_headers: u32,
    /// Largest single header (name + value) accepted (431 above).
    pub max_header_bytes: u32,
    /// Longest path + query accepted (414 above).
    pub max_uri_bytes: u32,
    /// Maximum JSON nesting depth.
    pub max_json_depth: u32,
    /// Maximum fields inspected per request.
    pub max_fields: u32,
    /// Maximum decoded bytes per request.
    pub max_decoded_bytes: u64,
    /// Levels of JSON inside JSON strings that are walked.
    pub max_nested_json: u32,
    /// Maximum multipart parts.
    pub max_parts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let p = ParseLimits::default();
        Limits {
            max_body_bytes: 1024 * 1024,
            on_oversize: OnOversize::Refuse,
            max_headers: 128,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            max_json_depth: p.max_depth,
            max_fields: p.max_fields,
            max_decoded_bytes: p.max_decoded_bytes,
            max_nested_json: p.max_nested_json,
            max_parts: p.max_parts,
        }
    }
}

impl Limits {
    /// The parser bounds.
    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_depth: self.max_json_depth,
            max_fields: self.max_fields,
            max_decoded_bytes: self.max_decoded_bytes,
            max_nested_json: self.max_nested_json,
            max_parts: self.max_parts,
        }
    }
}

/// Settings a route may set; unset values inherit from `spec.defaults`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSettings {
    /// How the body is parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Schema>,
    /// Enforce or monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Paranoia level 1–4: rules above it are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoia: Option<u8>,
    /// Total inbound anomaly score at which a request is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Per-category score thresholds (deny when a category alone reaches its value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub category_thresholds: BTreeMap<Category, u32>,
    /// Size and parser limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Which rules run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleSelection>,
    /// Parameter policy (prompt and output token caps, `n`, logprobs, models, streaming,
    /// tools, messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<crate::cost::params::ParamPolicy>,
    /// Where a custom model server's inference fields are (`schema: json` routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_fields: Option<crate::cost::params::ApiFields>,
    /// Who may use the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::identity::Access>,
}

/// Which rules run on a route.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSelection {
    /// Only these categories (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<Category>,
    /// Never these categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable_categories: Vec<Category>,
    /// Never these rule ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<u32>,
}

/// A route: which requests it covers and how they are handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// A unique name, used in decisions, exclusions and metrics.
    pub name: String,
    /// Which requests the route covers.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// How the body is parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Schema>,
    /// Enforce or monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Paranoia level 1–4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoia: Option<u8>,
    /// Total inbound anomaly score at which a request is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Per-category score thresholds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub category_thresholds: BTreeMap<Category, u32>,
    /// Size and parser limits (replaces the defaults' limits as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Which rules run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleSelection>,
    /// Parameter policy; each setting overrides the defaults' one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<crate::cost::params::ParamPolicy>,
    /// Where a custom model server's inference fields are (`schema: json` routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_fields: Option<crate::cost::params::ApiFields>,
    /// Who may use the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::identity::Access>,
}

impl Route {
    /// The route's own settings (without inheritance). Serde's `flatten` would have shared
    /// the fields with [`RouteSettings`], but it silently accepts unknown keys, and unknown
    /// keys must be errors.
    pub fn settings(&self) -> RouteSettings {
        RouteSettings {
            schema: self.schema,
            mode: self.mode,
            paranoia: self.paranoia,
            threshold: self.threshold,
            category_thresholds: self.category_thresholds.clone(),
            limits: self.limits,
            rules: self.rules.clone(),
            params: self.params.clone(),
            api_fields: self.api_fields.clone(),
            access: self.access.clone(),
        }
    }
}

/// Route matching. All given conditions must hold; an empty list matches anything.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// Host globs (`*.example.com`), compared without port, case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Methods (`POST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path globs: `*` matches within a segment, `**` across segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// An exclusion: these rules do not apply on these routes to these fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exclusion {
    /// Why (kept for audits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Rule ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<u32>,
    /// Whole categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<Category>,
    /// Route names (empty: all routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Field selectors as in rule targets (empty: the whole request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// The response for denied requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockResponse {
    /// HTTP status for inspection denials.
    pub status: u16,
    /// Body content type.
    pub content_type: String,
    /// Body text (see [`crate::Engine::refusal_body`]): `{reason}` becomes the reason,
    /// `{code}` its stable code, `{type}` an OpenAI error type for the status
    /// (`authentication_error`, `permission_error`, `rate_limit_error`,
    /// `invalid_request_error`, `server_error`) and `{request_id}` the host's request id.
    pub body: String,
}

impl Default for BlockResponse {
    fn default() -> Self {
        BlockResponse {
            status: 403,
            content_type: "application/json".into(),
            body: r#"{"error":{"message":"Request refused by policy: {reason}","type":"{type}","code":"{code}"}}"#.into(),
        }
    }
}

/// Reads a file a policy references (`what`: "rule file", "key file", ...), relative to
/// `base`; `None` forbids references (policy text with no file behind it).
pub(crate) fn read_referenced(
    base: Option<&Path>,
    file: &str,
    what: &str,
) -> Result<(PathBuf, String), CompileError> {
    let Some(base) = base else {
        return Err(CompileError::new(
            CompileErrorKind::UnknownReference,
            format!("{what}s cannot be referenced from this policy source"),
        ));
    };
    let p = base.join(file);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        CompileError::new(
            CompileErrorKind::Io,
            format!("cannot read {what} {}: {e}", p.display()),
        )
    })?;
    Ok((p, text))
}

/// A policy with all its rule sources loaded: what [`crate::Engine::new`] compiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The document.
    pub document: PolicyDocument,
    /// Rules from every source (built-in, files, inline), in load order.
    pub rules: Vec<RuleDef>,
    /// Where the document came from (file name or `<inline>`).
    pub source: String,
}

impl Policy {
    /// The embedded default policy with the built-in rules.
    pub fn default_policy() -> Policy {
        // The embedded policy is tested at build time of the test suite; a failure here is a
        // packaging bug, not a user error, so it is reported loudly.
        Policy::from_str_named(DEFAULT_POLICY_YAML, "builtin:default.yaml", None)
            .expect("embedded default policy is valid")
    }

    /// Reads a policy file (YAML or JSON) and the rule files it references.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, CompileError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            CompileError::new(CompileErrorKind::Io, format!("cannot read policy: {e}")).at(
                SourceLocation {
                    file: name.clone(),
                    ..Default::default()
                },
            )
        })?;
        let base = path.parent().map(Path::to_path_buf);
        Policy::from_str_named(&text, &name, base.as_deref())
    }

    /// Parses policy text (YAML or JSON). Rule files are resolved against the current
    /// directory.
    pub fn from_text(text: &str) -> Result<Policy, CompileError> {
        Policy::from_str_named(text, "<inline>", Some(Path::new(".")))
    }

    /// Parses policy text with a file name for error messages and a base directory for
    /// rule files (`None` forbids rule files).
    pub fn from_str_named(
        text: &str,
        name: &str,
        base: Option<&Path>,
    ) -> Result<Policy, CompileError> {
        let mut document: PolicyDocument = parse_located(text, name)?;
        let loc = |path: &str| locate(text, name, path);
        if document.api_version != API_VERSION {
            return Err(CompileError::new(
                CompileErrorKind::UnsupportedVersion,
                format!(
                    "apiVersion `{}` is not supported; use `{API_VERSION}`",
                    document.api_version
                ),
            )
            .at(loc("apiVersion")));
        }
        if document.kind != "Policy" {
            return Err(CompileError::new(
                CompileErrorKind::UnsupportedVersion,
                format!("kind `{}` is not supported; use `Policy`", document.kind),
            )
            .at(loc("kind")));
        }
        let mut rules = Vec::new();
        if document.spec.rules.builtin {
            for (file, text) in BUILTIN_RULE_FILES {
                rules.extend(RuleFile::parse(text, file)?.rules);
            }
        }
        for (i, f) in document.spec.rules.files.iter().enumerate() {
            let (p, t) = read_referenced(base, f, "rule file")
                .map_err(|e| e.at(loc(&format!("spec.rules.files[{i}]"))))?;
            rules.extend(RuleFile::parse(&t, &p.display().to_string())?.rules);
        }
        rules.extend(document.spec.rules.inline.iter().cloned());
        if let Some(identity) = &mut document.spec.identity {
            identity
                .load_files(base)
                .map_err(|(e, path)| e.at(loc(&path)).in_file(name))?;
        }
        let policy = Policy {
            document,
            rules,
            source: name.to_string(),
        };
        policy
            .validate()
            .map_err(|(e, path)| e.at(loc(&path)).in_file(name))?;
        Ok(policy)
    }

    /// Semantic checks that serde cannot express. Returns the error and the key path.
    fn validate(&self) -> Result<(), (CompileError, String)> {
        let spec = &self.document.spec;
        let mut names = std::collections::HashSet::new();
        let check_settings = |s: &RouteSettings, at: &str| -> Result<(), (CompileError, String)> {
            if let Some(p) = s.paranoia {
                if !(1..=4).contains(&p) {
                    return Err((
                        CompileError::new(
                            CompileErrorKind::InvalidValue,
                            format!("paranoia must be 1..=4, got {p}"),
                        ),
                        format!("{at}.paranoia"),
                    ));
                }
            }
            if s.threshold == Some(0) {
                return Err((
                    CompileError::new(
                        CompileErrorKind::InvalidValue,
                        "threshold must be at least 1",
                    ),
                    format!("{at}.threshold"),
                ));
            }
            Ok(())
        };
        check_settings(&spec.defaults, "spec.defaults")?;
        for (i, r) in spec.rules.inline.iter().enumerate() {
            r.check()
                .map_err(|e| (e, format!("spec.rules.inline[{i}]")))?;
        }
        for (i, r) in spec.routes.iter().enumerate() {
            let at = format!("spec.routes[{i}]");
            if r.name.is_empty() || r.name == "default" || !names.insert(r.name.as_str()) {
                return Err((
                    CompileError::new(
                        CompileErrorKind::InvalidValue,
                        format!(
                            "route name `{}` must be non-empty, unique and not `default`",
                            r.name
                        ),
                    ),
                    format!("{at}.name"),
                ));
            }
            check_settings(&r.settings(), &at)?;
        }
        for (i, e) in spec.exclusions.iter().enumerate() {
            for (j, r) in e.routes.iter().enumerate() {
                if r != "default" && !names.contains(r.as_str()) {
                    return Err((
                        CompileError::new(
                            CompileErrorKind::UnknownReference,
                            format!("exclusion names unknown route `{r}`"),
                        ),
                        format!("spec.exclusions[{i}].routes[{j}]"),
                    ));
                }
            }
            for (j, f) in e.fields.iter().enumerate() {
                if let Err(e) = crate::rules::Target::parse(f) {
                    return Err((e, format!("spec.exclusions[{i}].fields[{j}]")));
                }
            }
        }
        if !(100..=599).contains(&spec.response.status) {
            return Err((
                CompileError::new(
                    CompileErrorKind::InvalidValue,
                    "response status must be an HTTP status 100..=599",
                ),
                "spec.response.status".into(),
            ));
        }
        if spec.reservations.lease_seconds == 0 {
            // A lease of 0 would release concurrency at once and make every estimate final.
            return Err((
                CompileError::new(
                    CompileErrorKind::InvalidValue,
                    "a reservation must live at least a second",
                ),
                "spec.reservations.leaseSeconds".into(),
            ));
        }
        let mut route_names: Vec<&str> = spec.routes.iter().map(|r| r.name.as_str()).collect();
        route_names.push("default");
        crate::limits::stage::compile_limits(&spec.limits, &route_names)
            .map_err(|(m, at)| (CompileError::new(CompileErrorKind::InvalidValue, m), at))?;
        // Compiled here for the located error (keys decoded, networks parsed); the engine
        // compiles it again.
        if let Some(identity) = &spec.identity {
            crate::identity::CompiledIdentity::new(identity)
                .map_err(|(m, at)| (CompileError::new(CompileErrorKind::InvalidValue, m), at))?;
        }
        Ok(())
    }

    /// The policy as JSON (the canonical form hashed into bundles).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.document).unwrap_or_default()
    }
}

/// The JSON Schema of a policy document (committed as `rulesets/schema/policy.schema.json`).
pub fn policy_json_schema() -> String {
    let schema = schemars::schema_for!(PolicyDocument);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The JSON Schema of a rule file (committed as `rulesets/schema/rules.schema.json`).
pub fn rules_json_schema() -> String {
    let schema = schemars::schema_for!(RuleFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Deserializes YAML/JSON text, turning any failure into a [`CompileError`] with file, line,
/// column and key path.
pub(crate) fn parse_located<T: serde::de::DeserializeOwned>(
    text: &str,
    name: &str,
) -> Result<T, CompileError> {
    let mut path = String::new();
    let r = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    r.map_err(|e| {
        let msg = e.to_string();
        // serde-saphyr renders a snippet after the first line; the first line is the message.
        let first = msg.lines().next().unwrap_or("").to_string();
        let first = strip_location_prefix(&first);
        let kind = if first.contains("unknown field") || first.contains("unknown variant") {
            CompileErrorKind::UnknownField
        } else if first.contains("invalid")
            || first.contains("missing field")
            || first.contains("expected")
        {
            CompileErrorKind::InvalidValue
        } else {
            CompileErrorKind::Syntax
        };
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        let path = if path == "." { String::new() } else { path };
        CompileError::new(kind, first).at(SourceLocation {
            file: name.to_string(),
            line,
            column,
            path,
        })
    })
}

fn strip_location_prefix(s: &str) -> String {
    let s = s.strip_prefix("error: ").unwrap_or(s);
    if let Some(rest) = s.strip_prefix("line ") {
        if let Some(i) = rest.find(": ") {
            return rest[i + 2..].to_string();
        }
    }
    s.to_string()
}

/// A YAML node with its position, for turning a key path from semantic validation into a
/// line and column. Deserialized by hand: `#[serde(untagged)]` would buffer the input and
/// lose every position.
#[derive(Debug)]
enum LocatedNode {
    Map(BTreeMap<String, serde_saphyr::Spanned<LocatedNode>>),
    Seq(Vec<serde_saphyr::Spanned<LocatedNode>>),
    Scalar,
}

impl<'de> Deserialize<'de> for LocatedNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LocatedNode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<LocatedNode, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = m.next_key::<KeyText>()? {
                    let v = m.next_value()?;
                    out.insert(k.0, v);
                }
                Ok(LocatedNode::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<LocatedNode, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element()? {
                    out.push(v);
                }
                Ok(LocatedNode::Seq(out))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_unit<E>(self) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
            fn visit_none<E>(self) -> Result<LocatedNode, E> {
                Ok(LocatedNode::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key rendered as text, whatever its YAML type (`1: x` is legal YAML).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Finds the line and column of a key path like `spec.routes[1].paranoia`.
pub(crate) fn locate(text: &str, file: &str, path: &str) -> SourceLocation {
    let mut loc = SourceLocation {
        file: file.to_string(),
        line: 0,
        column: 0,
        path: path.to_string(),
    };
    let Ok(root) = serde_saphyr::from_str::<serde_saphyr::Spanned<LocatedNode>>(text) else {
        return loc;
    };
    let mut node = &root;
    let mut found = true;
    for seg in split_path(path) {
        let next = match (&node.value, seg) {
            (LocatedNode::Map(m), PathSeg::Key(k)) => m.get(k),
            (LocatedNode::Seq(s), PathSeg::Index(i)) => s.get(i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => {
                found = false;
                break;
            }
        }
    }
    let _ = found;
    loc.line = node.referenced.line() as u32;
    loc.column = node.referenced.column() as u32;
    loc
}

enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<PathSeg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(PathSeg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(PathSeg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses() {
        let p = Policy::default_policy();
        assert_eq!(p.document.api_version, API_VERSION);
        assert!(!p.rules.is_empty());
    }

    #[test]
    fn unknown_field_has_line_column_and_path() {
        let text = "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  routes:\n    - name: chat\n      paranoya: 2\n";
        let e = Policy::from_str_named(text, "p.yaml", None).unwrap_err();
        assert_eq!(e.code(), "policy.unknown_field");
        assert_eq!(e.location().file, "p.yaml");
        assert_eq!((e.location().line, e.location().column), (8, 7));
        assert!(e.location().path.starts_with("spec.routes[0]"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:8:7"), "{e}");
    }

    #[test]
    fn semantic_error_is_located() {
        let text = "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  routes:\n    - name: a\n    - name: b\n      paranoia: 9\n";
        let e = Policy::from_str_named(text, "p.yaml", None).unwrap_err();
        assert_eq!(e.code(), "policy.invalid_value");
        assert_eq!(e.location().path, "spec.routes[1].paranoia");
        assert_eq!(e.location().line, 9);
    }

    #[test]
    fn wrong_version_and_kind() {
        let e = Policy::from_text("apiVersion: v0\nkind: Policy\nmetadata: {name: x}\nspec: {}\n")
            .unwrap_err();
        assert_eq!(e.code(), "policy.unsupported_version");
        assert_eq!(e.location().line, 1);
        let e = Policy::from_text(
            "apiVersion: edgeward.dev/v1\nkind: Gateway\nmetadata: {name: x}\nspec: {}\n",
        )
        .unwrap_err();
        assert_eq!(e.code(), "policy.unsupported_version");
        assert_eq!(e.location().line, 2);
    }

    #[test]
    fn json_policy_is_accepted_and_located() {
        let ok = r#"{"apiVersion":"edgeward.dev/v1","kind":"Policy","metadata":{"name":"j"},"spec":{"rules":{"builtin":false}}}"#;
        let p = Policy::from_text(ok).unwrap();
        assert!(p.rules.is_empty());
        let bad = "{\n  \"apiVersion\": \"edgeward.dev/v1\",\n  \"kind\": \"Policy\",\n  \"metadata\": {\"name\": \"j\"},\n  \"spec\": {\"bogus\": 1}\n}";
        let e = Policy::from_text(bad).unwrap_err();
        assert_eq!(e.code(), "policy.unknown_field");
        assert_eq!(e.location().line, 5);
    }

    #[test]
    fn syntax_errors_have_codes() {
        for bad in ["{", "a: [", "\t- x", "apiVersion: [1", "", "null"] {
            let e = Policy::from_text(bad).unwrap_err();
            assert!(e.code().starts_with("policy."), "{bad:?}: {e}");
        }
    }

    #[test]
    fn duplicate_route_names_and_unknown_exclusion_route() {
        let t = "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  routes:\n    - name: a\n    - name: a\n";
        assert_eq!(
            Policy::from_text(t).unwrap_err().location().path,
            "spec.routes[1].name"
        );
        let t = "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  exclusions:\n    - rules: [1]\n      routes: [nope]\n";
        let e = Policy::from_text(t).unwrap_err();
        assert_eq!(e.code(), "policy.unknown_reference");
        assert_eq!(e.location().line, 7);
    }

    #[test]
    fn schema_files_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rulesets/schema");
        for (file, text) in [
            ("policy.schema.json", policy_json_schema()),
            ("rules.schema.json", rules_json_schema()),
        ] {
            let p = root.join(file);
            if std::env::var_os("EDGEWARD_BLESS").is_some() {
                std::fs::create_dir_all(&root).unwrap();
                std::fs::write(&p, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                committed == text,
                "{file} is stale: run `EDGEWARD_BLESS=1 cargo test -p edgeward schema_files`"
            );
        }
    }
}
