//! `cargo xtask bench mysql`: mysqlslap against one MariaDB, three ways in
//! the same run: direct, through Gatehouse (policy and audit on, the
//! client in the benchmark cgroup so the eBPF redirect takes it) and
//! through haproxy (tcp mode). Read-only workloads on a prepared table.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench::{Rig, free_port};
use crate::bench_pg::ok;

const PROTECTED: &str = "127.10.202.1";
const DIRECT: &str = "127.10.202.2";
const HAPROXY: &str = "127.10.202.4";
const USER: &str = "gh_bench";
const PASSWORD: &str = "bench-Secret-1";
const ROWS: u32 = 10_000;

/// MariaDB and haproxy, stopped (and their files removed) on drop.
struct Servers {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        // haproxy first, then MariaDB with SIGTERM (a clean shutdown).
        for c in self.children.iter_mut().rev() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Servers {
    fn admin(&self, sql: &str) -> Result<String> {
        ok(
            Command::new("/usr/bin/mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.dir.join("sock").display()))
                .args(["-u", "root", "-N", "-B", "-e", sql]),
            "mariadb (admin)",
        )
    }
}

fn start_servers(port: u16) -> Result<Servers> {
    let dir = std::env::temp_dir().join(format!("gh-bench-mariadb-{}", std::process::id()));
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    ok(Command::new("chown").arg("-R").arg("mysql:mysql").arg(&dir), "chown")?;
    let data = dir.join("data");
    ok(
        Command::new("/usr/bin/mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db", "--skip-name-resolve"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display())),
        "mariadb-install-db",
    )?;
    let mut s = Servers { dir: dir.clone(), children: Vec::new() };
    s.children.push(
        Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            // Both loopback addresses: the protected one (reached through
            // Gatehouse from the cgroup) and the direct one.
            .arg(format!("--bind-address={PROTECTED},{DIRECT}"))
            .arg(format!("--port={port}"))
            .args(["--user=mysql", "--skip-name-resolve", "--skip-log-bin", "--max-connections=200"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("mariadbd")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for host in [PROTECTED, DIRECT] {
        while std::net::TcpStream::connect((host, port)).is_err() || !dir.join("sock").exists() {
            if Instant::now() > deadline {
                bail!(
                    "mariadbd did not listen on {host}:{port}: {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.admin(&format!(
        "CREATE DATABASE bench;
         CREATE USER '{USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{PASSWORD}');
         GRANT ALL ON bench.* TO '{USER}'@'%';
         USE bench;
         CREATE TABLE bench.items (id int PRIMARY KEY, name varchar(40), email varchar(80));
         INSERT INTO bench.items SELECT seq, CONCAT('item ', seq), CONCAT('user', seq, '@example.com') FROM seq_1_to_{ROWS};"
    ))?;
    s.children.push(crate::bench::haproxy(
        &dir,
        &crate::bench::haproxy_tcp(&format!("{HAPROXY}:{port}"), &format!("{DIRECT}:{port}")),
    )?);
    crate::util::wait_port(&format!("{HAPROXY}:{port}"))?;
    Ok(s)
}

/// mysqlslap's "Average number of seconds to run all queries".
fn average_secs(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Average number of seconds to run all queries:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
}

/// The machine's load averages (the machine is shared: say how busy it was).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn mysql(queries: u32, iterations: u32) -> Result<()> {
    let port = free_port()?;
    let servers = start_servers(port)?;
    let mut rig = Rig::new("mysql")?;
    let secret = rig.dir().join("bench.secret");
    std::fs::write(&secret, format!("{PASSWORD}\n"))?;
    // Password files must be root's alone: the agent refuses others.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let backend = format!(
        "[[backend]]\nname = \"bench\"\nprotocol = \"mysql\"\naddress = \"{PROTECTED}:{port}\"\ntls = \"off\"\n\
         credentials = {{ user = \"{USER}\", password_file = \"{}\" }}\n\n",
        secret.display()
    );
    let rule = |mask: &str| {
        format!(
            "[[rule]]\nname = \"bench\"\nwho = {{ users = [\"root\"] }}\nbackend = \"bench\"\nstatements = [\"select\"]\n{mask}\n"
        )
    };
    rig.start_agent(&format!("{backend}{}", rule("")), free_port()?)?;
    let slap = |rig: &Rig, host: &str, in_cg: bool, args: &[String]| -> Result<f64> {
        let mut c = if in_cg { rig.in_cgroup("/usr/bin/mysqlslap") } else { Command::new("/usr/bin/mysqlslap") };
        c.args(["--no-defaults", "--protocol=TCP", "-h", host, "-P", &port.to_string(), "-u", USER])
            .arg(format!("--password={PASSWORD}"))
            .args(["--skip-ssl", "--create-schema=bench", "--no-drop"])
            .args(args);
        let out = ok(&mut c, &format!("mysqlslap via {host}"))?;
        // mysqlslap exits 0 when its queries fail: a run without its summary failed.
        average_secs(&out).with_context(|| format!("mysqlslap via {host} printed no result: {out}"))
    };
    let n = queries.to_string();
    let it = iterations.to_string();
    let point = "--query=SELECT name, email FROM items WHERE id = 4242".to_owned();
    let range = "--query=SELECT id, name, email FROM items WHERE id BETWEEN 100 AND 199".to_owned();
    let reconnect = (queries / 10).max(100).to_string();
    let workloads: Vec<(&str, u32, Vec<String>)> = vec![
        (
            "point_select",
            queries,
            vec![
                "--concurrency=8".into(),
                format!("--iterations={it}"),
                format!("--number-of-queries={n}"),
                point.clone(),
            ],
        ),
        (
            "range_100_rows",
            queries / 4,
            vec![
                "--concurrency=8".into(),
                format!("--iterations={it}"),
                format!("--number-of-queries={}", queries / 4),
                range,
            ],
        ),
        (
            // A new connection for every query (--detach=1): handshake and login cost.
            "new_connections",
            (queries / 10).max(100),
            vec![
                "--concurrency=8".into(),
                format!("--iterations={it}"),
                format!("--number-of-queries={reconnect}"),
                "--detach=1".into(),
                point.clone(),
            ],
        ),
    ];
    let systems: [(&str, &str, bool); 3] =
        [("direct", DIRECT, false), ("gatehouse", PROTECTED, true), ("haproxy", HAPROXY, false)];
    eprintln!("load before the runs: {}", load());
    let mut table: Vec<(String, String, f64)> = Vec::new();
    for (name, total, args) in &workloads {
        for (sys, host, cg) in systems {
            eprintln!("{name:<16} {sys:<10} running …");
            let secs = slap(&rig, host, cg, args)?;
            let qps = f64::from(*total) / secs;
            eprintln!("{name:<16} {sys:<10} {secs:>8.3} s  {qps:>10.0} queries/s");
            table.push(((*name).to_owned(), sys.to_owned(), qps));
        }
    }
    // The masked rule's cost: the same point select, two masked string columns.
    rig.stop_agent();
    let masked_policy = format!(
        "{backend}[[mask]]\nname = \"bench\"\ncolumns = [{{ column = \"items.email\", style = \"partial\" }}, {{ column = \"items.name\", style = \"redact\" }}]\n\n{}",
        rule("mask = \"bench\"")
    );
    rig.start_agent(&masked_policy, free_port()?)?;
    let masked_secs = slap(&rig, PROTECTED, true, &workloads[0].2)?;
    let masked = f64::from(queries) / masked_secs;
    eprintln!("{:<16} {:<10} {masked_secs:>8.3} s  {masked:>10.0} queries/s", "point_select", "masked");
    // The server really was reached through Gatehouse: it counted the connections.
    let conns = servers.admin("SHOW GLOBAL STATUS LIKE 'Connections'")?;
    let get = |w: &str, s: &str| table.iter().find(|(a, b, _)| a == w && b == s).map_or(0.0, |x| x.2);
    println!();
    println!("{:<16} {:<10} {:>12}", "WORKLOAD", "SYSTEM", "QUERIES/S");
    for (w, s, q) in &table {
        println!("{w:<16} {s:<10} {q:>12.0}");
    }
    println!("{:<16} {:<10} {masked:>12.0}", "point_select", "masked");
    println!("server connections: {}", conns.split_whitespace().last().unwrap_or("?"));
    println!("load after the runs: {}", load());
    println!();
    for (w, _, _) in &workloads {
        let d = get(w, "direct");
        for s in ["gatehouse", "haproxy"] {
            println!("ratio {w} {s}/direct = {:.2}", get(w, s) / d);
        }
        println!("ratio {w} gatehouse/haproxy = {:.2}", get(w, "gatehouse") / get(w, "haproxy"));
    }
    println!("ratio point_select_masked gatehouse_masked/direct = {:.2}", masked / get("point_select", "direct"));
    println!("ratio point_select_masked gatehouse_masked/gatehouse = {:.2}", masked / get("point_select", "gatehouse"));
    drop(rig);
    drop(servers);
    Ok(())
}
