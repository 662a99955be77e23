//! `cargo xtask demo`: Gatehouse on embedded defaults, start to finish.
//! Attaches to the cgroup v2 root (the whole host), like the real agent;
//! everything it starts or creates is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{built, is_root, privileged, run, workspace_root};

const BACKEND: &str = "127.77.0.1";
const BACKEND_PORT: &str = "8080";
const GROUP: &str = "gatehouse-demo-ops";
const ALICE: &str = "gatehouse-demo-alice";
const MALLORY: &str = "gatehouse-demo-mallory";
const PIN_DIR: &str = "/sys/fs/bpf/gatehouse-demo";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Skip setup and build (used when re-run through sudo).
    #[arg(long, hide = true)]
    pub no_build: bool,
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    if !a.no_build {
        crate::setup::setup()?;
        run(Command::new("cargo").current_dir(workspace_root()).args(["build", "-p", "gatehouse"]))?;
    }
    if !is_root() {
        let me = std::env::current_exe().context("current_exe")?;
        return run(privileged(me)?.args(["demo", "--no-build"]).current_dir(workspace_root()));
    }
    let mut world = World::default();
    let result = world.show();
    world.clean_up();
    result
}

#[derive(Default)]
struct World {
    dir: Option<PathBuf>,
    backend: Option<Child>,
    agent: Option<Child>,
    users: Vec<&'static str>,
    group: bool,
}

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn gatehouse() -> Command {
    Command::new(built("debug", "gatehouse"))
}

impl World {
    fn show(&mut self) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www"))?;
        self.dir = Some(dir.clone());
        set_mode(&dir, 0o755)?;
        std::fs::write(dir.join("www/index.html"), "hello from the protected backend\n")?;

        step("users: alice (in gatehouse-demo-ops) and mallory (in no group)");
        self.clean_stale_users();
        run(Command::new("groupadd").arg(GROUP))?;
        self.group = true;
        for (user, groups) in [(ALICE, Some(GROUP)), (MALLORY, None)] {
            let mut c = Command::new("useradd");
            c.args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]);
            if let Some(g) = groups {
                c.args(["--groups", g]);
            }
            run(c.arg(user))?;
            self.users.push(user);
        }

        step(&format!("a throwaway backend: python3 http.server on {BACKEND}:{BACKEND_PORT}, as nobody"));
        self.backend = Some(
            Command::new("setpriv")
                .args([
                    "--reuid",
                    "nobody",
                    "--regid",
                    "nogroup",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-m",
                    "http.server",
                    BACKEND_PORT,
                    "--bind",
                    BACKEND,
                ])
                .arg("--directory")
                .arg(dir.join("www"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the backend")?,
        );
        wait_for(&format!("{BACKEND}:{BACKEND_PORT}"))?;

        step("the agent: gatehouse run --config policies/demo.toml (attached to the whole host)");
        let log = std::fs::File::create(dir.join("agent.log"))?;
        self.agent = Some(
            gatehouse()
                .current_dir(workspace_root())
                .args(["run", "--config", "policies/demo.toml", "--pin-dir", PIN_DIR])
                .arg("--audit-db")
                // Its own directory: the agent keeps the store's directory 0700.
                .arg(dir.join("state").join("audit.db"))
                .arg("--control-socket")
                .arg(dir.join("control.sock"))
                .stderr(log.try_clone()?)
                .stdout(log)
                .spawn()
                .context("starting the agent")?,
        );
        self.wait_ready(&dir)?;
        print!("{}", std::fs::read_to_string(dir.join("agent.log"))?);

        let url = format!("http://{BACKEND}:{BACKEND_PORT}/");
        step(&format!("alice: curl {url}  (allowed by rule \"demo operators reach the web backend\")"));
        let out = as_user(ALICE, &["curl", "-sS", "--max-time", "5", &url])?;
        print!("{out}");
        if !out.contains("hello from the protected backend") {
            bail!(
                "alice should have reached the backend; agent log:\n{}",
                std::fs::read_to_string(dir.join("agent.log"))?
            );
        }

        step(&format!("mallory: curl {url}  (no rule allows mallory: refused)"));
        let out = as_user(MALLORY, &["curl", "-sS", "--max-time", "5", &url])?;
        print!("{out}");
        if out.contains("hello from the protected backend") {
            bail!("mallory must not reach the backend");
        }

        step("gatehouse status");
        let _ = gatehouse().arg("status").arg("--control-socket").arg(dir.join("control.sock")).status();

        step("gatehouse sessions");
        run(gatehouse().arg("sessions").arg("--db").arg(dir.join("state").join("audit.db")))?;
        println!("\nThe agent log is in {}/agent.log until clean-up, which follows now.", dir.display());
        Ok(())
    }

    fn wait_ready(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(agent) = self.agent.as_mut()
                && let Some(st) = agent.try_wait()?
            {
                bail!("the agent exited ({st}):\n{}", std::fs::read_to_string(dir.join("agent.log"))?);
            }
            let ok = gatehouse()
                .args(["status", "--json", "--control-socket"])
                .arg(dir.join("control.sock"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not come up in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn clean_stale_users(&self) {
        for u in [ALICE, MALLORY] {
            let _ = Command::new("userdel").arg(u).stderr(Stdio::null()).status();
        }
        let _ = Command::new("groupdel").arg(GROUP).stderr(Stdio::null()).status();
    }

    fn clean_up(&mut self) {
        step("clean-up");
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
            let _ = agent.wait();
        }
        let _ = gatehouse().args(["detach", "--force", "--pin-dir", PIN_DIR]).stdout(Stdio::null()).status();
        if let Some(mut b) = self.backend.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        for u in self.users.drain(..) {
            let _ = Command::new("userdel").arg(u).status();
        }
        if self.group {
            let _ = Command::new("groupdel").arg(GROUP).status();
        }
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        println!("agent stopped, programs detached, users and backend removed");
    }
}

fn as_user(user: &str, cmd: &[&str]) -> Result<String> {
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(cmd)
        .current_dir("/")
        .output()?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn wait_for(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: std::net::SocketAddr = addr.parse()?;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not come up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
