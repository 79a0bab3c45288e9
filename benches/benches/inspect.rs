//! `inspect` on OpenAI chat requests, compile, and bundle load.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::{Config, Engine, Policy, Request};
use edgeward_benches::{chat_body_with, Text, HEADERS};

fn inspect(c: &mut Criterion) {
    let engine = |config: Config| {
        Engine::builder()
            .config(config)
            .build(&Policy::default_policy())
            .expect("default policy compiles")
    };
    // The loop repeats one request, so the large-field memo would recognise its prompt
    // from the second call on; off, every call pays for a prompt seen for the first time
    // (with the short headers, keys and model name remembered, as they are in practice).
    let memo = engine(Config {
        large_field_memo: 0,
        ..Config::default()
    });
    // Every field scanned in full on every call: what a stream of requests whose headers
    // and JSON keys never repeat would cost.
    let no_memo = engine(Config {
        clean_field_memo: 0,
        large_field_memo: 0,
        ..Config::default()
    });
    // The default configuration: a prompt seen before (a system prompt, earlier turns) is
    // recognised instead of scanned.
    let seen = engine(Config::default());
    let mut g = c.benchmark_group("inspect");
    for kib in [1usize, 4, 16, 64] {
        for (kind, attack, text, engine) in [
            ("benign-plain", false, Text::Plain, &memo),
            ("benign", false, Text::Triggers, &memo),
            ("attack", true, Text::Triggers, &memo),
            ("benign-plain-nomemo", false, Text::Plain, &no_memo),
            ("benign-nomemo", false, Text::Triggers, &no_memo),
            ("benign-seen", false, Text::Triggers, &seen),
        ] {
            let body = chat_body_with(kib * 1024, attack, text);
            let req = Request::new(b"POST", b"/v1/chat/completions")
                .with_headers(HEADERS)
                .with_body(&body);
            let mut scratch = engine.new_scratch();
            let d = engine.inspect_with(&mut scratch, &req);
            assert_eq!(d.is_allowed(), !attack, "{}", d.to_json());
            g.throughput(Throughput::Bytes(body.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(kind, format!("{kib}KiB")),
                &req,
                |b, req| b.iter(|| black_box(engine.inspect_with(&mut scratch, black_box(req)))),
            );
        }
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let policy = Policy::default_policy();
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.bench_function("parse_default_policy", |b| {
        b.iter(|| black_box(Policy::default_policy()))
    });
    g.bench_function("compile_default_policy", |b| {
        b.iter(|| black_box(Engine::new(&policy).unwrap()))
    });
    let bundle = Engine::new(&policy).unwrap().to_bundle();
    g.bench_function("load_bundle", |b| {
        b.iter(|| black_box(Engine::from_bundle(&bundle).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, inspect, compile);
criterion_main!(benches);
