//! Replays every committed fuzz input — the seed corpora (`fuzz/corpus/<target>/`) and the
//! inputs that once broke something (`fuzz/regressions/<target>/`) — through the targets,
//! as an ordinary test that needs no fuzzing tool.
use std::path::Path;

use edgeward_fuzz_targets::TARGETS;

fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("readable folder").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).expect("readable input");
            (p.display().to_string(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_seeds() {
    for (name, _) in TARGETS {
        let n = inputs("corpus", name).len();
        assert!(n >= 2, "fuzz/corpus/{name} has {n} seeds");
    }
}

#[test]
fn seeds_and_regressions_replay() {
    let mut ran = 0;
    for (name, run) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for (path, data) in inputs(kind, name) {
                let r = std::panic::catch_unwind(|| run(&data));
                assert!(r.is_ok(), "{name}: {path} fails");
                ran += 1;
            }
        }
    }
    assert!(ran > 100, "only {ran} inputs replayed");
}
