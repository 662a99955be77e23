//! A bounded cost per statement, end to end (issue 19): an allowed user
//! sends texts built to exhaust the agent's memory — 1 MiB of `SELECT
//! a,a,a,…`, `SELECT f(),f(),…`, `VALUES (1),(1),…`, 100,000 × `SELECT 1;`
//! in one Query, the same cut to fit under the size limit, and large texts
//! that fit every limit and must be parsed — one session after another
//! and 20 at once, while another user works. Through the real agent, a
//! real PostgreSQL 15 and psycopg 3 (simple and extended protocol). Needs
//! root.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test helpers panic with context on failure")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// The bound this test holds the agent's peak RSS (VmHWM) to, in MiB:
/// the agent at rest (about 40 MiB), two parse threads each holding one
/// large tree of at most 50,000 tokens (about 100 MiB each at the worst
/// observed 1.9 KB per token), 20 sessions' 1 MiB messages, and slack.
const PEAK_RSS_MIB: u64 = 400;

struct World {
    pg: PgServer,
    env: Env,
    ana: String,
    bob: String,
    cat: String,
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let staff = env.group("staff");
    let ana = env.user("ana", &[&staff]);
    let bob = env.user("bob", &[&staff]);
    let cat = env.user("cat", &[]);
    // Every statement the server receives is in its log: the refused ones must not be.
    let pg = PgServer::start(&env.dir, &loopback(41), free_port(), "log_statement = 'all'");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
             CREATE TABLE victim (id int);
             ALTER TABLE items OWNER TO {app}; ALTER TABLE victim OWNER TO {app};",
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

[[rule]]
name = "staff work on appdb"
who = {{ groups = ["{staff}"] }}
backend = "appdb"
statements = ["select", "insert", "function_call"]

[[rule]]
name = "cat sends small queries"
who = {{ users = ["{cat}"] }}
backend = "appdb"
statements = ["select", "insert"]
query_limits = {{ bytes = "1KiB", tokens = 60, statements = 2 }}
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { pg, env, ana, bob, cat }
}

impl World {
    fn script(&self, script: &str) -> String {
        let path = self.env.path(&format!("script-{}.py", free_port()));
        std::fs::write(&path, script).unwrap();
        path.display().to_string()
    }

    fn python(&self, user: &str, script: &str, args: &[&str]) -> Output {
        let path = self.script(script);
        let port = self.pg.port.to_string();
        let mut all = vec![path.as_str(), &self.pg.host, &port];
        all.extend_from_slice(args);
        self.env.run_as(user, None, Path::new("/usr/bin/python3"), &all)
    }

    /// Like [`World::python`], started in the background.
    fn python_background(&self, user: &str, script: &str, args: &[&str]) -> std::process::Child {
        let path = self.script(script);
        let port = self.pg.port.to_string();
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.env.cgroup)
            .args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/python3"])
            .args([path.as_str(), &self.pg.host, &port])
            .args(args)
            .env("HOME", &self.env.dir)
            .current_dir(&self.env.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn agent_memory_kib(&self, field: &str) -> u64 {
        let pid = self.env.agent.as_ref().expect("agent running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
    }
}

fn report(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Common Python: a connection, a simple-protocol Query (one message,
/// whatever it holds), and the hostile texts.
const PRELUDE: &str = r#"
import sys, json, time, threading, psycopg
from psycopg import pq
HOST, PORT = sys.argv[1], sys.argv[2]

def connect():
    return psycopg.connect(host=HOST, port=PORT, dbname="appdb", user="whoever", autocommit=True, connect_timeout=20)

def query(conn, sql):
    """One Query message; the server's (or Gatehouse's) answer."""
    res = conn.pgconn.exec_(sql.encode())
    if res.status == pq.ExecStatus.FATAL_ERROR:
        return {"sqlstate": res.error_field(pq.DiagnosticField.SQLSTATE).decode(),
                "message": res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY).decode()}
    value = res.get_value(0, 0).decode() if res.ntuples and res.nfields else None
    return {"status": pq.ExecStatus(res.status).name, "value": value}

def repeat(head, item, size):
    return head + item * max(0, (size - len(head)) // len(item))

MIB = 1 << 20
UNDER = 250 * 1024
HOSTILE = {
    "columns 1 MiB": repeat("SELECT a", ",a", MIB),
    "calls 1 MiB": repeat("SELECT f()", ",f()", MIB),
    "values 1 MiB": repeat("VALUES (1)", ",(1)", MIB),
    "100,000 x SELECT 1": "SELECT 1;" * 100_000,
    "inserts 1 MiB": repeat("", "INSERT INTO victim VALUES (1);", MIB),
    "columns 250 KiB": repeat("SELECT a", ",a", UNDER),
    "calls 250 KiB": repeat("SELECT f()", ",f()", UNDER),
    "values 250 KiB": repeat("VALUES (1)", ",(1)", UNDER),
    "SELECT 1 x 250 KiB": repeat("", "SELECT 1;", UNDER),
    "inserts 250 KiB": repeat("", "INSERT INTO victim VALUES (1);", UNDER),
    # A word the audit redactor looks for: the refusal's record must not parse it either.
    "columns 1 MiB, password": repeat("SELECT a", ",a", MIB - 20) + " -- password",
    "columns 250 KiB, password": repeat("SELECT a", ",a", UNDER - 20) + " -- password",
}
# Within every default limit, so parsed (on the parse threads): the worst
# case per token (24,000 column references; the server itself refuses more
# than 1,664 target entries), and an IN list the server answers.
FITS = {
    "24,000 columns": "SELECT " + ",".join(["id"] * 24_000) + " FROM items",
    "IN list of 19,000": "SELECT count(*) FROM items WHERE id IN (" + ",".join(str(i) for i in range(1, 19_001)) + ")",
    # Parsed, allowed and recorded: the redactor must not parse it a second time on the session's task.
    "24,000 columns, password": "SELECT " + ",".join(["id"] * 24_000) + " FROM items -- password",
}
"#;

#[test]
fn hostile_texts_are_refused_cleanly_while_others_work_and_memory_stays_bounded() {
    let w = world("budget");
    let rest_kib = w.agent_memory_kib("VmRSS");

    // Bob works all along: a query every 20 ms until told to stop.
    let stop = w.env.path("stop-bob");
    let bob = w.python_background(
        &w.bob,
        &format!(
            r#"{PRELUDE}
import os
conn = connect()
done, failures = [], []
while not os.path.exists(sys.argv[3]):
    t = time.time()
    r = query(conn, "SELECT count(*) FROM items WHERE name LIKE 'item%'")
    (done if r.get("value") == "100" else failures).append([t, time.time() - t, r])
    time.sleep(0.02)
print(json.dumps({{"done": [d[:2] for d in done], "failures": failures}}))
"#
        ),
        &[stop.to_str().unwrap()],
    );

    let out = w.python(
        &w.ana,
        &format!(
            r#"{PRELUDE}
def session(names, out):
    try:
        conn = connect()
        for name in names:
            text = HOSTILE.get(name) or FITS[name]
            r = query(conn, text)
            r.update(input=name, bytes=len(text), after=query(conn, "SELECT 41 + 1").get("value"))
            out.append(r)
        conn.close()
    except Exception as e:
        out.append({{"input": names, "exception": repr(e)}})

def parallel(lists):
    out = []
    threads = [threading.Thread(target=session, args=(names, out)) for names in lists]
    for t in threads: t.start()
    for t in threads: t.join()
    return out

report = {{"start": time.time(), "hostile": len(HOSTILE), "fits": len(FITS)}}
names = list(HOSTILE)
report["one session"] = []
session(names, report["one session"])
report["20 at once"] = parallel([names[i:] + names[:i] for i in range(20)])
report["20 large at once"] = parallel([list(FITS)] * 20)
# The extended protocol: psycopg sends the text in a Parse message.
with connect() as conn:
    try:
        conn.execute(HOSTILE["columns 250 KiB"])
        report["extended"] = {{"sqlstate": None}}
    except psycopg.Error as e:
        report["extended"] = {{"sqlstate": e.sqlstate, "message": str(e).splitlines()[0]}}
    report["extended after"] = conn.execute("SELECT 6 * 7").fetchone()[0]
report["end"] = time.time()
print(json.dumps(report))
"#
        ),
        &[],
    );
    std::fs::write(&stop, "").unwrap();
    let bob_out = bob.wait_with_output().unwrap();
    let hwm_kib = w.agent_memory_kib("VmHWM");
    let after_kib = w.agent_memory_kib("VmRSS");
    let r = report(&out, "ana's script");
    let bob = report(&bob_out, "bob's script");
    let log = || w.env.agent_log();

    // Every hostile text: a clean refusal that says which limit, and the
    // session goes on.
    let hostile: Vec<&Value> =
        r["one session"].as_array().unwrap().iter().chain(r["20 at once"].as_array().unwrap()).collect();
    let kinds = usize::try_from(r["hostile"].as_u64().unwrap()).unwrap();
    assert_eq!(hostile.len(), kinds + 20 * kinds, "every text answered: {r:#}\n{}", log());
    for h in &hostile {
        let (input, state, message) = (&h["input"], h["sqlstate"].as_str(), h["message"].as_str().unwrap_or(""));
        assert!(matches!(state, Some("54000" | "54001")), "{input}: {h}\n{}", log());
        assert!(message.starts_with("Gatehouse refused this statement: it "), "{input}: {message}");
        assert!(message.contains("query_limits.") && message.contains("staff work on appdb"), "{input}: {message}");
        assert_eq!(h["after"], "42", "{input}: the session must stay usable: {h}");
    }
    let by_input = |name: &str| hostile.iter().find(|h| h["input"] == name).copied().unwrap();
    assert!(by_input("columns 1 MiB")["message"].as_str().unwrap().contains("over the limit of 262144 bytes"));
    assert!(by_input("columns 250 KiB")["message"].as_str().unwrap().contains("tokens, over the limit of 50000"));
    assert!(by_input("SELECT 1 x 250 KiB")["message"].as_str().unwrap().contains("statements, over the limit of 1000"));

    // Texts within every limit are parsed: the server answers them (it
    // refuses 24,000 target entries itself), or, with 20 at once, some wait
    // too long for a parse thread and are refused as busy.
    let large = r["20 large at once"].as_array().unwrap();
    let fits = usize::try_from(r["fits"].as_u64().unwrap()).unwrap();
    assert_eq!(large.len(), 20 * fits, "{large:#?}");
    let mut served = 0;
    for l in large {
        let state = l["sqlstate"].as_str();
        match l["input"].as_str().unwrap() {
            "24,000 columns" | "24,000 columns, password" => {
                assert!(matches!(state, Some("54011" | "53000")), "{l}\n{}", log());
            }
            _ if state == Some("53000") => {}
            _ => {
                assert_eq!(l["value"], "100", "{l}\n{}", log());
                served += 1;
            }
        }
        assert_eq!(l["after"], "42", "{l}");
    }
    assert!(served > 0, "some large texts must be parsed and served: {large:#?}");
    if let Some(busy) = large.iter().find(|l| l["sqlstate"] == "53000") {
        assert!(busy["message"].as_str().unwrap().contains("parsing other large statements"), "{busy}");
    }

    // The extended protocol is held to the same limits and stays in sync.
    assert_eq!(r["extended"]["sqlstate"], "54001", "{}", r["extended"]);
    assert_eq!(r["extended after"], 42);

    // What the server did: none of the refused texts reached it.
    assert_eq!(w.pg.admin_db("appdb", "SELECT count(*) FROM victim"), "0");
    let server_log = w.pg.log();
    assert!(server_log.contains("statement: SELECT count(*) FROM items WHERE name LIKE"), "the server logs statements");
    assert!(server_log.contains("SELECT count(*) FROM items WHERE id IN (1,2,3,"), "texts within the limits ran");
    for refused in
        ["SELECT a,a,a", "SELECT f(),f()", "VALUES (1),(1)", "SELECT 1;SELECT 1;SELECT 1", "INSERT INTO victim"]
    {
        assert!(!server_log.contains(refused), "the server received {refused:?}");
    }

    // Bob worked throughout, and was answered while ana's texts arrived.
    let (start, end) = (r["start"].as_f64().unwrap(), r["end"].as_f64().unwrap());
    assert_eq!(bob["failures"].as_array().unwrap().len(), 0, "bob's queries failed: {bob}");
    let done = bob["done"].as_array().unwrap();
    let during: Vec<f64> =
        done.iter().filter_map(|d| d[0].as_f64().filter(|t| *t > start && *t < end).and(d[1].as_f64())).collect();
    assert!(!during.is_empty(), "bob got no answer during ana's {:.1} s: {bob}", end - start);
    let slowest = during.iter().copied().fold(0.0, f64::max);

    // The audit store has every refusal, with the limit as its reason.
    let refused = w
        .env
        .statements(None)
        .into_iter()
        .filter(|s| s["decision"] == "deny" && s["reason"].as_str().is_some_and(|r| r.contains("query_limits.")))
        .count();
    let sent = hostile.len() + 1;
    assert!(refused >= sent, "{refused} refusals recorded for {sent} sent");

    // And the agent's memory stayed bounded.
    let hwm_mib = hwm_kib / 1024;
    eprintln!(
        "agent RSS at rest {} MiB, peak {hwm_mib} MiB (bound {PEAK_RSS_MIB} MiB), after {} MiB; \
         bob: {} answers during ana's {:.1} s, slowest {:.0} ms",
        rest_kib / 1024,
        after_kib / 1024,
        during.len(),
        end - start,
        slowest * 1000.0
    );
    assert!(hwm_mib < PEAK_RSS_MIB, "agent peak RSS {hwm_mib} MiB over the bound of {PEAK_RSS_MIB} MiB");
}

#[test]
fn a_rule_sets_its_own_limits_and_the_refusal_names_them() {
    let w = world("budgetrule");
    let out = w.python(
        &w.cat,
        &format!(
            r#"{PRELUDE}
conn = connect()
report = {{
    "fits": query(conn, "SELECT count(*) FROM items; SELECT 1"),
    "bytes": query(conn, "SELECT '" + "x" * 1100 + "'"),
    "statements": query(conn, "SELECT 1; SELECT 2; SELECT 3"),
    "tokens": query(conn, "SELECT " + ",".join(["1"] * 40)),
    "after": query(conn, "SELECT 6 * 7"),
}}
print(json.dumps(report))
"#
        ),
        &[],
    );
    let r = report(&out, "cat's script");
    let log = w.env.agent_log();
    assert_eq!(r["fits"]["value"], "1", "{r:#}\n{log}");
    let bytes = r["bytes"]["message"].as_str().unwrap_or_default();
    assert_eq!(r["bytes"]["sqlstate"], "54000", "{r:#}");
    assert!(bytes.contains("1109 bytes long, over the limit of 1024 bytes per query (query_limits.bytes)"), "{bytes}");
    assert!(bytes.contains("cat sends small queries"), "{bytes}");
    assert_eq!(r["statements"]["sqlstate"], "54000");
    assert!(r["statements"]["message"].as_str().unwrap_or_default().contains("3 statements, over the limit of 2"));
    assert_eq!(r["tokens"]["sqlstate"], "54001");
    assert!(r["tokens"]["message"].as_str().unwrap_or_default().contains("over the limit of 60 per query"));
    assert_eq!(r["after"]["value"], "42");
    // The rule's limits are not everyone's: ana's rule has the defaults.
    let out = w.python(
        &w.ana,
        &format!(
            "{PRELUDE}\nprint(json.dumps(query(connect(), \"SELECT 1; SELECT 2; SELECT '\" + \"x\" * 1100 + \"'\")))\n"
        ),
        &[],
    );
    let r = report(&out, "ana's script");
    assert_eq!(r["value"].as_str().map(str::len), Some(1100), "{r}");
}
