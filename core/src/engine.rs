//! The engine: built once from a policy, then shared by every worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cost::params::{compile_models, CompiledModel, Tokenizer};
use crate::cost::stage::{CostScratch, RouteParams};
use crate::cost::tokens::Encoding;
use crate::cost::usage::{Usage, UsageTracker};
use crate::decision::Reservation;
use crate::decision::{Action, Cost, Decision, Reason, RuleMatch, Scores, Stage};
use crate::error::UsageError;
use crate::error::{CompileError, CompileErrorKind};
use crate::field::{ApiParam, Field, FieldFlags, FieldKind, FieldSink, Finding, ParseLimits};
use crate::identity::{Identified, Principal};
use crate::limits::stage::CompiledLimit;
use crate::limits::{
    Charge, Clock, LimitState, LimitStore, MemoryStore, MemoryStoreConfig, Settled, StoreError,
    SystemClock, Unit,
};
use crate::parse::{self, Emitter, ParseScratch};
use crate::policy::{Limits, Mode, OnOversize, Policy, RouteSettings, Schema};
use crate::request::Request;
use crate::rules::compile::{Program, ProgramCaches, TransformCache};
use crate::rules::{glob_match, Category, RuleDef, Target};

/// Knobs that are not part of the policy: they change how, not what, the engine decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Use the literal prefilter (on by default; off only to prove it changes nothing).
    pub prefilter: bool,
    /// Most matches recorded in one decision; scoring continues past it.
    pub max_matches: usize,
    /// Short fields (name and value up to 96 bytes) that matched no rule, remembered per
    /// [`Scratch`] and program so a repeated header, JSON key or model name is not scanned
    /// again; 0 turns the memo off. Only clean results are remembered, compared on the full
    /// bytes, so it changes speed, never a decision.
    pub clean_field_memo: usize,
    /// Longer fields (above 96 bytes, up to [`Config::large_field_memo_bytes`]) that matched
    /// no rule, remembered per [`Scratch`] and program: an application's system prompt and
    /// the earlier turns of a conversation come back with every request, and recognising
    /// one (a hash and a compare of its bytes, ~3 k instructions for 4 KiB) replaces its
    /// scan (~130 k). Clean results only, compared on the full bytes, so it changes speed,
    /// never a decision; 0 turns it off. Each slot reserves its bytes up front, so the
    /// memory per scratch and program is at most slots × bytes.
    pub large_field_memo: usize,
    /// Longest name plus value [`Config::large_field_memo`] remembers.
    pub large_field_memo_bytes: usize,
    /// Most prompt bytes counted exactly (tiktoken) when a token estimate straddles a
    /// route's prompt cap; above it the estimate decides and the decision's cost says it
    /// was estimated. Exact counting runs at 10–40 MB/s and a request can be shaped to
    /// straddle the cap on purpose, so this bounds what one request can cost: the default
    /// of 128 KiB is 3–13 ms. 0 never counts exactly.
    pub max_exact_count_bytes: u64,
    /// Verified JWTs remembered per [`Scratch`] until they expire, so a client reusing its
    /// token pays the signature check (hundreds of microseconds for RS256 / ES256) once per
    /// worker; 0 verifies every request. Validity windows are checked on every hit.
    pub jwt_cache: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefilter: true,
            max_matches: 32,
            clean_field_memo: 256,
            large_field_memo: 8,
            large_field_memo_bytes: 16 * 1024,
            max_exact_count_bytes: 128 * 1024,
            jwt_cache: 64,
        }
    }
}

/// Whether a decision counts as a refusal for the `refusals` signal: refused (or, in
/// monitor mode, would be) by access, size, content, parameter or cost checks. Limits and
/// signals refuse honest callers too, and counting them would feed the signal itself.
fn refused(d: &Decision) -> bool {
    let reason = match &d.action {
        Action::Deny { reason, .. } => Some(reason),
        Action::Allow => d.would_deny.as_ref(),
    };
    !matches!(
        reason,
        None | Some(
            Reason::RateLimited { .. }
                | Reason::LimitStoreUnavailable { .. }
                | Reason::AbuseSignal { .. }
                | Reason::Unauthenticated
                | Reason::InvalidCredentials { .. }
        )
    )
}

/// The model-table row a decision was priced with.
fn decision_model(d: &Decision) -> Option<&Arc<str>> {
    d.cost.as_ref().and_then(|c| c.model.as_ref())
}

/// What heavy hitters are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeavyBy {
    /// Estimated micro-dollars.
    MicroUsd = 0,
    /// Prompt plus reserved output tokens.
    Tokens = 1,
}

/// An IP address written without allocating.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> IpText {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Builds an [`Engine`] with non-default [`Config`], limit store or clock.
#[derive(Debug, Clone, Default)]
pub struct EngineBuilder {
    config: Config,
    store: Option<Arc<dyn LimitStore>>,
    clock: Option<Arc<dyn Clock>>,
    events: Option<Arc<dyn crate::events::EventSink>>,
}

impl EngineBuilder {
    /// Sets the config.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets the store the policy's limits are counted in. Default: a [`MemoryStore`] of
    /// this engine's own, so an engine rebuilt for a new policy starts from zero; pass one
    /// store to every engine (or a Redis store) to keep the counts across reloads and
    /// processes.
    pub fn store(mut self, store: Arc<dyn LimitStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the clock limits and token expiry are read from (tests use
    /// `limits::FakeClock`). Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Sends every decision's event line to `sink` as `inspect` makes it, and every
    /// settlement's as [`Engine::settle_decision`] does.
    pub fn events(mut self, sink: Arc<dyn crate::events::EventSink>) -> Self {
        self.events = Some(sink);
        self
    }

    /// Compiles the policy.
    pub fn build(self, policy: &Policy) -> Result<Engine, CompileError> {
        Engine::compile(policy, self.config, self.store, self.clock, self.events)
    }
}

/// Parser findings and request-level checks that behave like rules (ids below 1000).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Builtin {
    pub(crate) id: u32,
    pub(crate) name: &'static str,
    pub(crate) score: u32,
    /// The lowest paranoia level the check runs at, as for rules.
    pub(crate) paranoia: u8,
}

const fn b(id: u32, name: &'static str, score: u32) -> Builtin {
    Builtin {
        id,
        name,
        score,
        paranoia: 1,
    }
}

/// A built-in that only runs from paranoia level 2 up.
const fn b2(id: u32, name: &'static str, score: u32) -> Builtin {
    Builtin {
        paranoia: 2,
        ..b(id, name, score)
    }
}

pub(crate) const INVALID_JSON: Builtin = b(10, "invalid_json", 5);
pub(crate) const JSON_TOO_DEEP: Builtin = b(11, "json_too_deep", 5);
pub(crate) const TOO_MANY_FIELDS: Builtin = b(12, "too_many_fields", 5);
pub(crate) const DECODED_TOO_LARGE: Builtin = b(13, "decoded_too_large", 5);
pub(crate) const MALFORMED_ESCAPE: Builtin = b(14, "malformed_escape", 2);
pub(crate) const INVALID_UTF8: Builtin = b(15, "invalid_utf8", 2);
pub(crate) const MALFORMED_MULTIPART: Builtin = b(16, "malformed_multipart", 5);
pub(crate) const TOO_MANY_PARTS: Builtin = b(17, "too_many_parts", 5);
pub(crate) const DUPLICATE_JSON_KEY: Builtin = b(18, "duplicate_json_key", 3);
pub(crate) const INVALID_JSON_ESCAPE: Builtin = b(19, "invalid_json_escape", 3);
pub(crate) const BODY_TRUNCATED: Builtin = b(20, "body_truncated", 5);
pub(crate) const INVALID_METHOD: Builtin = b(21, "invalid_method", 5);
pub(crate) const DUPLICATE_FRAMING_HEADER: Builtin = b(22, "duplicate_framing_header", 5);
pub(crate) const CL_TE_CONFLICT: Builtin = b(23, "content_length_with_transfer_encoding", 5);
pub(crate) const UNKNOWN_METHOD: Builtin = b(24, "unknown_method", 5);
pub(crate) const BODY_ON_GET: Builtin = b(25, "body_on_get_or_head", 5);
pub(crate) const EMPTY_HOST: Builtin = b(26, "empty_host", 5);
pub(crate) const MULTIPART_CHARSET: Builtin = b(27, "multipart_charset", 5);
pub(crate) const CONTENT_TYPE_ANOMALY: Builtin = b(28, "content_type_anomaly", 5);
pub(crate) const EMPTY_CLIENT_HEADER: Builtin = b2(29, "empty_user_agent_or_accept", 5);
// Score 3: bodies without a Content-Type are common from scripts and tests, so alone this
// only tips a request that something else already made suspicious.
pub(crate) const BODY_WITHOUT_CONTENT_TYPE: Builtin = b2(30, "body_without_content_type", 3);

/// Every built-in finding, in id order (one list, so ids and names cannot drift apart).
const BUILTINS: [Builtin; 21] = [
    INVALID_JSON,
    JSON_TOO_DEEP,
    TOO_MANY_FIELDS,
    DECODED_TOO_LARGE,
    MALFORMED_ESCAPE,
    INVALID_UTF8,
    MALFORMED_MULTIPART,
    TOO_MANY_PARTS,
    DUPLICATE_JSON_KEY,
    INVALID_JSON_ESCAPE,
    BODY_TRUNCATED,
    INVALID_METHOD,
    DUPLICATE_FRAMING_HEADER,
    CL_TE_CONFLICT,
    UNKNOWN_METHOD,
    BODY_ON_GET,
    EMPTY_HOST,
    MULTIPART_CHARSET,
    CONTENT_TYPE_ANOMALY,
    EMPTY_CLIENT_HEADER,
    BODY_WITHOUT_CONTENT_TYPE,
];

/// Every built-in finding as `(rule id, name)`, for listings.
pub fn builtin_ids() -> impl Iterator<Item = (u32, &'static str)> {
    BUILTINS.iter().map(|b| (b.id, b.name))
}

fn builtin_for(f: &Finding) -> Builtin {
    match f {
        Finding::InvalidJson { .. } => INVALID_JSON,
        Finding::JsonTooDeep { .. } => JSON_TOO_DEEP,
        Finding::TooManyFields => TOO_MANY_FIELDS,
        Finding::DecodedTooLarge => DECODED_TOO_LARGE,
        Finding::MalformedEscape => MALFORMED_ESCAPE,
        Finding::InvalidUtf8 => INVALID_UTF8,
        Finding::MalformedMultipart => MALFORMED_MULTIPART,
        Finding::TooManyParts => TOO_MANY_PARTS,
        Finding::DuplicateJsonKey => DUPLICATE_JSON_KEY,
        Finding::InvalidJsonEscape => INVALID_JSON_ESCAPE,
        Finding::MultipartCharset => MULTIPART_CHARSET,
    }
}

/// A route ready to match and enforce.
#[derive(Debug)]
struct CompiledRoute {
    name: Arc<str>,
    hosts: Vec<Vec<u8>>,
    methods: Vec<Vec<u8>>,
    paths: Vec<Vec<u8>>,
    program: usize,
    schema: Schema,
    mode: Mode,
    threshold: u32,
    category_thresholds: [u32; Category::COUNT],
    limits: Limits,
    parse_limits: ParseLimits,
    /// Built-in ids (bit = id) that are off on this route.
    builtin_off: u64,
    /// Exclusions that name fields: (rule ids, categories, fields).
    field_exclusions: Vec<(Vec<u32>, Vec<Category>, Vec<Target>)>,
    /// Parameter policy and the chat shape it reads.
    params: RouteParams,
    /// The parameter policy for each tier that has its own (`spec.tiers`).
    tier_params: Vec<(Arc<str>, RouteParams)>,
    /// Who may use the route.
    access: crate::identity::Access,
    /// Whether anonymous requests may use the route.
    anonymous: bool,
}

impl CompiledRoute {
    fn matches(&self, host: &[u8], method: &[u8], path: &[u8]) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| glob_match(h, host)))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| glob_match(p, path)))
    }

    fn excluded(&self, rule: u32, cat: Category, f: &Field<'_>) -> bool {
        self.field_exclusions.iter().any(|(ids, cats, fields)| {
            (ids.contains(&rule) || cats.contains(&cat)) && fields.iter().any(|t| t.selects(f))
        })
    }
}

struct Inner {
    id: u64,
    config: Config,
    policy: Policy,
    /// Where event lines go, if anywhere.
    events: Option<Arc<dyn crate::events::EventSink>>,
    /// The policy's abuse signals and their per-principal state.
    signals: Option<crate::signals::Signals>,
    metrics: crate::metrics::Metrics,
    /// Who costs the most over the last hour: principals and client addresses, by
    /// micro-dollars and by tokens (indexed by [`HeavyBy`]).
    principals: crate::heavy::HeavyHitters<2>,
    clients: crate::heavy::HeavyHitters<2>,
    programs: Vec<Program>,
    /// Routes in policy order, then the fallback `default` route.
    routes: Vec<CompiledRoute>,
    /// The model table.
    models: Vec<CompiledModel>,
    /// API keys, JWT issuers, trusted headers.
    identity: crate::identity::CompiledIdentity,
    /// The policy's limits.
    limits: Vec<CompiledLimit>,
    store: Arc<dyn LimitStore>,
    clock: Arc<dyn Clock>,
    /// How long an unsettled reservation lives.
    lease_ns: u64,
    pool: Mutex<Vec<Scratch>>,
}

/// The compiled policy. Immutable, `Send + Sync`, and cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policy", &self.inner.policy.document.metadata.name)
            .field("rules", &self.inner.policy.rules.len())
            .field("routes", &self.inner.routes.len())
            .finish()
    }
}

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// Per-worker buffers and regex caches. Create with [`Engine::new_scratch`]; reuse it for
/// every request on that worker so inspection does not allocate.
#[derive(Debug)]
pub struct Scratch {
    engine_id: u64,
    parse: ParseScratch,
    transforms: TransformCache,
    caches: Vec<ProgramCaches>,
    path: Vec<u8>,
    scored: Vec<u64>,
    /// Hashes long field values once for both memos (see [`crate::memo::ValueHash`]);
    /// seeded per scratch.
    value_hasher: foldhash::fast::RandomState,
    cost: CostScratch,
    jwt: crate::identity::JwtCache,
    /// The request's charges, the index of each one's limit, and their states.
    limit_of: Vec<usize>,
    charge_list: Vec<Charge>,
    states: Vec<LimitState>,
    /// The limit key being built.
    key: String,
    /// What the signals counted of the current request, for its outcome.
    observed: Option<crate::signals::Observation>,
}

impl Engine {
    /// Compiles a policy with the default [`Config`].
    pub fn new(policy: &Policy) -> Result<Engine, CompileError> {
        Engine::compile(policy, Config::default(), None, None, None)
    }

    /// A builder for non-default [`Config`].
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The engine for the embedded default policy.
    pub fn default_engine() -> Engine {
        Engine::new(&Policy::default_policy()).expect("embedded default policy compiles")
    }

    fn compile(
        policy: &Policy,
        config: Config,
        store: Option<Arc<dyn LimitStore>>,
        clock: Option<Arc<dyn Clock>>,
        events: Option<Arc<dyn crate::events::EventSink>>,
    ) -> Result<Engine, CompileError> {
        let src = policy.source.as_str();
        let mut seen = std::collections::HashSet::new();
        for r in &policy.rules {
            if r.id < 1000 {
                return Err(CompileError::new(
                    CompileErrorKind::InvalidValue,
                    "rule ids below 1000 are reserved for built-in findings",
                )
                .with_rule(r.id)
                .in_file(src));
            }
            if !seen.insert(r.id) {
                return Err(CompileError::new(
                    CompileErrorKind::DuplicateRuleId,
                    format!("rule id {} is defined twice", r.id),
                )
                .with_rule(r.id)
                .in_file(src));
            }
            r.check().map_err(|e| e.in_file(src))?;
        }
        let spec = &policy.document.spec;
        let models = compile_models(&spec.models)
            .map_err(|m| CompileError::new(CompileErrorKind::InvalidValue, m).in_file(src))?;
        let default_params = spec.defaults.params.clone().unwrap_or_default();
        let identity =
            crate::identity::CompiledIdentity::new(&spec.identity.clone().unwrap_or_default())
                .map_err(|(m, at)| {
                    CompileError::new(CompileErrorKind::InvalidValue, format!("{at}: {m}"))
                        .in_file(src)
                })?;
        let mut programs: Vec<Program> = Vec::new();
        let mut program_keys: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
        let mut routes = Vec::new();
        let defaults = &spec.defaults;
        let mut route_specs: Vec<(Arc<str>, &crate::policy::RouteMatch, RouteSettings)> = spec
            .routes
            .iter()
            .map(|r| (Arc::from(r.name.as_str()), &r.matcher, r.settings()))
            .collect();
        let any = crate::policy::RouteMatch::default();
        route_specs.push((Arc::from("default"), &any, RouteSettings::default()));
        for (name, m, own) in route_specs {
            let paranoia = own.paranoia.or(defaults.paranoia).unwrap_or(1);
            let selection = own.rules.clone().or_else(|| defaults.rules.clone());
            let mut whole_excluded: Vec<(Vec<u32>, Vec<Category>)> = Vec::new();
            let mut field_exclusions = Vec::new();
            for e in &spec.exclusions {
                if !e.routes.is_empty() && !e.routes.iter().any(|r| **r == *name) {
                    continue;
                }
                if e.fields.is_empty() {
                    whole_excluded.push((e.rules.clone(), e.categories.clone()));
                } else {
                    let targets = e
                        .fields
                        .iter()
                        .map(|f| Target::parse(f))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.in_file(src))?;
                    field_exclusions.push((e.rules.clone(), e.categories.clone(), targets));
                }
            }
            let enabled = |id: u32, cat: Category| -> bool {
                if let Some(sel) = &selection {
                    if (!sel.categories.is_empty() && !sel.categories.contains(&cat))
                        || sel.disable_categories.contains(&cat)
                        || sel.disable.contains(&id)
                    {
                        return false;
                    }
                }
                !whole_excluded
                    .iter()
                    .any(|(ids, cats)| ids.contains(&id) || cats.contains(&cat))
            };
            let chosen: Vec<usize> = policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.paranoia <= paranoia && enabled(r.id, r.category))
                .map(|(i, _)| i)
                .collect();
            let mut builtin_off = 0u64;
            for bi in &BUILTINS {
                if bi.paranoia > paranoia || !enabled(bi.id, Category::Protocol) {
                    builtin_off |= 1 << bi.id;
                }
            }
            let program = match program_keys.get(&chosen) {
                Some(&p) => p,
                None => {
                    let defs: Vec<&RuleDef> = chosen.iter().map(|&i| &policy.rules[i]).collect();
                    programs.push(Program::build(&defs).map_err(|e| e.in_file(src))?);
                    program_keys.insert(chosen, programs.len() - 1);
                    programs.len() - 1
                }
            };
            let mut category_thresholds = [0u32; Category::COUNT];
            for (c, t) in defaults
                .category_thresholds
                .iter()
                .chain(own.category_thresholds.iter())
            {
                category_thresholds[*c as usize] = *t;
            }
            let limits = own.limits.or(defaults.limits).unwrap_or_default();
            let schema = own.schema.or(defaults.schema).unwrap_or_default();
            let params = own
                .params
                .as_ref()
                .map_or_else(|| default_params.clone(), |p| p.or(&default_params));
            let fields = own.api_fields.as_ref().or(defaults.api_fields.as_ref());
            let param_err =
                |m: String| CompileError::new(CompileErrorKind::InvalidValue, m).in_file(src);
            let route_params =
                RouteParams::new(schema.chat_shape(), params.clone(), fields).map_err(param_err)?;
            let mut tier_params = Vec::new();
            for (tier, t) in &spec.tiers {
                let Some(tp) = &t.params else { continue };
                let mut rp = RouteParams::new(schema.chat_shape(), tp.or(&params), fields)
                    .map_err(|m| param_err(format!("spec.tiers.{tier}: {m}")))?;
                if tp.models.is_some() {
                    rp.route_models = route_params.models.clone();
                }
                tier_params.push((Arc::from(tier.as_str()), rp));
            }
            let access = own
                .access
                .clone()
                .or_else(|| defaults.access.clone())
                .unwrap_or_default();
            // Anonymous callers: the route's word, then the identity section's, then refused
            // on inference routes of a policy that authenticates callers itself.
            // Anonymous callers: the route's own word; then refused where the route lists
            // who may use it (an allow list must not be passed by dropping one's key); then
            // the identity section's word; then refused on every route (the fallback
            // `default` route included, so an unmatched path variant is no way around) of a
            // policy that authenticates callers itself.
            let anonymous = match access.anonymous {
                Some(a) => a == crate::identity::Anonymous::Allow,
                None if !access.allow.is_empty() => false,
                None => match identity.anonymous {
                    Some(a) => a == crate::identity::Anonymous::Allow,
                    None => !identity.authenticates,
                },
            };
            routes.push(CompiledRoute {
                name,
                hosts: m
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase().into_bytes())
                    .collect(),
                methods: m.methods.iter().map(|h| h.clone().into_bytes()).collect(),
                paths: m.paths.iter().map(|h| h.clone().into_bytes()).collect(),
                program,
                schema,
                mode: own.mode.or(defaults.mode).unwrap_or_default(),
                threshold: own.threshold.or(defaults.threshold).unwrap_or(5),
                category_thresholds,
                parse_limits: limits.parse_limits(),
                limits,
                builtin_off,
                field_exclusions,
                params: route_params,
                tier_params,
                access,
                anonymous,
            });
        }
        let route_names: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
        let limits = crate::limits::stage::compile_limits(&spec.limits, &route_names).map_err(
            |(m, at)| {
                CompileError::new(CompileErrorKind::InvalidValue, format!("{at}: {m}")).in_file(src)
            },
        )?;
        let clock: Arc<dyn Clock> = clock.unwrap_or_else(|| Arc::new(SystemClock));
        // A store the host passes wins over the policy's: tests and hosts sharing one store
        // across engines keep control.
        let store = match store {
            Some(s) => s,
            None => spec
                .store
                .as_ref()
                .map_or(Ok(None), |s| s.build(&clock))
                .map_err(|m| {
                    CompileError::new(CompileErrorKind::InvalidValue, format!("spec.store.{m}"))
                        .in_file(src)
                })?
                .unwrap_or_else(|| Arc::new(MemoryStore::new(MemoryStoreConfig::default()))),
        };
        let metrics = crate::metrics::Metrics::new(
            routes.iter().map(|r| r.name.clone()).collect(),
            models.iter().map(|m| m.name.clone()).collect(),
            policy.rules.iter().map(|r| (r.id, r.category)).collect(),
        );
        let signals = spec
            .signals
            .as_ref()
            .map(crate::signals::Signals::new)
            .transpose()
            .map_err(|m| {
                CompileError::new(CompileErrorKind::InvalidValue, format!("spec.signals.{m}"))
                    .in_file(src)
            })?;
        let heavy = || {
            crate::heavy::HeavyHitters::from_settings(
                spec.heavy_hitters.as_ref().unwrap_or(&Default::default()),
            )
            .map_err(|m| {
                CompileError::new(
                    CompileErrorKind::InvalidValue,
                    format!("spec.heavyHitters.{m}"),
                )
                .in_file(src)
            })
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                metrics,
                signals,
                principals: heavy()?,
                clients: heavy()?,
                limits,
                store,
                clock,
                lease_ns: spec
                    .reservations
                    .lease_seconds
                    .saturating_mul(1_000_000_000),
                id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
                config,
                policy: policy.clone(),
                events,
                programs,
                routes,
                models,
                identity,
                pool: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The policy this engine was built from.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The config.
    pub fn config(&self) -> Config {
        self.inner.config
    }

    /// Fresh per-worker state for [`Engine::inspect_with`].
    pub fn new_scratch(&self) -> Scratch {
        let max_rules = self
            .inner
            .programs
            .iter()
            .map(|p| p.rules.len())
            .max()
            .unwrap_or(0);
        Scratch {
            engine_id: self.inner.id,
            parse: ParseScratch::default(),
            transforms: TransformCache::default(),
            caches: self
                .inner
                .programs
                .iter()
                .map(|p| {
                    p.new_caches(crate::rules::compile::MemoSize {
                        small: self.inner.config.clean_field_memo,
                        large: self.inner.config.large_field_memo,
                        large_max: self.inner.config.large_field_memo_bytes,
                    })
                })
                .collect(),
            path: Vec::new(),
            value_hasher: foldhash::fast::RandomState::default(),
            scored: vec![0; max_rules.div_ceil(64) + 1],
            cost: CostScratch {
                memo: crate::cost::stage::ClassMemo::new(
                    self.inner.config.large_field_memo,
                    self.inner.config.large_field_memo_bytes,
                ),
                ..CostScratch::default()
            },
            limit_of: Vec::new(),
            charge_list: Vec::new(),
            states: Vec::new(),
            key: String::new(),
            observed: None,
            jwt: crate::identity::JwtCache::new(if self.inner.identity.verifies_jwt() {
                self.inner.config.jwt_cache
            } else {
                0
            }),
        }
    }

    /// Inspects a request with a pooled [`Scratch`].
    pub fn inspect(&self, req: &Request<'_>) -> Decision {
        let mut s = self
            .inner
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| self.new_scratch());
        let d = self.inspect_with(&mut s, req);
        if let Ok(mut p) = self.inner.pool.lock() {
            // Bounded so a burst of threads does not pin memory forever.
            if p.len() < 64 {
                p.push(s);
            }
        }
        d
    }

    /// Inspects a request: the primitive. Never fails: malformed content becomes findings.
    /// With an event sink (see [`EngineBuilder::events`]) the decision's event line goes to
    /// it before this returns.
    pub fn inspect_with(&self, s: &mut Scratch, req: &Request<'_>) -> Decision {
        let start = std::time::Instant::now();
        let now = self.inner.clock.now_ns();
        let mut d = self.decide(s, req, now);
        d.inspect_ns =
            crate::decision::Elapsed(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let observed = s.observed.take();
        if let (Some(sig), Some(p)) = (&self.inner.signals, &d.principal) {
            // A request whose cost the signals counted and that was refused after (by a
            // signal's deny or a limit) is taken back out of the velocity window.
            let uncount = observed.filter(|o| o.cost.is_some() && !d.is_allowed());
            if sig.wants_outcome(uncount.is_some()) {
                let id = Arc::clone(&p.id);
                sig.outcome(&id, now, refused(&d), uncount.as_ref(), &mut d.signals);
            }
        }
        self.inner.metrics.decision(&d);
        for h in d.signals.iter().filter(|h| h.fired) {
            self.inner.metrics.signal(h);
            if let Some(sink) = &self.inner.events {
                sink.event(&self.signal_event_json(&d, h));
            }
        }
        if let (true, Some(c)) = (d.is_allowed(), &d.cost) {
            let weights = [
                c.micro_usd,
                c.prompt_tokens.saturating_add(c.output_tokens_reserved),
            ];
            let mut ip = IpText::default();
            let client = req.client_ip().map(|a| {
                use std::fmt::Write as _;
                let _ = write!(ip, "{a}");
                ip.as_str()
            });
            if let Some(p) = &d.principal {
                self.inner.principals.add(&p.id, weights, now);
            }
            if let Some(a) = client {
                self.inner.clients.add(a, weights, now);
            }
        }
        if let Some(sink) = &self.inner.events {
            sink.event(&self.event_json(&d, Some(req)));
        }
        d
    }

    /// A decision as one event line (JSON, no newline): see [`crate::events`]. With `req`
    /// (the request decided) it names the client address, and when the policy opts in
    /// (`spec.events.prompts`) quotes the prompt text.
    pub fn event_json(&self, d: &Decision, req: Option<&Request<'_>>) -> String {
        let quote = self
            .inner
            .policy
            .document
            .spec
            .events
            .as_ref()
            .and_then(|e| e.prompts)
            .map(|p| p.max_bytes as usize);
        let prompt = quote.zip(req).and_then(|(max, req)| {
            let route = self.inner.routes.iter().find(|r| r.name == d.route)?;
            let text = crate::cost::stage::prompt_text(
                &route.params,
                req.body,
                route.parse_limits,
                &mut crate::parse::ParseScratch::default(),
                max,
            );
            (!text.is_empty()).then_some(text)
        });
        crate::events::decision_line(
            d,
            crate::events::EventContext {
                now_ns: self.inner.clock.now_ns(),
                client: req.and_then(|r| r.client_ip()),
                prompt,
                excerpts: quote.is_some(),
            },
        )
    }

    /// The body to answer a refused request with (`None` when it is allowed), from the
    /// policy's `response` template: by default the OpenAI error shape,
    /// `{"error":{"message":...,"type":...,"code":...}}`, with the reason, an error type
    /// for the status and the reason's stable code. Values are JSON-escaped when the
    /// content type is JSON. Every binding answers refusals with this body and
    /// [`refusal_content_type`](Engine::refusal_content_type).
    pub fn refusal_body(&self, d: &Decision, request_id: Option<&str>) -> Option<String> {
        let Action::Deny { status, reason } = &d.action else {
            return None;
        };
        let r = &self.inner.policy.document.spec.response;
        let ct = r.content_type.to_ascii_lowercase();
        // Values may quote the request (a model name): escaped for the body's language.
        let text = |s: &str| -> String {
            if ct.contains("json") {
                let q = serde_json::to_string(s).unwrap_or_default();
                q[1..q.len() - 1].to_string()
            } else if ct.contains("html") || ct.contains("xml") {
                s.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;")
                    .replace('\'', "&#39;")
            } else {
                s.to_string()
            }
        };
        let kind = match status {
            401 => "authentication_error",
            403 if matches!(reason, Reason::AccessDenied) => "permission_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        // One pass over the template, so a value that contains `{code}` is not expanded.
        let mut out = String::with_capacity(r.body.len() + 64);
        let mut rest = r.body.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let (value, used) = [
                ("{reason}", text(&reason.to_string())),
                ("{code}", reason.code().to_string()),
                ("{type}", kind.to_string()),
                ("{request_id}", text(request_id.unwrap_or(""))),
            ]
            .into_iter()
            .find(|(p, _)| tail.starts_with(p))
            .map_or(("{".to_string(), 1), |(p, v)| (v, p.len()));
            out.push_str(&value);
            rest = &tail[used..];
        }
        out.push_str(rest);
        Some(out)
    }

    /// The request body to forward for an allowed decision: `Ok(None)` to forward the
    /// original bytes, or the body with the decision's rewrites (a clamped output limit,
    /// stripped parameters, `stream_options.include_usage` set) applied, members the
    /// rewrites do not touch kept byte for byte. An error means the body cannot carry the
    /// change: refuse the request rather than forward it unchanged.
    pub fn rewrite_body(
        &self,
        d: &Decision,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, crate::error::RewriteError> {
        crate::cost::rewrite::rewrite_body(&d.rewrites, body)
    }

    /// The content type of [`refusal_body`](Engine::refusal_body).
    pub fn refusal_content_type(&self) -> &str {
        &self.inner.policy.document.spec.response.content_type
    }

    /// A signal that fired (see [`crate::signals`]) as one event line.
    pub fn signal_event_json(&self, d: &Decision, h: &crate::signals::SignalHit) -> String {
        let unit = match self
            .inner
            .policy
            .document
            .spec
            .signals
            .as_ref()
            .and_then(|s| s.velocity.as_ref())
            .map(|v| v.by)
        {
            Some(crate::signals::VelocityBy::Tokens) => "tokens",
            _ => "micro-USD",
        };
        crate::events::signal_line(d, h, unit, self.inner.clock.now_ns())
    }

    /// A settlement as one event line: the usage, its price and the difference to the
    /// decision's estimate.
    pub fn settlement_event_json(&self, d: &Decision, usage: &Usage, settled: Settled) -> String {
        self.settlement_line(d, usage, self.price_of(decision_model(d), usage), settled)
    }

    fn settlement_line(
        &self,
        d: &Decision,
        usage: &Usage,
        micro_usd: u64,
        settled: Settled,
    ) -> String {
        let settled = match settled {
            Settled::Settled => "settled",
            Settled::Unknown => "unknown",
        };
        crate::events::settlement_line(d, usage, micro_usd, settled, self.inner.clock.now_ns())
    }

    /// The `k` principals (by id) that cost the most over the last hour (the policy's
    /// `heavyHitters.window`), largest first, by estimated micro-dollars or tokens (prompt
    /// plus reserved output) of admitted requests.
    /// Fixed memory (Space-Saving, see [`crate::heavy`]): values may be overestimated by at
    /// most each entry's `error`.
    pub fn top_principals(&self, by: HeavyBy, k: usize) -> Vec<crate::heavy::HeavyHitter> {
        let now = self.inner.clock.now_ns();
        self.inner.principals.top(by as usize, k, now)
    }

    /// [`top_principals`](Engine::top_principals) for client addresses.
    pub fn top_clients(&self, by: HeavyBy, k: usize) -> Vec<crate::heavy::HeavyHitter> {
        let now = self.inner.clock.now_ns();
        self.inner.clients.top(by as usize, k, now)
    }

    /// The engine's metrics in the Prometheus text exposition format, for a host to serve
    /// on `/metrics`: decisions by route, action and stage; rule matches by rule and
    /// category; estimated and used tokens and micro-dollars by route and model, cost by
    /// tenant (bounded); the inspect latency histogram; store errors by code; abuse signals
    /// fired; the ten costliest principals and client addresses by cost and by tokens.
    pub fn metrics_text(&self) -> String {
        let mut text = self.inner.metrics.text();
        let by = [HeavyBy::MicroUsd, HeavyBy::Tokens];
        let principals = by.map(|b| self.top_principals(b, 10));
        let clients = by.map(|b| self.top_clients(b, 10));
        crate::metrics::top_text(
            &mut text,
            [[&principals[0], &principals[1]], [&clients[0], &clients[1]]],
        );
        text
    }

    /// Settles the decision's reservation (if any), counts its usage in the metrics, and
    /// sends the settlement event to the engine's event sink (if any): what hosts that keep
    /// the decision call instead of [`settle`](Engine::settle). Usage is counted once: a
    /// second settle of the same reservation counts nothing.
    pub fn settle_decision(&self, d: &Decision, usage: &Usage) -> Result<Settled, StoreError> {
        let price = self.price_of(decision_model(d), usage);
        let settled = match &d.reservation {
            Some(r) => self.settle_priced(r, usage, price)?,
            None => Settled::Unknown,
        };
        if settled == Settled::Settled || d.reservation.is_none() {
            self.inner.metrics.usage(d, usage, price);
        }
        if let Some(sink) = &self.inner.events {
            sink.event(&self.settlement_line(d, usage, price, settled));
        }
        Ok(settled)
    }

    /// What `usage` costs at the model-table row named `model`. By name: an engine rebuilt
    /// from another policy (sharing the store) prices with the row of the same name, not
    /// whatever row now has the same index.
    fn price_of(&self, model: Option<&Arc<str>>, usage: &Usage) -> u64 {
        model
            .and_then(|m| self.inner.models.iter().find(|r| r.name == *m))
            .map_or(0, |m| {
                m.price.micro_usd(
                    usage.prompt_tokens,
                    usage.cached_prompt_tokens,
                    usage.output_tokens,
                )
            })
    }

    fn decide(&self, s: &mut Scratch, req: &Request<'_>, now_ns: u64) -> Decision {
        if s.engine_id != self.inner.id {
            *s = self.new_scratch();
        }
        let Scratch {
            parse: parse_scratch,
            transforms,
            caches,
            path,
            scored,
            cost,
            value_hasher,
            jwt,
            limit_of,
            charge_list,
            states,
            key,
            observed,
            ..
        } = s;
        let (decoded_path, path_flags) = parse::percent_decode(req.path, false, path);
        let host = req.host().unwrap_or(b"");
        let route = self
            .inner
            .routes
            .iter()
            .find(|r| r.matches(host, req.method, decoded_path))
            .unwrap_or_else(|| self.inner.routes.last().expect("default route exists"));
        // Identity and access come before everything that reads content: an unidentified or
        // unadmitted caller costs one header lookup (and a cached signature check).
        let now = now_ns / 1_000_000_000;
        let early =
            |reason: Reason, status: u16, stage: Stage, principal: Option<Principal>| Decision {
                action: Action::Deny { status, reason },
                stage,
                route: route.name.clone(),
                mode: route.mode,
                would_deny: None,
                score: 0,
                scores: Scores::default(),
                threshold: route.threshold,
                matches: Vec::new(),
                matches_truncated: false,
                principal,
                cost: None,
                rewrites: Vec::new(),
                limits: Vec::new(),
                headers: Vec::new(),
                reservation: None,
                store_error: None,
                inspect_ns: crate::decision::Elapsed(0),
                signals: Vec::new(),
            };
        // Failed authentications count as anonymous requests (the limits anonymous callers
        // get); a caller already over them has its next token refused before the signature
        // check, so made-up tokens cannot buy hundreds of microseconds each.
        let mut throttle = None;
        let mut gate = || match self.failed_auth_limits(
            req,
            route,
            now_ns,
            false,
            key,
            limit_of,
            charge_list,
            states,
        ) {
            Some(t) => {
                throttle = Some(t);
                false
            }
            None => true,
        };
        let identified = self.inner.identity.identify(req, now, jwt, &mut gate);
        if matches!(identified, Identified::Invalid(_)) {
            throttle = self.failed_auth_limits(
                req,
                route,
                now_ns,
                true,
                key,
                limit_of,
                charge_list,
                states,
            );
        }
        if let Some((limit, retry_after_seconds)) = throttle {
            if route.mode == Mode::Enforce {
                let mut d = early(
                    Reason::RateLimited {
                        limit,
                        retry_after_seconds,
                    },
                    429,
                    Stage::Limits,
                    None,
                );
                d.headers = crate::limits::stage::headers(
                    &self.inner.limits,
                    &[],
                    None,
                    retry_after_seconds,
                );
                return d;
            }
        }
        let (principal, id_deny) = match identified {
            Identified::Throttled => (
                None,
                Some((
                    401,
                    Reason::InvalidCredentials { why: "not_checked" },
                    Stage::Identity,
                )),
            ),
            Identified::Anonymous => (
                None,
                (!route.anonymous).then_some((401, Reason::Unauthenticated, Stage::Identity)),
            ),
            Identified::Principal(p) => {
                let deny = (!route.access.admits(&p)).then_some((
                    403,
                    Reason::AccessDenied,
                    Stage::Access,
                ));
                (Some(p), deny)
            }
            Identified::Invalid(why) => (
                None,
                Some((401, Reason::InvalidCredentials { why }, Stage::Identity)),
            ),
        };
        if let (Some((status, reason, stage)), Mode::Enforce) = (&id_deny, route.mode) {
            let mut d = early(reason.clone(), *status, *stage, principal);
            if *status == 401 {
                // RFC 6750 §3: a 401 names the scheme, and says when a token was refused.
                let v = match reason {
                    Reason::InvalidCredentials { .. } => "Bearer error=\"invalid_token\"",
                    _ => "Bearer",
                };
                d.headers.push(("www-authenticate", v.to_string()));
            }
            return d;
        }
        let limits = &route.limits;
        let deny_size =
            |reason: Reason, status: u16| early(reason, status, Stage::Size, principal.clone());
        // Size limits come before any parsing: they bound everything that follows. They are
        // enforced in monitor mode too, because they protect the host, not just the model.
        if (req.path.len() + req.query.len()) as u64 > limits.max_uri_bytes as u64 {
            return deny_size(
                Reason::UriTooLarge {
                    limit: limits.max_uri_bytes,
                },
                414,
            );
        }
        if req.headers.len() > limits.max_headers as usize {
            return deny_size(
                Reason::TooManyHeaders {
                    limit: limits.max_headers,
                },
                431,
            );
        }
        if req
            .headers
            .iter()
            .any(|(n, v)| n.len() + v.len() > limits.max_header_bytes as usize)
        {
            return deny_size(
                Reason::HeaderTooLarge {
                    limit: limits.max_header_bytes,
                },
                431,
            );
        }
        let mut body = req.body;
        let mut truncated = false;
        if body.len() as u64 > limits.max_body_bytes {
            match limits.on_oversize {
                OnOversize::Refuse => {
                    return deny_size(
                        Reason::BodyTooLarge {
                            limit: limits.max_body_bytes,
                        },
                        413,
                    )
                }
                OnOversize::InspectPrefix => {
                    body = &body[..limits.max_body_bytes as usize];
                    truncated = true;
                }
            }
        }
        let program = &self.inner.programs[route.program];
        scored.fill(0);
        let chat = route.params.enabled;
        if chat {
            cost.reset();
            cost.print.reset(
                self.inner
                    .signals
                    .as_ref()
                    .is_some_and(|s| s.fingerprints())
                    && principal.is_some(),
            );
        }
        let mut insp = Inspector {
            program,
            route,
            caches: &mut caches[route.program],
            transforms,
            scored,
            prefilter: self.inner.config.prefilter,
            max_matches: self.inner.config.max_matches,
            matches: Vec::new(),
            truncated_matches: false,
            scores: Scores::default(),
            part: FieldKind::Body,
            same_site: req.same_site(),
            cost: chat.then_some(&mut *cost),
            value_hasher,
        };
        if truncated {
            insp.builtin(BODY_TRUNCATED, "body");
        }
        if !is_token(req.method) {
            insp.builtin(INVALID_METHOD, "method");
        } else if !is_known_method(req.method) {
            insp.builtin(UNKNOWN_METHOD, "method");
        }
        request_line_checks(&mut insp, req);
        {
            let mut em = Emitter::new(&mut insp, route.parse_limits);
            let f = Field {
                kind: FieldKind::Method,
                name: b"",
                value: req.method,
                role: None,
                flags: FieldFlags::default(),
            };
            em.field(&f);
            if path_flags.has(FieldFlags::MALFORMED_ESCAPE) {
                em.finding(Finding::MalformedEscape);
            }
            let f = Field {
                kind: FieldKind::Path,
                name: b"",
                value: decoded_path,
                role: None,
                flags: path_flags,
            };
            em.field(&f);
            if !req.query.is_empty() {
                parse::urlencoded::walk(
                    req.query,
                    FieldKind::Query,
                    FieldKind::QueryName,
                    parse_scratch,
                    &mut em,
                );
            }
            let mut content_type: &[u8] = b"";
            for (n, v) in req.headers {
                let f = Field {
                    kind: FieldKind::Header,
                    name: n,
                    value: v,
                    role: None,
                    flags: FieldFlags::default(),
                };
                if !em.field(&f) {
                    break;
                }
                if n.eq_ignore_ascii_case(b"cookie") {
                    parse::cookie::walk(v, parse_scratch, &mut em);
                } else if n.eq_ignore_ascii_case(b"content-type") {
                    content_type = v;
                }
            }
            if !body.is_empty() && !em.stopped() {
                walk_body(route.schema, content_type, body, parse_scratch, &mut em);
            }
        }
        let mut d = insp.finish();
        if let Some((_, reason, _)) = id_deny {
            // Monitor mode (enforce returned above): identity is the earliest refusal.
            d.would_deny = Some(reason);
        }
        // A tier with its own parameter policy replaces the route's for its principals.
        let params = principal
            .as_ref()
            .and_then(|p| p.tier.as_deref())
            .and_then(|t| route.tier_params.iter().find(|(n, _)| **n == *t))
            .map_or(&route.params, |(_, rp)| rp);
        d.principal = principal;
        let mut recount = None;
        if chat {
            let out = crate::cost::stage::decide(
                params,
                &self.inner.models,
                cost,
                body,
                route.parse_limits,
                parse_scratch,
                self.inner.config.max_exact_count_bytes,
            );
            d.cost = out.cost;
            recount = out.recount;
            if let Some((status, reason, stage)) = out.deny {
                match route.mode {
                    // The parameter stages come before inspection in the pipeline: their
                    // refusal is the one reported; the matches stay for the log.
                    Mode::Enforce => {
                        d.action = Action::Deny { status, reason };
                        d.stage = stage;
                    }
                    Mode::Monitor => {
                        if d.would_deny.is_none() {
                            d.would_deny = Some(reason);
                        }
                    }
                }
            } else if route.mode == Mode::Enforce && d.is_allowed() {
                d.rewrites = out.rewrites;
            }
        }
        let tighten =
            self.signals_stage(&mut d, route, chat.then_some(&mut *cost), now_ns, observed);
        // Limits come last: only a request every other stage admits is charged.
        if !self.inner.limits.is_empty() && d.is_allowed() {
            // The model-table row, not the client's string: a key part must not take
            // unbounded client-chosen values.
            let model = d.cost.as_ref().and_then(|c| c.model.clone());
            let model = model.as_deref();
            let max_exact = self.inner.config.max_exact_count_bytes;
            let mut exact = |c: &crate::cost::stage::Recount| {
                c.count(params, body, route.parse_limits, parse_scratch, max_exact)
            };
            let recount = recount.as_ref().map(|c| {
                (
                    c,
                    &mut exact as &mut dyn FnMut(&crate::cost::stage::Recount) -> Option<u64>,
                )
            });
            self.limits_stage(
                &mut d,
                req,
                route,
                model,
                now_ns,
                (limit_of, charge_list, states, key),
                recount,
                tighten,
            );
        }
        d
    }

    /// Counts the request in its principal's abuse signals and applies the actions of the
    /// active ones: `deny` refuses the request (429 until the cooldown ends), `tighten`
    /// returns the factor its rate charges count by (1 otherwise); `flag` only reports.
    fn signals_stage(
        &self,
        d: &mut Decision,
        route: &CompiledRoute,
        cost: Option<&mut CostScratch>,
        now_ns: u64,
        observed: &mut Option<crate::signals::Observation>,
    ) -> u64 {
        let (Some(sig), Some(p)) = (&self.inner.signals, d.principal.as_ref()) else {
            return 1;
        };
        let obs = crate::signals::Observation {
            cost: d.cost.as_ref().filter(|_| d.is_allowed()).map(|c| {
                (
                    c.micro_usd,
                    c.prompt_tokens.saturating_add(c.output_tokens_reserved),
                )
            }),
            inference: cost.is_some(),
            logprobs: cost.as_ref().is_some_and(|c| c.params.wants_logprobs()),
            print: cost.and_then(|c| c.print.finish()),
        };
        let id = Arc::clone(&p.id);
        sig.observe(&id, now_ns, &obs, &mut d.signals);
        *observed = Some(obs);
        let deny = d
            .signals
            .iter()
            .filter(|h| h.action == crate::signals::SignalAction::Deny)
            .max_by_key(|h| h.remaining_seconds);
        if let (Some(h), true) = (deny, d.is_allowed()) {
            let reason = Reason::AbuseSignal {
                signal: h.signal,
                retry_after_seconds: h.remaining_seconds,
            };
            match route.mode {
                Mode::Enforce => {
                    d.headers
                        .push(("retry-after", h.remaining_seconds.max(1).to_string()));
                    d.action = Action::Deny {
                        status: 429,
                        reason,
                    };
                    d.stage = Stage::Signals;
                    d.rewrites.clear();
                }
                Mode::Monitor => {
                    if d.would_deny.is_none() {
                        d.would_deny = Some(reason);
                    }
                }
            }
        }
        let tightened = route.mode == Mode::Enforce
            && d.signals
                .iter()
                .any(|h| h.action == crate::signals::SignalAction::Tighten);
        if tightened {
            sig.tighten_factor()
        } else {
            1
        }
    }

    /// Charges the request against every limit that applies, all-or-nothing, and records
    /// the outcome, headers and reservation in `d`.
    ///
    /// When a token or cost limit refuses a request whose prompt was only estimated, the
    /// prompt is counted exactly (`recount`) and the charges tried once more: a refusal
    /// is never the estimate's error.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn limits_stage(
        &self,
        d: &mut Decision,
        req: &Request<'_>,
        route: &CompiledRoute,
        model: Option<&str>,
        now_ns: u64,
        (limit_of, charge_list, states, key): (
            &mut Vec<usize>,
            &mut Vec<Charge>,
            &mut Vec<LimitState>,
            &mut String,
        ),
        mut recount: Option<(
            &crate::cost::stage::Recount,
            &mut dyn FnMut(&crate::cost::stage::Recount) -> Option<u64>,
        )>,
        tighten: u64,
    ) {
        use crate::limits::stage::{self as ls, Amounts, Subject};
        let limits = &self.inner.limits;
        let monitor = route.mode == Mode::Monitor;
        let (id, lease, result) = loop {
            let amounts = d.cost.as_ref().map_or(Amounts::default(), |c| Amounts {
                prompt_tokens: c.prompt_tokens,
                output_tokens: c.output_tokens_reserved,
                micro_usd: c.micro_usd,
            });
            let subject = Subject {
                req,
                route: &route.name,
                principal: d.principal.as_ref(),
                model,
            };
            ls::charges(
                limits,
                &subject,
                &amounts,
                |_| true,
                key,
                limit_of,
                charge_list,
            );
            if charge_list.is_empty() {
                return;
            }
            if tighten > 1 {
                for c in charge_list.iter_mut() {
                    if let crate::limits::LimitKind::Rate(g) = c.kind {
                        // At most the burst (unless the request alone is larger): tightening
                        // slows a caller down, it must not make every request impossible.
                        c.amount = c
                            .amount
                            .saturating_mul(tighten)
                            .min(g.burst().max(c.amount));
                    }
                }
            }
            let id = ls::reservation_id();
            let lease = if monitor || ls::final_at_admission(limits, limit_of) {
                0
            } else {
                self.inner.lease_ns.max(1)
            };
            // Monitor routes only look: charging them would refuse enforcing routes that
            // share the keys.
            let result = if monitor {
                self.inner
                    .store
                    .peek(charge_list, now_ns, states)
                    .map(|()| crate::limits::Outcome::Admitted)
            } else {
                self.inner
                    .store
                    .acquire(id, charge_list, now_ns, lease, states)
            };
            // A store (possibly the host's own) that answers out of shape is a failure, not
            // a panic.
            let result = result.and_then(|o| {
                let bad_index = matches!(o, crate::limits::Outcome::Refused { charge, .. } if charge >= charge_list.len());
                if states.len() != charge_list.len() || bad_index {
                    Err(StoreError::new(
                        crate::limits::StoreErrorKind::Protocol,
                        "the store's answer does not match the charges",
                    ))
                } else {
                    Ok(o)
                }
            });
            if let Ok(crate::limits::Outcome::Refused { charge, .. }) = result {
                let by_tokens = matches!(
                    limits[limit_of[charge]].unit,
                    Unit::PromptTokens | Unit::TotalTokens | Unit::MicroUsd
                );
                if by_tokens {
                    if let Some((how, count)) = recount.take() {
                        if let Some(exact) = count(how) {
                            self.set_exact_prompt(d, exact);
                            continue;
                        }
                    }
                }
            }
            break (id, lease, result);
        };
        match result {
            Ok(outcome) => {
                let outcomes: Vec<(usize, ls::LimitOutcome)> = limit_of
                    .iter()
                    .zip(charge_list.iter())
                    .zip(states.iter())
                    .map(|((i, c), st)| (*i, ls::outcome(&limits[*i], c, st)))
                    .collect();
                let refused = match outcome {
                    crate::limits::Outcome::Admitted => None,
                    crate::limits::Outcome::Refused {
                        charge,
                        retry_after_ns,
                    } => Some((charge, retry_after_ns)),
                };
                let retry_after = refused
                    .and_then(|(_, r)| r)
                    .map(|ns| ns.div_ceil(1_000_000_000));
                d.headers = ls::headers(limits, &outcomes, refused.map(|(c, _)| c), retry_after);
                if let Some((charge, retry_after_ns)) = refused {
                    let name = limits[limit_of[charge]].name.clone();
                    d.action = Action::Deny {
                        status: 429,
                        reason: Reason::RateLimited {
                            limit: name,
                            retry_after_seconds: retry_after_ns
                                .map(|ns| ns.div_ceil(1_000_000_000)),
                        },
                    };
                    d.stage = Stage::Limits;
                } else {
                    if monitor && d.would_deny.is_none() {
                        // What enforce mode would refuse: a limit of the policy's own shadow
                        // limits never would.
                        if let Some((_, o)) = outcomes
                            .iter()
                            .find(|(i, o)| o.exceeded && !limits[*i].shadow)
                        {
                            d.would_deny = Some(Reason::RateLimited {
                                limit: o.name.clone(),
                                retry_after_seconds: o.retry_after_seconds,
                            });
                        }
                    }
                    if lease > 0 {
                        d.reservation = Some(crate::decision::Reservation {
                            id,
                            units: limit_of
                                .iter()
                                .zip(charge_list.iter())
                                .map(|(&i, c)| {
                                    let n = match c.kind {
                                        crate::limits::LimitKind::Rate(_) => tighten,
                                        _ => 1,
                                    };
                                    (limits[i].unit, n)
                                })
                                .collect(),
                            model: d.cost.as_ref().and_then(|c| c.model.clone()),
                        });
                    }
                }
                d.limits = outcomes.into_iter().map(|(_, o)| o).collect();
            }
            Err(e) => {
                // The request fails closed if any enforced limit it matched says so.
                let closed = limit_of.iter().zip(charge_list.iter()).find(|(&i, c)| {
                    !c.shadow
                        && limits[i].on_store_error == crate::limits::stage::OnStoreError::Closed
                });
                d.store_error = Some(crate::decision::StoreFailure {
                    code: e.code(),
                    failed_open: closed.is_none(),
                });
                if let Some((i, _)) = closed {
                    d.action = Action::Deny {
                        status: 503,
                        reason: Reason::LimitStoreUnavailable {
                            limit: limits[*i].name.clone(),
                        },
                    };
                    d.stage = Stage::Limits;
                }
            }
        }
    }

    /// The anonymous request limits of `req` (requests units only: a failed attempt uses no
    /// tokens and holds nothing in flight): peeked (`charge` false) or charged. Returns the
    /// refusing limit and its retry delay in seconds, if one refuses.
    #[allow(clippy::too_many_arguments)]
    fn failed_auth_limits(
        &self,
        req: &Request<'_>,
        route: &CompiledRoute,
        now_ns: u64,
        charge: bool,
        key: &mut String,
        limit_of: &mut Vec<usize>,
        charge_list: &mut Vec<Charge>,
        states: &mut Vec<LimitState>,
    ) -> Option<(Arc<str>, Option<u64>)> {
        use crate::limits::stage::{self as ls, Amounts, Subject};
        let limits = &self.inner.limits;
        if limits.is_empty() {
            return None;
        }
        let subject = Subject {
            req,
            route: &route.name,
            principal: None,
            model: None,
        };
        let enforced_requests = |l: &CompiledLimit| l.unit == Unit::Requests && !l.shadow;
        ls::charges(
            limits,
            &subject,
            &Amounts::default(),
            enforced_requests,
            key,
            limit_of,
            charge_list,
        );
        if charge_list.is_empty() {
            return None;
        }
        let result = if charge {
            self.inner
                .store
                .acquire(ls::reservation_id(), charge_list, now_ns, 0, states)
        } else {
            self.inner
                .store
                .peek(charge_list, now_ns, states)
                .map(|()| crate::limits::Outcome::Admitted)
        };
        // A store failure here lets the attempt through: the request's own limits stage
        // applies the policy's `onStoreError` to what it charges.
        let refusing = match result {
            Ok(crate::limits::Outcome::Refused { charge, .. }) => limit_of.get(charge).copied(),
            Ok(crate::limits::Outcome::Admitted) if !charge => states
                .iter()
                .zip(limit_of.iter())
                .find(|(st, _)| st.verdict != crate::limits::Verdict::Allowed)
                .map(|(_, &i)| i),
            _ => None,
        }?;
        let retry = states
            .iter()
            .zip(limit_of.iter())
            .find(|(_, &i)| i == refusing)
            .and_then(|(st, _)| st.retry_after_ns())
            .map(|ns| ns.div_ceil(1_000_000_000));
        Some((limits[refusing].name.clone(), retry))
    }

    /// Replaces the decision's estimated prompt tokens by an exact count, repricing it.
    fn set_exact_prompt(&self, d: &mut Decision, tokens: u64) {
        let Some(c) = d.cost.as_mut() else { return };
        c.prompt_tokens = tokens;
        c.prompt_tokens_low = tokens;
        c.prompt_tokens_high = tokens;
        c.exact = true;
        if let Some(row) = c
            .model
            .as_ref()
            .and_then(|m| self.inner.models.iter().find(|r| r.name == *m))
        {
            c.micro_usd = row.price.micro_usd(tokens, 0, c.output_tokens_reserved);
        }
    }

    /// Settles a reservation with the usage the response reported (or the usage tracker
    /// counted): token and cost limits are refunded or charged the difference to the
    /// estimate, concurrency is released. Settling twice, or after the reservation expired,
    /// changes nothing ([`Settled::Unknown`]). A request that never reached the model is
    /// settled with [`Usage::default`] (all zero), which refunds its reservation.
    pub fn settle(&self, reservation: &Reservation, usage: &Usage) -> Result<Settled, StoreError> {
        let price = self.price_of(reservation.model.as_ref(), usage);
        self.settle_priced(reservation, usage, price)
    }

    /// [`settle`](Engine::settle) with the usage's price already known.
    fn settle_priced(
        &self,
        reservation: &Reservation,
        usage: &Usage,
        micro_usd: u64,
    ) -> Result<Settled, StoreError> {
        let actual: Vec<u64> = reservation
            .units
            .iter()
            .map(|&(u, times)| {
                let n = match u {
                    Unit::Requests => 1,
                    Unit::Concurrency => 0,
                    Unit::PromptTokens => usage.prompt_tokens,
                    Unit::OutputTokens => usage.output_tokens,
                    Unit::TotalTokens => usage.prompt_tokens.saturating_add(usage.output_tokens),
                    Unit::MicroUsd => micro_usd,
                };
                n.saturating_mul(times)
            })
            .collect();
        self.inner
            .store
            .settle(reservation.id, &actual, self.inner.clock.now_ns())
    }

    /// A tracker for the streamed response to a request this engine decided, reading the
    /// format the route serves and counting streamed text with the model's tokenizer when
    /// the server sends no usage event. `None` when the decision has no cost (not an
    /// inference route) or its route serves a custom format.
    pub fn usage_tracker(&self, d: &Decision) -> Option<UsageTracker> {
        let cost = d.cost.as_ref()?;
        let provider = cost.provider?;
        Some(UsageTracker::new(
            provider,
            crate::cost::stage::text_counter(self.tokenizer_of(cost)),
        ))
    }

    /// The usage reported in a (non-streamed) JSON response body to a request this engine
    /// decided. `None` when the decision has no cost or its route serves a custom format.
    pub fn usage_from_body(&self, d: &Decision, body: &[u8]) -> Option<Result<Usage, UsageError>> {
        let provider = d.cost.as_ref()?.provider?;
        Some(crate::cost::usage::usage_from_body(provider, body))
    }

    fn tokenizer_of(&self, cost: &Cost) -> Tokenizer {
        cost.model
            .as_ref()
            .and_then(|name| self.inner.models.iter().find(|m| m.name == *name))
            .map_or(Tokenizer::Encoding(Encoding::O200kBase), |m| m.tokenizer)
    }

    /// Runs every rule's inline tests (`match:` / `noMatch:`), returning the failures.
    pub fn run_rule_tests(&self) -> Vec<RuleTestFailure> {
        // Every rule must be tested, even those no route enables (paranoia 4, say), so the
        // tests compile their own program over all rules.
        let defs: Vec<&RuleDef> = self.inner.policy.rules.iter().collect();
        let program = match Program::build(&defs) {
            Ok(p) => p,
            Err(e) => {
                return vec![RuleTestFailure {
                    rule_id: e.rule_id().unwrap_or(0),
                    value: String::new(),
                    expected_match: true,
                    message: e.to_string(),
                }]
            }
        };
        let mut caches = program.new_caches(Default::default());
        let mut tc = TransformCache::default();
        let mut out = Vec::new();
        for (i, def) in defs.iter().enumerate() {
            for (values, expect) in [(&def.tests.matches, true), (&def.tests.no_match, false)] {
                for v in values {
                    let got = program.test_value(&mut caches, &mut tc, i as u32, v.as_bytes());
                    if got.is_some() != expect {
                        out.push(RuleTestFailure {
                            rule_id: def.id,
                            value: v.clone(),
                            expected_match: expect,
                            message: format!(
                                "rule {} ({}) {} {:?}",
                                def.id,
                                def.name,
                                if expect { "did not match" } else { "matched" },
                                v
                            ),
                        });
                    }
                }
            }
        }
        out
    }

    /// Counts of rules, inline tests and compiled groups (for `edgeward check`).
    pub fn stats(&self) -> EngineStats {
        let p = &self.inner.policy;
        EngineStats {
            rules: p.rules.len(),
            rule_tests: p
                .rules
                .iter()
                .map(|r| r.tests.matches.len() + r.tests.no_match.len())
                .sum(),
            routes: self.inner.routes.len(),
            programs: self.inner.programs.len(),
            groups: self.inner.programs.iter().map(|p| p.groups.len()).sum(),
        }
    }
}

/// Sizes of a compiled engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    /// Rules loaded.
    pub rules: usize,
    /// Inline rule tests.
    pub rule_tests: usize,
    /// Routes including the fallback.
    pub routes: usize,
    /// Distinct compiled rule programs.
    pub programs: usize,
    /// Rule groups across programs.
    pub groups: usize,
}

/// A failed inline rule test.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleTestFailure {
    /// The rule.
    pub rule_id: u32,
    /// The test value.
    pub value: String,
    /// Whether the value was listed under `match`.
    pub expected_match: bool,
    /// A readable explanation.
    pub message: String,
}

/// RFC 9110 token characters.
fn is_token(m: &[u8]) -> bool {
    !m.is_empty()
        && m.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Framing-header checks: duplicates and Content-Length beside Transfer-Encoding are the
/// classic request-smuggling signs, and the host's proxy may resolve them differently from
/// the backend.
fn request_line_checks(insp: &mut Inspector<'_, '_>, req: &Request<'_>) {
    let (mut cl, mut te, mut host) = (0u32, 0u32, 0u32);
    let mut declared_body = false;
    let mut content_type = None;
    for (n, v) in req.headers {
        if n.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
            declared_body |= v.iter().any(|c| (b'1'..=b'9').contains(c));
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
            declared_body = true;
        } else if n.eq_ignore_ascii_case(b"host") {
            host += 1;
            if v.iter().all(u8::is_ascii_whitespace) {
                insp.builtin(EMPTY_HOST, "header:host");
            }
        } else if n.eq_ignore_ascii_case(b"content-type") {
            content_type = Some(*v);
        } else if (n.eq_ignore_ascii_case(b"user-agent") || n.eq_ignore_ascii_case(b"accept"))
            && v.iter().all(u8::is_ascii_whitespace)
        {
            insp.builtin(EMPTY_CLIENT_HEADER, "headers");
        }
    }
    if cl > 1 || te > 1 || host > 1 {
        insp.builtin(DUPLICATE_FRAMING_HEADER, "headers");
    }
    if cl > 0 && te > 0 {
        insp.builtin(CL_TE_CONFLICT, "headers");
    }
    // GET and HEAD have no defined body semantics (RFC 9110 §9.3.1): a body there is read
    // by some servers and ignored by others, the opening for request smuggling.
    let bodiless =
        req.method.eq_ignore_ascii_case(b"GET") || req.method.eq_ignore_ascii_case(b"HEAD");
    if bodiless && declared_body {
        insp.builtin(BODY_ON_GET, "method");
    }
    match content_type {
        Some(ct) if crate::parse::media::anomaly(ct) => {
            insp.builtin(CONTENT_TYPE_ANOMALY, "header:content-type");
        }
        None if !req.body.is_empty() => insp.builtin(BODY_WITHOUT_CONTENT_TYPE, "body"),
        _ => {}
    }
}

/// Methods registered with IANA (HTTP, WebDAV and its extensions) plus `PURGE`, which
/// caches accept. A request with any other method is a probe: frameworks route unknown
/// methods inconsistently, some to the GET handler, some past access checks.
fn is_known_method(m: &[u8]) -> bool {
    const KNOWN: [&[u8]; 38] = [
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        b"QUERY",
        b"PRI",
        b"PURGE",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"SEARCH",
        b"REPORT",
        b"ACL",
        b"BIND",
        b"UNBIND",
        b"REBIND",
        b"LINK",
        b"UNLINK",
        b"MERGE",
        b"LABEL",
        b"UPDATE",
        b"CHECKIN",
        b"CHECKOUT",
        b"UNCHECKOUT",
        b"MKCALENDAR",
        b"MKACTIVITY",
        b"MKWORKSPACE",
        b"VERSION-CONTROL",
        b"BASELINE-CONTROL",
    ];
    KNOWN.iter().any(|k| k.eq_ignore_ascii_case(m))
}

fn walk_body(
    schema: Schema,
    content_type: &[u8],
    body: &[u8],
    ps: &mut ParseScratch,
    em: &mut Emitter<'_>,
) {
    // The media type alone picks the parser: a parameter value naming another type
    // (`boundary="application/json"`) must not switch it.
    let ct = content_type;
    let essence = parse::media::essence(ct);
    let has = |needle: &[u8]| {
        essence
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    let schema = match schema {
        Schema::Auto if has(b"json") => Schema::Json,
        Schema::Auto if has(b"x-www-form-urlencoded") => Schema::Form,
        Schema::Auto if has(b"multipart/form-data") => Schema::Multipart,
        Schema::Auto if has(b"xml") => Schema::Xml,
        Schema::Auto => {
            // An unlabeled body that looks like JSON or XML is parsed as such, so leaving
            // the Content-Type out cannot hide a payload from argument rules.
            match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | Some(b'[') => Schema::Json,
                Some(b'<') => Schema::Xml,
                _ => Schema::Auto,
            }
        }
        s => s,
    };
    let raw = |em: &mut Emitter<'_>| {
        em.field(&Field {
            kind: FieldKind::Body,
            name: b"",
            value: body,
            role: None,
            flags: FieldFlags::default(),
        });
    };
    match schema {
        Schema::Form => parse::urlencoded::walk(body, FieldKind::Form, FieldKind::FormName, ps, em),
        Schema::Multipart => match parse::multipart::boundary(ct) {
            Some(bd) => parse::multipart::walk(body, bd, ps, em),
            None => {
                em.finding(Finding::MalformedMultipart);
                raw(em);
            }
        },
        Schema::Xml => {
            raw(em);
            parse::xml::walk(body, ps, em);
        }
        Schema::Raw => raw(em),
        Schema::Auto => {
            raw(em);
            // Text without a declared form type (none, `text/plain`, an unknown one) is
            // still parsed as a form by many frameworks: read it as one too.
            if std::str::from_utf8(body).is_ok() {
                parse::urlencoded::walk_guessed(body, ps, em);
            }
        }
        s => parse::json::walk(body, s.chat_shape(), ps, em),
    }
}

/// The sink that runs rules on each field and keeps score.
struct Inspector<'e, 's> {
    program: &'e Program,
    route: &'e CompiledRoute,
    caches: &'s mut ProgramCaches,
    transforms: &'s mut TransformCache,
    scored: &'s mut Vec<u64>,
    prefilter: bool,
    max_matches: usize,
    matches: Vec<RuleMatch>,
    truncated_matches: bool,
    scores: Scores,
    /// The part being parsed, for locating findings.
    part: FieldKind,
    /// [`Request::same_site`], for rules that count only cross-site.
    same_site: bool,
    /// The cost stages' state, on routes with an inference-API schema.
    cost: Option<&'s mut CostScratch>,
    /// See [`Scratch::value_hasher`].
    value_hasher: &'s foldhash::fast::RandomState,
}

const EXCERPT: usize = 80;

fn excerpt(value: &[u8], span: (usize, usize)) -> String {
    let start = span.0.saturating_sub(16);
    let end = span.1.min(start + EXCERPT).min(value.len());
    String::from_utf8_lossy(&value[start.min(end)..end]).into_owned()
}

fn location(f: &Field<'_>) -> String {
    let prefix = f.kind.prefix();
    if f.name.is_empty() {
        prefix.to_string()
    } else {
        let mut s = String::with_capacity(prefix.len() + 1 + f.name.len());
        s.push_str(prefix);
        s.push(':');
        s.push_str(&String::from_utf8_lossy(f.name));
        s
    }
}

/// Adds a match's score, and keeps the match unless the decision already holds `max`; the
/// match (with its location and excerpt strings) is only built when it is kept.
fn record(
    scores: &mut Scores,
    matches: &mut Vec<RuleMatch>,
    truncated: &mut bool,
    max: usize,
    (category, score): (Category, u32),
    make: impl FnOnce() -> RuleMatch,
) {
    scores.0[category as usize] += score;
    if matches.len() < max {
        matches.push(make());
    } else {
        *truncated = true;
    }
}

impl Inspector<'_, '_> {
    fn builtin(&mut self, b: Builtin, location: &str) {
        if self.route.builtin_off & (1 << b.id) != 0 {
            return;
        }
        // Each built-in scores once per request.
        let bit = 1u64 << b.id;
        let scored = self.scored.last_mut().expect("scratch has a builtin word");
        let score = if *scored & bit == 0 {
            *scored |= bit;
            b.score
        } else {
            return;
        };
        record(
            &mut self.scores,
            &mut self.matches,
            &mut self.truncated_matches,
            self.max_matches,
            (Category::Protocol, score),
            || RuleMatch {
                rule_id: b.id,
                name: Arc::from(b.name),
                category: Category::Protocol,
                score,
                location: location.to_string(),
                span: (0, 0),
                excerpt: String::new(),
            },
        );
    }

    fn finish(self) -> Decision {
        let route = self.route;
        let total = self.scores.total();
        let mut reason = None;
        if total >= route.threshold {
            reason = Some(Reason::AnomalyScore {
                category: self.scores.top().unwrap_or(Category::Other),
                score: total,
                threshold: route.threshold,
            });
        } else {
            for c in Category::ALL {
                let t = route.category_thresholds[c as usize];
                if t > 0 && self.scores.get(c) >= t {
                    reason = Some(Reason::AnomalyScore {
                        category: c,
                        score: self.scores.get(c),
                        threshold: t,
                    });
                    break;
                }
            }
        }
        let (action, would_deny) = match (reason, route.mode) {
            (Some(r), Mode::Enforce) => (
                Action::Deny {
                    status: 403,
                    reason: r,
                },
                None,
            ),
            (Some(r), Mode::Monitor) => (Action::Allow, Some(r)),
            (None, _) => (Action::Allow, None),
        };
        Decision {
            action,
            stage: Stage::Inspect,
            route: route.name.clone(),
            mode: route.mode,
            would_deny,
            score: total,
            scores: self.scores,
            threshold: route.threshold,
            matches: self.matches,
            matches_truncated: self.truncated_matches,
            cost: None,
            principal: None,
            rewrites: Vec::new(),
            limits: Vec::new(),
            headers: Vec::new(),
            reservation: None,
            store_error: None,
            inspect_ns: crate::decision::Elapsed(0),
            signals: Vec::new(),
        }
    }
}

impl FieldSink for Inspector<'_, '_> {
    fn param(&mut self, p: ApiParam, value: &[u8]) {
        if let Some(c) = self.cost.as_deref_mut() {
            c.params.add(p, value);
        }
    }

    fn field(&mut self, f: &Field<'_>) {
        self.part = f.kind;
        // A custom server's prompt fields become user text, for the prompt rules too.
        let promoted = self
            .route
            .params
            .generic
            .as_ref()
            .and_then(|g| g.promote(f));
        let f = promoted.as_ref().unwrap_or(f);
        let mut hash = crate::memo::ValueHash::new(self.value_hasher, f.value);
        if let Some(c) = self.cost.as_deref_mut() {
            c.field(f, &mut hash);
        }
        let Inspector {
            program,
            route,
            caches,
            transforms,
            scored,
            prefilter,
            max_matches,
            matches,
            truncated_matches,
            scores,
            same_site,
            ..
        } = self;
        program.scan(
            caches,
            transforms,
            f,
            *prefilter,
            &mut hash,
            &mut |ri, value, span| {
                let rule = &program.rules[ri as usize];
                if rule.cross_site && *same_site {
                    return;
                }
                if !route.field_exclusions.is_empty() && route.excluded(rule.id, rule.category, f) {
                    return;
                }
                let (w, bit) = (ri as usize / 64, 1u64 << (ri % 64));
                let score = if scored[w] & bit == 0 {
                    scored[w] |= bit;
                    rule.score
                } else {
                    0
                };
                record(
                    scores,
                    matches,
                    truncated_matches,
                    *max_matches,
                    (rule.category, score),
                    || RuleMatch {
                        rule_id: rule.id,
                        name: rule.name.clone(),
                        category: rule.category,
                        score,
                        location: location(f),
                        span: (span.0 as u32, span.1 as u32),
                        excerpt: excerpt(value, span),
                    },
                );
            },
        );
    }

    fn finding(&mut self, finding: Finding) {
        let loc = match finding {
            Finding::MalformedEscape | Finding::InvalidUtf8 => self.part.prefix(),
            _ => "body",
        };
        self.builtin(builtin_for(&finding), loc);
    }
}
