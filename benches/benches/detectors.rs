//! Each built-in detector on the three 4 KiB sample texts: what one detector rule costs on
//! one field of that size (the per-detector cost issue 3 asks to record).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::rules::detect::Detector;
use edgeward_benches::sample_texts;

fn detectors(c: &mut Criterion) {
    let texts = sample_texts();
    let mut g = c.benchmark_group("detector");
    for (name, input) in &texts {
        g.throughput(Throughput::Bytes(input.len() as u64));
        for d in Detector::ALL {
            g.bench_with_input(BenchmarkId::new(d.name(), *name), input, |b, input| {
                b.iter(|| black_box(d.run(black_box(input))))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, detectors);
criterion_main!(benches);
