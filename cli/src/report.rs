//! `edgeward report EVENTS.jsonl`: a terminal summary of decision, settlement and signal
//! events (the lines `Engine::event_json` and `settlement_event_json` write, or `edgeward
//! inspect --events`): decisions by action and stage, the costliest principals and client
//! addresses, block reasons, the rules that matched most, the inspect latency and the abuse
//! signals. With `-o FILE` the same summary is also written as an HTML page with charts
//! ([`crate::report_html`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

/// A rule as the report names it: id, name, category.
pub(crate) type RuleKey = (u64, String, String);

/// One principal's decisions and cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct PrincipalStats {
    pub allowed: u64,
    pub denied: u64,
    /// Estimated micro-dollars of admitted requests.
    pub estimated: u64,
    /// Micro-dollars the settlements reported as used.
    pub used: u64,
}

/// One client address's decisions and the estimated cost of its admitted requests.
#[derive(Default, Clone, Copy)]
pub(crate) struct ClientStats {
    pub decisions: u64,
    pub estimated: u64,
}

/// The signal events of one kind for one principal.
#[derive(Default, Clone)]
pub(crate) struct SignalStats {
    pub events: u64,
    pub by_action: HashMap<String, u64>,
    pub max_value: Option<f64>,
    pub threshold: Option<f64>,
    /// The latest event's detail: the one that describes the current state.
    pub last_detail: Option<String>,
}

/// The estimated cost of one admitted request, for the cost-over-time chart.
pub(crate) struct CostPoint {
    pub ms: u64,
    pub principal: Option<String>,
    pub micro_usd: u64,
}

/// What the events add up to.
#[derive(Default)]
pub(crate) struct Summary {
    pub decisions: u64,
    pub allowed: u64,
    pub by_stage: HashMap<String, u64>,
    pub by_action: HashMap<String, u64>,
    pub reasons: HashMap<String, u64>,
    pub rules: HashMap<RuleKey, u64>,
    pub principals: HashMap<String, PrincipalStats>,
    pub clients: HashMap<String, ClientStats>,
    /// Sorted once all events are read.
    pub latency_us: Vec<f64>,
    /// Estimated micro-dollars of all admitted requests, identified or not.
    pub estimated_total: u64,
    /// Micro-dollars of all settlements.
    pub used_total: u64,
    pub settlements: u64,
    pub signals: u64,
    /// By (signal, principal id).
    pub signal_rows: HashMap<(String, String), SignalStats>,
    pub costs: Vec<CostPoint>,
    /// The earliest and latest event time, milliseconds since the epoch.
    pub span_ms: Option<(u64, u64)>,
    pub skipped: u64,
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-11-27T12:00:00.123Z`, or with an
/// offset); `None` for anything else, so a malformed time only drops the event from the
/// time axis.
pub(crate) fn parse_ts(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = t.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds are all the chart resolves; further digits are dropped.
        let digits = &t[start..i.min(start + 3)];
        ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = edgeward::limits::window::days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1_000 + ms).ok()
}

fn principal_id(e: &Value) -> Option<&str> {
    s(&e["principal"]["id"])
}

impl Summary {
    fn add(&mut self, e: &Value) {
        let kind = e["type"].as_str();
        if !matches!(kind, Some("decision" | "settlement" | "signal")) {
            self.skipped += 1;
            return;
        }
        let ms = s(&e["ts"]).and_then(parse_ts);
        if let Some(ms) = ms {
            self.span_ms = Some(match self.span_ms {
                Some((lo, hi)) => (lo.min(ms), hi.max(ms)),
                None => (ms, ms),
            });
        }
        match kind {
            Some("decision") => self.add_decision(e, ms),
            Some("settlement") => {
                self.settlements += 1;
                let used = e["micro_usd"].as_u64().unwrap_or(0);
                // Saturating: the numbers come from a file anyone could have written.
                self.used_total = self.used_total.saturating_add(used);
                if let Some(p) = principal_id(e) {
                    let st = self.principals.entry(p.to_string()).or_default();
                    st.used = st.used.saturating_add(used);
                }
            }
            _ => self.add_signal(e),
        }
    }

    fn add_decision(&mut self, e: &Value, ms: Option<u64>) {
        self.decisions += 1;
        let allowed = e["action"] == "allow";
        self.allowed += u64::from(allowed);
        let action = s(&e["action"]).unwrap_or("(none)");
        *self.by_action.entry(action.to_string()).or_default() += 1;
        if let Some(st) = s(&e["stage"]) {
            *self.by_stage.entry(st.to_string()).or_default() += 1;
        }
        if let Some(code) = s(&e["reason"]["code"]) {
            *self.reasons.entry(code.to_string()).or_default() += 1;
        }
        for m in e["matches"].as_array().into_iter().flatten() {
            if let (Some(id), Some(cat)) = (m["rule"].as_u64(), s(&m["category"])) {
                let name = s(&m["name"]).unwrap_or("").to_string();
                *self.rules.entry((id, name, cat.to_string())).or_default() += 1;
            }
        }
        let cost = if allowed {
            e["cost"]["micro_usd"].as_u64().unwrap_or(0)
        } else {
            0
        };
        self.estimated_total = self.estimated_total.saturating_add(cost);
        let principal = principal_id(e);
        if let Some(p) = principal {
            let st = self.principals.entry(p.to_string()).or_default();
            if allowed {
                st.allowed += 1;
                st.estimated = st.estimated.saturating_add(cost);
            } else {
                st.denied += 1;
            }
        }
        if let Some(c) = s(&e["client"]) {
            let st = self.clients.entry(c.to_string()).or_default();
            st.decisions += 1;
            st.estimated = st.estimated.saturating_add(cost);
        }
        if let (Some(ms), true) = (ms, cost > 0) {
            self.costs.push(CostPoint {
                ms,
                principal: principal.map(str::to_string),
                micro_usd: cost,
            });
        }
        if let Some(us) = e["inspect_us"].as_f64() {
            self.latency_us.push(us);
        }
    }

    fn add_signal(&mut self, e: &Value) {
        self.signals += 1;
        let signal = s(&e["signal"]).unwrap_or("(unnamed)").to_string();
        let principal = principal_id(e).unwrap_or("(none)").to_string();
        let row = self.signal_rows.entry((signal, principal)).or_default();
        row.events += 1;
        let action = s(&e["action"]).unwrap_or("(none)");
        *row.by_action.entry(action.to_string()).or_default() += 1;
        if let Some(v) = e["value"].as_f64() {
            row.max_value = Some(row.max_value.map_or(v, |m| m.max(v)));
        }
        if let Some(t) = e["threshold"].as_f64() {
            row.threshold = Some(t);
        }
        if let Some(d) = s(&e["detail"]) {
            row.last_detail = Some(d.to_string());
        }
    }

    /// Signal events counted by one part of their key (0: the signal, 1: the principal).
    pub(crate) fn signals_by(&self, part: usize) -> HashMap<String, u64> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for ((signal, principal), st) in &self.signal_rows {
            let k = if part == 0 { signal } else { principal };
            *m.entry(k.clone()).or_default() += st.events;
        }
        m
    }

    /// Signal events counted by the action taken.
    pub(crate) fn signal_actions(&self) -> HashMap<String, u64> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for st in self.signal_rows.values() {
            for (a, n) in &st.by_action {
                *m.entry(a.clone()).or_default() += n;
            }
        }
        m
    }

    /// Principals, costliest estimate first (ties by used cost, then id, for a stable order).
    pub(crate) fn principals_by_cost(&self) -> Vec<(&str, PrincipalStats)> {
        let mut v: Vec<_> = self
            .principals
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        v.sort_by(|a, b| {
            (b.1.estimated, b.1.used)
                .cmp(&(a.1.estimated, a.1.used))
                .then_with(|| a.0.cmp(b.0))
        });
        v
    }

    /// Client addresses, costliest estimate first, then by decisions.
    pub(crate) fn clients_by_cost(&self) -> Vec<(&str, ClientStats)> {
        let mut v: Vec<_> = self.clients.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        v.sort_by(|a, b| {
            (b.1.estimated, b.1.decisions)
                .cmp(&(a.1.estimated, a.1.decisions))
                .then_with(|| a.0.cmp(b.0))
        });
        v
    }

    fn finish(&mut self) {
        self.latency_us.sort_by(|a, b| a.total_cmp(b));
        self.costs.sort_by_key(|c| c.ms);
    }
}

/// Micro-dollars as dollars with all six decimals.
pub(crate) fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

pub(crate) fn top<K: Clone + Ord, V: Copy + Ord>(m: &HashMap<K, V>, n: usize) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `flag 3, deny 1`: action counts, most frequent first.
pub(crate) fn action_counts(m: &HashMap<String, u64>) -> String {
    top(m, usize::MAX)
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render(sum: &Summary) -> String {
    let mut o = String::new();
    let denied = sum.decisions - sum.allowed;
    let _ = writeln!(
        o,
        "{} decisions: {} allowed, {} denied; {} settlements; {} signals",
        sum.decisions, sum.allowed, denied, sum.settlements, sum.signals
    );
    let _ = writeln!(
        o,
        "{} estimated at admission, {} used when settled",
        usd(sum.estimated_total),
        usd(sum.used_total)
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
    let by_cost = sum.principals_by_cost();
    if by_cost.is_empty() {
        let _ = writeln!(o, "  (no identified callers)");
    }
    for (p, st) in by_cost.into_iter().take(10) {
        let _ = writeln!(
            o,
            "  {p:<24} {:>14} {:>14}",
            usd(st.estimated),
            usd(st.used)
        );
    }
    let _ = writeln!(o, "\nTop client addresses by estimated cost:");
    for (c, st) in sum.clients_by_cost().into_iter().take(10) {
        let _ = writeln!(o, "  {c:<40} {:>14}", usd(st.estimated));
    }
    let _ = writeln!(o, "\nBlock reasons:");
    if sum.reasons.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for (r, n) in top(&sum.reasons, 20) {
        let _ = writeln!(o, "  {r:<28} {n}");
    }
    let _ = writeln!(o, "\nRules that matched most:");
    for ((id, name, cat), n) in top(&sum.rules, 10) {
        let _ = writeln!(o, "  {id:<6} {cat:<22} {n:<6} {name}");
    }
    let l = &sum.latency_us;
    if !l.is_empty() {
        let _ = writeln!(
            o,
            "\nInspect latency: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
            percentile(l, 0.5),
            percentile(l, 0.9),
            percentile(l, 0.99),
            l[l.len() - 1]
        );
    }
    let _ = writeln!(o, "\nSignals:");
    if sum.signals == 0 {
        let _ = writeln!(o, "  (none)");
    } else {
        let _ = writeln!(o, "  by signal:");
        for (sig, n) in top(&sum.signals_by(0), 20) {
            let _ = writeln!(o, "    {sig:<22} {n}");
        }
        let _ = writeln!(o, "  by principal:");
        for (p, n) in top(&sum.signals_by(1), 10) {
            let _ = writeln!(o, "    {p:<22} {n}");
        }
        let _ = writeln!(o, "  by action:");
        for (a, n) in top(&sum.signal_actions(), 20) {
            let _ = writeln!(o, "    {a:<22} {n}");
        }
    }
    o
}

/// Add up event lines; lines that are not events are counted as skipped.
pub(crate) fn summarise(events: impl BufRead) -> std::io::Result<Summary> {
    let mut sum = Summary::default();
    for line in events.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => sum.add(&v),
            Err(_) => sum.skipped += 1,
        }
    }
    sum.finish();
    Ok(sum)
}

/// Summarise the events in `path` on standard output, and as an HTML page in `html` if
/// given.
pub fn run(path: &Path, html: Option<&Path>) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sum =
        summarise(std::io::BufReader::new(f)).map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{}", render(&sum));
    if let Some(out) = html {
        let source = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let page = crate::report_html::render(&sum, &source);
        std::fs::write(out, page).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_times() {
        assert_eq!(
            parse_ts("2026-11-27T12:00:00.250Z"),
            Some(1_795_780_800_250)
        );
        assert_eq!(parse_ts("2026-11-27T12:00:00Z"), Some(1_795_780_800_000));
        assert_eq!(parse_ts("2026-11-27T12:00:00.2Z"), Some(1_795_780_800_200));
        assert_eq!(
            parse_ts("2026-11-27T13:30:00.000+01:30"),
            Some(1_795_780_800_000)
        );
        for bad in ["", "yesterday", "2026-11-27", "2026-13-27T12:00:00Z"] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
        assert_eq!(parse_ts("2026-11-27T12:00:00.Z"), None);
        assert_eq!(parse_ts("2026-11-27T12:00:00+1é:00"), None);
    }

    #[test]
    fn survives_hostile_numbers_and_times() {
        // Costs that overflow a sum, times decades apart, an absurd latency: the totals
        // saturate and the chart still has at most about 60 buckets.
        let max = u64::MAX;
        let lines = format!(
            "{{\"type\":\"decision\",\"ts\":\"1970-01-01T00:00:00Z\",\"action\":\"allow\",\
             \"cost\":{{\"micro_usd\":{max}}},\"principal\":{{\"id\":\"x\"}},\"inspect_us\":1e300}}\n\
             {{\"type\":\"decision\",\"ts\":\"9999-12-31T23:59:59.999Z\",\"action\":\"allow\",\
             \"cost\":{{\"micro_usd\":{max}}},\"inspect_us\":-5}}\n\
             {{\"type\":\"settlement\",\"micro_usd\":{max},\"principal\":{{\"id\":\"x\"}}}}\n\
             {{\"type\":\"settlement\",\"micro_usd\":{max}}}\n\
             {{\"type\":\"signal\",\"signal\":7,\"value\":\"a\"}}\n"
        );
        let sum = summarise(lines.as_bytes()).unwrap();
        assert_eq!((sum.decisions, sum.settlements, sum.signals), (2, 2, 1));
        assert_eq!((sum.estimated_total, sum.used_total), (max, max));
        let page = crate::report_html::render(&sum, "x");
        let chart = page
            .split("<svg id=\"cost-over-time\"")
            .nth(1)
            .and_then(|c| c.split("</svg>").next())
            .unwrap();
        let points = chart
            .split("points=\"")
            .skip(1)
            .map(|p| p.split('"').next().unwrap().split(' ').count())
            .max()
            .unwrap();
        // Two corners per bucket, top and bottom edge.
        assert!(points <= 4 * 61, "{points} points");
        assert!(render(&sum).contains("Signals:"));
    }
}
