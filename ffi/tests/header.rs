//! include/edgeward.h is what cbindgen (pinned in Cargo.toml) makes of the crate: the test
//! fails when the committed header is stale. Regenerate with
//! `EDGEWARD_BLESS=1 cargo test -p edgeward-ffi --test header`.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = dir.join("include/edgeward.h");
    if std::env::var_os("EDGEWARD_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/edgeward.h is stale: EDGEWARD_BLESS=1 cargo test -p edgeward-ffi --test header"
    );
}
