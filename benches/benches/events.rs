//! What events add to `inspect` (issue 6 target: events and metrics together at most 10 %
//! of inspect time): a 4 KiB chat request under the default policy, without an event sink
//! and with one that takes every line (and drops it, so only building the line is
//! measured), in the same run.

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
}

criterion_group!(benches, events);
criterion_main!(benches);
