//! Fits the byte-class token estimator's weights and error interval from real prompts and
//! reports its error (issue 4). Never prints corpus text, only counts.
//!
//! ```text
//! cargo run --release -p edgeward-benches --example calibrate_tokens -- [--write] [CORPORA_DIR]
//! ```
//!
//! Reads every `*.jsonl` file of the corpora (default: `shared/corpora` beside the checkout),
//! takes the `content` of every chat message in each row's JSON body as one prompt text
//! (deduplicated), counts it exactly with tiktoken-rs, and for each encoding:
//!
//! 1. splits the texts in two halves by a hash of the row id (`fit` and `held-out`),
//! 2. fits the weights on the `fit` half by weighted least squares (weight `1/max(y, 16)^2`,
//!    i.e. relative error, so long texts do not drown the short ones),
//! 3. derives the interval rule from the `fit` half alone and reports how much of the held-out
//!    half it covers (the honest check), then derives the final interval from all texts so that
//!    it holds on every corpus prompt (what the integration test asserts),
//! 4. prints mean and worst relative error per half, per corpus file and per length band.
//!
//! With `--write` the constants are written into `core/src/cost/tokens.rs` between the
//! `CALIBRATION-BEGIN` / `CALIBRATION-END` markers. Without it, the report also evaluates the
//! compiled estimator (`edgeward::cost::tokens::estimate`) to check the constants in the build.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use edgeward::cost::tokens::{
    count_exact, estimate, ByteClasses, Encoding, FEATURES, FEATURE_NAMES,
};
use serde_json::Value;

struct Sample {
    file: String,
    held_out: bool,
    len: usize,
    x: [f64; FEATURES],
    text: String,
}

/// FNV-1a, so the split is stable across runs and platforms.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The texts of every chat message in a request body.
fn message_texts(body: &Value, out: &mut Vec<String>) {
    let Some(msgs) = body.get("messages").and_then(Value::as_array) else {
        return;
    };
    for m in msgs {
        match m.get("content") {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push(t.to_string());
                    }
                }
            }
            _ => {}
        }
    }
}

fn load(dir: &Path) -> Vec<Sample> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("corpora directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let Ok(row) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let id = row.get("id").and_then(Value::as_str).unwrap_or("");
            let Some(body) = row.get("body").and_then(Value::as_str) else {
                continue;
            };
            let Ok(body) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            let mut texts = Vec::new();
            message_texts(&body, &mut texts);
            for t in texts {
                if t.is_empty() || !seen.insert(fnv(&t)) {
                    continue;
                }
                let c = ByteClasses::of(t.as_bytes()).features();
                out.push(Sample {
                    file: name.clone(),
                    held_out: fnv(id) % 2 == 1,
                    len: t.len(),
                    x: c.map(|v| v as f64),
                    text: t,
                });
            }
        }
    }
    out
}

/// Solves the weighted least-squares normal equations with a tiny ridge (some features are
/// nearly collinear on prose) by Gaussian elimination with partial pivoting.
fn fit(rows: &[(&[f64; FEATURES], f64)]) -> [f64; FEATURES] {
    let mut a = [[0f64; FEATURES]; FEATURES];
    let mut b = [0f64; FEATURES];
    for (x, y) in rows {
        let w = 1.0 / y.max(16.0).powi(2);
        for i in 0..FEATURES {
            b[i] += w * x[i] * y;
            for j in 0..FEATURES {
                a[i][j] += w * x[i] * x[j];
            }
        }
    }
    let trace: f64 = (0..FEATURES).map(|i| a[i][i]).sum();
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-7 * trace / FEATURES as f64 + 1e-12;
    }
    for col in 0..FEATURES {
        let piv = (col..FEATURES)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for r in 0..FEATURES {
            if r != col {
                let k = a[r][col] / a[col][col];
                let pivot_row = a[col];
                for (c, v) in a[r].iter_mut().enumerate() {
                    *v -= k * pivot_row[c];
                }
                b[r] -= k * b[col];
            }
        }
    }
    let mut w = [0f64; FEATURES];
    for i in 0..FEATURES {
        // Rounded to 4 decimals so the constants in the source are readable.
        w[i] = (b[i] / a[i][i] * 1e4).round() / 1e4;
    }
    w
}

/// The estimator's rounding and clamping, applied to freshly fitted weights.
fn point(w: &[f64; FEATURES], x: &[f64; FEATURES], len: usize) -> u64 {
    let raw: f64 = w.iter().zip(x).map(|(w, x)| w * x).sum();
    (raw.round().max(1.0) as u64).clamp(1, len as u64)
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    over: f64,
    over_abs: u64,
    under: f64,
    under_abs: u64,
}

impl Rule {
    fn contains(&self, est: u64, y: u64, len: usize) -> bool {
        let up = ((self.over * est as f64).ceil() as u64).max(self.over_abs);
        let down = ((self.under * est as f64).ceil() as u64).max(self.under_abs);
        let low = est.saturating_sub(down).max(1);
        let high = (est + up).min(len as u64);
        low <= y && y <= high
    }
}

/// Relative part from texts estimated at >= 64 tokens, absolute part covering the rest; both
/// sides separately.
fn derive_rule(pairs: &[(u64, u64)]) -> Rule {
    let side = |err: &dyn Fn(u64, u64) -> i64| {
        let rel = pairs
            .iter()
            .filter(|(e, _)| *e >= 64)
            .map(|&(e, y)| err(e, y) as f64 / e as f64)
            .fold(0.0f64, f64::max);
        let rel = (rel * 1000.0).ceil() / 1000.0;
        let abs = pairs
            .iter()
            .map(|&(e, y)| {
                let d = err(e, y);
                if d > (rel * e as f64).ceil() as i64 {
                    d as u64
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        (rel, abs)
    };
    let (over, over_abs) = side(&|e, y| y as i64 - e as i64);
    let (under, under_abs) = side(&|e, y| e as i64 - y as i64);
    Rule {
        over,
        over_abs,
        under,
        under_abs,
    }
}

#[derive(Default)]
struct Stats {
    n: usize,
    sum_rel: f64,
    worst_over: f64,
    worst_under: f64,
    tokens: u64,
}

impl Stats {
    fn add(&mut self, est: u64, y: u64) {
        let rel = (est as f64 - y as f64) / y as f64;
        self.n += 1;
        self.sum_rel += rel.abs();
        self.worst_over = self.worst_over.max(rel);
        self.worst_under = self.worst_under.min(rel);
        self.tokens += y;
    }
    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {} | {} | {:.1} % | +{:.1} % | {:.1} % |",
            self.n,
            self.tokens,
            100.0 * self.sum_rel / self.n.max(1) as f64,
            100.0 * self.worst_over,
            100.0 * self.worst_under,
        )
    }
}

const TABLE_HEAD: &str = "| set | texts | tokens | mean abs. error | worst over-estimate | worst under-estimate |\n|---|--:|--:|--:|--:|--:|";

fn band(y: u64) -> &'static str {
    match y {
        0..=15 => "a: 1-15 tokens",
        16..=63 => "b: 16-63",
        64..=255 => "c: 64-255",
        256..=1023 => "d: 256-1023",
        _ => "e: 1024+",
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let write = args.iter().any(|a| a == "--write");
    args.retain(|a| a != "--write");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/corpora"));
    let samples = load(&dir);
    let bytes: usize = samples.iter().map(|s| s.len).sum();
    let held = samples.iter().filter(|s| s.held_out).count();
    println!(
        "{} distinct prompt texts ({} bytes) from {}; fit half {}, held-out half {}\n",
        samples.len(),
        bytes,
        dir.display(),
        samples.len() - held,
        held
    );
    let mut generated = String::new();
    for enc in Encoding::ALL {
        let y: Vec<u64> = samples
            .iter()
            .map(|s| count_exact(enc, &s.text).expect("built with the tiktoken feature"))
            .collect();
        let train: Vec<(&[f64; FEATURES], f64)> = samples
            .iter()
            .zip(&y)
            .filter(|(s, _)| !s.held_out)
            .map(|(s, &y)| (&s.x, y as f64))
            .collect();
        let w = fit(&train);
        let est: Vec<u64> = samples.iter().map(|s| point(&w, &s.x, s.len)).collect();
        let pairs = |held_out: Option<bool>| -> Vec<(u64, u64)> {
            samples
                .iter()
                .zip(est.iter().zip(&y))
                .filter(|(s, _)| held_out.is_none_or(|h| s.held_out == h))
                .map(|(_, (&e, &y))| (e, y))
                .collect()
        };
        let fit_rule = derive_rule(&pairs(Some(false)));
        let final_rule = derive_rule(&pairs(None));
        let held_pairs: Vec<(u64, u64, usize)> = samples
            .iter()
            .zip(est.iter().zip(&y))
            .filter(|(s, _)| s.held_out)
            .map(|(s, (&e, &y))| (e, y, s.len))
            .collect();
        let covered = held_pairs
            .iter()
            .filter(|&&(e, y, len)| fit_rule.contains(e, y, len))
            .count();

        println!("## {}\n", enc.name());
        println!("Weights (tokens per feature unit):\n");
        for (n, w) in FEATURE_NAMES.iter().zip(w) {
            println!("- {n}: {w}");
        }
        println!();
        println!("{TABLE_HEAD}");
        let mut all = Stats::default();
        let mut halves = [Stats::default(), Stats::default()];
        let mut files: BTreeMap<&str, Stats> = BTreeMap::new();
        let mut bands: BTreeMap<&str, Stats> = BTreeMap::new();
        let mut held_bands: BTreeMap<&str, Stats> = BTreeMap::new();
        for (s, (&e, &y)) in samples.iter().zip(est.iter().zip(&y)) {
            all.add(e, y);
            halves[s.held_out as usize].add(e, y);
            files.entry(&s.file).or_default().add(e, y);
            bands.entry(band(y)).or_default().add(e, y);
            if s.held_out {
                held_bands.entry(band(y)).or_default().add(e, y);
            }
        }
        println!("{}", halves[0].row("fit half"));
        println!("{}", halves[1].row("held-out half"));
        println!("{}", all.row("all"));
        for (b, s) in &bands {
            println!("{}", s.row(&format!("all, {b}")));
        }
        for (b, s) in &held_bands {
            println!("{}", s.row(&format!("held-out, {b}")));
        }
        for (f, s) in &files {
            println!("{}", s.row(f));
        }
        println!();
        println!(
            "Interval from the fit half alone: +max({:.3}·est, {}) / −max({:.3}·est, {}); \
             covers {covered} of {} held-out texts ({:.2} %).",
            fit_rule.over,
            fit_rule.over_abs,
            fit_rule.under,
            fit_rule.under_abs,
            held_pairs.len(),
            100.0 * covered as f64 / held_pairs.len().max(1) as f64
        );
        println!(
            "Interval from all texts (in the source): +max({:.3}·est, {}) / −max({:.3}·est, {}).",
            final_rule.over, final_rule.over_abs, final_rule.under, final_rule.under_abs
        );
        let widths: Vec<f64> = samples
            .iter()
            .zip(&est)
            .filter(|(_, &e)| e >= 64)
            .map(|(_, &e)| {
                let up = ((final_rule.over * e as f64).ceil()).max(final_rule.over_abs as f64);
                let down = ((final_rule.under * e as f64).ceil()).max(final_rule.under_abs as f64);
                (up + down) / e as f64
            })
            .collect();
        println!(
            "Mean interval width for texts estimated at 64+ tokens: {:.1} % of the estimate.",
            100.0 * widths.iter().sum::<f64>() / widths.len().max(1) as f64
        );

        // The compiled estimator, to check the constants in this build.
        let mut compiled = Stats::default();
        let mut outside = 0;
        for (s, &y) in samples.iter().zip(&y) {
            let t = estimate(enc, s.text.as_bytes());
            compiled.add(t.tokens, y);
            if !(t.low <= y && y <= t.high) {
                outside += 1;
            }
        }
        println!(
            "Compiled estimator in this build: mean abs. error {:.1} %, {outside} texts outside \
             its interval.\n",
            100.0 * compiled.sum_rel / compiled.n.max(1) as f64
        );

        let konst = match enc {
            Encoding::O200kBase => "O200K",
            Encoding::Cl100kBase => "CL100K",
        };
        generated.push_str(&format!(
            "const {konst}: Calibration = Calibration {{\n    weights: {:?},\n    over: {:?},\n    over_abs: {},\n    under: {:?},\n    under_abs: {},\n}};\n",
            w, final_rule.over, final_rule.over_abs, final_rule.under, final_rule.under_abs
        ));
    }
    if write {
        let path = root.join("core/src/cost/tokens.rs");
        let src = std::fs::read_to_string(&path).unwrap();
        let begin = src.find("// CALIBRATION-BEGIN").expect("begin marker");
        let begin = begin + src[begin..].find('\n').unwrap() + 1;
        let end = src.find("// CALIBRATION-END").expect("end marker");
        let new = format!("{}{}{}", &src[..begin], generated, &src[end..]);
        std::fs::write(&path, new).unwrap();
        println!(
            "wrote the constants into {} (run cargo fmt)",
            path.display()
        );
    }
}
