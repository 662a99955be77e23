//! A real OpenSSH `sshd` for a test: its own config, host key and
//! `TrustedUserCAKeys`, on a 127.10.x.y address and a free high port, run in
//! the foreground (`-D -e`) as root and killed by PID on drop. The account
//! Gatehouse logs in as is a test user given a shell and a home; an account
//! Gatehouse logs in to with a held key lists it in `~/.ssh/authorized_keys`
//! ([`authorize_key`]).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Env, free_port};

pub struct Sshd {
    child: Child,
    pub ip: String,
    pub port: u16,
    /// sshd's log (stderr, LogLevel VERBOSE).
    pub log: PathBuf,
    /// The host's public key (for the backend's `host_key_file`).
    pub host_pub: PathBuf,
    /// The user CA Gatehouse signs with (private, 0600) and its public key.
    pub user_ca: PathBuf,
}

fn ok(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
}

impl Sshd {
    /// Starts sshd on `ip`, trusting a fresh user CA made in the test dir.
    pub fn start(env: &Env, ip: &str) -> Self {
        assert!(Path::new("/usr/sbin/sshd").exists(), "openssh-server is not installed (cargo xtask setup)");
        let dir = env.path("sshd");
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let host = dir.join("host_ed25519");
        let user_ca = env.path("user_ca");
        for (key, comment) in [(&host, "test host"), (&user_ca, "test user CA")] {
            ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(key));
        }
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = free_port();
        let config = dir.join("sshd_config");
        let text = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {host}\nPidFile none\nTrustedUserCAKeys {ca}.pub\n\
             AuthorizedKeysFile .ssh/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nLogLevel VERBOSE\nPermitRootLogin no\nX11Forwarding no\nAllowAgentForwarding yes\n\
             AllowTcpForwarding yes\nSubsystem sftp internal-sftp\nAcceptEnv LANG LD_PRELOAD\nPrintMotd no\nPrintLastLog no\n",
            host = host.display(),
            ca = user_ca.display(),
        );
        std::fs::write(&config, text).expect("sshd_config");
        let log = dir.join("sshd.log");
        let out = std::fs::File::create(&log).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn sshd");
        let mut me = Self { child, ip: ip.to_owned(), port, log, host_pub: dir.join("host_ed25519.pub"), user_ca };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((ip, port)).is_err() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("sshd exited ({status}): {}", me.log_text());
            }
            assert!(Instant::now() < deadline, "sshd not listening: {}", me.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `user` (made by [`Env::user`]) an account sshd lets in: a shell,
/// a home (returned), and an unlocked (but unusable) password field.
pub fn login_account(env: &Env, user: &str) -> PathBuf {
    let home = env.path(&format!("home-{user}"));
    std::fs::create_dir_all(&home).expect("home");
    ok(Command::new("usermod").args(["-s", "/bin/sh", "-p", "*", "-d"]).arg(&home).arg(user));
    ok(Command::new("chown").arg(format!("{user}:{user}")).arg(&home));
    home
}

/// Makes a key pair at `key` (private 0600, root's) and lets it log in as
/// `user`, whose home is `home`.
pub fn authorize_key(user: &str, home: &Path, key: &Path) {
    ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "held key", "-f"]).arg(key));
    let dir = home.join(".ssh");
    std::fs::create_dir_all(&dir).expect(".ssh");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    std::fs::write(dir.join("authorized_keys"), public).expect("authorized_keys");
    ok(Command::new("chown").arg("-R").arg(format!("{user}:{user}")).arg(&dir));
}

/// The `ssh` options every test client uses: no config, the test's
/// known_hosts only, never a prompt.
pub fn client_opts(known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
    ]
}
