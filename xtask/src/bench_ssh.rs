//! `cargo xtask bench ssh`: a real OpenSSH sshd listening on two loopback
//! addresses, one protected by Gatehouse (`protocol = "ssh"`: terminated,
//! decided, recorded, logged in upstream with a per-session certificate)
//! and one reached directly with a certificate from the same user CA.
//! Measured in the same run: `ssh host true` on a new connection each time
//! (median of `runs`), and an scp download of a 100 MB file (best of 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bench::{Rig, free_port, median};
use crate::util::built;

const PROTECTED: &str = "127.10.203.1";
const DIRECT: &str = "127.10.203.2";
const FILE_MB: u64 = 100;

struct Sshd {
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let st =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path).status()?;
    if !st.success() {
        bail!("ssh-keygen {}", path.display());
    }
    Ok(())
}

fn sshd(dir: &Path, port: u16, user_ca: &Path) -> Result<Sshd> {
    let host = dir.join("host_ed25519");
    keygen(&host, "bench host")?;
    std::fs::create_dir_all("/run/sshd")?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress {PROTECTED}\nListenAddress {DIRECT}\nHostKey {h}\nPidFile none\n\
             TrustedUserCAKeys {ca}.pub\nAuthorizedKeysFile none\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n\
             Subsystem sftp internal-sftp\nPrintMotd no\n",
            h = host.display(),
            ca = user_ca.display()
        ),
    )?;
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log"))?)
        .spawn()
        .context("sshd (cargo xtask setup installs openssh-server)")?;
    let s = Sshd { child };
    for a in [PROTECTED, DIRECT] {
        crate::util::wait_port(&format!("{a}:{port}"))?;
    }
    Ok(s)
}

fn ssh_opts(dir: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        &format!("UserKnownHostsFile={}", dir.join("known_hosts").display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
        &dir.join("client_ed25519").display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Seconds for one command (in the benchmark cgroup when `in_cg`).
fn timed(rig: &Rig, in_cg: bool, program: &str, args: &[String]) -> Result<f64> {
    let mut c = if in_cg { rig.in_cgroup(program) } else { Command::new(program) };
    c.args(args);
    let t = Instant::now();
    let out = c.output().with_context(|| program.to_owned())?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

pub fn ssh(runs: usize) -> Result<()> {
    let mut rig = Rig::new("ssh")?;
    let dir: PathBuf = rig.dir().to_path_buf();
    let user_ca = dir.join("user_ca");
    keygen(&user_ca, "bench user CA")?;
    // The direct client: a certificate from the same user CA (certificate login both ways).
    let client = dir.join("client_ed25519");
    keygen(&client, "bench client")?;
    let st = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&user_ca)
        .args(["-I", "bench-direct", "-n", "root", "-V", "-1m:+1h"])
        .arg(client.with_extension("pub"))
        .status()?;
    if !st.success() {
        bail!("signing the direct client's certificate");
    }
    let port = free_port()?;
    let _sshd = sshd(&dir, port, &user_ca)?;
    // The agent's SSH host CA, trusted by the client; the direct host by its key.
    let db = dir.join("state").join("audit.db");
    let ca = Command::new(built("release", "gatehouse")).args(["ca", "ssh-host", "--db"]).arg(&db).output()?;
    if !ca.status.success() {
        bail!("gatehouse ca ssh-host: {}", String::from_utf8_lossy(&ca.stderr));
    }
    let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub"))?;
    std::fs::write(
        dir.join("known_hosts"),
        format!("{}\n[{DIRECT}]:{port} {}", String::from_utf8_lossy(&ca.stdout).trim(), host_pub),
    )?;
    let policy = format!(
        "[[backend]]\nname = \"host\"\nprotocol = \"ssh\"\naddress = \"{PROTECTED}:{port}\"\n\
         ssh = {{ user = \"root\", host_key_file = \"{hp}\", user_ca_key_file = \"{ca}\" }}\n\n\
         [[rule]]\nname = \"root operates\"\nwho = {{ users = [\"root\"] }}\nbackend = \"host\"\n\
         shell = true\nexec = [\"true\"]\nsftp = \"read-only\"\n",
        hp = dir.join("host_ed25519.pub").display(),
        ca = user_ca.display()
    );
    rig.start_agent(&policy, free_port()?)?;

    let file = dir.join("payload.bin");
    let st = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", file.display()),
            "bs=1M",
            &format!("count={FILE_MB}"),
            "status=none",
        ])
        .status()?;
    if !st.success() {
        bail!("dd");
    }
    let opts = ssh_opts(&dir);
    let connect = |in_cg: bool, host: &str| -> Result<f64> {
        let mut args = opts.clone();
        args.extend(["-p".into(), port.to_string(), host.into(), "true".into()]);
        let mut v = Vec::with_capacity(runs);
        for _ in 0..runs {
            v.push(timed(&rig, in_cg, "/usr/bin/ssh", &args)?);
        }
        Ok(median(v))
    };
    // Warm up both paths once (the agent loads its keys on the first session).
    connect(true, PROTECTED)?;
    connect(false, DIRECT)?;
    let direct = connect(false, DIRECT)?;
    let gatehouse = connect(true, PROTECTED)?;
    let scp = |in_cg: bool, host: &str| -> Result<f64> {
        let dest = dir.join(format!("copy-{host}.bin"));
        let mut args = opts.clone();
        args.extend(["-q".into(), "-P".into(), port.to_string()]);
        args.push(format!("{host}:{}", file.display()));
        args.push(dest.display().to_string());
        let mut best = f64::MAX;
        for _ in 0..3 {
            best = best.min(timed(&rig, in_cg, "/usr/bin/scp", &args)?);
            let got = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            if got != FILE_MB * 1024 * 1024 {
                bail!("scp via {host} copied {got} bytes");
            }
            let _ = std::fs::remove_file(&dest);
        }
        Ok(best)
    };
    let scp_direct = scp(false, DIRECT)?;
    let scp_gatehouse = scp(true, PROTECTED)?;
    let _ = std::fs::remove_file(&file);
    println!();
    println!("ssh_connect direct     {:>8.1} ms  (median of {runs}, `ssh host true`, certificate login)", direct * 1e3);
    println!(
        "ssh_connect gatehouse  {:>8.1} ms  (terminated, decided, recorded, per-session certificate)",
        gatehouse * 1e3
    );
    println!("scp_{FILE_MB}mb direct        {scp_direct:>8.3} s  {:>7.1} MB/s", FILE_MB as f64 / scp_direct);
    println!("scp_{FILE_MB}mb gatehouse     {scp_gatehouse:>8.3} s  {:>7.1} MB/s", FILE_MB as f64 / scp_gatehouse);
    println!();
    println!("(ratios are of time: 1.00 is as fast as direct, 2.00 takes twice as long)");
    println!("ratio ssh_connect gatehouse/direct = {:.2}", gatehouse / direct);
    println!("ratio scp_100mb gatehouse/direct = {:.2}", scp_gatehouse / scp_direct);
    drop(rig);
    Ok(())
}
