//! Builds tests/c/test_edgeward.c against the static library with warnings as errors, then
//! runs it twice: with AddressSanitizer (LeakSanitizer included: every allocation, Rust's
//! too, goes through the intercepted `malloc`) and under Valgrind (memcheck, full leak
//! check): every C function, misuse included, with zero errors and zero leaks.

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

/// A scratch directory with the test's policy and its bundle, removed on drop.
struct Fixture {
    dir: PathBuf,
    policy: PathBuf,
    bundle: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("edgeward-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, self::policy()).unwrap();
        let bundle = dir.join("policy.bundle");
        let engine =
            edgeward::Engine::new(&edgeward::Policy::from_text(&self::policy()).unwrap()).unwrap();
        std::fs::write(&bundle, engine.to_bundle()).unwrap();
        Fixture {
            dir,
            policy,
            bundle,
        }
    }

    /// Compiles the C test with warnings as errors and `flags`, against the static library.
    fn compile(&self, flags: &[&str]) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = static_lib();
        assert!(lib.exists(), "{} (built with the crate)", lib.display());
        let exe = self.dir.join("test_edgeward");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let build = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
            .args(flags)
            .arg("-I")
            .arg(src.join("include"))
            .arg(src.join("tests/c/test_edgeward.c"))
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
        exe
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts the C test ran to its end; `(stdout, stderr)` for more checks.
fn passed(run: &std::process::Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status.code()
    );
    assert!(stdout.contains("all C ABI checks passed"), "{stdout}");
    (stdout, stderr)
}

#[test]
fn the_c_test_program_passes_under_address_sanitizer() {
    let f = Fixture::new("c-api-asan");
    let exe = f.compile(&["-fsanitize=address", "-fno-omit-frame-pointer"]);
    let run = Command::new(&exe)
        .arg(&f.policy)
        .arg(&f.bundle)
        // Leaks fail the run; Rust's thread-local and lazily built statics that live for
        // the process are reachable, not leaked.
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .output()
        .expect("run the C test");
    let (_, stderr) = passed(&run);
    assert!(!stderr.contains("AddressSanitizer"), "{stderr}");
    assert!(!stderr.contains("LeakSanitizer"), "{stderr}");
}

/// Valgrind sees what AddressSanitizer cannot: reads of uninitialized memory, and the
/// program as built without instrumentation. Skipped where valgrind is not installed,
/// except in CI (`CI` set), which installs it.
#[test]
fn the_c_test_program_passes_under_valgrind() {
    let found = Command::new("valgrind").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "valgrind is not installed (CI installs it: .ci/run)"
        );
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let f = Fixture::new("c-api-valgrind");
    let exe = f.compile(&["-O1"]);
    let run = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=33",
            "--leak-check=full",
            // Definitely and indirectly lost blocks are leaks; Rust's statics and thread
            // locals that live as long as the process are reachable or possibly lost.
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(&exe)
        .arg(&f.policy)
        .arg(&f.bundle)
        .output()
        .expect("run valgrind");
    // Any error or leak exits 33, which `passed` reports with valgrind's output.
    passed(&run);
}
