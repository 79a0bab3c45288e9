//! Instructions per inspect with and without an event sink, for callgrind (which counts
//! instructions regardless of machine load):
//!
//! `valgrind --tool=callgrind target/release/examples/events_count MODE N [attack]`
//!
//! Modes: `plain` and `event` (the default policy, anonymous, without and with a sink);
//! `keyed` (the default policy plus an API key and a client address, so the heavy-hitter
//! trackers count the request); `signals` and `signals-event` (`keyed` plus all four abuse
//! signals, thresholds not reached; without and with a sink).
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
    if mode.ends_with("event") {
        b = b.events(Arc::new(Drop));
    }
    let mut text = include_str!("../../rulesets/policies/default.yaml").to_string();
    let keyed = mode != "plain" && mode != "event";
    if keyed {
        // SHA-256 of the bench requests' bearer token.
        text.push_str(
            "  identity:\n    apiKeys:\n      keys: [{sha256: \"ba50feacb77c3fb6d10743f07ba13bd6fad19a9f93900af212bb3414781a9ec8\", id: bench, tenant: t}]\n",
        );
    }
    if mode.starts_with("signals") {
        // EDGEWARD_BENCH_SIGNALS replaces the section, to count one signal at a time.
        let section = std::env::var("EDGEWARD_BENCH_SIGNALS").unwrap_or_else(|_| {
            "velocity: {min: 1000000000}, duplicates: {}, refusals: {ratio: 0.9}, logprobs: {ratio: 0.9}".into()
        });
        text.push_str(&format!("  signals: {{{section}}}\n"));
    }
    let policy = Policy::from_text(&text).expect("policy");
    let engine = b.build(&policy).expect("engine");
    let body = chat_body_with(4 * 1024, attack, Text::Triggers);
    let mut req = Request::new(b"POST", b"/v1/chat/completions");
    if keyed {
        req = req.with_peer("192.0.2.10".parse().expect("an address"));
    }
    let req = req.with_headers(HEADERS).with_body(&body);
    let mut s = engine.new_scratch();
    // One warm-up call in every run (lazy tables), so N and 0 differ by N warm calls.
    let d = engine.inspect_with(&mut s, &req);
    assert_eq!(
        d.principal.is_some(),
        keyed,
        "the key identifies the caller"
    );
    black_box(d);
    for _ in 0..n {
        black_box(engine.inspect_with(&mut s, black_box(&req)));
    }
}
