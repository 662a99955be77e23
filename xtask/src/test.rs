//! `cargo xtask test`: unit tests, the shipped policies' own test cases, then
//! the privileged end-to-end tests (as root, or through sudo).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{built, privileged, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip `setup` (when you know the machine is ready).
    #[arg(long)]
    pub skip_setup: bool,
    /// Only the unit tests.
    #[arg(long, conflicts_with = "e2e_only")]
    pub unit_only: bool,
    /// Only the end-to-end tests.
    #[arg(long)]
    pub e2e_only: bool,
    /// Passed to the end-to-end test binaries (a test name filter, --nocapture…).
    #[arg(last = true)]
    pub e2e_args: Vec<String>,
}

pub fn test(a: &TestArgs) -> Result<()> {
    if !a.skip_setup {
        crate::setup::setup()?;
    }
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args(["build", "-p", "gatehouse", "-p", "gatehouse-e2e", "--bins"]))?;
    if !a.e2e_only {
        run(Command::new("cargo").current_dir(&root).args([
            "test",
            "--workspace",
            "--exclude",
            "gatehouse-e2e",
            "--exclude",
            "agent-ebpf",
        ]))?;
        run(Command::new(built("debug", "gatehouse")).current_dir(&root).args(["policy", "test", "policies"]))?;
    }
    if a.unit_only {
        return Ok(());
    }
    // The package test (tests/ops_package.rs) installs a .deb of this build.
    let deb = crate::deb::build(&built("debug", "gatehouse"), &crate::util::target_dir().join("debian-test"), true)?;
    let binaries = e2e_binaries()?;
    eprintln!("end-to-end tests: real eBPF attached to per-test child cgroups (needs root)");
    for bin in binaries {
        let mut cmd = privileged(&bin)?;
        cmd.current_dir(&root)
            .env("GATEHOUSE_BIN", built("debug", "gatehouse"))
            .env("GATEHOUSE_PROBE", built("debug", "gatehouse-probe"))
            .env("GATEHOUSE_DEB", &deb)
            .env("RUST_BACKTRACE", "1")
            .args(&a.e2e_args);
        run(&mut cmd)?;
    }
    eprintln!("all tests passed");
    Ok(())
}

/// Builds the end-to-end test binaries and returns their paths.
fn e2e_binaries() -> Result<Vec<PathBuf>> {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "-p", "gatehouse-e2e", "--no-run", "--message-format=json"])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        let is_integration = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, true, Some(exe)) = (is_test, is_integration, msg["executable"].as_str()) {
            bins.push(PathBuf::from(exe));
        }
    }
    if bins.is_empty() {
        bail!("no end-to-end test binaries were built");
    }
    Ok(bins)
}
