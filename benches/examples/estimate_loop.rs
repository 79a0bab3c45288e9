//! Runs the token estimator on one 4 KiB text in a loop, for `perf stat` / callgrind, whose
//! cycle and instruction counts do not depend on the load of a shared machine.
//! Usage: `cargo run --release -p edgeward-benches --example estimate_loop -- [prose|code|nonlatin] [iterations]`
use edgeward::cost::tokens::{estimate, Encoding};
use edgeward_benches::token_texts;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "prose".into());
    let iters: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let (_, text) = token_texts()
        .into_iter()
        .find(|(n, _)| *n == kind)
        .expect("prose, code or nonlatin");
    let mut sum = 0u64;
    for _ in 0..iters {
        sum = sum.wrapping_add(
            estimate(Encoding::O200kBase, std::hint::black_box(text.as_bytes())).tokens,
        );
    }
    println!("{} bytes x {iters}: checksum {sum}", text.len());
}
