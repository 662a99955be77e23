//! Developer tasks for what cargo cannot do alone: `cargo xtask <task>`.
#![expect(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "a developer tool over its own data (JSON from cargo, its own measurements), not network input"
)]

mod bench;
mod bench_http;
mod bench_mysql;
mod bench_pg;
mod bench_ssh;
mod bench_trail;
mod deb;
mod demo;
mod fuzz;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Gatehouse developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Setup if needed, unit tests, policy test cases, then privileged end-to-end tests.
    Test(test::TestArgs),
    /// Run Gatehouse on embedded defaults: a throwaway backend, an allowed and a refused user.
    Demo(demo::DemoArgs),
    /// Every fuzz target for --secs seconds from its committed seeds and dictionary (installs cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks, printed as ratios against baselines measured in the same run.
    Bench(bench::BenchArgs),
    /// Build the Debian package (dpkg-deb): binary, systemd unit, starter policy, man pages, completions.
    Deb(deb::DebArgs),
    /// (internal) A benchmark client, run inside the benchmark's cgroup.
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
}

fn main() -> anyhow::Result<()> {
    // `cargo xtask` runs this through `cargo run`, which sets the package
    // variables of xtask itself; the cargo builds started from here would
    // inherit them, and build scripts that watch one (ring watches
    // CARGO_MANIFEST_DIR) would rebuild, so a release build made with plain
    // `cargo build --release` would not be reused. Nothing else runs yet.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k == "CARGO_MANIFEST_DIR"
            || k == "CARGO_MANIFEST_PATH"
            || k.starts_with("CARGO_PKG_")
            || k == "CARGO_CRATE_NAME"
            || k == "CARGO_BIN_NAME"
            || k == "CARGO_PRIMARY_PACKAGE"
        {
            #[expect(unsafe_code, reason = "single-threaded at this point: no thread reads the environment")]
            // SAFETY: called before any thread is spawned.
            unsafe {
                std::env::remove_var(&k);
            }
        }
    }
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test(a) => test::test(&a),
        Task::Demo(a) => demo::demo(&a),
        Task::Fuzz(a) => fuzz::fuzz(&a),
        Task::Bench(a) => bench::bench(&a),
        Task::Deb(a) => deb::deb(&a),
        Task::BenchClient(a) => bench::client(&a),
    }
}
