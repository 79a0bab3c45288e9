//! Builds tests/c/test_edgeward.c against the static library with warnings as errors and
//! AddressSanitizer (LeakSanitizer included: every allocation, Rust's too, goes through the
//! intercepted `malloc`), then runs it: every C function, misuse included, with zero
//! sanitizer errors and zero leaks.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

const KEY: &str = "sk-test-alice-0123456789";

fn policy() -> String {
    let sha: String = sha2::Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: c-api}}
spec:
  identity:
    apiKeys:
      keys: [{{sha256: "{sha}", id: alice, tenant: acme}}]
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {{input: 0.15, output: 0.60}}
  routes:
    - name: chat
      match: {{paths: ["/v1/chat/completions"]}}
      schema: openai-chat
      params: {{maxOutputTokens: 64, onMaxOutput: clamp}}
    - name: health
      match: {{paths: ["/healthz"]}}
      access: {{anonymous: allow}}
  limits:
    - {{name: daily-tokens, key: [principal], unit: totalTokens, budget: {{limit: 400, per: day}}}}
"#
    )
}

/// The static library cargo built with this test: beside the test binary in `deps/` (a
/// `cargo build` also copies it one level up, possibly from an older build).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let lib = deps.join("libedgeward_ffi.a");
    if lib.exists() {
        return lib;
    }
    deps.parent()
        .map_or(lib.clone(), |p| p.join("libedgeward_ffi.a"))
}

#[test]
fn the_c_test_program_passes_under_address_sanitizer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_lib();
    assert!(lib.exists(), "{} (built with the crate)", lib.display());
    let tmp = std::env::temp_dir().join(format!("edgeward-c-api-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let policy_file = tmp.join("policy.yaml");
    std::fs::write(&policy_file, policy()).unwrap();
    let bundle_file = tmp.join("policy.bundle");
    let engine = edgeward::Engine::new(&edgeward::Policy::from_text(&policy()).unwrap()).unwrap();
    std::fs::write(&bundle_file, engine.to_bundle()).unwrap();

    let exe = tmp.join("test_edgeward");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let build = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(["-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(dir.join("include"))
        .arg(dir.join("tests/c/test_edgeward.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("a C compiler (cc)");
    assert!(
        build.status.success(),
        "compile:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe)
        .arg(&policy_file)
        .arg(&bundle_file)
        // Leaks fail the run; Rust's thread-local and lazily built statics that live for
        // the process are reachable, not leaked.
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .output()
        .expect("run the C test");
    let _ = std::fs::remove_dir_all(&tmp);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status.code()
    );
    assert!(stdout.contains("all C ABI checks passed"), "{stdout}");
    assert!(!stderr.contains("AddressSanitizer"), "{stderr}");
    assert!(!stderr.contains("LeakSanitizer"), "{stderr}");
}
