//! `edgeward report EVENTS.jsonl`: a terminal summary of decision and settlement events
//! (the lines `Engine::event_json` and `settlement_event_json` write, or `edgeward inspect
//! --events`): decisions by action and stage, the costliest principals and client
//! addresses, block reasons, the rules that matched most, and the inspect latency.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

/// What the events add up to.
#[derive(Default)]
struct Summary {
    decisions: u64,
    allowed: u64,
    by_stage: HashMap<String, u64>,
    reasons: HashMap<String, u64>,
    rules: HashMap<(u64, String), u64>,
    /// Estimated micro-dollars of admitted requests, then used ones from settlements.
    principals: HashMap<String, (u64, u64)>,
    clients: HashMap<String, u64>,
    latency_us: Vec<f64>,
    settlements: u64,
    skipped: u64,
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

impl Summary {
    fn add(&mut self, e: &Value) {
        match e["type"].as_str() {
            Some("decision") => {
                self.decisions += 1;
                let allowed = e["action"] == "allow";
                self.allowed += u64::from(allowed);
                if let Some(st) = s(&e["stage"]) {
                    *self.by_stage.entry(st.to_string()).or_default() += 1;
                }
                if let Some(code) = s(&e["reason"]["code"]) {
                    *self.reasons.entry(code.to_string()).or_default() += 1;
                }
                for m in e["matches"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(cat)) = (m["rule"].as_u64(), s(&m["category"])) {
                        *self.rules.entry((id, cat.to_string())).or_default() += 1;
                    }
                }
                let cost = e["cost"]["micro_usd"].as_u64().unwrap_or(0);
                if allowed {
                    if let Some(p) = s(&e["principal"]["id"]) {
                        self.principals.entry(p.to_string()).or_default().0 += cost;
                    }
                    if let Some(c) = s(&e["client"]) {
                        *self.clients.entry(c.to_string()).or_default() += cost;
                    }
                }
                if let Some(us) = e["inspect_us"].as_f64() {
                    self.latency_us.push(us);
                }
            }
            Some("settlement") => {
                self.settlements += 1;
                if let Some(p) = s(&e["principal"]["id"]) {
                    self.principals.entry(p.to_string()).or_default().1 +=
                        e["micro_usd"].as_u64().unwrap_or(0);
                }
            }
            _ => self.skipped += 1,
        }
    }
}

fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

fn top<K: Clone + Ord, V: Copy + Ord>(m: &HashMap<K, V>, n: usize) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn render(sum: &mut Summary) -> String {
    let mut o = String::new();
    let denied = sum.decisions - sum.allowed;
    let _ = writeln!(
        o,
        "{} decisions: {} allowed, {} denied; {} settlements",
        sum.decisions, sum.allowed, denied, sum.settlements
    );
    if sum.skipped > 0 {
        let _ = writeln!(
            o,
            "({} lines were not events and were skipped)",
            sum.skipped
        );
    }
    let _ = writeln!(o, "\nDecided by stage:");
    for (stage, n) in top(&sum.by_stage, 20) {
        let _ = writeln!(o, "  {stage:<12} {n}");
    }
    let _ = writeln!(
        o,
        "\nTop principals by cost (estimated at admission / used when settled):"
    );
    let mut by_cost: Vec<_> = sum.principals.iter().collect();
    by_cost.sort_by(|a, b| (b.1 .0).cmp(&a.1 .0).then_with(|| a.0.cmp(b.0)));
    if by_cost.is_empty() {
        let _ = writeln!(o, "  (no identified callers)");
    }
    for (p, (est, used)) in by_cost.into_iter().take(10) {
        let _ = writeln!(o, "  {p:<24} {:>14} {:>14}", usd(*est), usd(*used));
    }
    let _ = writeln!(o, "\nTop client addresses by estimated cost:");
    for (c, v) in top(&sum.clients, 10) {
        let _ = writeln!(o, "  {c:<40} {:>14}", usd(v));
    }
    let _ = writeln!(o, "\nBlock reasons:");
    if sum.reasons.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for (r, n) in top(&sum.reasons, 20) {
        let _ = writeln!(o, "  {r:<28} {n}");
    }
    let _ = writeln!(o, "\nRules that matched most:");
    for ((id, cat), n) in top(&sum.rules, 10) {
        let _ = writeln!(o, "  {id:<6} {cat:<22} {n}");
    }
    sum.latency_us.sort_by(|a, b| a.total_cmp(b));
    if !sum.latency_us.is_empty() {
        let l = &sum.latency_us;
        let _ = writeln!(
            o,
            "\nInspect latency: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
            percentile(l, 0.5),
            percentile(l, 0.9),
            percentile(l, 0.99),
            l[l.len() - 1]
        );
    }
    o
}

/// Summarise the events in `path` on standard output.
pub fn run(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sum = Summary::default();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => sum.add(&v),
            Err(_) => sum.skipped += 1,
        }
    }
    print!("{}", render(&mut sum));
    Ok(())
}
