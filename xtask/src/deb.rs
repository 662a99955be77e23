//! `cargo xtask deb`: the Debian package, laid out here and built with
//! `dpkg-deb` (part of every Debian system; cargo-deb would add a tool to
//! install and compile for what is a directory tree and a control file).
//!
//! Contents: `/usr/bin/gatehouse`, the systemd unit, `/etc/gatehouse/` with a
//! commented starter policy (a conffile), the example policies, man pages
//! and shell completions generated from the CLI's own definitions, and the
//! maintainer scripts of `packaging/debian` (group, state directory,
//! detach on removal, state removed on purge only).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{built, output, run, target_dir, workspace_root};

#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// Package this binary instead of building target/release/gatehouse.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Cargo profile to build and package (release, or dev for a quick test package).
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Where to write the .deb (default: target/debian/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn deb(a: &DebArgs) -> Result<()> {
    let root = workspace_root();
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => {
            run(Command::new("cargo").current_dir(&root).args(["build", "--profile", &a.profile, "-p", "gatehouse"]))?;
            built(if a.profile == "dev" { "debug" } else { &a.profile }, "gatehouse")
        }
    };
    let out_dir = a.out.clone().unwrap_or_else(|| target_dir().join("debian"));
    let path = build(&binary, &out_dir, a.profile != "release")?;
    println!("{}", path.display());
    Ok(())
}

/// Lays out the package tree for `binary` and runs `dpkg-deb --build`
/// (`quick`: gzip -1 instead of xz, for test packages); returns the .deb.
pub fn build(binary: &Path, out_dir: &Path, quick: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let packaging = root.join("packaging");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_owned())
        .context("dpkg --print-architecture")?;
    std::fs::create_dir_all(out_dir)?;
    let tree = out_dir.join(format!("gatehouse_{version}_{arch}"));
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let dest = tree.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &dest).with_context(|| format!("copy {} to {}", from.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(binary, "usr/bin/gatehouse", 0o755)?;
    // Debian ships binaries without debug sections.
    run(Command::new("strip").arg("--strip-debug").arg(tree.join("usr/bin/gatehouse")))?;
    put(&packaging.join("gatehouse.service"), "lib/systemd/system/gatehouse.service", 0o644)?;
    put(&packaging.join("gatehouse.toml"), "etc/gatehouse/gatehouse.toml", 0o644)?;
    for e in std::fs::read_dir(root.join("policies"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            put(&p, &format!("usr/share/doc/gatehouse/examples/{name}"), 0o644)?;
        }
    }
    put(&root.join("README.md"), "usr/share/doc/gatehouse/README.md", 0o644)?;

    // Man pages and completions, from the binary's own CLI definitions.
    let docs = out_dir.join("docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs)?;
    }
    run(Command::new(binary).arg("generate-docs").arg(&docs))?;
    for e in std::fs::read_dir(docs.join("man"))? {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let gz = tree.join("usr/share/man/man1").join(format!("{name}.gz"));
        std::fs::create_dir_all(gz.parent().unwrap_or(&tree))?;
        let status = Command::new("gzip").args(["-9n", "-c"]).arg(&p).stdout(std::fs::File::create(&gz)?).status()?;
        if !status.success() {
            bail!("gzip {}", p.display());
        }
        std::fs::set_permissions(&gz, std::fs::Permissions::from_mode(0o644))?;
    }
    let completions = docs.join("completions");
    put(&completions.join("gatehouse.bash"), "usr/share/bash-completion/completions/gatehouse", 0o644)?;
    put(&completions.join("_gatehouse"), "usr/share/zsh/vendor-completions/_gatehouse", 0o644)?;
    put(&completions.join("gatehouse.fish"), "usr/share/fish/vendor_completions.d/gatehouse.fish", 0o644)?;

    // Control files.
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        let mode = if script == "conffiles" { 0o644 } else { 0o755 };
        put(&packaging.join("debian").join(script), &format!("DEBIAN/{script}"), mode)?;
    }
    let size_kib = du_kib(&tree);
    let control = format!(
        "Package: gatehouse\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Gatehouse developers <gatehouse@localhost>\n\
         Installed-Size: {size_kib}\nDepends: libc6, adduser, systemd\nSection: net\nPriority: optional\n\
         Description: transparent, audited access to protected backends from a bastion host\n \
         eBPF programs send every connection to a protected backend (PostgreSQL,\n \
         TCP) into Gatehouse's proxy, which knows the Unix user behind it, applies\n \
         the operators' policy per statement, masks results and records every\n \
         session in a signed, hash-chained audit store.\n"
    );
    std::fs::write(tree.join("DEBIAN/control"), control)?;
    let deb = out_dir.join(format!("gatehouse_{version}_{arch}.deb"));
    let compression: &[&str] = if quick { &["-Zgzip", "-z1"] } else { &["-Zxz"] };
    run(Command::new("dpkg-deb").arg("--root-owner-group").args(compression).arg("--build").arg(&tree).arg(&deb))?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::remove_dir_all(&docs)?;
    Ok(deb)
}

fn du_kib(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            total += meta.len().div_ceil(1024);
        }
    }
    total
}
