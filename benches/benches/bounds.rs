//! How inspection time grows with hostile input sizes: each shape at 16 KiB, 64 KiB,
//! 256 KiB and 1 MiB under a policy that reads bodies up to 128 MiB, so the parsers' own
//! limits (depth, fields, decoded bytes) are what bounds the work. Criterion reports
//! throughput: a flat bytes-per-second line across sizes is linear growth.
//!
//!   cargo bench -p edgeward-benches --bench bounds
//!
//! The 100 MB, 100,000-deep and million-field cases with their decisions and memory peaks
//! are tests (`core/tests/memory.rs`); this bench shows the time they take grows no faster
//! than their size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::{Engine, Policy, Request};

const POLICY: &str = r#"apiVersion: edgeward.dev/v1
kind: Policy
metadata: {name: bounds}
spec:
  rules: {builtin: true}
  defaults:
    limits: {maxBodyBytes: 134217728}
  routes:
    - name: chat
      match: {paths: ["/v1/chat/completions"]}
      schema: openai-chat
    - name: api
      match: {paths: ["/api/*"]}
"#;

/// A chat request whose one prompt repeats `piece` to `size` bytes.
fn prompt(piece: &str, size: usize) -> Vec<u8> {
    let text = piece.repeat(size / piece.len());
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        .to_string()
        .into_bytes()
}

/// The body of each shape at `size` bytes, and its content type (a form goes to a route
/// without an inference schema, where forms are parsed).
fn shapes(size: usize) -> Vec<(&'static str, Vec<u8>, &'static [u8])> {
    let json: &[u8] = b"application/json";
    let mut deep = b"[".repeat(size / 2);
    deep.extend(b"]".repeat(size / 2));
    let mut strings = b"[".to_vec();
    strings.extend(b"\"a\",".repeat(size / 4));
    strings.extend(b"0]");
    vec![
        (
            "prose",
            prompt("please summarise the quarterly planning notes ", size),
            json,
        ),
        ("quotes-and-ors", prompt("' or '", size), json),
        ("open-tags", prompt("<a ", size), json),
        ("escapes", prompt("%u%2", size), json),
        ("entities", prompt("&#x3c", size), json),
        ("injection-words", prompt("ignore previous ", size), json),
        ("deep-json", deep, json),
        ("json-strings", strings, json),
        (
            "form-fields",
            b"a=1&".repeat(size / 4),
            b"application/x-www-form-urlencoded",
        ),
    ]
}

fn bounds(c: &mut Criterion) {
    let engine = Engine::new(&Policy::from_text(POLICY).expect("policy")).expect("compiles");
    let mut scratch = engine.new_scratch();
    let mut g = c.benchmark_group("bounds");
    g.sample_size(10);
    let sizes = match std::env::var("BOUNDS_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![16 << 10, 64 << 10, 256 << 10, 1 << 20],
    };
    for size in sizes {
        for (name, body, ct) in shapes(size) {
            let headers: &[(&[u8], &[u8])] = &[(b"content-type", ct)];
            let path: &[u8] = if name == "form-fields" {
                b"/api/form"
            } else {
                b"/v1/chat/completions"
            };
            let req = Request::new(b"POST", path)
                .with_headers(headers)
                .with_body(&body);
            g.throughput(Throughput::Bytes(body.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &req, |b, req| {
                b.iter(|| black_box(engine.inspect_with(&mut scratch, black_box(req))))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bounds);
criterion_main!(benches);
