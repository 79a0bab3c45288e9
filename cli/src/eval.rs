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
    total: Counts,
    unreadable_lines: u64,
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

/// Runs the evaluation and prints a table (and JSON if asked).
pub fn run(engine: &Engine, paths: &[PathBuf], json: Option<&Path>) -> Result<(), String> {
    let files = collect(paths)?;
    let mut scratch = engine.new_scratch();
    let mut report = Report {
        files: BTreeMap::new(),
        categories: BTreeMap::new(),
        total: Counts::default(),
        unreadable_lines: 0,
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
        }
        report.total.merge(&counts);
        report.files.insert(name, counts);
    }
    print_table("file", &report.files);
    println!();
    print_table("category", &report.categories);
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
    if let Some(p) = json {
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
