//! The MySQL adapter end to end: a real MariaDB started by the test on a
//! 127.x address, reached through the eBPF redirect, driven by the real
//! `mariadb` client and PyMySQL run as unprivileged users in the test
//! cgroup. Asserts on what the server did (tables, rows, its query log),
//! not only on Gatehouse's verdicts. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::Path;
use std::process::Output;

use gatehouse_e2e::mysql::{self, MariaServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::Value;

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    db: MariaServer,
    env: Env,
    ana: String,
    eve: String,
    /// In a group whose rule masks results (profile `pii`).
    sam: String,
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let analyst = env.group("analyst");
    let ana = env.user("ana", &[&analyst]);
    let eve = env.user("eve", &[]);
    let support = env.group("support");
    let sam = env.user("sam", &[&support]);
    let db = MariaServer::start(&env.dir, &loopback(41), free_port());
    db.admin(
        "USE appdb;
         CREATE TABLE appdb.items (id int PRIMARY KEY, name varchar(40));
         INSERT INTO appdb.items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;
         CREATE TABLE appdb.victim (id int);
         INSERT INTO appdb.victim VALUES (1);
         CREATE TABLE appdb.customers (id int PRIMARY KEY, email varchar(80), card varchar(20), note text);
         INSERT INTO appdb.customers VALUES (1, 'zoe@example.com', '4111111111111111', 'ssn 123-45-6789'), (2, NULL, NULL, 'plain');",
    );
    let secret = gatehouse_e2e::pg::password_file(&env.dir, "appdb.secret", mysql::APP_PASSWORD);
    let policy = format!(
        r#"
[[backend]]
name = "shop"
protocol = "mysql"
address = "{addr}"
tls = "off"
credentials = {{ user = "{user}", password_file = "{s}" }}

[[rule]]
name = "analysts read and write items"
who = {{ groups = ["{analyst}"] }}
backend = "shop"
statements = ["select", "insert", "update", "delete"]

[[mask]]
name = "pii"
columns = [
  {{ column = "customers.card", style = "partial" }},
  {{ column = "appdb.customers.email", style = "redact" }},
]
detectors = {{ us_ssn = "redact" }}

[[rule]]
name = "support reads masked"
who = {{ groups = ["{support}"] }}
backend = "shop"
statements = ["select"]
mask = "pii"
"#,
        addr = db.addr(),
        user = mysql::APP_USER,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { db, env, ana, eve, sam }
}

impl World {
    /// The `mariadb` client as `user`, over TCP to the backend's own address.
    fn mariadb(&self, user: &str, args: &[&str]) -> Output {
        let port = self.db.port.to_string();
        let mut all = vec![
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            &self.db.host,
            "-P",
            &port,
            "-u",
            "whoever",
            "--skip-ssl",
            "-N",
            "-B",
            "-A",
        ];
        all.extend_from_slice(args);
        self.env.run_as(user, None, Path::new("/usr/bin/mariadb"), &all)
    }

    /// The `mariadb` client reading `script` on its standard input (one
    /// session; `--force` goes on after an error, as a user at the prompt would).
    fn mariadb_script(&self, user: &str, extra: &[&str], script: &str) -> Output {
        use std::io::Write;
        let port = self.db.port.to_string();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.env.cgroup)
            .args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/mariadb"])
            .args(["--no-defaults", "--protocol=TCP", "-h", &self.db.host, "-P", &port, "-u", "whoever"])
            .args(["--skip-ssl", "-N", "-B", "-A", "--force"])
            .args(extra)
            .current_dir(&self.env.dir)
            .env("HOME", &self.env.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn python(&self, user: &str, script: &str) -> Output {
        let path = self.env.path(&format!("script-{}.py", free_port()));
        std::fs::write(&path, script).unwrap();
        let port = self.db.port.to_string();
        self.env.run_as(user, None, Path::new("/usr/bin/python3"), &[path.to_str().unwrap(), &self.db.host, &port])
    }

    fn victim_present(&self) -> bool {
        self.db.admin(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'appdb' AND table_name = 'victim'",
        ) == "1"
    }

    /// Every statement of `user`'s sessions, once one of them has closed.
    fn statements_of(&self, user: &str) -> Vec<Value> {
        self.env.wait_session("of the test user", |s| s["user"] == user);
        let sessions = self.env.sessions();
        sessions
            .iter()
            .filter(|s| s["user"] == user && s["decision"] == "allow")
            .flat_map(|s| self.env.statements(s["id"].as_str()))
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn mariadb_cli_reads_writes_and_a_refused_drop_leaves_the_session_usable() {
    let w = world("mysqlcli");
    // One session; --force goes on after an error, as a user at the prompt would.
    let out = w.mariadb_script(
        &w.ana,
        &["appdb"],
        "SELECT count(*) FROM items;\nINSERT INTO items VALUES (1000, 'new');\nDROP TABLE victim;\nSELECT name FROM items WHERE id = 1000;\nuse appdb\nSELECT count(*) FROM victim;\n",
    );
    let t = text(&out);
    assert!(t.contains("100\n"), "count: {t}\n{}", w.env.agent_log());
    assert!(t.contains("ERROR 1227 (42000)") && t.contains("Gatehouse refused this statement"), "{t}");
    assert!(t.contains("analysts read and write items"), "the refusal names the rule: {t}");
    assert!(t.contains("new"), "the session must stay usable after the refusal: {t}");
    // What the server did: the row is there, the table survived, the DROP never reached it.
    assert_eq!(w.db.admin("SELECT name FROM appdb.items WHERE id = 1000"), "new");
    assert!(w.victim_present(), "victim must survive");
    assert!(!w.db.general_log().contains("DROP TABLE victim"), "{}", w.db.general_log());
    // The server saw Gatehouse's login, not the client's.
    assert!(w.db.general_log().contains(&format!("{}@", mysql::APP_USER)), "{}", w.db.general_log());

    let st = w.statements_of(&w.ana);
    let drop = st.iter().find(|x| x["text"].as_str().unwrap_or("").contains("DROP")).expect("drop recorded");
    assert_eq!(drop["decision"], "deny", "{drop}");
    assert_eq!(drop["rule"], "analysts read and write items", "{drop}");
    assert_eq!(drop["kinds"], "drop", "{drop}");
    let count = st.iter().find(|x| x["text"] == "SELECT count(*) FROM items").expect("select recorded");
    assert_eq!(count["decision"], "allow", "{count}");
    assert_eq!(count["rows"], 1, "{count}");
    assert_eq!(count["tables"], "appdb.items", "{count}");
    let insert = st.iter().find(|x| x["text"].as_str().unwrap_or("").starts_with("INSERT")).expect("insert recorded");
    assert_eq!(insert["rows"], 1, "affected rows: {insert}");
    // The client's `use` is COM_INIT_DB, decided and recorded as USE.
    let usedb = st.iter().find(|x| x["text"] == "USE `appdb`").expect("COM_INIT_DB recorded");
    assert_eq!(usedb["decision"], "allow", "{usedb}");
    let victim = st.iter().find(|x| x["text"] == "SELECT count(*) FROM victim").expect("select after use");
    assert_eq!(victim["tables"], "appdb.victim", "{victim}");
    assert_eq!(victim["rows"], 1, "{victim}");
    let session = w.env.sessions().into_iter().find(|s| s["user"] == w.ana.as_str()).unwrap();
    // Without a rule: an error in MySQL's own terms, not a dropped connection.
    let t = text(&w.mariadb(&w.eve, &["appdb", "-e", "SELECT 1"]));
    assert!(
        t.contains("ERROR 1045") && t.contains("Gatehouse refused this connection") && t.contains("no rule allows"),
        "{t}"
    );
    assert!(
        session["bytes_up"].as_u64().unwrap_or(0) > 0 && session["bytes_down"].as_u64().unwrap_or(0) > 0,
        "{session}"
    );
}

#[test]
fn executable_comments_and_load_data_local_are_refused() {
    let w = world("mysqlexec");
    let out = w.mariadb_script(
        &w.ana,
        &["appdb"],
        "SELECT 1 /*!50000 , (SELECT count(*) FROM victim) */;\nSELECT 2 /*M!100000 , 3 */;\nSELECT 'still here';\n",
    );
    let t = text(&out);
    assert_eq!(t.matches("executable comment").count(), 2, "{t}");
    assert!(t.contains("still here"), "{t}");
    assert!(!w.db.general_log().contains("/*!50000"), "{}", w.db.general_log());

    let data = w.env.path("rows.tsv");
    std::fs::write(&data, "7\n8\n").unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let load = format!("LOAD DATA LOCAL INFILE '{}' INTO TABLE victim", data.display());
    let out = w.mariadb(&w.ana, &["--local-infile=1", "appdb", "-e", &load]);
    let t = text(&out);
    assert!(t.contains("LOAD DATA LOCAL") && t.contains("not allowed"), "{t}");
    assert_eq!(w.db.admin("SELECT count(*) FROM appdb.victim"), "1", "no row may be loaded");
    assert!(!w.db.general_log().contains("LOAD DATA"), "{}", w.db.general_log());
}

#[test]
fn pymysql_multi_statement_text_with_a_drop_is_refused_whole() {
    let w = world("mysqlpy");
    let out = w.python(
        &w.ana,
        r#"
import json, sys
import pymysql
from pymysql.constants import CLIENT
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb",
                    client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True)
cur = c.cursor()
def run(sql):
    try:
        cur.execute(sql)
        print(json.dumps({"sql": sql, "rows": [list(r) for r in cur.fetchall()]}))
    except pymysql.MySQLError as e:
        print(json.dumps({"sql": sql, "error": e.args[0], "message": e.args[1]}))
run("SELECT count(*) FROM items")
run("SELECT 1; DROP TABLE victim")
run("DROP TABLE victim")
run("SELECT name FROM items WHERE id = 2")
run("SET NAMES sjis")
run("SELECT name FROM items WHERE id = 3")
"#,
    );
    let t = text(&out);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 6, "{t}\n{}", w.env.agent_log());
    assert_eq!(lines[0]["rows"], serde_json::json!([[100]]), "{t}");
    assert_eq!(lines[1]["error"], 1227, "{t}");
    assert!(lines[1]["message"].as_str().unwrap().contains("statements"), "{t}");
    assert_eq!(lines[2]["error"], 1227, "{t}");
    assert_eq!(lines[3]["rows"], serde_json::json!([["item 2"]]), "{t}");
    assert_eq!(lines[4]["error"], 1227, "{t}");
    assert!(lines[4]["message"].as_str().unwrap().contains("sjis"), "{t}");
    assert_eq!(lines[5]["rows"], serde_json::json!([["item 3"]]), "{t}");
    assert!(w.victim_present(), "victim must survive");
    assert!(!w.db.general_log().contains("DROP TABLE"), "{}", w.db.general_log());

    let st = w.statements_of(&w.ana);
    let multi = st.iter().find(|x| x["text"] == "SELECT 1; DROP TABLE victim").expect("multi recorded");
    assert_eq!(multi["decision"], "deny", "{multi}");
}

#[test]
fn masked_rule_masks_result_sets_for_the_cli_and_pymysql() {
    let w = world("mysqlmask");
    let q = "SELECT id, email, card, note FROM customers ORDER BY id";
    // The unmasked user sees what the server really returned.
    let real = text(&w.mariadb(&w.ana, &["appdb", "-e", q]));
    assert!(real.contains("zoe@example.com") && real.contains("4111111111111111"), "{real}\n{}", w.env.agent_log());
    assert!(real.contains("123-45-6789"), "{real}");

    let out = w.mariadb_script(
        &w.sam,
        &["appdb"],
        &format!("{q};\nSELECT CONCAT(card, '-') AS c, COUNT(*) FROM customers GROUP BY card ORDER BY card;\nSELECT 'ssn 123-45-6789' AS x;\nSELECT 1 FROM zoe_secret;\nSELECT 'after';\n"),
    );
    let t = text(&out);
    assert!(!t.contains("4111111111111111") && !t.contains("411111111111"), "card leaked: {t}\n{}", w.env.agent_log());
    assert!(!t.contains("zoe@example.com"), "email leaked: {t}");
    assert!(!t.contains("123-45-6789"), "the detector must mask the ssn: {t}");
    let first = t.lines().next().unwrap_or_default();
    let cells: Vec<&str> = first.split('\t').collect();
    assert_eq!(cells.len(), 4, "{t}");
    assert_eq!(cells[0], "1", "{t}");
    assert_eq!(cells[1], "****", "email is redacted: {t}");
    assert!(cells[2].ends_with("1111") && cells[2].len() >= 4, "card is partial: {t}");
    assert_eq!(cells[3], "ssn ****", "{t}");
    assert!(t.contains("2\tNULL\tNULL\tplain"), "NULL stays NULL, plain text passes: {t}");
    // Errors lose what they quote (they can echo values); the session goes on.
    assert!(t.contains("ERROR 1146") && t.contains("Table '****'"), "{t}");
    let err = t.lines().find(|l| l.starts_with("ERROR 1146")).unwrap_or_default();
    assert!(
        !err.contains("zoe_secret") && t.contains("after"),
        "the client echoes the query, not the server's message: {t}"
    );
    // The server did run them: it returned the real values to Gatehouse.
    let log = w.db.general_log();
    assert!(log.contains("SELECT CONCAT(card, '-')"), "{log}");

    let py = w.python(
        &w.sam,
        r#"
import json, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="whoever", password="", database="appdb", autocommit=True)
cur = c.cursor()
cur.execute("SELECT id, email, card FROM customers ORDER BY id")
print(json.dumps([list(r) for r in cur.fetchall()]))
cur.execute("SELECT UPPER(email), id + 0 FROM customers WHERE id = 1")
print(json.dumps([list(r) for r in cur.fetchall()]))
"#,
    );
    let pt = text(&py);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&py.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), 2, "{pt}\n{}", w.env.agent_log());
    assert_eq!(lines[0][0][0], 1, "{pt}");
    assert_eq!(lines[0][0][1], "****", "{pt}");
    let card = lines[0][0][2].as_str().unwrap();
    assert!(card.ends_with("1111") && !card.contains("41111111"), "{pt}");
    assert_eq!(lines[0][1], serde_json::json!([2, null, null]), "{pt}");
    // Expressions over a table with masked columns cannot be traced: masked (fail closed).
    assert!(!pt.contains("ZOE@EXAMPLE.COM"), "{pt}");
    assert_eq!(lines[1][0][1], Value::Null, "a computed number over a masked table is NULL: {pt}");

    let st = w.statements_of(&w.sam);
    let sel = st.iter().find(|x| x["text"] == q).expect("select recorded");
    assert_eq!(sel["decision"], "allow", "{sel}");
    assert_eq!(sel["rows"], 2, "{sel}");
    assert!(sel["masked"].as_str().unwrap_or("").contains("columns"), "{sel}");
}
