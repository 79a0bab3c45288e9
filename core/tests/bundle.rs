//! Untrusted bundle bytes: any mutation of a valid bundle fails cleanly or loads an engine;
//! it never panics. Crashers found by fuzzing are replayed from `fuzz/regressions/bundle/`.

use edgeward::Engine;
use proptest::prelude::*;

fn bundle() -> &'static [u8] {
    static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    B.get_or_init(|| Engine::default_engine().to_bundle())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mutated_bundles_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut b = bundle().to_vec();
        for (at, v) in edits {
            let i = at % b.len();
            b[i] = v;
        }
        b.truncate(cut % (b.len() + 1));
        match Engine::from_bundle(&b) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.code().starts_with("bundle.")),
        }
    }

    #[test]
    fn random_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Engine::from_bundle(&bytes).is_err());
    }
}

#[test]
fn regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/bundle");
    let mut n = 0;
    for e in std::fs::read_dir(&dir)
        .expect("regressions folder exists")
        .flatten()
    {
        let bytes = std::fs::read(e.path()).unwrap();
        let r = Engine::from_bundle(&bytes);
        assert!(r.is_err(), "{} loaded", e.path().display());
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn hostile_cbor_nesting_is_rejected() {
    let mut b = b"EDGWBNDL\x01\x00".to_vec();
    b.extend(std::iter::repeat_n(0x81u8, 100_000)); // arrays of one element, nested
    b.push(0x00);
    assert_eq!(
        Engine::from_bundle(&b).unwrap_err().code(),
        "bundle.corrupt"
    );
}
