//! The `edgeward` command line.
fn main() {}
