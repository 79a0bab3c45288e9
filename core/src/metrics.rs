//! The engine's metrics registry, exported in the Prometheus text format.
//!
//! Every label takes values from a set the policy fixes (routes, rule ids, categories,
//! stages, model-table rows, store error codes), except tenants, which are capped: the
//! first [`MAX_TENANTS`] tenants seen get their own series and the rest share `other`. So
//! the number of series is bounded whatever the traffic, and a scrape stays small.
//!
//! Recording is a handful of relaxed atomic adds per decision (tenants: one short lock);
//! [`crate::Engine::metrics_text`] renders the text a host serves on `/metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cost::usage::Usage;
use crate::decision::{Action, Decision, Stage};
use crate::limits::StoreErrorKind;
use crate::rules::Category;
use crate::signals::{SignalAction, SignalHit, SIGNAL_KINDS};

const ACTIONS: [SignalAction; 3] = [
    SignalAction::Flag,
    SignalAction::Tighten,
    SignalAction::Deny,
];

/// Tenants with a series of their own; later ones are counted as `other`.
pub const MAX_TENANTS: usize = 256;

const STAGES: [Stage; 9] = [
    Stage::Route,
    Stage::Identity,
    Stage::Access,
    Stage::Size,
    Stage::Inspect,
    Stage::Params,
    Stage::Cost,
    Stage::Limits,
    Stage::Signals,
];

/// Upper bounds of the inspect latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3,
];

/// Per route and model row: prompt tokens, reserved output tokens and estimated
/// micro-dollars at decision time; prompt tokens, output tokens and micro-dollars used.
const COST_FIELDS: usize = 6;

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The registry of one engine.
pub(crate) struct Metrics {
    routes: Vec<Arc<str>>,
    /// Model-table rows, then "none" for requests no row priced.
    models: Vec<Arc<str>>,
    /// route x {allow, deny} x stage.
    decisions: Box<[AtomicU64]>,
    /// Rule ids in policy order (and the built-in finding ids), with their categories.
    rules: Vec<(u32, Category)>,
    rule_index: HashMap<u32, usize>,
    rule_matches: Box<[AtomicU64]>,
    /// Built-in findings (ids below 1000: a fixed set), by id.
    builtin: Mutex<std::collections::BTreeMap<u32, (Category, u64)>>,
    /// route x model x COST_FIELDS.
    cost: Box<[AtomicU64]>,
    /// Per tenant: estimated micro-dollars, used micro-dollars.
    tenants: Mutex<HashMap<Arc<str>, [u64; 2]>>,
    other_tenants: [AtomicU64; 2],
    latency: Box<[AtomicU64]>,
    latency_sum_ns: AtomicU64,
    store_errors: Box<[AtomicU64]>,
    /// Signals fired, by signal x action.
    signals: Box<[AtomicU64]>,
}

impl Metrics {
    pub(crate) fn new(
        routes: Vec<Arc<str>>,
        models: Vec<Arc<str>>,
        rules: Vec<(u32, Category)>,
    ) -> Metrics {
        let mut models = models;
        models.push(Arc::from("none"));
        let rule_index = rules.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
        Metrics {
            decisions: counters(routes.len() * 2 * STAGES.len()),
            cost: counters(routes.len() * models.len() * COST_FIELDS),
            rule_matches: counters(rules.len()),
            builtin: Mutex::new(std::collections::BTreeMap::new()),
            rule_index,
            rules,
            routes,
            models,
            tenants: Mutex::new(HashMap::new()),
            other_tenants: [AtomicU64::new(0), AtomicU64::new(0)],
            latency: counters(BUCKETS.len() + 1),
            latency_sum_ns: AtomicU64::new(0),
            store_errors: counters(StoreErrorKind::ALL.len()),
            signals: counters(SIGNAL_KINDS.len() * ACTIONS.len()),
        }
    }

    fn route_of(&self, name: &str) -> usize {
        self.routes
            .iter()
            .position(|r| &**r == name)
            .unwrap_or(self.routes.len() - 1)
    }

    fn model_of(&self, d: &Decision) -> usize {
        d.cost
            .as_ref()
            .and_then(|c| c.model.as_deref())
            .and_then(|m| self.models.iter().position(|r| &**r == m))
            .unwrap_or(self.models.len() - 1)
    }

    fn tenant(&self, d: &Decision, field: usize, n: u64) {
        let Some(t) = d.principal.as_ref().and_then(|p| p.tenant.as_ref()) else {
            return;
        };
        let mut map = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = map.get_mut(&**t) {
            v[field] = v[field].saturating_add(n);
        } else if map.len() < MAX_TENANTS {
            let mut v = [0; 2];
            v[field] = n;
            map.insert(Arc::clone(t), v);
        } else {
            add(&self.other_tenants[field], n);
        }
    }

    /// Count one decision.
    pub(crate) fn decision(&self, d: &Decision) {
        let route = self.route_of(&d.route);
        let action = usize::from(matches!(d.action, Action::Deny { .. }));
        let stage = STAGES.iter().position(|s| *s == d.stage).unwrap_or(0);
        add(
            &self.decisions[(route * 2 + action) * STAGES.len() + stage],
            1,
        );
        for m in &d.matches {
            if let Some(&i) = self.rule_index.get(&m.rule_id) {
                add(&self.rule_matches[i], 1);
            } else if m.rule_id < 1000 {
                let mut b = self.builtin.lock().unwrap_or_else(PoisonError::into_inner);
                b.entry(m.rule_id).or_insert((m.category, 0)).1 += 1;
            }
        }
        if let Some(c) = &d.cost {
            let base = (route * self.models.len() + self.model_of(d)) * COST_FIELDS;
            add(&self.cost[base], c.prompt_tokens);
            add(&self.cost[base + 1], c.output_tokens_reserved);
            add(&self.cost[base + 2], c.micro_usd);
            if d.is_allowed() {
                self.tenant(d, 0, c.micro_usd);
            }
        }
        if let Some(e) = &d.store_error {
            if let Some(i) = StoreErrorKind::ALL.iter().position(|k| k.code() == e.code) {
                add(&self.store_errors[i], 1);
            }
        }
        let ns = d.inspect_ns.0;
        let secs = ns as f64 / 1e9;
        let bucket = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        add(&self.latency[bucket], 1);
        add(&self.latency_sum_ns, ns);
    }

    /// Count a signal that fired.
    pub(crate) fn signal(&self, h: &SignalHit) {
        let a = ACTIONS.iter().position(|&a| a == h.action).unwrap_or(0);
        add(&self.signals[h.signal as usize * ACTIONS.len() + a], 1);
    }

    /// Count what a settled request used.
    pub(crate) fn usage(&self, d: &Decision, usage: &Usage, micro_usd: u64) {
        let route = self.route_of(&d.route);
        let base = (route * self.models.len() + self.model_of(d)) * COST_FIELDS;
        add(&self.cost[base + 3], usage.prompt_tokens);
        add(&self.cost[base + 4], usage.output_tokens);
        add(&self.cost[base + 5], micro_usd);
        self.tenant(d, 1, micro_usd);
    }

    /// The Prometheus text exposition (version 0.0.4) of every series.
    pub(crate) fn text(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);

        header(
            &mut out,
            "edgeward_decisions_total",
            "counter",
            "Decisions by route, action and the stage that decided.",
        );
        for (r, route) in self.routes.iter().enumerate() {
            for (a, action) in ["allow", "deny"].iter().enumerate() {
                for (s, stage) in STAGES.iter().enumerate() {
                    let v = get(&self.decisions[(r * 2 + a) * STAGES.len() + s]);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "edgeward_decisions_total{{route=\"{}\",action=\"{action}\",stage=\"{}\"}} {v}",
                            escape(route),
                            Stage::as_str(*stage)
                        );
                    }
                }
            }
        }

        header(
            &mut out,
            "edgeward_rule_matches_total",
            "counter",
            "Rule matches by rule id and category.",
        );
        let builtin = self
            .builtin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (id, (cat, v)) in builtin {
            let _ = writeln!(
                out,
                "edgeward_rule_matches_total{{rule=\"{id}\",category=\"{}\"}} {v}",
                cat.as_str()
            );
        }
        for (i, (id, cat)) in self.rules.iter().enumerate() {
            let v = get(&self.rule_matches[i]);
            if v > 0 {
                let _ = writeln!(
                    out,
                    "edgeward_rule_matches_total{{rule=\"{id}\",category=\"{}\"}} {v}",
                    cat.as_str()
                );
            }
        }

        let names = [
            (
                "edgeward_prompt_tokens_estimated_total",
                "Prompt tokens of decided requests (estimated or exact).",
            ),
            (
                "edgeward_output_tokens_reserved_total",
                "Output tokens reserved by decided requests.",
            ),
            (
                "edgeward_cost_estimated_micro_usd_total",
                "Estimated cost of decided requests, in micro-dollars.",
            ),
            (
                "edgeward_prompt_tokens_used_total",
                "Prompt tokens settled requests used.",
            ),
            (
                "edgeward_output_tokens_used_total",
                "Output tokens settled requests used.",
            ),
            (
                "edgeward_cost_used_micro_usd_total",
                "Cost settled requests used, in micro-dollars.",
            ),
        ];
        for (f, (name, help)) in names.iter().enumerate() {
            header(&mut out, name, "counter", help);
            for (r, route) in self.routes.iter().enumerate() {
                for (m, model) in self.models.iter().enumerate() {
                    let v = get(&self.cost[(r * self.models.len() + m) * COST_FIELDS + f]);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "{name}{{route=\"{}\",model=\"{}\"}} {v}",
                            escape(route),
                            escape(model)
                        );
                    }
                }
            }
        }

        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut tenants: Vec<_> = tenants.into_iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        for (f, (name, help)) in [
            ("edgeward_tenant_cost_estimated_micro_usd_total", "Estimated cost of admitted requests per tenant (the first 256 tenants; later ones as `other`)."),
            ("edgeward_tenant_cost_used_micro_usd_total", "Cost settled requests used per tenant (the first 256 tenants; later ones as `other`)."),
        ]
        .iter()
        .enumerate()
        {
            header(&mut out, name, "counter", help);
            for (t, v) in &tenants {
                if v[f] > 0 {
                    let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", escape(t), v[f]);
                }
            }
            let other = get(&self.other_tenants[f]);
            if other > 0 {
                let _ = writeln!(out, "{name}{{tenant=\"other\"}} {other}");
            }
        }

        header(
            &mut out,
            "edgeward_inspect_seconds",
            "histogram",
            "Time inspect took per request.",
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency[i]);
            let _ = writeln!(
                out,
                "edgeward_inspect_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.latency[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "edgeward_inspect_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "edgeward_inspect_seconds_sum {}",
            get(&self.latency_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "edgeward_inspect_seconds_count {cumulative}");

        header(
            &mut out,
            "edgeward_store_errors_total",
            "counter",
            "Limit store failures by error code.",
        );
        for (i, k) in StoreErrorKind::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "edgeward_store_errors_total{{code=\"{}\"}} {}",
                k.code(),
                get(&self.store_errors[i])
            );
        }

        header(
            &mut out,
            "edgeward_signals_total",
            "counter",
            "Abuse signals fired (episodes, not requests) by signal and action.",
        );
        for k in SIGNAL_KINDS {
            for (j, a) in ACTIONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "edgeward_signals_total{{signal=\"{}\",action=\"{}\"}} {}",
                    k.name(),
                    a.name(),
                    get(&self.signals[k as usize * ACTIONS.len() + j])
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Append the heavy hitters as gauges: the top principals and client addresses over the
/// heavy-hitter window, by estimated cost and by tokens (at most ten each, so the series
/// stay bounded). `lists` is indexed by [`crate::HeavyBy`]: principals, then clients.
pub(crate) fn top_text(out: &mut String, lists: [[&[crate::heavy::HeavyHitter]; 2]; 2]) {
    let [principals, clients] = lists;
    for (name, label, help, list) in [
        (
            "edgeward_top_principal_cost_micro_usd",
            "principal",
            "Estimated cost over the heavy-hitter window (default 1h) of the ten costliest principals (an upper bound).",
            principals[0],
        ),
        (
            "edgeward_top_principal_tokens",
            "principal",
            "Prompt plus reserved output tokens over the heavy-hitter window of the ten principals using the most (an upper bound).",
            principals[1],
        ),
        (
            "edgeward_top_client_cost_micro_usd",
            "client",
            "Estimated cost over the heavy-hitter window of the ten costliest client addresses (an upper bound).",
            clients[0],
        ),
        (
            "edgeward_top_client_tokens",
            "client",
            "Prompt plus reserved output tokens over the heavy-hitter window of the ten client addresses using the most (an upper bound).",
            clients[1],
        ),
    ] {
        header(out, name, "gauge", help);
        for (rank, h) in list.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{{label}=\"{}\",rank=\"{}\"}} {}",
                escape(&h.key),
                rank + 1,
                h.value
            );
        }
    }
}
