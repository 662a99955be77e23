//! `gatehouse`: see `gatehouse --help`.
#![forbid(unsafe_code)]

/// See `gatehouse::Allocator`.
#[global_allocator]
static ALLOCATOR: gatehouse::Allocator = gatehouse::Allocator;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
