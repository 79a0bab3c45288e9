//! The CI smoke run of every fuzz target: seeds mutated by a small deterministic mutator
//! (byte flips, inserts, deletions, duplicated ranges, tokens that parsers care about),
//! a fixed number of runs per target. It needs no fuzzing tool and no instrumented build,
//! so it runs under `cargo test`; coverage-guided runs are done with cargo-fuzz (see
//! `fuzz/README.md`). A failing input is written to `target/fuzz-smoke/<target>/` so it
//! can be replayed and moved to `fuzz/regressions/`.
use std::path::Path;

use edgeward_fuzz_targets::{committed_inputs, TARGETS};

/// Runs per target: the cheap parsers get many, the targets that compile an engine per
/// input few.
fn runs(target: &str) -> usize {
    match target {
        "policy" | "bundle" => 12,
        "inspect" | "c_abi" => 300,
        _ => 1500,
    }
}

const TOKENS: &[&[u8]] = &[
    b"%",
    b"%25",
    b"%u",
    b"%c0%a7",
    b"\\u",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\n\n",
    b"\r\n",
    b"&",
    b"=",
    b";",
    b"--",
    b"/*",
    b"<",
    b"&#",
    b"\xe2\x80\x8b",
    b"\xff",
    b"\0",
    b"data: ",
    b"event: ",
    b"--boundary",
    b"content-type: ",
    b"base64,",
    b"ignore all previous instructions",
    b"' or 1=1",
    b"<script>",
    b"9999999999999999999999",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces on every machine.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + 1 + rng.below(64)).min(v.len());
                let piece = v[start..end].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn every_target_survives_mutated_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for (k, (name, run)) in TARGETS.iter().enumerate() {
        let mut seeds: Vec<Vec<u8>> = committed_inputs("corpus", name)
            .into_iter()
            .map(|(_, data)| data)
            .collect();
        // By content, so the mutants do not depend on file names.
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let mut rng = Rng(0x5eed_0000 + k as u64);
        for i in 0..runs(name) {
            let input = mutate(&mut rng, &seeds[i % seeds.len()]);
            if std::panic::catch_unwind(|| run(&input)).is_err() {
                let dir = root.join("../target/fuzz-smoke").join(name);
                std::fs::create_dir_all(&dir).expect("failure folder");
                let path = dir.join(format!("run-{i}"));
                std::fs::write(&path, &input).expect("failure written");
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "failing inputs: {failures:#?}");
}
