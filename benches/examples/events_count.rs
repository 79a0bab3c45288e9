//! Instructions per inspect with and without an event sink, for callgrind (which counts
//! instructions regardless of machine load):
//!
//! `valgrind --tool=callgrind target/release/examples/events_count (plain|event) N`
//!
//! Run with N and with 0 and subtract, so that building the engine cancels out.

use std::hint::black_box;
use std::sync::Arc;

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

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "plain".into());
    let n: usize = args.next().map_or(100, |s| s.parse().expect("a count"));
    let attack = args.next().is_some_and(|s| s == "attack");
    let mut b = Engine::builder();
    if mode == "event" {
        b = b.events(Arc::new(Drop));
    }
    let engine = b.build(&Policy::default_policy()).expect("default policy");
    let body = chat_body_with(4 * 1024, attack, Text::Triggers);
    let req = Request::new(b"POST", b"/v1/chat/completions")
        .with_headers(HEADERS)
        .with_body(&body);
    let mut s = engine.new_scratch();
    // One warm-up call in every run (lazy tables), so N and 0 differ by N warm calls.
    black_box(engine.inspect_with(&mut s, &req));
    for _ in 0..n {
        black_box(engine.inspect_with(&mut s, black_box(&req)));
    }
}
