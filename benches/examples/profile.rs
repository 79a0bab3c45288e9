//! Runs `inspect` on a chat request in a loop, for profilers (`perf record`, callgrind).
//! Usage: `cargo run --release -p edgeward-benches --example profile -- [KiB] [iterations] [rule-id-prefix]`
//! (`PLAIN=1` for neutral prose instead of trigger-word prose, `NOMEMO=1` to scan every
//! field in full on every call, `SEEN=1` to let the large-field memo recognise the prompt
//! from the call before (off by default: the loop repeats one request, and what it measures
//! is a prompt seen for the first time), `FRESH=1` for the memo on and a prompt that
//! differs on every call (its first eight bytes are the call's number: what the memo costs
//! when it never helps), `POLLUTE=BYTES` to write that many bytes of another buffer
//! before each call, as a host's own work evicts the caches between requests, and `ONLY=1`
//! to run that pollution alone, so that its cost can be taken off).
//! With a rule-id prefix, only built-in rules whose id starts with it are loaded, to see
//! what one rule file costs; with `-prefix`, all rules but those, to see what they add.
use edgeward::{Config, Engine, Policy, Request};
use edgeward_benches::{chat_body_with, Text, HEADERS};

fn main() {
    let mut args = std::env::args().skip(1);
    let kib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut policy = Policy::default_policy();
    if let Some(prefix) = args.next() {
        // `-950` drops the rules whose id starts with 950 instead of keeping only them.
        let (keep, prefix) = match prefix.strip_prefix('-') {
            Some(p) => (false, p.to_string()),
            None => (true, prefix),
        };
        policy
            .rules
            .retain(|r| r.id.to_string().starts_with(&prefix) == keep);
    }
    let fresh = std::env::var_os("FRESH").is_some();
    let config = Config {
        clean_field_memo: if std::env::var_os("NOMEMO").is_some() {
            0
        } else {
            Config::default().clean_field_memo
        },
        large_field_memo: if std::env::var_os("SEEN").is_some() || fresh {
            Config::default().large_field_memo
        } else {
            0
        },
        ..Config::default()
    };
    let engine = Engine::builder()
        .config(config)
        .build(&policy)
        .expect("policy compiles");
    let text = if std::env::var_os("PLAIN").is_some() {
        Text::Plain
    } else {
        Text::Triggers
    };
    let mut body = chat_body_with(kib * 1024, false, text);
    let user = br#""role":"user","content":""#;
    let at = body
        .windows(user.len())
        .position(|w| w == user)
        .expect("a user message")
        + user.len();
    let mut scratch = engine.new_scratch();
    let pollute: usize = std::env::var("POLLUTE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let only = std::env::var_os("ONLY").is_some();
    let mut junk = vec![0u64; pollute / 8];
    let start = std::time::Instant::now();
    let mut denied = 0;
    for it in 0..iters {
        // One write per cache line: every line of the buffer is pulled into the caches.
        for (k, x) in junk.iter_mut().enumerate().step_by(8) {
            *x = x.wrapping_add((k ^ it) as u64);
        }
        if fresh {
            body[at..at + 8].copy_from_slice(format!("{:08}", it % 100_000_000).as_bytes());
        }
        let req = Request::new(b"POST", b"/v1/chat/completions")
            .with_headers(HEADERS)
            .with_body(&body);
        if !only {
            denied += usize::from(!engine.inspect_with(&mut scratch, &req).is_allowed());
        }
    }
    std::hint::black_box(&junk);
    // `iters` may be 0 (a baseline run for instruction counts).
    let per = start.elapsed() / iters.max(1) as u32;
    println!(
        "{kib} KiB, {} rules: {per:?} per inspect ({denied} denied)",
        policy.rules.len()
    );
}
