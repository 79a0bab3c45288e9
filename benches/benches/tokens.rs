//! Token counting (issue 4): the byte-class estimate against exact counts on 4 KiB texts, our
//! `count_exact` against calling tiktoken-rs directly on the same text (the wrapper must cost
//! nothing), and what building an encoder costs once per process.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeward::cost::tokens::{count_exact, estimate, prepare, Encoding};

const PROSE: &str = "The committee reviewed the quarterly figures and noted that shipping costs \
rose along the northern routes, while demand in the coastal cities stayed flat. Please summarise \
the main points for the board in plain language, and keep every number given in the report. ";

const CODE: &str = "fn parse_header(buf: &[u8]) -> Result<Header, Error> {\n    let mut pos = 0usize;\n    \
while pos + 4 <= buf.len() {\n        let tag = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);\n        \
if tag == 0x8950_4e47 { return Ok(Header { kind: Kind::Png, offset: pos }); }\n        pos += 1;\n    }\n    \
Err(Error::NotFound(format!(\"no header in {} bytes\", buf.len())))\n}\n\n";

const NONLATIN: &str = "Комитет рассмотрел квартальные показатели и отметил рост расходов. \
委员会审查了季度数据，指出运输成本上升，而沿海城市的需求保持平稳。 Ελέγχθηκαν τα στοιχεία του τριμήνου. \
委員会は四半期の数字を確認しました。 ";

/// `text` repeated to 4 KiB, cut at a character boundary so exact counting accepts it.
fn fill(text: &str) -> String {
    let mut s = String::new();
    while s.len() < 4096 {
        s.push_str(text);
    }
    let mut end = 4096;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn texts() -> [(&'static str, String); 3] {
    [
        ("prose", fill(PROSE)),
        ("code", fill(CODE)),
        ("nonlatin", fill(NONLATIN)),
    ]
}

fn direct(enc: Encoding) -> &'static tiktoken_rs::CoreBPE {
    match enc {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

fn tokens(c: &mut Criterion) {
    let texts = texts();
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
