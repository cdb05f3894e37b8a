//! The `acre` command line.
fn main() {}
