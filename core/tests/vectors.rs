//! The shared test vectors (`rulesets/tests/*.toml`) against the embedded default policy.

mod common;

use std::collections::HashSet;

use edgeward::Engine;

#[test]
fn vector_names_are_unique() {
    let mut seen = HashSet::new();
    for (file, c) in common::vectors() {
        assert!(
            seen.insert(c.name.clone()),
            "{file}: duplicate name {}",
            c.name
        );
    }
    assert!(seen.len() >= 40, "only {} vectors", seen.len());
}

#[test]
fn vectors_pass_on_default_policy() {
    let engine = Engine::default_engine();
    let mut scratch = engine.new_scratch();
    let mut failures = Vec::new();
    for (file, c) in common::vectors() {
        let d = c.inspect(&engine, &mut scratch);
        let bad = c.check(&d);
        if !bad.is_empty() {
            failures.push(format!(
                "{file} {}: {}\n  {}",
                c.name,
                bad.join("; "),
                d.to_json()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn vectors_pass_after_bundle_round_trip() {
    let engine = Engine::default_engine();
    let loaded = Engine::from_bundle(&engine.to_bundle()).unwrap();
    let (mut s1, mut s2) = (engine.new_scratch(), loaded.new_scratch());
    for (_, c) in common::vectors() {
        assert_eq!(
            c.inspect(&engine, &mut s1),
            c.inspect(&loaded, &mut s2),
            "{}",
            c.name
        );
    }
}
