//! The policy example in README.md parses and compiles, so the documentation cannot drift
//! from the schema. The files it references are stubbed in a temporary directory.

use std::path::Path;

use edgeward::{Engine, Policy};

#[test]
fn readme_policy_example_compiles() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = &readme[readme.find("## Policy format").expect("policy section")..];
    let start = section.find("```yaml\n").expect("yaml block") + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").expect("block end")];
    let dir = std::env::temp_dir().join(format!("edgeward-readme-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/local.yaml"),
        "apiVersion: edgeward.dev/v1\nkind: RuleSet\nmetadata: {name: local}\nrules: []\n",
    )
    .unwrap();
    std::fs::write(dir.join("keys.yaml"), "keys: []\n").unwrap();
    std::fs::write(
        dir.join("jwks.json"),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/identity/jwks.json"),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), yaml).unwrap();
    let policy = Policy::from_file(dir.join("policy.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();
    let policy = policy.unwrap_or_else(|e| panic!("README policy: {e}"));
    // The example counts limits in Redis: the URL is read when the engine is built, and
    // connections open lazily, so nothing needs to listen. Without the `redis` feature the
    // same policy must be refused for that section alone.
    std::env::set_var("EDGEWARD_REDIS_URL", "redis://127.0.0.1:1/");
    let built = Engine::new(&policy);
    if cfg!(feature = "redis") {
        built.unwrap_or_else(|e| panic!("README policy: {e}"));
    } else {
        let e = built.expect_err("refused without the redis feature");
        assert!(e.to_string().contains("spec.store.redis"), "{e}");
    }
}
