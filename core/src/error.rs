//! Error types.
//!
//! Two phases, two families: everything about a policy or a rule fails while the engine is
//! built ([`CompileError`]) or while an untrusted bundle is loaded ([`BundleError`]);
//! inspection itself never fails on request content. After the response, reading the
//! server's usage report from a body can fail ([`UsageError`]) because the host needs to
//! know that the number it settles with is not the server's. Each error is an opaque struct with a
//! kind accessor and a stable [`code`](CompileError::code) string that every binding exposes
//! unchanged, so logs and tests can match on it.

use std::fmt;

/// Where in a policy or rule file an error was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceLocation {
    /// The file name, or `<inline>` for text given directly.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// The path of the offending key, e.g. `spec.routes[1].paranoia`.
    pub path: String,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " (at {})", self.path)?;
        }
        Ok(())
    }
}

/// What went wrong while building an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompileErrorKind {
    /// The policy or rule file is not valid YAML/JSON.
    Syntax,
    /// A key is not known at this place.
    UnknownField,
    /// A value has the wrong type or is out of range.
    InvalidValue,
    /// `apiVersion` or `kind` is not one this version understands.
    UnsupportedVersion,
    /// A rule's regex does not compile or is not allowed (e.g. look-around).
    InvalidRegex,
    /// Two rules share an id.
    DuplicateRuleId,
    /// A reference (route, rule id, rule file) points nowhere.
    UnknownReference,
    /// A rule's inline test failed.
    RuleTestFailed,
    /// A file could not be read.
    Io,
    /// A compiled automaton exceeded its size limit.
    TooLarge,
}

impl CompileErrorKind {
    /// The stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            CompileErrorKind::Syntax => "policy.syntax",
            CompileErrorKind::UnknownField => "policy.unknown_field",
            CompileErrorKind::InvalidValue => "policy.invalid_value",
            CompileErrorKind::UnsupportedVersion => "policy.unsupported_version",
            CompileErrorKind::InvalidRegex => "rule.invalid_regex",
            CompileErrorKind::DuplicateRuleId => "rule.duplicate_id",
            CompileErrorKind::UnknownReference => "policy.unknown_reference",
            CompileErrorKind::RuleTestFailed => "rule.test_failed",
            CompileErrorKind::Io => "policy.io",
            CompileErrorKind::TooLarge => "rule.too_large",
        }
    }
}

/// An error found while parsing a policy or building an engine.
#[derive(Clone, PartialEq, Eq)]
pub struct CompileError(Box<CompileErrorInner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct CompileErrorInner {
    kind: CompileErrorKind,
    message: String,
    location: SourceLocation,
    rule_id: Option<u32>,
}

impl CompileError {
    pub(crate) fn new(kind: CompileErrorKind, message: impl Into<String>) -> CompileError {
        CompileError(Box::new(CompileErrorInner {
            kind,
            message: message.into(),
            location: SourceLocation::default(),
            rule_id: None,
        }))
    }

    pub(crate) fn at(mut self, location: SourceLocation) -> CompileError {
        self.0.location = location;
        self
    }

    pub(crate) fn with_rule(mut self, id: u32) -> CompileError {
        self.0.rule_id = Some(id);
        self
    }

    pub(crate) fn in_file(mut self, file: &str) -> CompileError {
        if self.0.location.file.is_empty() || self.0.location.file == "<inline>" {
            self.0.location.file = file.to_string();
        }
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> CompileErrorKind {
        self.0.kind
    }

    /// The stable code, e.g. `policy.unknown_field`.
    pub fn code(&self) -> &'static str {
        self.0.kind.code()
    }

    /// A human-readable explanation without the location.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Where the error is (file, line, column, key path).
    pub fn location(&self) -> &SourceLocation {
        &self.0.location
    }

    /// The rule the error is about, if any.
    pub fn rule_id(&self) -> Option<u32> {
        self.0.rule_id
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc = &self.0.location;
        if !loc.file.is_empty() {
            write!(f, "{loc}: ")?;
        }
        write!(f, "[{}] ", self.code())?;
        if let Some(id) = self.0.rule_id {
            write!(f, "rule {id}: ")?;
        }
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CompileError {}

/// What went wrong while loading a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BundleErrorKind {
    /// The bytes do not start with the bundle magic.
    BadMagic,
    /// The bundle format version is not supported by this build.
    UnsupportedFormat,
    /// The bundle was written by an incompatible engine version.
    VersionMismatch,
    /// The bytes are truncated or not valid CBOR for a bundle.
    Corrupt,
    /// The policy hash does not match the contents.
    HashMismatch,
    /// The policy inside the bundle failed to compile.
    Compile,
}

impl BundleErrorKind {
    /// The stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            BundleErrorKind::BadMagic => "bundle.bad_magic",
            BundleErrorKind::UnsupportedFormat => "bundle.unsupported_format",
            BundleErrorKind::VersionMismatch => "bundle.version_mismatch",
            BundleErrorKind::Corrupt => "bundle.corrupt",
            BundleErrorKind::HashMismatch => "bundle.hash_mismatch",
            BundleErrorKind::Compile => "bundle.compile",
        }
    }
}

/// An error found while loading untrusted bundle bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleError(Box<(BundleErrorKind, String)>);

impl BundleError {
    pub(crate) fn new(kind: BundleErrorKind, message: impl Into<String>) -> BundleError {
        BundleError(Box::new((kind, message.into())))
    }

    /// What went wrong.
    pub fn kind(&self) -> BundleErrorKind {
        self.0 .0
    }

    /// The stable code, e.g. `bundle.bad_magic`.
    pub fn code(&self) -> &'static str {
        self.0 .0.code()
    }

    /// A human-readable explanation.
    pub fn message(&self) -> &str {
        &self.0 .1
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code(), self.message())
    }
}

impl fmt::Debug for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BundleError {}

/// Why no usage could be read from a response body.
///
/// The host settles a reservation with what the server reported; when that is impossible it
/// has to fall back to its own estimate, and the kind tells it (and its logs) why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageErrorKind {
    /// The body is not JSON (truncated, invalid syntax, invalid UTF-8, trailing bytes).
    MalformedJson,
    /// The body is JSON but has no `usage` object, or it lacks the provider's counts.
    Missing,
    /// `usage`, one of its detail objects or a count has a JSON type that cannot be a count
    /// (a string, a boolean, an array, ...), or the body itself is not an object.
    WrongType,
    /// A count is negative, fractional, or above 2^53 (no real response reaches that;
    /// the bound keeps every sum of counts exact and far from `u64` overflow).
    OutOfRange,
}

impl UsageErrorKind {
    /// The stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            UsageErrorKind::MalformedJson => "usage.malformed_json",
            UsageErrorKind::Missing => "usage.missing",
            UsageErrorKind::WrongType => "usage.wrong_type",
            UsageErrorKind::OutOfRange => "usage.out_of_range",
        }
    }
}

/// Usage could not be read from a response body.
///
/// Opaque (kind plus message) like the other errors, so new kinds and details can be added
/// without breaking hosts that match on [`code`](UsageError::code).
#[derive(Clone, PartialEq, Eq)]
pub struct UsageError(Box<(UsageErrorKind, String)>);

impl UsageError {
    pub(crate) fn new(kind: UsageErrorKind, message: impl Into<String>) -> UsageError {
        UsageError(Box::new((kind, message.into())))
    }

    /// What went wrong.
    pub fn kind(&self) -> UsageErrorKind {
        self.0 .0
    }

    /// The stable code, e.g. `usage.missing`.
    pub fn code(&self) -> &'static str {
        self.0 .0.code()
    }

    /// A human-readable explanation.
    pub fn message(&self) -> &str {
        &self.0 .1
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code(), self.message())
    }
}

impl fmt::Debug for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for UsageError {}

/// Why the parameter rewrites could not be applied to a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RewriteErrorKind {
    /// The body is not JSON (invalid syntax or UTF-8, trailing bytes).
    MalformedJson,
    /// The body is JSON but not an object.
    NotAnObject,
}

impl RewriteErrorKind {
    /// The stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            RewriteErrorKind::MalformedJson => "rewrite.malformed_json",
            RewriteErrorKind::NotAnObject => "rewrite.not_an_object",
        }
    }
}

/// A request body could not be rewritten: the host must refuse it rather than forward it
/// with the parameters the policy clamps or strips.
#[derive(Clone, PartialEq, Eq)]
pub struct RewriteError(Box<(RewriteErrorKind, String)>);

impl RewriteError {
    pub(crate) fn new(kind: RewriteErrorKind, message: impl Into<String>) -> RewriteError {
        RewriteError(Box::new((kind, message.into())))
    }

    /// What went wrong.
    pub fn kind(&self) -> RewriteErrorKind {
        self.0 .0
    }

    /// The stable code, e.g. `rewrite.malformed_json`.
    pub fn code(&self) -> &'static str {
        self.0 .0.code()
    }

    /// A human-readable explanation.
    pub fn message(&self) -> &str {
        &self.0 .1
    }
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code(), self.message())
    }
}

impl fmt::Debug for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for RewriteError {}

/// Every stable error code, for bindings that list them (as pydantic-core does).
pub fn all_error_codes() -> Vec<&'static str> {
    use BundleErrorKind as B;
    use CompileErrorKind as C;
    use UsageErrorKind as U;
    let c = [
        C::Syntax,
        C::UnknownField,
        C::InvalidValue,
        C::UnsupportedVersion,
        C::InvalidRegex,
        C::DuplicateRuleId,
        C::UnknownReference,
        C::RuleTestFailed,
        C::Io,
        C::TooLarge,
    ];
    let b = [
        B::BadMagic,
        B::UnsupportedFormat,
        B::VersionMismatch,
        B::Corrupt,
        B::HashMismatch,
        B::Compile,
    ];
    let u = [U::MalformedJson, U::Missing, U::WrongType, U::OutOfRange];
    c.iter()
        .map(|k| k.code())
        .chain(b.iter().map(|k| k.code()))
        .chain(u.iter().map(|k| k.code()))
        .chain(
            [
                RewriteErrorKind::MalformedJson,
                RewriteErrorKind::NotAnObject,
            ]
            .iter()
            .map(|k| k.code()),
        )
        .chain(crate::limits::StoreErrorKind::ALL.iter().map(|k| k.code()))
        .collect()
}
