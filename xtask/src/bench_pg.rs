//! `cargo xtask bench pg`: pgbench against one PostgreSQL 15, four ways in
//! the same run: direct, through Gatehouse (policy and audit on), through
//! pgbouncer (session pooling) and through haproxy (tcp mode).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bench::{Rig, free_port, median};

const BIN: &str = "/usr/lib/postgresql/15/bin";
pub(crate) const PASSWORD: &str = "bench-Secret-1";
pub(crate) const PROTECTED: &str = "127.10.201.1";
pub(crate) const DIRECT: &str = "127.10.201.2";
const BOUNCER: &str = "127.10.201.3";
const HAPROXY: &str = "127.10.201.4";

pub(crate) fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
    c
}

pub(crate) fn ok(c: &mut Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| what.to_owned())?;
    if !out.status.success() {
        bail!("{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything started for the run; stopped on drop.
pub(crate) struct Servers {
    pub(crate) dir: PathBuf,
    children: Vec<Child>,
}

impl Servers {
    /// pgbouncer's pid (started first), for its CPU time.
    fn pgbouncer_pid(&self) -> Option<u32> {
        self.children.first().map(Child::id)
    }

    /// haproxy's pid (started second).
    fn haproxy_pid(&self) -> Option<u32> {
        self.children.get(1).map(Child::id)
    }
}

/// CPU seconds per thread name (user + system) a process has used so far.
pub(crate) fn thread_cpu(pid: Option<u32>) -> std::collections::BTreeMap<String, f64> {
    let mut by = std::collections::BTreeMap::new();
    let Some(pid) = pid else { return by };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map_or("?", |(_, n)| n).to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum();
        *by.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    by
}

/// Where a run's CPU went, per thread name, in µs per transaction.
pub(crate) fn thread_split(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    txns: f64,
) -> String {
    after
        .iter()
        .map(|(k, v)| (k, (v - before.get(k).copied().unwrap_or(0.0)) * 1e6 / txns.max(1.0)))
        .filter(|(_, us)| *us >= 0.5)
        .map(|(k, us)| format!("{k} {us:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub(crate) fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: f64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = as_postgres(&format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn start_servers(port: u16, scale: Option<u32>) -> Result<Servers> {
    let dir = std::env::temp_dir().join(format!("gh-bench-pgdata-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    ok(Command::new("chown").arg("postgres:postgres").arg(&dir), "chown")?;
    let data = dir.join("data");
    ok(
        as_postgres(&format!("{BIN}/initdb")).arg("-D").arg(&data).args([
            "--username=postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "--locale=C",
        ]),
        "initdb",
    )?;
    let conf = format!(
        "listen_addresses = '{PROTECTED},{DIRECT}'\nport = {port}\nunix_socket_directories = '{}'\n\
         max_connections = 200\nshared_buffers = 256MB\nsynchronous_commit = off\nfsync = off\n",
        dir.display()
    );
    std::fs::write(data.join("postgresql.auto.conf"), conf)?;
    let mut s = Servers { dir: dir.clone(), children: vec![] };
    ok(
        as_postgres(&format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("pg.log"))
            .args(["-w", "start"]),
        "pg_ctl start",
    )?;
    let psql = |sql: &str| {
        ok(
            as_postgres("/usr/bin/psql").arg("-h").arg(&dir).args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-X",
                "-q",
                "-c",
                sql,
            ]),
            "psql",
        )
    };
    psql(&format!("CREATE ROLE bench LOGIN SUPERUSER PASSWORD '{PASSWORD}'"))?;
    psql("CREATE DATABASE bench OWNER bench")?;
    let Some(scale) = scale else { return Ok(s) };
    eprintln!("pgbench -i -s {scale}");
    ok(
        as_postgres(&format!("{BIN}/pgbench")).args(["-i", "-q", "-s", &scale.to_string(), "-h"]).arg(&dir).args([
            "-p",
            &port.to_string(),
            "-U",
            "bench",
            "bench",
        ]),
        "pgbench -i",
    )?;

    // pgbouncer, session pooling, in front of the direct address.
    std::fs::write(dir.join("userlist.txt"), format!("\"bench\" \"{PASSWORD}\"\n"))?;
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\nbench = host={DIRECT} port={port} dbname=bench\n[pgbouncer]\nlisten_addr = {BOUNCER}\nlisten_port = {port}\n\
             auth_type = scram-sha-256\nauth_file = {}/userlist.txt\npool_mode = session\nmax_client_conn = 500\n\
             default_pool_size = 100\nunix_socket_dir =\nlogfile = {}/pgbouncer.log\n",
            dir.display(),
            dir.display()
        ),
    )?;
    ok(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir), "chown")?;
    s.children.push(
        as_postgres("/usr/sbin/pgbouncer")
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // haproxy, tcp mode.
    s.children.push(crate::bench::haproxy(
        &dir,
        &crate::bench::haproxy_tcp(&format!("{HAPROXY}:{port}"), &format!("{DIRECT}:{port}")),
    )?);
    crate::util::wait_port(&format!("{BOUNCER}:{port}"))?;
    crate::util::wait_port(&format!("{HAPROXY}:{port}"))?;
    Ok(s)
}

/// One pgbench result.
#[derive(Debug, Default, Clone)]
struct Run {
    tps: f64,
    latency_ms: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU the proxy in between used per transaction (µs; 0 for direct).
    cpu_us: f64,
    transactions: f64,
}

fn parse_pgbench(out: &str) -> Run {
    let num = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.trim().trim_start_matches('=').split_whitespace().next().map(str::to_owned))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Run {
        tps: num("tps"),
        latency_ms: num("latency average"),
        transactions: num("number of transactions actually processed:"),
        ..Run::default()
    }
}

/// The machine's load averages (the machine is shared: say how busy it was).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64) * p) as usize;
    v.get(i.min(v.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

/// The agent's policy for the benchmarks: one PostgreSQL backend on
/// [`PROTECTED`], its password in a file written to `dir`, and a rule that
/// lets root run every statement.
fn bench_policy(dir: &Path, port: u16) -> Result<String> {
    let secret = dir.join("bench.secret");
    std::fs::write(&secret, format!("{PASSWORD}\n"))?;
    // Password files must be root's alone: the agent refuses others.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(format!(
        "[[backend]]\nname = \"bench\"\nprotocol = \"postgres\"\naddress = \"{PROTECTED}:{port}\"\ntls = \"off\"\n\
         credentials = {{ user = \"bench\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"bench\"\nwho = {{ users = [\"root\"] }}\nbackend = \"bench\"\nstatements = [\"*\", \"function_call\"]\n",
        secret.display()
    ))
}

/// PostgreSQL with pgbench's tables at `scale`, pgbouncer and haproxy in
/// front of it, and an agent (rig `name`) under the bench policy: the port
/// they all listen on, and the policy.
fn start_with_agent(scale: u32, name: &str) -> Result<(u16, Servers, Rig, String)> {
    let port = free_port()?;
    let servers = start_servers(port, Some(scale))?;
    let mut rig = Rig::new(name)?;
    let policy = bench_policy(rig.dir(), port)?;
    rig.start_agent(&policy, free_port()?)?;
    Ok((port, servers, rig, policy))
}

pub fn pg(secs: u64, scale: u32, latency_only: bool, select_only: Option<u32>, compare: Option<&Path>) -> Result<()> {
    if let Some(bin) = compare.filter(|b| !b.is_file()) {
        bail!("--compare {}: no such agent binary", bin.display());
    }
    if compare.is_some() && select_only.is_none() && !latency_only {
        bail!("--compare needs --select-only, --latency-only or --instructions");
    }
    let (port, servers, mut rig, policy) = start_with_agent(scale, "pg")?;
    let systems: [(&str, &str, bool); 4] = [
        ("direct", DIRECT, false),
        ("gatehouse", PROTECTED, true),
        ("pgbouncer", BOUNCER, false),
        ("haproxy", HAPROXY, false),
    ];
    let pgbench = |rig: &Rig, host: &str, in_cg: bool, args: &[&str], log_dir: Option<&Path>| -> Result<String> {
        let mut c =
            if in_cg { rig.in_cgroup(&format!("{BIN}/pgbench")) } else { Command::new(format!("{BIN}/pgbench")) };
        c.env("PGPASSWORD", PASSWORD).args(["-h", host, "-p", &port.to_string(), "-U", "bench", "-n"]).args(args);
        if let Some(d) = log_dir {
            c.current_dir(d).arg("-l");
        }
        c.arg("bench");
        ok(&mut c, &format!("pgbench {args:?} via {host}"))
    };
    let t = secs.to_string();
    let workloads: [(&str, Vec<&str>); 3] = [
        ("select_only", vec!["-S", "-c", "8", "-j", "2", "-T", &t]),
        ("tpcb_write_mix", vec!["-c", "8", "-j", "2", "-T", &t]),
        ("new_connections", vec!["-S", "-C", "-c", "8", "-j", "2", "-T", &t]),
    ];
    let mut table: Vec<(String, String, Run)> = Vec::new();
    // The process in between, whose CPU per transaction is what it costs the machine.
    let proxy_pid = |rig: &Rig, sys: &str| match sys {
        "gatehouse" => rig.agent_pid(),
        "pgbouncer" => servers.pgbouncer_pid(),
        "haproxy" => servers.haproxy_pid(),
        _ => None,
    };
    eprintln!("load before the runs: {}", load());
    // A second agent to compare (--select-only, --latency-only), beside the first.
    let rig_b = match compare {
        Some(bin) => {
            let mut r = Rig::new("pg-b")?;
            r.start_agent_bin(&policy, free_port()?, bin)?;
            eprintln!("comparing with {} (gatehouse_b)", bin.display());
            Some(r)
        }
        None => None,
    };
    if let Some(rounds) = select_only {
        // A diagnostic for the data path: select-only, three ways in turn
        // (four with a second agent to compare, alternating which goes first).
        let args = &workloads[0].1;
        let mut cpu_pairs: Vec<(f64, f64)> = Vec::new();
        for round in 1..=rounds {
            let mut order: Vec<(&str, &str, Option<&Rig>)> =
                vec![("direct", DIRECT, None), ("gatehouse", PROTECTED, Some(&rig))];
            if let Some(b) = &rig_b {
                order.push(("gatehouse_b", PROTECTED, Some(b)));
                if round % 2 == 0 {
                    order.swap(1, 2);
                }
            }
            order.push(("pgbouncer", BOUNCER, None));
            let mut tps = std::collections::BTreeMap::new();
            let mut cpus = std::collections::BTreeMap::new();
            for (sys, host, agent) in order {
                let pid = agent.map_or_else(|| proxy_pid(&rig, sys), Rig::agent_pid);
                let (cpu0, threads0) = (cpu_secs(pid), thread_cpu(pid));
                let r = parse_pgbench(&pgbench(agent.unwrap_or(&rig), host, agent.is_some(), args, None)?);
                let cpu = (cpu_secs(pid) - cpu0) * 1e6 / r.transactions.max(1.0);
                let split = thread_split(&threads0, &thread_cpu(pid), r.transactions);
                eprintln!("round {round}: {sys:<11} {:>8.0} tps {cpu:>6.1} µs cpu/txn  {split}", r.tps);
                tps.insert(sys, r.tps);
                cpus.insert(sys, cpu);
            }
            let t = |k: &str| tps.get(k).copied().unwrap_or(0.0);
            println!("ratio select_only gatehouse/direct = {:.2}", t("gatehouse") / t("direct"));
            println!("ratio select_only gatehouse/pgbouncer = {:.2}", t("gatehouse") / t("pgbouncer"));
            if rig_b.is_some() {
                println!("ratio select_only gatehouse_b/direct = {:.2}", t("gatehouse_b") / t("direct"));
                let c = |k: &str| cpus.get(k).copied().unwrap_or(0.0);
                cpu_pairs.push((c("gatehouse"), c("gatehouse_b")));
            }
        }
        if !cpu_pairs.is_empty() {
            let a = median(cpu_pairs.iter().map(|p| p.0).collect());
            let b = median(cpu_pairs.iter().map(|p| p.1).collect());
            let ratios: Vec<f64> = cpu_pairs.iter().map(|(a, b)| b / a.max(1e-9)).collect();
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "cpu_per_txn       gatehouse {a:.1} µs   gatehouse_b {b:.1} µs (medians of {} rounds)",
                cpu_pairs.len()
            );
            println!("cpu_per_txn gatehouse_b/gatehouse by round: {}", shown.join(" "));
            // Each round's ratio sees both builds under that round's load: their median, not the medians' ratio.
            println!("ratio select_only_cpu gatehouse_b/gatehouse = {:.2}", median(ratios));
        }
        return Ok(());
    }
    for (name, args) in workloads.iter().filter(|_| !latency_only) {
        for (sys, host, cg) in systems {
            eprintln!("{name:<16} {sys:<10} running {t} s …");
            let cpu0 = cpu_secs(proxy_pid(&rig, sys));
            let threads0 = thread_cpu(proxy_pid(&rig, sys));
            let out = pgbench(&rig, host, cg, args, None)?;
            let mut r = parse_pgbench(&out);
            r.cpu_us = (cpu_secs(proxy_pid(&rig, sys)) - cpu0) * 1e6 / r.transactions.max(1.0);
            if sys == "gatehouse" {
                let split = thread_split(&threads0, &thread_cpu(proxy_pid(&rig, sys)), r.transactions);
                eprintln!("{name:<16} {sys:<10} cpu µs/txn by thread: {split}");
            }
            eprintln!(
                "{name:<16} {sys:<10} {:>10.0} tps  {:>7.3} ms avg  {:>6.1} µs cpu/txn",
                r.tps, r.latency_ms, r.cpu_us
            );
            table.push(((*name).to_owned(), sys.to_owned(), r));
        }
    }
    // One client, per-transaction latencies from pgbench's log.
    let one_client = |rig: &Rig, sys: &str, host: &str, cg: bool| -> Result<Run> {
        // pgbench's log files of this run only (a round before left its own).
        let d = rig.dir().join(format!("lat-{sys}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        let short = (secs / 2).max(3).to_string();
        let out = pgbench(rig, host, cg, &["-S", "-c", "1", "-T", &short], Some(&d))?;
        let mut lat = Vec::new();
        for e in std::fs::read_dir(&d)? {
            let text = std::fs::read_to_string(e?.path())?;
            lat.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()));
        }
        let mut r = parse_pgbench(&out);
        r.p50_us = percentile(lat.clone(), 0.5);
        r.p99_us = percentile(lat, 0.99);
        Ok(r)
    };
    if latency_only {
        if let Some(b) = &rig_b {
            return latency_pairs(&rig, b, &one_client);
        }
        // A diagnostic for the tail: direct and Gatehouse in turn, three rounds.
        for round in 1..=3 {
            let d = one_client(&rig, "direct", DIRECT, false)?;
            let g = one_client(&rig, "gatehouse", PROTECTED, true)?;
            eprintln!(
                "round {round}: direct p50 {:.0} p99 {:.0} µs, gatehouse p50 {:.0} p99 {:.0} µs",
                d.p50_us, d.p99_us, g.p50_us, g.p99_us
            );
            println!("added_latency_p50 gatehouse = {:.0} µs", g.p50_us - d.p50_us);
            println!("added_latency_p99 gatehouse = {:.0} µs", g.p99_us - d.p99_us);
        }
        return Ok(());
    }
    for (sys, host, cg) in systems {
        let r = one_client(&rig, sys, host, cg)?;
        eprintln!(
            "{:<16} {sys:<10} {:>10.0} tps  p50 {:>6.0} µs  p99 {:>6.0} µs",
            "one_client", r.tps, r.p50_us, r.p99_us
        );
        table.push(("one_client".into(), sys.to_owned(), r));
    }
    println!();
    println!(
        "{:<16} {:<10} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "WORKLOAD", "SYSTEM", "TPS", "AVG_MS", "P50_US", "P99_US", "CPU_US/TXN"
    );
    for (w, s, r) in &table {
        println!(
            "{w:<16} {s:<10} {:>10.0} {:>10.3} {:>9.0} {:>9.0} {:>12.1}",
            r.tps, r.latency_ms, r.p50_us, r.p99_us, r.cpu_us
        );
    }
    let get = |w: &str, s: &str| {
        table.iter().find(|(a, b, _)| a == w && b == s).map(|(_, _, r)| r.clone()).unwrap_or_default()
    };
    // Recording on (the default: strict, streams recorded) vs off (best-effort,
    // no stream chunks): what the audit trail costs.
    rig.stop_agent();
    rig.start_agent(&format!("[agent]\naudit_mode = \"best-effort\"\nrecord_max_bytes = 0\n\n{policy}"), free_port()?)?;
    eprintln!("select_only      gatehouse, recording off, running {t} s …");
    let cpu0 = cpu_secs(rig.agent_pid());
    let mut off = parse_pgbench(&pgbench(&rig, PROTECTED, true, &workloads[0].1, None)?);
    off.cpu_us = (cpu_secs(rig.agent_pid()) - cpu0) * 1e6 / off.transactions.max(1.0);
    eprintln!("select_only      gatehouse, recording off {:>10.0} tps", off.tps);
    // Where one client's tail comes from: the same latencies without the recorder.
    let off_one = one_client(&rig, "gatehouse-off", PROTECTED, true)?;
    eprintln!("one_client       gatehouse, recording off p50 {:.0} µs  p99 {:.0} µs", off_one.p50_us, off_one.p99_us);
    // Masking on (a masked column in every result row, the detectors on the
    // rest), recording strict: the masked rule's cost.
    rig.stop_agent();
    let masked_policy = format!(
        "[[mask]]\nname = \"bench\"\ncolumns = [{{ column = \"abalance\", style = \"partial\" }}]\n\
         detectors = {{ email = \"partial\", card = \"partial\" }}\n\n{}mask = \"bench\"\n",
        policy.replace("statements = [\"*\", \"function_call\"]", "statements = [\"select\"]")
    );
    rig.start_agent(&masked_policy, free_port()?)?;
    eprintln!("select_only      gatehouse, masked, running {t} s …");
    let cpu0 = cpu_secs(rig.agent_pid());
    let mut masked = parse_pgbench(&pgbench(&rig, PROTECTED, true, &workloads[0].1, None)?);
    masked.cpu_us = (cpu_secs(rig.agent_pid()) - cpu0) * 1e6 / masked.transactions.max(1.0);
    eprintln!("select_only      gatehouse, masked {:>10.0} tps", masked.tps);
    println!("select_only      gatehouse, recording off {:>10.0} tps {:>8.1} µs cpu/txn", off.tps, off.cpu_us);
    println!("select_only      gatehouse, masked        {:>10.0} tps {:>8.1} µs cpu/txn", masked.tps, masked.cpu_us);
    println!();
    println!("load after the runs: {}", load());
    for w in ["select_only", "tpcb_write_mix", "new_connections", "one_client"] {
        let d = get(w, "direct");
        for s in ["gatehouse", "pgbouncer", "haproxy"] {
            println!("ratio {w} {s}/direct = {:.2}", get(w, s).tps / d.tps);
        }
        for s in ["pgbouncer", "haproxy"] {
            println!("ratio {w} gatehouse/{s} = {:.2}", get(w, "gatehouse").tps / get(w, s).tps);
        }
    }
    let on = get("select_only", "gatehouse");
    println!("ratio select_only gatehouse_recording_on/gatehouse_recording_off = {:.2}", on.tps / off.tps);
    println!("ratio select_only_masked gatehouse_masked/direct = {:.2}", masked.tps / get("select_only", "direct").tps);
    println!("ratio select_only_masked gatehouse_masked/gatehouse = {:.2}", masked.tps / on.tps);
    let d = get("one_client", "direct");
    for s in ["gatehouse", "pgbouncer", "haproxy"] {
        let r = get("one_client", s);
        println!("added_latency_p50 {s} = {:.0} µs", r.p50_us - d.p50_us);
        println!("added_latency_p99 {s} = {:.0} µs", r.p99_us - d.p99_us);
    }
    // Diagnostic, not a goal line: the relay alone (best-effort, nothing recorded).
    println!("added_latency_p50 gatehouse_recording_off = {:.0} µs", off_one.p50_us - d.p50_us);
    println!("added_latency_p99 gatehouse_recording_off = {:.0} µs", off_one.p99_us - d.p99_us);
    drop(rig);
    drop(servers);
    Ok(())
}

/// The CPU the database gets in `--bastion` runs, and the one pgbench and
/// the system under test share.
const DB_CPU: &str = "0";
const BASTION_CPU: &str = "1";

/// Pins every thread of `pid` and of its descendants to `cpu` (threads and
/// processes they start later inherit it).
fn pin_tree(pid: u32, cpu: &str) -> Result<()> {
    ok(Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]), &format!("taskset {pid}"))?;
    let children = Command::new("pgrep").args(["-P", &pid.to_string()]).output()?;
    for child in String::from_utf8_lossy(&children.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
        // A child may have exited since (a backend of an ended session).
        let _ = pin_tree(child, cpu);
    }
    Ok(())
}

/// `bench pg --bastion N`: select-only and the TPC-B-like mix with the
/// database on a CPU of its own and pgbench and the system under test on
/// another, N rounds, the four systems in turn in each. Gatehouse runs on a
/// bastion, in front of database servers elsewhere: there its CPU is the
/// bastion's, not the database's, and what a client sees is the latency it
/// adds and the throughput the bastion's core allows. With everything on
/// the same two cores (`bench pg`), each µs the proxy spends is taken from
/// the database and pgbench as well.
pub fn bastion(secs: u64, scale: u32, rounds: u32) -> Result<()> {
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        bail!("--bastion needs two CPUs: one for the database, one for the clients and the proxy");
    }
    let (port, servers, rig, _) = start_with_agent(scale, "pg-bastion")?;
    let postmaster: u32 = std::fs::read_to_string(servers.dir.join("data").join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid")?;
    pin_tree(postmaster, DB_CPU)?;
    let systems: [(&str, &str, Option<u32>); 4] = [
        ("direct", DIRECT, None),
        ("gatehouse", PROTECTED, rig.agent_pid()),
        ("pgbouncer", BOUNCER, servers.pgbouncer_pid()),
        ("haproxy", HAPROXY, servers.haproxy_pid()),
    ];
    for (sys, _, pid) in systems {
        if let Some(pid) = pid {
            pin_tree(pid, BASTION_CPU).with_context(|| format!("pinning {sys}"))?;
        }
    }
    let t = secs.to_string();
    let workloads: [(&str, Vec<&str>); 2] = [
        ("select_only", vec!["-S", "-c", "8", "-j", "2", "-T", &t]),
        ("tpcb_write_mix", vec!["-c", "8", "-j", "2", "-T", &t]),
    ];
    eprintln!(
        "bastion: the database on CPU {DB_CPU}; pgbench and the system under test on CPU {BASTION_CPU}; \
         {rounds} round(s) of {secs} s runs; load before: {}",
        load()
    );
    let mut tps: std::collections::BTreeMap<(&str, &str), Vec<f64>> = std::collections::BTreeMap::new();
    for round in 1..=rounds {
        for (name, args) in &workloads {
            for (sys, host, pid) in systems {
                // pgbench on the bastion's CPU; Gatehouse's inside the cgroup its redirect holds.
                let mut c = if sys == "gatehouse" { rig.in_cgroup("taskset") } else { Command::new("taskset") };
                c.args(["-c", BASTION_CPU, &format!("{BIN}/pgbench")])
                    .env("PGPASSWORD", PASSWORD)
                    .args(["-h", host, "-p", &port.to_string(), "-U", "bench", "-n"])
                    .args(args)
                    .arg("bench");
                let cpu0 = cpu_secs(pid);
                let r = parse_pgbench(&ok(&mut c, &format!("pgbench {args:?} via {host}"))?);
                let cpu = (cpu_secs(pid) - cpu0) * 1e6 / r.transactions.max(1.0);
                eprintln!(
                    "round {round}: {name:<15} {sys:<10} {:>8.0} tps  {:>7.3} ms avg{}",
                    r.tps,
                    r.latency_ms,
                    if pid.is_some() { format!("  {cpu:>6.1} µs cpu/txn") } else { String::new() }
                );
                tps.entry((name, sys)).or_default().push(r.tps);
            }
        }
    }
    eprintln!("load after: {}", load());
    let m = |w: &str, s: &str| median(tps.get(&(w, s)).cloned().unwrap_or_default());
    for (name, _) in &workloads {
        for s in ["direct", "gatehouse", "pgbouncer", "haproxy"] {
            println!("{name}_bastion {s:<10} {:>10.0} tps (median of {rounds})", m(name, s));
        }
    }
    for (name, _) in &workloads {
        for s in ["gatehouse", "pgbouncer", "haproxy"] {
            println!("ratio {name}_bastion {s}/direct = {:.2}", m(name, s) / m(name, "direct"));
        }
        for s in ["pgbouncer", "haproxy"] {
            println!("ratio {name}_bastion gatehouse/{s} = {:.2}", m(name, "gatehouse") / m(name, s));
        }
    }
    drop(rig);
    drop(servers);
    Ok(())
}

/// Rounds of one client's latency with two agents (`--latency-only
/// --compare`): direct, then both agents in an order that alternates round
/// by round, so that each round sees both under the same load. Separate
/// runs of `--latency-only` on a shared machine moved one build's added p50
/// by more than 10 µs from run to run, as much as a change is expected to.
fn latency_pairs(rig: &Rig, rig_b: &Rig, one_client: &dyn Fn(&Rig, &str, &str, bool) -> Result<Run>) -> Result<()> {
    const ROUNDS: u32 = 6;
    // (p50, p99) per round, of each agent, and direct's.
    let mut rows: Vec<[(f64, f64); 3]> = Vec::new();
    for round in 1..=ROUNDS {
        let d = one_client(rig, "direct", DIRECT, false)?;
        let (first, second) = if round % 2 == 1 { (rig, rig_b) } else { (rig_b, rig) };
        let x = one_client(first, &format!("agent-{round}-1"), PROTECTED, true)?;
        let y = one_client(second, &format!("agent-{round}-2"), PROTECTED, true)?;
        let (a, b) = if round % 2 == 1 { (x, y) } else { (y, x) };
        eprintln!(
            "round {round}: direct p50 {:.0} p99 {:.0} µs, gatehouse p50 {:.0} p99 {:.0} µs, gatehouse_b p50 {:.0} p99 {:.0} µs",
            d.p50_us, d.p99_us, a.p50_us, a.p99_us, b.p50_us, b.p99_us
        );
        rows.push([(d.p50_us, d.p99_us), (a.p50_us, a.p99_us), (b.p50_us, b.p99_us)]);
    }
    for (q, pick) in [("p50", (|r: (f64, f64)| r.0) as fn((f64, f64)) -> f64), ("p99", |r: (f64, f64)| r.1)] {
        let added = |i: usize| median(rows.iter().map(|r| pick(r[i]) - pick(r[0])).collect());
        let ratios: Vec<f64> = rows.iter().map(|r| pick(r[2]) / pick(r[1]).max(1e-9)).collect();
        let shown: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        println!("added_latency_{q} gatehouse = {:.0} µs (median of {ROUNDS} rounds)", added(1));
        println!("added_latency_{q} gatehouse_b = {:.0} µs (median of {ROUNDS} rounds)", added(2));
        println!("latency_{q} gatehouse_b/gatehouse by round: {}", shown.join(" "));
        // Each round's ratio sees both builds under that round's load: their median.
        println!("ratio one_client_latency_{q} gatehouse_b/gatehouse = {:.2}", median(ratios));
    }
    Ok(())
}

/// A 1M-row SELECT (3 masked columns) direct, through Gatehouse unmasked,
/// and through Gatehouse masked; psql reads every row.
pub fn mask(rows: u32) -> Result<()> {
    let port = free_port()?;
    let servers = start_servers(port, None)?;
    let dir = servers.dir.clone();
    let psql_admin = |sql: &str| {
        ok(
            as_postgres("/usr/bin/psql").arg("-h").arg(&dir).args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "bench",
                "-X",
                "-q",
                "-c",
                sql,
            ]),
            "psql",
        )
    };
    eprintln!("creating {rows} rows");
    psql_admin(&format!(
        "CREATE TABLE people AS SELECT g AS id, 'user' || g || '@example.com' AS email,
           '4111 1111 1111 1111' AS card, 'note ' || g || ' call +44 20 7946 0958 about order ' || g AS note, g * 1.5 AS balance
         FROM generate_series(1, {rows}) g; ALTER TABLE people OWNER TO bench;"
    ))?;
    let mut rig = Rig::new("mask")?;
    let secret = rig.dir().join("bench.secret");
    std::fs::write(&secret, format!("{PASSWORD}\n"))?;
    // Password files must be root's alone: the agent refuses others.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let backend = format!(
        "[[backend]]\nname = \"bench\"\nprotocol = \"postgres\"\naddress = \"{PROTECTED}:{port}\"\ntls = \"off\"\n\
         credentials = {{ user = \"bench\", password_file = \"{}\" }}\n\n",
        secret.display()
    );
    let profile = "[[mask]]\nname = \"pii\"\ncolumns = [{ column = \"email\", style = \"partial\" }, { column = \"card\", style = \"partial\" }]\n\
                   detectors = { card = \"partial\", email = \"partial\", phone = \"partial\" }\n\n";
    let rule = |mask: &str| {
        format!(
            "[[rule]]\nname = \"bench\"\nwho = {{ users = [\"root\"] }}\nbackend = \"bench\"\nstatements = [\"select\"]\n{mask}\n"
        )
    };
    let query = "SELECT id, email, card, note, balance FROM people";
    let time = |rig: &Rig, host: &str, in_cg: bool| -> Result<f64> {
        let mut c = if in_cg { rig.in_cgroup("/usr/bin/psql") } else { Command::new("/usr/bin/psql") };
        c.env("PGPASSWORD", PASSWORD).args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            "bench",
            "-d",
            "bench",
            "-X",
            "-q",
            "-A",
            "-t",
            "-o",
            "/dev/null",
            "-c",
            query,
        ]);
        let t = Instant::now();
        ok(&mut c, "psql SELECT")?;
        Ok(t.elapsed().as_secs_f64())
    };
    let best = |f: &dyn Fn() -> Result<f64>| -> Result<f64> {
        let mut b = f64::MAX;
        for _ in 0..3 {
            b = b.min(f()?);
        }
        Ok(b)
    };
    let direct = best(&|| time(&rig, DIRECT, false))?;
    rig.start_agent(&format!("{backend}{}", rule("")), free_port()?)?;
    let unmasked = best(&|| time(&rig, PROTECTED, true))?;
    rig.stop_agent();
    rig.start_agent(&format!("{backend}{profile}{}", rule("mask = \"pii\"")), free_port()?)?;
    let masked = best(&|| time(&rig, PROTECTED, true))?;
    let rps = |s: f64| f64::from(rows) / s;
    println!();
    println!("select_{rows}_rows direct              {direct:>7.2} s  {:>10.0} rows/s", rps(direct));
    println!("select_{rows}_rows gatehouse unmasked  {unmasked:>7.2} s  {:>10.0} rows/s", rps(unmasked));
    println!(
        "select_{rows}_rows gatehouse masked    {masked:>7.2} s  {:>10.0} rows/s  (3 masked columns)",
        rps(masked)
    );
    println!("ratio select_1m_rows gatehouse_unmasked/direct = {:.2}", direct / unmasked);
    println!("ratio select_1m_rows gatehouse_masked/direct = {:.2}", direct / masked);
    drop(rig);
    drop(servers);
    Ok(())
}

/// pgbouncer under valgrind, for `--instructions` (the other pgbouncer runs natively).
const BOUNCER_VALGRIND: &str = "127.10.201.5";
/// Statements in the two measured runs of `--instructions`: the counts per
/// statement are their difference over this many statements, so what a run
/// spends once (the login, the first statement's catalog read) cancels.
const COUNTED: (u32, u32) = (300, 1500);

/// callgrind's options: every thread in a file of its own, counted from the
/// start (the counters are zeroed before each measured run).
fn callgrind_args(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--separate-threads=yes".into(),
        format!("--callgrind-out-file={}", out.join("cg").display()),
    ]
}

/// The instructions a callgrind profile counted (its `totals:` line).
fn callgrind_total(profile: &str) -> u64 {
    profile
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `callgrind_control <what> <pid>`.
fn callgrind_control(what: &str, pid: u32) -> Result<()> {
    ok(Command::new("callgrind_control").arg(what).arg(pid.to_string()), &format!("callgrind_control {what} {pid}"))
        .map(|_| ())
}

/// Instructions counted since the last zeroing, dumped now: (the audit
/// writer's thread, every other thread). The writer's dump is the one whose
/// profile holds `audit::Writer::run`.
fn dump_counts(pid: u32, out: &Path) -> Result<(u64, u64)> {
    let before: std::collections::BTreeSet<PathBuf> = std::fs::read_dir(out)?.flatten().map(|e| e.path()).collect();
    callgrind_control("--dump", pid)?;
    let (mut writer, mut rest) = (0u64, 0u64);
    for e in std::fs::read_dir(out)?.flatten() {
        let path = e.path();
        if before.contains(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let total = callgrind_total(&text);
        // Kept for `callgrind_annotate` when asked (the rig's directory goes with it).
        // An empty value is unset (it would put them in the working tree).
        let keep = std::env::var_os("GATEHOUSE_BENCH_PROFILES").filter(|k| !k.is_empty());
        if let (Some(keep), Some(name)) = (keep, path.file_name()) {
            let keep = Path::new(&keep).join(format!("{pid}"));
            std::fs::create_dir_all(&keep)?;
            std::fs::copy(&path, keep.join(name))?;
        }
        if text.contains("audit::Writer::run") {
            writer += total;
        } else {
            rest += total;
        }
    }
    if writer == 0 {
        bail!("no profile in {} holds audit::Writer::run: the writer's thread was not counted", out.display());
    }
    Ok((writer, rest))
}

/// Instructions per statement of the process `pid` (writer, rest) while
/// `run(n)` runs `n` statements: the difference between two runs.
fn counts_per_statement(pid: u32, out: &Path, run: &dyn Fn(u32) -> Result<()>) -> Result<(f64, f64)> {
    let mut counts = Vec::new();
    for n in [COUNTED.0, COUNTED.1] {
        callgrind_control("--zero", pid)?;
        run(n)?;
        counts.push(dump_counts(pid, out)?);
    }
    let n = f64::from(COUNTED.1 - COUNTED.0);
    let (a, b) = (counts.first().copied().unwrap_or_default(), counts.get(1).copied().unwrap_or_default());
    Ok((b.0.saturating_sub(a.0) as f64 / n, b.1.saturating_sub(a.1) as f64 / n))
}

/// Instructions pgbouncer spends from its start to its exit, run under
/// callgrind on [`BOUNCER_VALGRIND`] while `run(n)` sends `n` statements through it.
fn bouncer_count(dir: &Path, port: u16, n: u32, run: &dyn Fn(u32) -> Result<()>) -> Result<u64> {
    let out = dir.join(format!("callgrind-pgbouncer-{n}"));
    std::fs::create_dir_all(&out)?;
    ok(Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir), "chown")?;
    let mut c = as_postgres("/usr/bin/valgrind");
    c.args(callgrind_args(&out).iter().skip(1)).arg("/usr/sbin/pgbouncer").arg(dir.join("pgbouncer-valgrind.ini"));
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("pgbouncer under valgrind")?;
    let run = crate::util::wait_port(&format!("{BOUNCER_VALGRIND}:{port}")).and_then(|()| run(n));
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let _ = child.wait();
    run?;
    let mut total = 0u64;
    for e in std::fs::read_dir(&out)?.flatten() {
        total += callgrind_total(&std::fs::read_to_string(e.path())?);
    }
    if total == 0 {
        bail!("pgbouncer under valgrind left no counts in {}", out.display());
    }
    Ok(total)
}

/// `bench pg --instructions`: instructions per select-only statement, one
/// client, counted by callgrind: Gatehouse (and a second build to compare),
/// and pgbouncer as the baseline.
pub fn instructions(scale: u32, compare: Option<&Path>) -> Result<()> {
    if let Some(bin) = compare.filter(|b| !b.is_file()) {
        bail!("--compare {}: no such agent binary", bin.display());
    }
    if !Path::new("/usr/bin/callgrind_control").exists() {
        eprintln!("installing valgrind");
        ok(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
        ok(
            Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q", "valgrind"]),
            "apt-get install valgrind",
        )?;
    }
    let port = free_port()?;
    let servers = start_servers(port, Some(scale))?;
    let pgbench = |host: &str, n: u32, rig: Option<&Rig>| -> Result<()> {
        let program = format!("{BIN}/pgbench");
        let mut c = rig.map_or_else(|| Command::new(&program), |r| r.in_cgroup(&program));
        c.env("PGPASSWORD", PASSWORD)
            .args(["-h", host, "-p", &port.to_string(), "-U", "bench", "-n", "-S", "-c", "1", "-t", &n.to_string()])
            .arg("bench");
        ok(&mut c, &format!("pgbench -S -t {n} via {host}")).map(|_| ())
    };

    // pgbouncer under valgrind: the same configuration on an address of its own.
    let dir = servers.dir.clone();
    let ini = std::fs::read_to_string(dir.join("pgbouncer.ini"))?
        .replace(&format!("listen_addr = {BOUNCER}"), &format!("listen_addr = {BOUNCER_VALGRIND}"))
        .replace("pgbouncer.log", "pgbouncer-valgrind.log");
    std::fs::write(dir.join("pgbouncer-valgrind.ini"), ini)?;

    let mut agents: Vec<(&str, PathBuf)> = vec![("gatehouse", crate::bench::agent_bin())];
    if let Some(b) = compare {
        agents.push(("gatehouse_b", b.to_owned()));
    }
    eprintln!("load before the runs: {}", load());
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    for (name, bin) in &agents {
        let mut rig = Rig::new(&format!("pg-insn-{name}"))?;
        let policy = bench_policy(rig.dir(), port)?;
        let out = rig.dir().join("callgrind");
        std::fs::create_dir_all(&out)?;
        eprintln!("{name}: starting {} under valgrind …", bin.display());
        rig.start_agent_under(&policy, free_port()?, bin, &callgrind_args(&out), std::time::Duration::from_secs(300))?;
        let pid = rig.agent_pid().context("agent pid")?;
        // Warm: the backend's catalog read, the statement's template.
        pgbench(PROTECTED, 100, Some(&rig))?;
        let (writer, sessions) = counts_per_statement(pid, &out, &|n| pgbench(PROTECTED, n, Some(&rig)))?;
        eprintln!(
            "{name}: {:.1}k instructions per statement: sessions and the rest {:.1}k, audit writer {:.1}k",
            (writer + sessions) / 1e3,
            sessions / 1e3,
            writer / 1e3
        );
        results.push((name, sessions, writer));
    }
    // pgbouncer is started for each run and counted to its exit: callgrind_control
    // cannot reach a valgrind run as another user (pgbouncer will not run as root).
    let through_bouncer = |n| pgbench(BOUNCER_VALGRIND, n, None);
    let (a, b) = (
        bouncer_count(&dir, port, COUNTED.0, &through_bouncer)?,
        bouncer_count(&dir, port, COUNTED.1, &through_bouncer)?,
    );
    let bouncer = b.saturating_sub(a) as f64 / f64::from(COUNTED.1 - COUNTED.0);
    eprintln!("pgbouncer: {:.1}k instructions per statement", bouncer / 1e3);
    let n = COUNTED.1 - COUNTED.0;
    for (name, sessions, writer) in &results {
        println!(
            "instructions select_only {name} = {:.0} per statement (sessions {sessions:.0}, audit writer {writer:.0}; one client, {n} statements)",
            sessions + writer
        );
    }
    println!("instructions select_only pgbouncer = {bouncer:.0} per statement");
    for (name, sessions, writer) in &results {
        println!("ratio select_only_instructions {name}/pgbouncer = {:.2}", (sessions + writer) / bouncer.max(1.0));
    }
    if let [(_, s_a, w_a), (_, s_b, w_b)] = results.as_slice() {
        println!("ratio select_only_instructions gatehouse_b/gatehouse = {:.2}", (s_b + w_b) / (s_a + w_a).max(1.0));
        println!("ratio select_only_instructions_sessions gatehouse_b/gatehouse = {:.2}", s_b / s_a.max(1.0));
        println!("ratio select_only_instructions_writer gatehouse_b/gatehouse = {:.2}", w_b / w_a.max(1.0));
    }
    Ok(())
}
