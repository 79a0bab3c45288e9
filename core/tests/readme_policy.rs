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
    Engine::new(&policy).unwrap_or_else(|e| panic!("README policy: {e}"));
}
