//! `gatehouse`: see `gatehouse --help`.
#![forbid(unsafe_code)]

/// The agent's own allocations come from mimalloc (see the library's
/// `sys::Allocator` and `sys::release_free_memory`). Set here, not in the
/// library, so the fuzz targets built on the library keep the allocator
/// their sanitizer watches.
#[global_allocator]
static ALLOCATOR: gatehouse::Allocator = gatehouse::Allocator;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
