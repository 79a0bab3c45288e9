//! `UsageTracker` throughput on realistic 64 KiB streams: an OpenAI chat completion with
//! `include_usage` and an Anthropic message, fed whole and in network-sized chunks. The
//! counter is a bytes/4 estimate, so the numbers are the tracker's own cost (SSE framing,
//! JSON of each event, the counter calls), not a tokenizer's.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::cost::usage::{Provider, UsageSource, UsageTracker};
use edgeward_benches::usage_streams::{anthropic_stream, openai_stream};

fn track(provider: Provider, stream: &[u8], chunk: usize) -> edgeward::Usage {
    let mut t = UsageTracker::new(provider, Box::new(|s: &str| (s.len() as u64).div_ceil(4)));
    for piece in stream.chunks(chunk) {
        t.feed(piece);
    }
    t.finish()
}

fn usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_tracker");
    for (name, provider, stream) in [
        ("openai-chat", Provider::OpenAiChat, openai_stream()),
        ("anthropic", Provider::Anthropic, anthropic_stream()),
    ] {
        assert_eq!(
            track(provider, &stream, stream.len()).source,
            UsageSource::Reported
        );
        g.throughput(Throughput::Bytes(stream.len() as u64));
        // Whole, and in chunks the size of a TCP segment's payload.
        for (label, chunk) in [("whole", stream.len()), ("1448B-chunks", 1448)] {
            g.bench_with_input(BenchmarkId::new(name, label), &stream, |b, s| {
                b.iter(|| black_box(track(provider, black_box(s), chunk)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, usage);
criterion_main!(benches);
