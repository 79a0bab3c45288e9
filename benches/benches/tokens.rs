//! Token counting (issue 4): the byte-class estimate against exact counts on 4 KiB texts, our
//! `count_exact` against calling tiktoken-rs directly on the same text (the wrapper must cost
//! nothing), and what building an encoder costs once per process.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::cost::tokens::{count_exact, estimate, prepare, Encoding};
use edgeward_benches::token_texts;

fn direct(enc: Encoding) -> &'static tiktoken_rs::CoreBPE {
    match enc {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

fn tokens(c: &mut Criterion) {
    let texts = token_texts();
    let mut g = c.benchmark_group("estimate");
    for (name, text) in &texts {
        g.throughput(Throughput::Bytes(text.len() as u64));
        for enc in Encoding::ALL {
            g.bench_with_input(BenchmarkId::new(enc.name(), name), text, |b, t| {
                b.iter(|| black_box(estimate(enc, black_box(t.as_bytes()))))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("exact");
    for enc in Encoding::ALL {
        // Build both encoders outside the measurement.
        prepare(enc);
        direct(enc);
    }
    for (name, text) in &texts {
        g.throughput(Throughput::Bytes(text.len() as u64));
        for enc in Encoding::ALL {
            g.bench_with_input(
                BenchmarkId::new(format!("{}/count_exact", enc.name()), name),
                text,
                |b, t| b.iter(|| black_box(count_exact(enc, black_box(t)))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{}/tiktoken-rs", enc.name()), name),
                text,
                |b, t| b.iter(|| black_box(direct(enc).encode_ordinary(black_box(t)).len())),
            );
        }
    }
    g.finish();

    // Building an encoder is 60-140 ms; ten samples are plenty and keep the bench short.
    let mut g = c.benchmark_group("encoder_init");
    g.sample_size(10);
    g.bench_function("o200k_base", |b| {
        b.iter(|| black_box(tiktoken_rs::o200k_base().is_ok()))
    });
    g.bench_function("cl100k_base", |b| {
        b.iter(|| black_box(tiktoken_rs::cl100k_base().is_ok()))
    });
    g.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
