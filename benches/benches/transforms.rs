//! Each transform on 4 KiB of chat prose (the common "nothing or little to do" case), on
//! 4 KiB of attack-like text with escapes (the rewrite case) and on 4 KiB of non-Latin
//! prose.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::transform::Transform;
use edgeward_benches::sample_texts;

fn transforms(c: &mut Criterion) {
    let texts = sample_texts();
    let mut g = c.benchmark_group("transform");
    let mut out = Vec::with_capacity(8192);
    for (name, input) in &texts {
        g.throughput(Throughput::Bytes(input.len() as u64));
        for t in Transform::ALL {
            g.bench_with_input(BenchmarkId::new(t.name(), *name), input, |b, input| {
                b.iter(|| black_box(t.apply(black_box(input), &mut out)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, transforms);
criterion_main!(benches);
