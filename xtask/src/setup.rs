//! `cargo xtask setup`: make a fresh Debian 12 machine ready to build and test.
//! Idempotent: every step checks first and is skipped when nothing is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{output, privileged, run};

/// Debian packages the tests, demo and benchmarks use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "passwd",
    "curl",
    "python3",
    "postgresql",
    "pgbouncer",
    "haproxy",
    "libclang-dev",
    "wrk",
    "python3-psycopg",
    "python3-asyncpg",
    "python3-psycopg2",
    "python3-sqlalchemy",
    // MySQL backends: a real MariaDB per test, the mariadb client and PyMySQL.
    "mariadb-server",
    "mariadb-client",
    "python3-pymysql",
    // SSH backends: a real sshd per test, real ssh/scp/sftp, tmux for interactive sessions.
    "openssh-server",
    "openssh-client",
    "tmux",
    // HTTP backends: real clients and a WebSocket echo server.
    "python3-requests",
    "python3-httpx",
    "python3-websockets",
    // An HTTP backend that switches to HTTP/2 on `Upgrade: h2c` (and the h2 library a raw client uses).
    "python3-hypercorn",
    "openssl",
    // The metrics test parses scrapes with the Prometheus text parser.
    "python3-prometheus-client",
    // The package test checks the unit with `systemd-analyze verify`.
    "systemd",
    // The audit sink test sends to a real syslog collector over TLS (RFC 5425).
    "rsyslog",
    "rsyslog-gnutls",
    // The masking driver matrix: pgJDBC and a JDK to run it (Node.js below).
    "default-jdk-headless",
    "libpostgresql-jdbc-java",
];

/// Where the end-to-end tests find the Node.js drivers (world-readable:
/// the tests run them as unprivileged users).
pub const NODE_DIR: &str = "/usr/local/lib/gatehouse-e2e/node";

/// The Node.js drivers the masking driver matrix runs, pinned by major version.
const NODE_PACKAGES: &[(&str, &str)] = &[("pg", "8"), ("postgres", "3"), ("mysql2", "3")];

pub fn setup() -> Result<()> {
    apt_packages()?;
    node_packages()?;
    nightly()?;
    bpf_linker()?;
    test_idp()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(privileged("apt-get")?.arg("update").arg("-q"))?;
    run(privileged("apt-get")?
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

/// Node.js (Debian's, unless a `node` is already installed) and the npm
/// drivers, into [`NODE_DIR`].
fn node_packages() -> Result<()> {
    let have = |cmd: &str| output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_some();
    if !have("node") || !have("npm") {
        eprintln!("setup: installing Node.js and npm from Debian");
        run(privileged("apt-get")?.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "nodejs",
            "npm",
        ]))?;
    }
    let modules = Path::new(NODE_DIR).join("node_modules");
    let missing: Vec<String> = NODE_PACKAGES
        .iter()
        .filter(|(name, major)| {
            let manifest = modules.join(name).join("package.json");
            let version = std::fs::read_to_string(manifest).ok().and_then(|t| {
                serde_json::from_str::<serde_json::Value>(&t).ok()?["version"].as_str().map(str::to_owned)
            });
            version.is_none_or(|v| v.split('.').next() != Some(*major))
        })
        .map(|(name, major)| format!("{name}@{major}"))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Node.js drivers present in {NODE_DIR}");
        return Ok(());
    }
    eprintln!("setup: installing Node.js drivers into {NODE_DIR}: {}", missing.join(" "));
    run(privileged("mkdir")?.args(["-p", NODE_DIR]))?;
    // The whole list, not only what is missing: without a package.json,
    // `npm install --no-save` prunes every package it was not given.
    let all: Vec<String> = NODE_PACKAGES.iter().map(|(name, major)| format!("{name}@{major}")).collect();
    run(privileged("npm")?
        .args(["install", "--prefix", NODE_DIR, "--no-audit", "--no-fund", "--omit=dev", "--no-save"])
        .args(&all))
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is needed")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let comps = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .unwrap_or_default();
    if comps.lines().any(|l| l.trim() == "rust-src") {
        eprintln!("setup: nightly with rust-src present");
        Ok(())
    } else {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    }
}

/// Nightly's own LLVM: its shared library (file name = soname) and major version.
struct NightlyLlvm {
    lib: PathBuf,
    soname: String,
    major: String,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context("rustc +nightly")?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let soname = std::fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV")?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly does not report its LLVM version")?
        .to_owned();
    Ok(NightlyLlvm { lib: libdir.join(&soname), soname, major })
}

/// Whether the installed bpf-linker loads nightly's LLVM (the same file).
fn bpf_linker_matches(llvm: &NightlyLlvm) -> bool {
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else { return false };
    let Some(ldd) = output(Command::new("ldd").arg(path.trim())) else { return false };
    let Some(resolved) = ldd.lines().find_map(|l| {
        let (name, rest) = l.trim().split_once(" => ")?;
        (name == llvm.soname).then(|| rest.split(" (").next().unwrap_or("").trim().to_owned())
    }) else {
        return false;
    };
    let same = std::fs::canonicalize(&resolved).ok() == std::fs::canonicalize(&llvm.lib).ok();
    same && output(Command::new("bpf-linker").arg("--version")).is_some()
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    if bpf_linker_matches(&llvm) {
        eprintln!("setup: bpf-linker present, linked against nightly's LLVM {}", llvm.major);
        return Ok(());
    }
    // bpf-linker links against nightly's own libLLVM: a prefix whose lib/
    // holds libLLVM.so and the soname, both pointing at nightly's file. The
    // prefix stays: the built binary finds the library through it (RPATH).
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join("gatehouse-llvm").join(&llvm.soname);
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", llvm.soname.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.lib, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker against nightly's LLVM {} (a few minutes, once)", llvm.major);
    run(Command::new("cargo")
        .current_dir(std::env::temp_dir())
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major)))?;
    if !bpf_linker_matches(&llvm) {
        bail!("bpf-linker was built but does not load {}; is ~/.cargo/bin on PATH?", llvm.lib.display());
    }
    Ok(())
}

/// The OpenID provider the end-to-end tests start (`tests/oidc`): the npm
/// package `oidc-provider` at the version `package-lock.json` pins, installed
/// with `npm ci` into `tests/oidc/node_modules` (Node.js and npm come from
/// [`node_packages`], which runs first).
fn test_idp() -> Result<()> {
    let dir = crate::util::workspace_root().join("tests").join("oidc");
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).context("tests/oidc/package-lock.json")?;
    let stamp = dir.join("node_modules").join(".gatehouse-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        eprintln!("setup: test identity provider (oidc-provider) present");
        return Ok(());
    }
    eprintln!("setup: installing the test identity provider (npm ci in {})", dir.display());
    run(Command::new("npm").current_dir(&dir).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]))?;
    std::fs::write(&stamp, lock).with_context(|| format!("writing {}", stamp.display()))
}
