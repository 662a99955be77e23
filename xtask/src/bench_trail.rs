//! `cargo xtask bench trail`: what the row-level trail costs while
//! streaming — a 1M-row SELECT through Gatehouse with the table's key
//! trailed vs not (same binary, same run, best of 3 each, alternated) — how
//! many bytes of trail a million rows leave in the audit store, and
//! (`cargo bench --bench trail`, in-process) `who-saw` and `access-report`
//! latency on a store holding 100M trailed rows.

use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::bench::{Rig, free_port};
use crate::bench_pg::{PASSWORD, PROTECTED, as_postgres, ok, start_servers};

pub fn trail(rows: u32) -> Result<()> {
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
        "CREATE TABLE people (id int PRIMARY KEY, email text, note text, balance numeric);
         INSERT INTO people SELECT g, 'user' || g || '@example.com', 'note ' || g, g * 1.5
           FROM generate_series(1, {rows}) g;
         ALTER TABLE people OWNER TO bench;"
    ))?;
    // Not in the same psql -c: VACUUM cannot run inside its implicit transaction.
    psql_admin("VACUUM ANALYZE people")?;
    let mut rig = Rig::new("trail")?;
    let secret = rig.dir().join("bench.secret");
    std::fs::write(&secret, format!("{PASSWORD}\n"))?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let base = format!(
        "[[backend]]\nname = \"bench\"\nprotocol = \"postgres\"\naddress = \"{PROTECTED}:{port}\"\ntls = \"off\"\n\
         credentials = {{ user = \"bench\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"bench\"\nwho = {{ users = [\"root\"] }}\nbackend = \"bench\"\nstatements = [\"select\"]\n\n",
        secret.display()
    );
    let trailed = format!("{base}[[trail]]\ntable = \"public.people\"\n");
    let query = "SELECT id, email, note, balance FROM people";
    let time = |rig: &Rig| -> Result<f64> {
        let mut c = rig.in_cgroup("/usr/bin/psql");
        c.env("PGPASSWORD", PASSWORD).args([
            "-h",
            PROTECTED,
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
    let (mut plain, mut with_trail) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        rig.start_agent(&base, free_port()?)?;
        plain = plain.min(time(&rig)?);
        rig.stop_agent();
        rig.start_agent(&trailed, free_port()?)?;
        with_trail = with_trail.min(time(&rig)?);
        rig.stop_agent();
    }
    // What the trailed runs left in the store: the trail records (body and key set).
    let db = rig.dir().join("state").join("audit.db");
    let out = ok(
        Command::new("python3").arg("-c").arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(*c.execute(\"SELECT count(*), coalesce(sum(length(body) + length(data)), 0), coalesce(sum(json_extract(body, '$.rows')), 0) FROM events WHERE kind = 'trail'\").fetchone())",
        ).arg(&db),
        "reading the trail records",
    )?;
    let nums: Vec<f64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let (records, bytes, trailed_rows) = (
        nums.first().copied().unwrap_or(0.0),
        nums.get(1).copied().unwrap_or(0.0),
        nums.get(2).copied().unwrap_or(0.0),
    );
    let rps = |s: f64| f64::from(rows) / s;
    println!();
    println!("select_{rows}_rows no_trail  {plain:>7.2} s  {:>10.0} rows/s", rps(plain));
    println!("select_{rows}_rows trail     {with_trail:>7.2} s  {:>10.0} rows/s", rps(with_trail));
    println!("ratio select_1m_rows trail/no_trail = {:.2}", plain / with_trail);
    if trailed_rows > 0.0 {
        println!(
            "trail bytes per million rows (consecutive keys) = {:.0}  ({records} records, {trailed_rows} rows)",
            bytes / trailed_rows * 1e6
        );
    }
    drop(rig);
    drop(servers);
    Ok(())
}
