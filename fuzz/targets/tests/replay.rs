//! Replays every committed fuzz input — the seed corpora (`fuzz/corpus/<target>/`) and the
//! inputs that once broke something (`fuzz/regressions/<target>/`) — through the targets,
//! as an ordinary test that needs no fuzzing tool.
use edgeward_fuzz_targets::{committed_inputs as inputs, TARGETS};

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
                assert!(r.is_ok(), "{name}: {} fails", path.display());
                ran += 1;
            }
        }
    }
    assert!(ran > 100, "only {ran} inputs replayed");
}
