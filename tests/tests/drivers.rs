//! Masked sessions through every driver: psql, psycopg 3, asyncpg,
//! node-postgres (`pg`), postgres.js (`postgres`), pgJDBC and tokio-postgres,
//! each running the same queries — a prepared statement executed seven
//! times (pgJDBC switches to a server-prepared statement at the 6th,
//! asyncpg and postgres.js reuse theirs from the 2nd, tokio-postgres never
//! describes again after preparing), derived columns, and a pipeline — and
//! every value each client received checked, then the audit store. Needs
//! root; the Node packages come from `cargo xtask setup`
//! (`/usr/local/lib/gatehouse-e2e/node`), pgJDBC from Debian.

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, built_binary, free_port, loopback};

const NODE_MODULES: &str = "/usr/local/lib/gatehouse-e2e/node/node_modules";
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    sam: String,
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let support = env.group("support");
    let sam = env.user("sam", &[&support]);
    let pg = PgServer::start(&env.dir, &loopback(70), free_port(), "");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, secret text, ssn text, phone text, balance numeric);
             INSERT INTO customers VALUES
               (1, 'Zoë Ünal', 'zoe@example.com', 'ALPHA-7-ZULU', '123-45-6789', '+44 20 7946 0958', 10.5),
               (2, 'Bob', 'bob@example.org', 'BRAVO-9-YANKEE', '078-05-1120', NULL, 3);
             ALTER TABLE customers OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{s}" }}

[[mask]]
name = "pii"
columns = [
  {{ column = "customers.email", style = "partial" }},
  {{ column = "public.customers.secret", style = "redact" }},
  {{ column = "customers.ssn", style = "hash" }},
  {{ column = "customers.phone", style = "null" }},
]
detectors = {{ email = "partial", us_ssn = "redact" }}
# Computed values come back hidden (the default profile refuses computing with masked columns).
masked_predicates = "allow"

[[rule]]
name = "support masked"
who = {{ groups = ["{support}"] }}
backend = "appdb"
statements = ["select"]
mask = "pii"
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { env, pg, sam }
}

/// The queries every driver runs: `(label, repeat, sql)`. Labels starting
/// with `p` run as one pipeline (where the driver has one) after the rest.
const QUERIES: &[(&str, usize, &str)] = &[
    ("q1", 7, "SELECT id, name, email, secret, ssn FROM customers WHERE id = $1"),
    (
        "q2",
        2,
        "SELECT id, upper(email) AS x, replace(secret, '-', '') AS y, ssn AS \"ID\" FROM customers WHERE id = $1",
    ),
    ("p1", 1, "SELECT id, s.e FROM (SELECT id, secret AS e FROM customers) s ORDER BY id"),
    ("p2", 1, "SELECT id, name, phone FROM customers ORDER BY id"),
    ("p3", 1, "SELECT x AS secret FROM (VALUES ('LIT-1')) v(x)"),
    // A literal aliased to a masked column's name: no token (only the detector redacts it).
    ("p4", 1, "SELECT x AS ssn FROM (VALUES ('219-09-9999')) v(x)"),
];

/// What every driver must print, `TOK` standing for the ssn's hash token.
fn expected() -> Vec<String> {
    let mut v = Vec::new();
    v.extend(std::iter::repeat_n("q1|1|Zoë Ünal|****@example.com|****|TOK".to_owned(), 7));
    v.extend(std::iter::repeat_n("q2|1|****|****|TOK".to_owned(), 2));
    for l in ["p1|1|****", "p1|2|****", "p2|1|Zoë Ünal|NULL", "p2|2|Bob|NULL", "p3|LIT-1", "p4|****", "done"] {
        v.push(l.to_owned());
    }
    v.sort();
    v
}

const PY_COMMON: &str = r#"
import sys
host, port = sys.argv[1], sys.argv[2]
queries = [a.split("=", 2) for a in sys.argv[3:]]
def show(label, rows):
    for r in rows:
        print("|".join([label] + ["NULL" if v is None else str(v) for v in r]), flush=True)
"#;

const PSYCOPG: &str = r#"
import psycopg
conn = psycopg.connect(host=host, port=port, dbname="appdb", user="driver", autocommit=True)
for label, repeat, sql in (q for q in queries if not q[0].startswith("p")):
    for i in range(int(repeat)):
        # Alternate text and binary results; prepared on the server from the first run.
        cur = conn.cursor(binary=bool(i % 2))
        cur.execute(sql.replace("$1", "%s"), (1,) if "$1" in sql else None, prepare=True)
        show(label, cur.fetchall())
with conn.pipeline():
    curs = [(label, conn.execute(sql)) for label, _, sql in queries if label.startswith("p")]
for label, cur in curs:
    show(label, cur.fetchall())
print("done")
"#;

const ASYNCPG: &str = r#"
import asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host=host, port=int(port), user="driver", database="appdb")
    for label, repeat, sql in queries:
        # asyncpg prepares on first use and reuses the statement: no Describe from the 2nd run.
        for _ in range(int(repeat)):
            show(label, await conn.fetch(sql, 1) if "$1" in sql else await conn.fetch(sql))
    await conn.close()
    print("done")
asyncio.run(main())
"#;

const NODE_COMMON: &str = r#"
const [host, port, ...rest] = process.argv.slice(2);
const queries = rest.map((a) => { const i = a.indexOf("="), j = a.indexOf("=", i + 1); return [a.slice(0, i), +a.slice(i + 1, j), a.slice(j + 1)]; });
const show = (label, rows) => { for (const r of rows) console.log([label, ...r.map((v) => (v === null ? "NULL" : String(v)))].join("|")); };
const fail = (e) => { console.log("error|" + e.message); process.exit(1); };
"#;

const NODE_PG: &str = r#"
const { Client } = require("pg");
(async () => {
  const c = new Client({ host, port: +port, user: "driver", database: "appdb" });
  await c.connect();
  for (const [label, repeat, sql] of queries.filter((q) => !q[0].startsWith("p"))) {
    for (let i = 0; i < repeat; i++) {
      const res = await c.query({ name: label, text: sql, values: sql.includes("$1") ? [1] : [], rowMode: "array" });
      show(label, res.rows);
    }
  }
  // node-postgres has no pipeline: one query after the other.
  for (const [label, , sql] of queries.filter((q) => q[0].startsWith("p"))) {
    show(label, (await c.query({ name: label, text: sql, rowMode: "array" })).rows);
  }
  await c.end();
  console.log("done");
})().catch(fail);
"#;

const POSTGRES_JS: &str = r#"
const postgres = require("postgres");
(async () => {
  const sql = postgres({ host, port: +port, user: "driver", database: "appdb", max: 1, prepare: true, onnotice: () => {} });
  for (const [label, repeat, text] of queries.filter((q) => !q[0].startsWith("p"))) {
    for (let i = 0; i < repeat; i++) show(label, await sql.unsafe(text, text.includes("$1") ? [1] : [], { prepare: true }).values());
  }
  // One connection, queries issued together: postgres.js pipelines them.
  const p = queries.filter((q) => q[0].startsWith("p"));
  const all = await Promise.all(p.map(([, , text]) => sql.unsafe(text, [], { prepare: true }).values()));
  p.forEach(([label], i) => show(label, all[i]));
  await sql.end();
  console.log("done");
})().catch(fail);
"#;

const JAVA: &str = r#"
import java.sql.*;
public class Drivers {
  static void show(String label, ResultSet rs) throws SQLException {
    int n = rs.getMetaData().getColumnCount();
    while (rs.next()) {
      StringBuilder b = new StringBuilder(label);
      for (int i = 1; i <= n; i++) { String v = rs.getString(i); b.append('|').append(v == null ? "NULL" : v); }
      System.out.println(b);
    }
  }
  public static void main(String[] a) throws Exception {
    String url = "jdbc:postgresql://" + a[0] + ":" + a[1] + "/appdb?user=driver&prepareThreshold=5";
    try (Connection c = DriverManager.getConnection(url)) {
      for (int i = 2; i < a.length; i++) {
        String[] q = a[i].split("=", 3);
        int repeat = Integer.parseInt(q[1]);
        // The same PreparedStatement: from the 6th execution pgJDBC uses a named server-side statement.
        try (PreparedStatement ps = c.prepareStatement(q[2].replace("$1", "?"))) {
          for (int r = 0; r < repeat; r++) {
            if (q[2].contains("$1")) ps.setInt(1, 1);
            try (ResultSet rs = ps.executeQuery()) { show(q[0], rs); }
          }
        }
      }
    }
    System.out.println("done");
  }
}
"#;

impl World {
    fn query_args(&self) -> Vec<String> {
        QUERIES.iter().map(|(l, r, s)| format!("{l}={r}={s}")).collect()
    }

    fn run(&self, program: &str, args: &[String]) -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.env.run_as(&self.sam, None, Path::new(program), &args);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn script(&self, file: &str, text: &str) -> String {
        let p = self.env.path(file);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p.display().to_string()
    }

    fn with_queries(&self, head: Vec<String>) -> Vec<String> {
        let mut a = head;
        a.push(self.pg.host.clone());
        a.push(self.pg.port.to_string());
        a.extend(self.query_args());
        a
    }

    /// psql has no pipeline in PostgreSQL 15: SQL PREPARE/EXECUTE for the
    /// repeats, one multi-statement query for the rest.
    fn psql(&self) -> String {
        let port = self.pg.port.to_string();
        let mut lines = Vec::new();
        let base = [
            "-h",
            &self.pg.host,
            "-p",
            &port,
            "-d",
            "appdb",
            "-U",
            "driver",
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "|",
            "-P",
            "null=NULL",
            "-v",
            "ON_ERROR_STOP=1",
        ];
        for (label, repeat, sql) in QUERIES.iter().filter(|q| !q.0.starts_with('p')) {
            let mut text = format!("PREPARE s AS {sql};");
            for _ in 0..*repeat {
                text.push_str(if sql.contains("$1") { " EXECUTE s(1);" } else { " EXECUTE s;" });
            }
            let mut args: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
            args.extend(["-c".to_owned(), text]);
            let out = self.run("/usr/bin/psql", &args);
            lines.extend(out.lines().map(|l| format!("{label}|{l}")));
        }
        let piped: Vec<&str> = QUERIES.iter().filter(|q| q.0.starts_with('p')).map(|q| q.2).collect();
        let mut args: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
        args.extend(["-c".to_owned(), piped.join("; ")]);
        let out = self.run("/usr/bin/psql", &args);
        // Results come in order: p1 (2 rows), p2 (2), p3 (1), p4 (1).
        let labels = ["p1", "p1", "p2", "p2", "p3", "p4"];
        let got: Vec<&str> = out.lines().collect();
        for (i, l) in got.iter().enumerate() {
            lines.push(format!("{}|{l}", labels.get(i).unwrap_or(&"extra")));
        }
        lines.push("done".into());
        lines.join("\n")
    }
}

/// Checks one driver's output: exactly the expected lines, the same token
/// everywhere, no raw value. Returns the token.
fn check(driver: &str, out: &str, log: &str) -> String {
    let mut tokens: Vec<&str> = Vec::new();
    let mut lines: Vec<String> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('|')
                .map(|c| {
                    // `tok_` and 128 bits in hex.
                    if c.starts_with("tok_") && c.len() == 36 && c[4..].bytes().all(|b| b.is_ascii_hexdigit()) {
                        tokens.push(c);
                        "TOK"
                    } else {
                        c
                    }
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    lines.sort();
    assert_eq!(lines, expected(), "{driver} received:\n{out}\nagent log:\n{log}");
    for raw in ["zoe@example.com", "ALPHA-7-ZULU", "ALPHA7ZULU", "123-45-6789", "+44 20"] {
        assert!(!out.contains(raw), "{driver} received the raw value {raw}:\n{out}");
    }
    let first = tokens.first().copied().unwrap_or_default().to_owned();
    assert!(tokens.iter().all(|t| *t == first), "{driver}: one value, one token: {tokens:?}");
    first
}

#[test]
fn masked_sessions_work_with_every_driver() {
    let w = world("drivers");
    let log = || w.env.agent_log();
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();

    tokens.insert("psql", check("psql", &w.psql(), &log()));

    let psycopg = w.script("psycopg_client.py", &format!("{PY_COMMON}{PSYCOPG}"));
    tokens.insert("psycopg", check("psycopg 3", &w.run("/usr/bin/python3", &w.with_queries(vec![psycopg])), &log()));

    let asyncpg = w.script("asyncpg_client.py", &format!("{PY_COMMON}{ASYNCPG}"));
    tokens.insert("asyncpg", check("asyncpg", &w.run("/usr/bin/python3", &w.with_queries(vec![asyncpg])), &log()));

    assert!(
        Path::new(NODE_MODULES).join("pg").exists() && Path::new(NODE_MODULES).join("postgres").exists(),
        "the Node drivers are missing from {NODE_MODULES}: run `cargo xtask setup`"
    );
    let node_path = format!("NODE_PATH={NODE_MODULES}");
    let node_pg = w.script("pg_client.js", &format!("{NODE_COMMON}{NODE_PG}"));
    let out = w.run("/usr/bin/env", &w.with_queries(vec![node_path.clone(), "node".into(), node_pg]));
    tokens.insert("node-postgres", check("node-postgres", &out, &log()));

    let pgjs = w.script("postgresjs_client.js", &format!("{NODE_COMMON}{POSTGRES_JS}"));
    let out = w.run("/usr/bin/env", &w.with_queries(vec![node_path, "node".into(), pgjs]));
    tokens.insert("postgres.js", check("postgres.js", &out, &log()));

    assert!(Path::new(JDBC_JAR).exists(), "pgJDBC is missing ({JDBC_JAR}): run `cargo xtask setup`");
    let java = w.script("Drivers.java", JAVA);
    // JDBC has no pipeline for queries: every query runs as a repeated PreparedStatement.
    // No perf data: the JVM would leave /tmp/hsperfdata_<user> behind the test's user.
    let out =
        w.run("/usr/bin/java", &w.with_queries(vec!["-XX:-UsePerfData".into(), "-cp".into(), JDBC_JAR.into(), java]));
    tokens.insert("pgJDBC", check("pgJDBC", &out, &log()));

    let client = w.env.path("gatehouse-pgclient");
    std::fs::copy(built_binary("gatehouse-pgclient", "GATEHOUSE_PGCLIENT"), &client).unwrap();
    let out = w.run(&client.display().to_string(), &w.with_queries(Vec::new()));
    tokens.insert("tokio-postgres", check("tokio-postgres", &out, &log()));

    let first = tokens.values().next().cloned().unwrap_or_default();
    assert!(tokens.values().all(|t| *t == first), "every driver sees the same token: {tokens:?}");

    // The audit store: every driver's session was masked, recorded masked, and none ended in error.
    let sessions = w.env.sessions();
    let mine: Vec<_> = sessions.iter().filter(|s| s["user"] == w.sam.as_str()).collect();
    assert!(mine.len() >= 7, "{sessions:#?}");
    let mut masked = 0;
    for s in &mine {
        let reason = s["end_reason"].as_str().unwrap_or_default();
        assert!(!reason.contains("error") && !reason.contains("breach"), "{s}\n{}", log());
        // Each execution of q1 and q2 masks three values by column identity, and is recorded so.
        masked += w
            .env
            .statements(s["id"].as_str())
            .iter()
            .filter(|x| {
                let m: serde_json::Value = serde_json::from_str(x["masked"].as_str().unwrap_or("{}")).unwrap();
                m["columns"].as_u64() >= Some(3)
            })
            .count();
    }
    assert!(masked >= 7 * 9, "{masked} statements recorded with three masked columns, over 7 drivers × 9 executions");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let db = std::fs::read(w.env.db()).unwrap();
    let wal = std::fs::read(format!("{}-wal", w.env.db().display())).unwrap_or_default();
    for bytes in [&db, &wal] {
        for raw in [&b"zoe@example.com"[..], b"ALPHA-7-ZULU", b"123-45-6789"] {
            assert!(bytes.windows(raw.len()).all(|x| x != raw), "the audit store holds a raw value");
        }
    }
}
