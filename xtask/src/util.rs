//! Small helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

/// Prints and runs a command; fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", show(cmd)))?;
    check(status, cmd)
}

pub fn check(status: ExitStatus, cmd: &Command) -> Result<()> {
    if status.success() { Ok(()) } else { bail!("`{}` failed: {status}", show(cmd)) }
}

/// Runs a command quietly and returns its stdout, or None if it failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A command that runs as root: directly when we are root, else through sudo.
pub fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if output(Command::new("sudo").arg("--version")).is_none() {
        bail!("this step needs root and sudo is not installed; run the command as root");
    }
    eprintln!("note: not root; running the privileged step through sudo");
    let mut c = Command::new("sudo");
    c.arg("--preserve-env=PATH,CARGO_TARGET_DIR,GATEHOUSE_BIN,GATEHOUSE_PROBE,GATEHOUSE_DEB,RUST_BACKTRACE")
        .arg(program);
    Ok(c)
}

/// The path of a binary built into target/<profile>.
pub fn built(profile: &str, name: &str) -> PathBuf {
    target_dir().join(profile).join(name)
}

/// Waits up to 15 s for something to listen on `addr` (a loopback address).
pub fn wait_port(addr: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let a: std::net::SocketAddr = addr.parse()?;
    while std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(200)).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("{addr} did not come up");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
