//! Runs the usage tracker over the 64 KiB bench streams in a loop, for profilers and for
//! instruction counts that do not depend on machine load:
//! `valgrind --tool=callgrind target/release/examples/usage_profile [openai|anthropic] [iterations] [chunk-bytes]`
//! (the difference of two iteration counts gives the cost of one stream).
use edgeward::cost::usage::{Provider, UsageTracker};
use edgeward_benches::usage_streams::{anthropic_stream, openai_stream};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "openai".to_string());
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let chunk: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1448);
    let (provider, stream) = match which.as_str() {
        "anthropic" => (Provider::Anthropic, anthropic_stream()),
        _ => (Provider::OpenAiChat, openai_stream()),
    };
    let mut out = 0;
    for _ in 0..iters {
        let mut t = UsageTracker::new(provider, Box::new(|s: &str| (s.len() as u64).div_ceil(4)));
        for piece in stream.chunks(chunk) {
            t.feed(std::hint::black_box(piece));
        }
        out += t.finish().output_tokens;
    }
    println!(
        "{} bytes, {iters} iterations, output tokens {out}",
        stream.len()
    );
}
