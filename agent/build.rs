//! Builds the eBPF programs (`agent-ebpf`) with aya-build, as aya-template
//! does; the object lands in OUT_DIR and is embedded into the binary.
//! Needs nightly with rust-src and bpf-linker: `cargo xtask setup`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf([Package { name: "agent-ebpf", root_dir, ..Default::default() }], Toolchain::default())
        .context("building the eBPF programs failed; did `cargo xtask setup` run?")
}
