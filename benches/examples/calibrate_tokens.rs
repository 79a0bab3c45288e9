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

/// Index of the `dense_bytes` feature, which the interval rule scales with.
fn dense_idx() -> usize {
    FEATURE_NAMES
        .iter()
        .position(|n| *n == "dense_bytes")
        .unwrap()
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
                    held_out: fnv(id) >> 63 == 1,
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
struct Side {
    rel: f64,
    abs: u64,
    per_dense: f64,
}

impl Side {
    fn margin(&self, est: u64, dense: u64) -> u64 {
        ((self.rel * est as f64).ceil() as u64).max(self.abs)
            + (self.per_dense * dense as f64).ceil() as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    over: Side,
    under: Side,
}

/// One text for the interval rule: estimate, exact count, dense bytes, length.
#[derive(Clone, Copy)]
struct Obs {
    est: u64,
    y: u64,
    dense: u64,
    len: usize,
}

impl Rule {
    fn contains(&self, o: &Obs) -> bool {
        let low = o
            .est
            .saturating_sub(self.under.margin(o.est, o.dense))
            .max(1);
        let high = (o.est + self.over.margin(o.est, o.dense)).min(o.len as u64);
        low <= o.y && o.y <= high
    }
}

/// For each side: the per-dense-byte term `k` from a grid, then the relative part from texts
/// estimated at >= 64 tokens and an absolute part covering the rest, so that every text in
/// `obs` is covered; of the grid, the `k` with the narrowest mean interval wins.
fn derive_rule(obs: &[Obs]) -> Rule {
    let side = |err: &dyn Fn(&Obs) -> i64| {
        let mut best: Option<(f64, Side)> = None;
        for step in 0..=60 {
            let k = step as f64 * 0.005;
            let d: Vec<i64> = obs
                .iter()
                .map(|o| err(o) - (k * o.dense as f64).ceil() as i64)
                .collect();
            let rel = obs
                .iter()
                .zip(&d)
                .filter(|(o, _)| o.est >= 64)
                .map(|(o, &d)| d as f64 / o.est as f64)
                .fold(0.0f64, f64::max);
            let rel = (rel * 1000.0).ceil() / 1000.0;
            let abs = obs
                .iter()
                .zip(&d)
                .filter(|(o, &d)| d > (rel * o.est as f64).ceil() as i64)
                .map(|(_, &d)| d as u64)
                .max()
                .unwrap_or(0);
            let s = Side {
                rel,
                abs,
                per_dense: k,
            };
            let long: Vec<&Obs> = obs.iter().filter(|o| o.est >= 64).collect();
            let width = long
                .iter()
                .map(|o| s.margin(o.est, o.dense) as f64 / o.est as f64)
                .sum::<f64>()
                / long.len().max(1) as f64;
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, s));
            }
        }
        best.unwrap().1
    };
    Rule {
        over: side(&|o| o.y as i64 - o.est as i64),
        under: side(&|o| o.est as i64 - o.y as i64),
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
        let obs = |held_out: Option<bool>| -> Vec<Obs> {
            samples
                .iter()
                .zip(est.iter().zip(&y))
                .filter(|(s, _)| held_out.is_none_or(|h| s.held_out == h))
                .map(|(s, (&est, &y))| Obs {
                    est,
                    y,
                    dense: s.x[dense_idx()] as u64,
                    len: s.len,
                })
                .collect()
        };
        let fit_rule = derive_rule(&obs(Some(false)));
        let final_rule = derive_rule(&obs(None));
        let held = obs(Some(true));
        let covered = held.iter().filter(|o| fit_rule.contains(o)).count();

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
        let show = |r: &Rule| {
            format!(
                "high = est + max({:.3}·est, {}) + {:.3}·dense, low = est − max({:.3}·est, {}) − {:.3}·dense",
                r.over.rel, r.over.abs, r.over.per_dense, r.under.rel, r.under.abs, r.under.per_dense
            )
        };
        println!(
            "Interval from the fit half alone: {}; covers {covered} of {} held-out texts ({:.2} %).",
            show(&fit_rule),
            held.len(),
            100.0 * covered as f64 / held.len().max(1) as f64
        );
        println!(
            "Interval from all texts (in the source): {}.",
            show(&final_rule)
        );
        let all_obs = obs(None);
        let width = |o: &Obs| {
            (final_rule.over.margin(o.est, o.dense) + final_rule.under.margin(o.est, o.dense))
                as f64
                / o.est as f64
        };
        let long: Vec<f64> = all_obs.iter().filter(|o| o.est >= 64).map(width).collect();
        let long_sparse: Vec<f64> = all_obs
            .iter()
            .filter(|o| o.est >= 64 && o.dense * 10 < o.len as u64)
            .map(width)
            .collect();
        println!(
            "Mean interval width (high − low) / est for texts estimated at 64+ tokens: {:.1} %; \
             for those of them with under 10 % dense bytes ({} of {}): {:.1} %.",
            100.0 * long.iter().sum::<f64>() / long.len().max(1) as f64,
            long_sparse.len(),
            long.len(),
            100.0 * long_sparse.iter().sum::<f64>() / long_sparse.len().max(1) as f64
        );

        // The compiled estimator, to check the constants in this build.
        let mut compiled = Stats::default();
        let mut outside = 0;
        // Mean width of the compiled interval (with the slack for unnatural text) on texts
        // estimated at 64+ tokens, and how many of those reach one token per byte.
        let (mut widths, mut at_bytes) = (Vec::new(), 0);
        for (s, &y) in samples.iter().zip(&y) {
            let t = estimate(enc, s.text.as_bytes());
            compiled.add(t.tokens, y);
            if !(t.low <= y && y <= t.high) {
                outside += 1;
            }
            if t.tokens >= 64 {
                widths.push((t.high - t.low) as f64 / t.tokens as f64);
                at_bytes += usize::from(t.high == s.len as u64);
            }
        }
        println!(
            "Compiled interval (with the slack for unnatural text): mean width {:.1} % for texts \
             estimated at 64+ tokens; {at_bytes} of {} reach one token per byte.",
            100.0 * widths.iter().sum::<f64>() / widths.len().max(1) as f64,
            widths.len()
        );
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
            "const {konst}: Calibration = Calibration {{\n    weights: {:?},\n    over: {:?},\n    over_abs: {},\n    over_dense: {:?},\n    under: {:?},\n    under_abs: {},\n    under_dense: {:?},\n}};\n",
            w,
            final_rule.over.rel,
            final_rule.over.abs,
            final_rule.over.per_dense,
            final_rule.under.rel,
            final_rule.under.abs,
            final_rule.under.per_dense
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
