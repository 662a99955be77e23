//! `cargo xtask demo`: the story of Gatehouse in one command. A real
//! PostgreSQL with a small shop database, four users, plain `psql` with no
//! client change: an analyst's SELECT works and DELETE is refused naming the
//! rule; support sees masked cards and e-mails; a DBA's DROP is held until a
//! lead approves it from a second terminal; then sessions, statements, a
//! replay, and `verify` passing and then catching an edit of the store.
//! Attaches to the cgroup v2 root (the whole host), like the real agent;
//! everything it starts or creates is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{built, is_root, privileged, run, workspace_root};

const PG_HOST: &str = "127.77.0.1";
const PG_PORT: &str = "5432";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const APP_PASSWORD: &str = "demo-App-Secret-1";
const PIN_DIR: &str = "/sys/fs/bpf/gatehouse-demo";
/// (user, group): the analyst, support, the DBA and the lead who approves.
const PEOPLE: [(&str, &str); 4] = [
    ("gh-demo-ana", "gh-demo-analyst"),
    ("gh-demo-sam", "gh-demo-support"),
    ("gh-demo-dan", "gh-demo-dba"),
    ("gh-demo-lea", "gh-demo-leads"),
];

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
    pg_data: Option<PathBuf>,
    agent: Option<Child>,
    users: Vec<&'static str>,
    groups: Vec<&'static str>,
}

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn gatehouse() -> Command {
    Command::new(built("debug", "gatehouse"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
    c
}

/// `psql` as `user`, exactly as they would type it: the database's real address.
fn psql(user: &str, sql: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--", "psql"])
        .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "whoever", "-d", "shop", "-X", "-c", sql])
        .env("HOME", "/")
        .current_dir("/");
    c
}

fn show(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    print!("{}", text(&out));
    Ok(out)
}

fn policy(dir: &Path) -> String {
    let secret = dir.join("shop.secret");
    let [(_, analyst), (_, support), (_, dba), (_, leads)] = PEOPLE;
    format!(
        r#"[[backend]]
name = "shop"
protocol = "postgres"
address = "{PG_HOST}:{PG_PORT}"
tls = "off"
credentials = {{ user = "gh_app", password_file = "{secret}" }}

[[mask]]
name = "pii"
columns = [{{ column = "email", style = "partial" }}, {{ column = "card_number", style = "partial" }}]

[[approvers]]
name = "leads"
who = {{ groups = ["{leads}"] }}

[[rule]]
name = "analysts read the shop"
who = {{ groups = ["{analyst}"] }}
backend = "shop"
statements = ["select"]

[[rule]]
name = "support reads customers, masked"
who = {{ groups = ["{support}"] }}
backend = "shop"
statements = ["select"]
mask = "pii"

[[rule]]
name = "dba drops need a lead"
who = {{ groups = ["{dba}"] }}
backend = "shop"
statements = ["*"]
approval = {{ for = ["drop", "truncate"], by = "leads", timeout = "5m" }}
"#,
        secret = secret.display()
    )
}

impl World {
    fn show(&mut self) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        self.dir = Some(dir.clone());
        set_mode(&dir, 0o755)?;
        let db = dir.join("state").join("audit.db");
        let ctl = dir.join("control.sock");

        step("people: ana (analyst), sam (support), dan (dba), lea (leads: approves)");
        self.clean_stale();
        for (user, group) in PEOPLE {
            run(Command::new("groupadd").arg(group))?;
            self.groups.push(group);
            run(Command::new("useradd")
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", "--groups", group])
                .arg(user))?;
            self.users.push(user);
        }

        step(&format!("a real PostgreSQL 15 on {PG_HOST}:{PG_PORT} with a shop database (customers, orders)"));
        self.start_postgres(&dir)?;

        step("the agent: gatehouse run (attached to the whole host), policy:");
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, policy(&dir))?;
        let secret = dir.join("shop.secret");
        std::fs::write(&secret, format!("{APP_PASSWORD}\n"))?;
        set_mode(&secret, 0o600)?;
        for l in policy(&dir).lines().filter(|l| l.starts_with("name =") || l.starts_with("approval")) {
            println!("  {l}");
        }
        let log = std::fs::File::create(dir.join("agent.log"))?;
        self.agent = Some(
            gatehouse()
                .arg("run")
                .arg("--config")
                .arg(&policy_path)
                .args(["--pin-dir", PIN_DIR])
                .arg("--audit-db")
                .arg(&db)
                .arg("--control-socket")
                .arg(&ctl)
                .stderr(log.try_clone()?)
                .stdout(log)
                .spawn()
                .context("starting the agent")?,
        );
        self.wait_ready(&dir)?;

        step("ana (analyst): psql -h 127.77.0.1 -c 'SELECT …'  — allowed");
        let out = show(&mut psql(PEOPLE[0].0, "SELECT id, customer_id, total FROM orders ORDER BY id LIMIT 3"))?;
        if !out.status.success() {
            bail!("ana's SELECT should work; agent log:\n{}", agent_log(&dir));
        }
        step("ana (analyst): DELETE FROM orders  — refused, naming the rule");
        let out = show(&mut psql(PEOPLE[0].0, "DELETE FROM orders WHERE id = 1"))?;
        if !text(&out).contains("Gatehouse refused") {
            bail!("ana's DELETE must be refused");
        }

        step("sam (support): SELECT name, email, card_number FROM customers  — masked");
        let out = show(&mut psql(PEOPLE[1].0, "SELECT name, email, card_number FROM customers"))?;
        if !text(&out).contains("(3 rows)")
            || text(&out).contains("alice@example.com")
            || text(&out).contains("4111111111111111")
        {
            bail!("support must see the rows, without e-mails or card numbers in clear");
        }

        step("dan (dba): DROP TABLE scratch  — held for a lead's approval (dan's psql waits)");
        let held = psql(PEOPLE[2].0, "DROP TABLE scratch").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let id = self.wait_pending(&ctl)?;
        println!("\x1b[2m(second terminal, lea:)\x1b[0m gatehouse requests");
        show(&mut as_user(PEOPLE[3].0, gatehouse().arg("requests").arg("--control-socket").arg(&ctl)))?;
        println!("\x1b[2m(second terminal, lea:)\x1b[0m gatehouse approve {id} --reason 'planned cleanup'");
        show(&mut as_user(
            PEOPLE[3].0,
            gatehouse()
                .args(["approve", &id.to_string(), "--reason", "planned cleanup"])
                .arg("--control-socket")
                .arg(&ctl),
        ))?;
        let out = held.wait_with_output()?;
        println!("\x1b[2m(dan's psql:)\x1b[0m");
        print!("{}", text(&out));
        if !text(&out).contains("DROP TABLE") {
            bail!("the approved DROP should have run; agent log:\n{}", agent_log(&dir));
        }

        // dan's session end is recorded just after his psql exits.
        std::thread::sleep(Duration::from_millis(500));
        step("gatehouse sessions  (the SESSION column is what replay and statements --session take)");
        let out = show(gatehouse().arg("sessions").arg("--db").arg(&db))?;
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let ana_session = listing
            .lines()
            .find(|l| l.contains(PEOPLE[0].0) && l.contains("allow"))
            .and_then(|l| l.split_whitespace().next())
            .context("ana's session in the listing")?
            .to_owned();

        step(&format!("gatehouse statements --session {ana_session}"));
        show(gatehouse().args(["statements", "--session", &ana_session]).arg("--db").arg(&db))?;

        step(&format!("gatehouse replay {ana_session} --no-wait"));
        show(gatehouse().args(["replay", &ana_session, "--no-wait"]).arg("--db").arg(&db))?;

        let status: serde_json::Value = serde_json::from_slice(
            &gatehouse().args(["status", "--json", "--control-socket"]).arg(&ctl).output()?.stdout,
        )?;
        let key = status["public_key"].as_str().context("the host key in status")?.to_owned();
        self.stop_agent();
        step("gatehouse verify --pubkey <host key>  — the chain holds");
        let out = show(gatehouse().arg("verify").arg(&db).args(["--pubkey", &key]))?;
        if !out.status.success() {
            bail!("verify should pass on an untouched store");
        }

        step("someone edits the store: the refused DELETE becomes a SELECT; verify again");
        let edit = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                    n=c.execute(\"UPDATE events SET body=CAST(replace(CAST(body AS TEXT),'DELETE FROM orders','SELECT * FROM orders') AS BLOB) WHERE kind='statement' AND CAST(body AS TEXT) LIKE '%DELETE FROM orders%'\").rowcount; \
                    c.commit(); print(f'{n} record(s) edited')";
        show(Command::new("/usr/bin/python3").args(["-c", edit]).arg(&db))?;
        let out = show(gatehouse().arg("verify").arg(&db).args(["--pubkey", &key]))?;
        if out.status.success() {
            bail!("verify must catch the edit");
        }
        println!("\nThe agent log is in {}/agent.log until clean-up, which follows now.", dir.display());
        Ok(())
    }

    fn start_postgres(&mut self, dir: &Path) -> Result<()> {
        let pg = dir.join("pg");
        std::fs::create_dir_all(&pg)?;
        run(Command::new("chown").arg("postgres:postgres").arg(&pg))?;
        // Local logins are trusted on its Unix socket: the server's user's alone, so the
        // demo's users reach the server only through Gatehouse.
        set_mode(&pg, 0o700)?;
        let data = pg.join("data");
        let out = as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--username=postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", text(&out));
        }
        let conf = format!(
            "listen_addresses = '{PG_HOST}'\nport = {PG_PORT}\nunix_socket_directories = '{}'\nfsync = off\n",
            pg.display()
        );
        std::fs::write(data.join("postgresql.auto.conf"), conf)?;
        let out = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.join("server.log"))
            .args(["-w", "-t", "30", "start"])
            .output()?;
        self.pg_data = Some(data);
        if !out.status.success() {
            bail!("pg_ctl start: {}", text(&out));
        }
        let sql = format!(
            "CREATE ROLE gh_app LOGIN PASSWORD '{APP_PASSWORD}';
             CREATE DATABASE shop OWNER gh_app;
             \\c shop
             SET ROLE gh_app;
             CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text);
             INSERT INTO customers VALUES
               (1, 'Alice Martin', 'alice@example.com', '4111111111111111'),
               (2, 'Bob Chen', 'bob.chen@example.org', '5500005555555559'),
               (3, 'Chloé Durand', 'chloe@example.net', '340000000000009');
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric);
             INSERT INTO orders SELECT g, 1 + g % 3, round((g * 7.31)::numeric, 2) FROM generate_series(1, 20) g;
             CREATE TABLE scratch (id int);"
        );
        let out = as_postgres("/usr/bin/psql")
            .arg("-h")
            .arg(&pg)
            .args(["-p", PG_PORT, "-U", "postgres", "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-c")
            .arg("SELECT 1")
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", text(&out));
        }
        let mut child = as_postgres("/usr/bin/psql")
            .arg("-h")
            .arg(&pg)
            .args(["-p", PG_PORT, "-U", "postgres", "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        {
            use std::io::Write;
            child.stdin.take().context("psql stdin")?.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("loading the sample data: {}", text(&out));
        }
        println!("customers: 3 rows (names, e-mails, card numbers); orders: 20 rows; scratch: an empty table");
        Ok(())
    }

    fn wait_ready(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(agent) = self.agent.as_mut()
                && let Some(st) = agent.try_wait()?
            {
                bail!("the agent exited ({st}):\n{}", agent_log(dir));
            }
            let ok = gatehouse()
                .args(["status", "--json", "--control-socket"])
                .arg(dir.join("control.sock"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                println!("agent ready: programs attached to the cgroup v2 root, proxy on 127.0.0.1:996");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not come up in 30 s:\n{}", agent_log(dir));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The id of the pending request lea sees.
    fn wait_pending(&self, ctl: &Path) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = as_user(PEOPLE[3].0, gatehouse().args(["requests", "--json"]).arg("--control-socket").arg(ctl))
                .output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if v["state"]["state"] == "pending"
                    && let Some(id) = v["id"].as_u64()
                {
                    return Ok(id);
                }
            }
            if Instant::now() > deadline {
                bail!("no pending request appeared: {}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
            let _ = agent.wait();
        }
    }

    fn clean_stale(&self) {
        for (u, g) in PEOPLE {
            let _ = Command::new("userdel").arg(u).stderr(Stdio::null()).status();
            let _ = Command::new("groupdel").arg(g).stderr(Stdio::null()).status();
        }
    }

    fn clean_up(&mut self) {
        step("clean-up");
        self.stop_agent();
        let _ = gatehouse().args(["detach", "--force", "--pin-dir", PIN_DIR]).stdout(Stdio::null()).status();
        if let Some(data) = self.pg_data.take() {
            let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .status();
        }
        for u in self.users.drain(..) {
            let _ = Command::new("userdel").arg(u).status();
        }
        for g in self.groups.drain(..) {
            let _ = Command::new("groupdel").arg(g).stderr(Stdio::null()).status();
        }
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        println!("agent stopped, programs detached, PostgreSQL stopped, users and files removed");
    }
}

fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

/// `cmd` run as `user` (its program and arguments kept).
fn as_user(user: &str, cmd: &mut Command) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .current_dir("/");
    c
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
