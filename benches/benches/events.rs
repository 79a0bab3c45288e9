//! What events add to `inspect` (issue 6 target: events and metrics together at most 10 %
//! of inspect time): a 4 KiB chat request under the default policy, without an event sink
//! and with one that takes every line (and drops it, so only building the line is
//! measured), in the same run. Then the abuse signals: the default policy with the bench
//! requests' bearer token as a known key and all four signals configured (thresholds not
//! reached), against the same policy without signals.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeward::events::EventSink;
use edgeward::{Engine, Policy, Request};
use edgeward_benches::{chat_body_with, Text, HEADERS};

#[derive(Debug)]
struct Drop;

impl EventSink for Drop {
    fn event(&self, line: &str) {
        black_box(line);
    }
}

fn events(c: &mut Criterion) {
    let plain = Engine::default_engine();
    let with_sink = Engine::builder()
        .events(Arc::new(Drop))
        .build(&Policy::default_policy())
        .expect("default policy compiles");
    let mut g = c.benchmark_group("events");
    for (kind, attack) in [("benign", false), ("attack", true)] {
        let body = chat_body_with(4 * 1024, attack, Text::Triggers);
        let req = Request::new(b"POST", b"/v1/chat/completions")
            .with_headers(HEADERS)
            .with_body(&body);
        for (name, engine) in [("inspect", &plain), ("inspect+event", &with_sink)] {
            let mut scratch = engine.new_scratch();
            g.bench_function(format!("{name}/{kind}-4KiB"), |b| {
                b.iter(|| black_box(engine.inspect_with(&mut scratch, black_box(&req))))
            });
        }
    }
    g.finish();

    let keyed = |signals: &str| {
        let text = format!(
            "{}  identity:\n    apiKeys:\n      keys: [{{sha256: \"{KEY_SHA256}\", id: bench}}]\n{signals}",
            include_str!("../../rulesets/policies/default.yaml")
        );
        Engine::new(&Policy::from_text(&text).expect("policy")).expect("engine")
    };
    let without = keyed("");
    let with = keyed(
        "  signals: {velocity: {min: 1000000000}, duplicates: {}, refusals: {ratio: 0.9}, logprobs: {ratio: 0.9}}\n",
    );
    let body = chat_body_with(4 * 1024, false, Text::Triggers);
    let req = Request::new(b"POST", b"/v1/chat/completions")
        .with_headers(HEADERS)
        .with_body(&body)
        .with_peer("192.0.2.10".parse().expect("an address"));
    let mut g = c.benchmark_group("signals");
    for (name, engine) in [("keyed", &without), ("keyed+signals", &with)] {
        let mut scratch = engine.new_scratch();
        assert!(engine.inspect_with(&mut scratch, &req).principal.is_some());
        g.bench_function(format!("{name}/benign-4KiB"), |b| {
            b.iter(|| black_box(engine.inspect_with(&mut scratch, black_box(&req))))
        });
    }
    g.finish();
}

/// SHA-256 of the bearer token in [`HEADERS`].
const KEY_SHA256: &str = "ba50feacb77c3fb6d10743f07ba13bd6fad19a9f93900af212bb3414781a9ec8";

criterion_group!(benches, events);
criterion_main!(benches);
