//! Each transform on 4 KiB of chat prose (the common "nothing or little to do" case), on
//! 4 KiB of attack-like text with escapes (the rewrite case) and on 4 KiB of non-Latin
//! prose.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::transform::Transform;
use edgeward_benches::chat_body;

fn transforms(c: &mut Criterion) {
    let prose = chat_body(4096, false);
    let escaped: Vec<u8> =
        b"%3Cscript%3E&lt;img onerror=x&gt; \\u0041 SELECT  *\tFROM ../../etc/passwd "
            .iter()
            .copied()
            .cycle()
            .take(4096)
            .collect();
    // Non-Latin prose (Cyrillic, CJK, Greek), single spaces: the multi-byte paths, and many
    // characters that normalize_unicode folds (Cyrillic and Greek lookalikes).
    let nonlatin: Vec<u8> = "Комитет рассмотрел квартальные показатели. \
        委员会审查了季度数据，指出运输成本上升。 Ελέγχθηκαν τα στοιχεία. "
        .bytes()
        .cycle()
        .take(4096)
        .collect();
    let mut g = c.benchmark_group("transform");
    let mut out = Vec::with_capacity(8192);
    for (name, input) in [
        ("prose", &prose),
        ("escaped", &escaped),
        ("nonlatin", &nonlatin),
    ] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        for t in Transform::ALL {
            g.bench_with_input(BenchmarkId::new(t.name(), name), input, |b, input| {
                b.iter(|| black_box(t.apply(black_box(input), &mut out)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, transforms);
criterion_main!(benches);
