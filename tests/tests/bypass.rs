//! The statement policy against a user who knows PostgreSQL: every attack
//! class of the statement-policy issue, run through the real agent and a
//! real PostgreSQL 15 as an unprivileged user, asserting on what the
//! *server* did — rows unchanged, role settings unchanged, none of the
//! attack's code run (every piece of planted code writes to `pwned` first),
//! the refused text never in the server's statement log — not only on
//! Gatehouse's verdict. Harmless client metadata queries must keep working.
//! Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::path::Path;
use std::process::Output;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    /// `analysts`: select only, public tables, never salaries.
    ana: String,
    /// `developers`: every ordinary kind, but no drop, truncate or writes without WHERE.
    dev: String,
    /// `reporters`: select only, with timeouts.
    rep: String,
    /// `pathers`: select, SET ROLE, create, alter, drop and revoke, never a table in `hr` or `hr_reader`.
    pat: String,
    /// `coders`: select, create and define code (but not call it), never a table in `hr`.
    cody: String,
}

/// Objects a user could reach: each piece of code writes to `pwned` before
/// anything else, so the test can tell whether it ever ran.
const FIXTURE: &str = "
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount int);
INSERT INTO orders SELECT g, g % 10, g * 10 FROM generate_series(1, 100) g;
CREATE TABLE customers (id int PRIMARY KEY, email text);
INSERT INTO customers SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 10) g;
CREATE SCHEMA hr;
CREATE TABLE hr.salaries (emp int, amount int);
INSERT INTO hr.salaries VALUES (1, 123456), (2, 234567);
ANALYZE hr.salaries;
CREATE TABLE pwned (what text);
CREATE FUNCTION public.lower(int) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO pwned VALUES ('lower(int)'); DELETE FROM orders; SELECT 'x' $$;
CREATE FUNCTION evil_op(int, int) RETURNS bool LANGUAGE sql AS
  $$ INSERT INTO pwned VALUES ('operator') RETURNING true $$;
CREATE OPERATOR #@# (LEFTARG = int, RIGHTARG = int, FUNCTION = evil_op);
CREATE FUNCTION evil_check(int) RETURNS bool LANGUAGE sql AS
  $$ INSERT INTO pwned VALUES ('domain check') RETURNING true $$;
CREATE DOMAIN checked AS int CHECK (evil_check(VALUE));
CREATE FUNCTION score(orders) RETURNS int LANGUAGE sql AS
  $$ INSERT INTO pwned VALUES ('attribute notation') RETURNING 1 $$;
CREATE VIEW public.pay AS SELECT * FROM hr.salaries;
CREATE TABLE hr.bonuses (emp int, amount int) PARTITION BY RANGE (emp);
CREATE TABLE public.bonuses_low PARTITION OF hr.bonuses FOR VALUES FROM (0) TO (1000);
INSERT INTO hr.bonuses VALUES (1, 777777);
CREATE TABLE public.salaries_extra () INHERITS (hr.salaries);
INSERT INTO public.salaries_extra VALUES (3, 345678);
CREATE SCHEMA \"PUBLIC\";
CREATE TABLE \"PUBLIC\".orders AS SELECT * FROM hr.salaries;
CREATE TABLE audit_log (at timestamptz);
CREATE FUNCTION touch() RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO audit_log VALUES (now()) RETURNING 1 $$;
CREATE VIEW public.touching AS SELECT touch() AS t;
";

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let analysts = env.group("analyst");
    let developers = env.group("dev");
    let reporters = env.group("rep");
    let ana = env.user("ana", &[&analysts]);
    let dev = env.user("dev", &[&developers]);
    let rep = env.user("rep", &[&reporters]);
    let pathers = env.group("pathers");
    let pat = env.user("pat", &[&pathers]);
    let coders = env.group("coders");
    let cody = env.user("cody", &[&coders]);
    let pg = PgServer::start(&env.dir, &loopback(60), free_port(), "log_statement = 'all'\nlog_min_messages = info\n");
    pg.admin_db("appdb", FIXTURE);
    // One shared login for everyone: the policy is the only difference.
    pg.admin_db(
        "appdb",
        &format!(
            "GRANT ALL ON ALL TABLES IN SCHEMA public, hr, \"PUBLIC\" TO {app};
             GRANT USAGE ON SCHEMA hr, \"PUBLIC\" TO {app};
             ALTER TABLE orders OWNER TO {app}; ALTER TABLE customers OWNER TO {app};",
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
name = "analysts read"
who = {{ groups = ["{analysts}"] }}
backend = "appdb"
statements = ["select"]
tables = ["public.*"]
deny_tables = ["*.salaries", "hr.bonuses"]

[[rule]]
name = "developers"
who = {{ groups = ["{developers}"] }}
backend = "appdb"
statements = ["*"]
deny_statements = ["drop", "truncate", "update_without_where", "delete_without_where"]

[[rule]]
name = "reporters"
who = {{ groups = ["{reporters}"] }}
backend = "appdb"
statements = ["select"]
statement_timeout = "1s"
idle_in_transaction_timeout = "5s"

[[rule]]
name = "pathers"
who = {{ groups = ["{pathers}"] }}
backend = "appdb"
statements = ["select", "set_role", "create", "revoke", "alter", "drop"]
deny_tables = ["hr.*", "hr_reader.*"]

[[rule]]
name = "coders"
who = {{ groups = ["{coders}"] }}
backend = "appdb"
statements = ["select", "create", "define_code"]
deny_tables = ["hr.*"]
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { pg, env, ana, dev, rep, pat, cody }
}

impl World {
    fn psql(&self, user: &str, extra: &[&str], sql: &str) -> Output {
        let port = self.pg.port.to_string();
        let mut all = vec!["-h", &self.pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t"];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["-c", sql]);
        self.env.run_as(user, None, Path::new("/usr/bin/psql"), &all)
    }

    fn python(&self, user: &str, script: &str) -> String {
        let path = self.env.path(&format!("script-{}.py", free_port()));
        std::fs::write(&path, script).unwrap();
        let port = self.pg.port.to_string();
        let o =
            self.env.run_as(user, None, Path::new("/usr/bin/python3"), &[path.to_str().unwrap(), &self.pg.host, &port]);
        text(&o)
    }

    /// A raw-client script (`pg::RAW_CLIENT_PY`) with `OTHER_SESSION_PY`'s
    /// helpers, then `body`.
    fn python_with_another_session(&self, user: &str, body: &str) -> String {
        self.python(user, &format!("{}{OTHER_SESSION_PY}{body}", pg::RAW_CLIENT_PY))
    }

    fn count(&self, sql: &str) -> i64 {
        self.pg.admin_db("appdb", sql).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The server did nothing an attack wanted.
    fn assert_server_untouched(&self) {
        assert_eq!(
            self.count("SELECT count(*) FROM pwned"),
            0,
            "planted code ran: {}",
            self.pg.admin_db("appdb", "SELECT string_agg(what, ', ') FROM pwned")
        );
        assert_eq!(self.count("SELECT count(*) FROM orders"), 100, "orders rows changed");
        assert_eq!(self.count("SELECT sum(amount) FROM orders"), 50500, "orders amounts changed");
        assert_eq!(self.count("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND table_schema = 'public'"), 3);
        assert_eq!(
            self.pg.admin("SELECT coalesce(string_agg(setconfig::text, ';'), '') FROM pg_db_role_setting"),
            "",
            "a setting was stored for later sessions"
        );
        assert_eq!(self.count("SELECT count(*) FROM pg_proc WHERE oid >= 16384"), 5, "a function was defined");
        assert_eq!(self.count("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"), 0, "a trigger was attached");
    }

    /// `sql` is refused by Gatehouse and never reaches the server.
    fn refused(&self, user: &str, sql: &str, marker: &str) {
        let o = self.psql(user, &[], sql);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains("Gatehouse refused"),
            "{sql:?} as {user} should be refused:\n{t}\n{}",
            self.env.agent_log()
        );
        assert!(!self.pg.log().contains(marker), "{sql:?} reached the server:\n{}", self.pg.log());
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn code_reached_without_calling_it_by_a_new_name_is_refused() {
    let w = world("bycode");
    // Each statement carries a unique comment so the server log shows whether it arrived.
    for (i, sql) in [
        "SELECT lower(42)",
        "SELECT lower(id) FROM orders",
        "SELECT 1 #@# 2",
        "SELECT 1::checked",
        "SELECT CAST(7 AS checked)",
        "SELECT o.score FROM orders o",
        "SELECT (o).score FROM orders o",
        "SELECT * FROM orders WHERE id #@# 1",
        "SELECT 1 OPERATOR(public.#@#) 2",
        "SELECT set_config('search_path', 'hr', false)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_sleep(1)",
        // Runs the SELECT it is given as text: a denied table's rows in a tsquery.
        "SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, to_tsquery(''simple'', amount::text) FROM hr.salaries')",
        "SELECT pg_catalog.ts_rewrite(query => 'x'::tsquery, \"select\" => 'SELECT ''x''::tsquery, ''y''::tsquery')",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("attack_code_{i}");
        for user in [&w.ana, &w.dev] {
            w.refused(user, &format!("{sql} /* {marker} */"), &marker);
        }
    }
    // Defining or attaching code is its own kind that "*" does not cover.
    for (i, sql) in [
        "CREATE FUNCTION public.upper(int) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$",
        "CREATE FUNCTION sneaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION evil_check()",
        "ALTER TABLE orders ADD CONSTRAINT c CHECK (evil_check(id))",
        "ALTER TABLE orders ALTER COLUMN amount SET DEFAULT lower(1)::int",
        "CREATE INDEX i ON orders ((lower(id)))",
        "CREATE OPERATOR ## (LEFTARG = int, RIGHTARG = int, FUNCTION = evil_op)",
        "CREATE CAST (int AS checked) WITH FUNCTION evil_check(int)",
        "ALTER FUNCTION score(orders) RENAME TO upper",
        "ALTER TABLE orders DISABLE TRIGGER ALL",
        "DO $$ BEGIN PERFORM 1; END $$",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("attack_ddl_{i}");
        w.refused(&w.dev, &format!("{sql} /* {marker} */"), &marker);
    }
    // The same shapes with built-in code work.
    let o = w.psql(&w.dev, &[], "SELECT upper('ABC'), trim(email), 1 + 2, 'a' LIKE 'a' FROM customers WHERE id = 1");
    assert!(o.status.success(), "{}", text(&o));
    let o = w.psql(
        &w.ana,
        &[],
        "SELECT count(*), stddev(amount), percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders",
    );
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    // ts_rewrite's three-tsquery form runs no SQL.
    let o = w.psql(&w.ana, &[], "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "'b' & 'c'", "{}\n{}", text(&o), w.env.agent_log());
    w.assert_server_untouched();
}

#[test]
fn names_resolve_as_the_server_resolves_them() {
    let w = world("bynames");
    for (i, sql) in [
        "SELECT * FROM pg_stats WHERE tablename = 'salaries'",
        "SELECT * FROM pg_catalog.pg_stats",
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_user_mappings",
        "SELECT * FROM pay",
        "SELECT * FROM \"PUBLIC\".orders",
        "SELECT * FROM hr.salaries",
        "SET search_path = hr; SELECT * FROM salaries",
        "SET search_path = \"PUBLIC\"; SELECT * FROM orders",
        "WITH x AS (SELECT * FROM pay) SELECT * FROM x",
        "SELECT * FROM orders FOR UPDATE",
        "PREPARE p AS DELETE FROM orders",
        // A partition or an inheritance child of a denied table holds its rows.
        "SELECT * FROM bonuses_low",
        "SELECT * FROM public.salaries_extra",
        // ROLLBACK TO a savepoint puts back the path set before it (`"PUBLIC"`, whose
        // `orders` holds salaries), not the one set after.
        "BEGIN; SET search_path = \"PUBLIC\"; SAVEPOINT a; SET search_path = public; ROLLBACK TO a; SELECT * FROM orders; COMMIT",
        "SET search_path = \"PUBLIC\"; BEGIN; SET LOCAL search_path = public; COMMIT; SELECT * FROM orders",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("attack_name_{i}");
        w.refused(&w.ana, &format!("{sql} /* {marker} */"), &marker);
    }
    // The same, one statement at a time (the session's path once the transaction ends), and
    // a ROLLBACK of a transaction that set the path: the server keeps the path from before.
    let salaries = |o: &Output| text(o).contains("123456");
    for (setup, attack) in [
        (
            vec![
                "BEGIN",
                "SET search_path = \"PUBLIC\"",
                "SAVEPOINT a",
                "SET search_path = public",
                "ROLLBACK TO a",
                "COMMIT",
            ],
            "SELECT * FROM orders /* attack_rollback_to */",
        ),
        (
            vec!["SET search_path = \"PUBLIC\"", "BEGIN", "SET search_path = public", "ROLLBACK"],
            "SELECT * FROM orders /* attack_rollback */",
        ),
        // SET LOCAL lasts until the transaction ends: the path from before it is back.
        (
            vec!["SET search_path = \"PUBLIC\"", "BEGIN", "SET LOCAL search_path = public", "COMMIT"],
            "SELECT * FROM orders /* attack_set_local */",
        ),
        (
            vec!["SET search_path = \"PUBLIC\"", "BEGIN; SET LOCAL search_path TO DEFAULT; COMMIT"],
            "SELECT * FROM orders /* attack_set_local_default */",
        ),
        // COMMIT AND CHAIN keeps the path; the ROLLBACK after it ends only the chained transaction.
        (
            vec!["BEGIN", "SET search_path = \"PUBLIC\"", "COMMIT AND CHAIN", "ROLLBACK"],
            "SELECT * FROM orders /* attack_chain */",
        ),
    ] {
        let mut args: Vec<&str> = Vec::new();
        for s in &setup {
            args.extend(["-c", s]);
        }
        args.extend(["-c", "SHOW search_path", "-c", attack]);
        let o = w.psql(&w.ana, &args, "SELECT 1");
        let t = text(&o);
        assert!(
            t.contains("\"PUBLIC\"") && t.contains("Gatehouse refused") && !salaries(&o),
            "{attack}: {t}\n{}",
            w.env.agent_log()
        );
        let marker = attack.split("/* ").nth(1).and_then(|m| m.split(' ').next()).unwrap_or_default();
        assert!(!w.pg.log().contains(marker), "{attack} reached the server");
    }
    // Allowed: public tables, metadata, and search_path changes that stay within the rule.
    for sql in [
        "SELECT count(*) FROM orders",
        "SET search_path = public; SELECT count(*) FROM orders",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        "SELECT relname FROM pg_class WHERE relname = 'orders'",
    ] {
        let o = w.psql(&w.ana, &[], sql);
        assert!(o.status.success(), "{sql}: {}\n{}", text(&o), w.env.agent_log());
    }
    w.assert_server_untouched();
}

#[test]
fn writes_that_touch_every_row_and_lasting_role_changes_are_refused() {
    let w = world("bywrites");
    for (i, sql) in [
        "DELETE FROM orders WHERE 'true'",
        "DELETE FROM orders WHERE 1 = 1.0",
        "DELETE FROM orders WHERE 1 IN (1)",
        "DELETE FROM orders WHERE 2 BETWEEN 1 AND 3",
        "DELETE FROM orders WHERE 1 IS DISTINCT FROM 2",
        "DELETE FROM orders WHERE (SELECT true)",
        "DELETE FROM orders WHERE coalesce(true, false)",
        "DELETE FROM orders WHERE EXISTS (SELECT 1)",
        "DELETE FROM orders WHERE id = 1 OR (SELECT true)",
        "DELETE FROM orders USING customers WHERE email IS NOT NULL",
        "UPDATE orders SET amount = 0 WHERE 'true'",
        "MERGE INTO orders o USING customers c ON true WHEN MATCHED THEN DELETE",
        "MERGE INTO orders o USING customers c ON c.id = 1 WHEN MATCHED THEN UPDATE SET amount = 0",
        "INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET amount = 0",
        "ALTER TABLE orders DROP COLUMN amount",
        "ALTER TABLE orders DROP CONSTRAINT orders_pkey",
        "ALTER TABLE orders ALTER COLUMN amount TYPE int USING 0",
        "PREPARE q AS DELETE FROM orders",
        "ALTER ROLE gh_app SET role = 'postgres'",
        "ALTER ROLE gh_app SET search_path = hr",
        "ALTER ROLE gh_app SET default_transaction_read_only = off",
        "ALTER DATABASE appdb SET client_encoding = 'SJIS'",
        "ALTER ROLE gh_app RESET ALL",
        "SET ROLE postgres",
        "TRUNCATE orders",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("attack_write_{i}");
        w.refused(&w.dev, &format!("{sql} /* {marker} */"), &marker);
    }
    // Restricted writes work, and so does a prepared statement decided on its text.
    for sql in [
        "DELETE FROM orders WHERE id = 1000",
        "UPDATE orders SET amount = amount WHERE id = 1",
        "DELETE FROM orders USING customers WHERE orders.customer_id = customers.id AND customers.id = 999",
        "PREPARE r AS SELECT count(*) FROM orders; EXECUTE r",
        "ALTER ROLE gh_app IN DATABASE appdb SET work_mem = '8MB'; ALTER ROLE gh_app IN DATABASE appdb RESET work_mem",
    ] {
        let o = w.psql(&w.dev, &[], sql);
        assert!(o.status.success(), "{sql}: {}\n{}", text(&o), w.env.agent_log());
    }
    w.assert_server_untouched();
}

#[test]
fn encodings_that_hide_quotes_are_refused_wherever_they_can_be_set() {
    let w = world("byenc");
    let port = w.pg.port.to_string();
    for conninfo in [
        format!("host={} port={port} dbname=appdb client_encoding=SJIS", w.pg.host),
        format!("host={} port={port} dbname=appdb client_encoding=Shift-JIS", w.pg.host),
        format!("host={} port={port} dbname=appdb options='-c client_encoding=WIN932'", w.pg.host),
        format!("host={} port={port} dbname=appdb client_encoding=windows936", w.pg.host),
    ] {
        let o = w.env.run_as(&w.ana, None, Path::new("/usr/bin/psql"), &[&conninfo, "-X", "-c", "SELECT 1"]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains("client_encoding"), "{conninfo}: {t}");
    }
    for (i, sql) in
        ["SET client_encoding = 'SJIS'", "SET NAMES 'BIG5'", "SET client_encoding TO 'mskanji'"].iter().enumerate()
    {
        let marker = format!("attack_enc_{i}");
        w.refused(&w.dev, &format!("{sql} /* {marker} */"), &marker);
    }
    // A role default the client does not override: the server reports it at
    // login, and Gatehouse ends the session before any statement is read.
    w.pg.admin(&format!("ALTER ROLE {} SET client_encoding = 'SJIS'", pg::APP_ROLE));
    let out = w.python(
        &w.dev,
        r#"
import sys, socket, struct
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
body = b"user\x00x\x00database\x00appdb\x00\x00"
s.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
# The smuggling payload: 0x95 0x5c is one SJIS character; UTF-8 readers see a backslash.
q = b"SELECT E'\x95\\'; DELETE FROM orders; --'\x00"
s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
s.settimeout(10)
data = b""
try:
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
except Exception as e:
    data += repr(e).encode()
print(data)
"#,
    );
    assert!(out.contains("client_encoding") && out.contains("SJIS"), "{out}\n{}", w.env.agent_log());
    w.pg.admin(&format!("ALTER ROLE {} RESET client_encoding", pg::APP_ROLE));
    // A setting that changes how the server reads SQL, with the next
    // message pipelined behind it in the same write: the second text is read
    // with standard_conforming_strings off, as the server will read it.
    let out = w.python(
        &w.dev,
        r#"
import sys, socket, struct
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def q(text): t = text.encode() + b"\x00"; return b"Q" + struct.pack("!i", 4 + len(t)) + t
body = b"user\x00x\x00database\x00appdb\x00\x00"
s.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
s.sendall(q("SET standard_conforming_strings = off") + q("SELECT 'a\\'' ; DELETE FROM orders; --' /* attack_scs */") + q("SELECT 42"))
s.settimeout(10)
data = b""
try:
    while data.count(b"Z\x00\x00\x00\x05") < 4:
        c = s.recv(65536)
        if not c: break
        data += c
except Exception as e:
    data += repr(e).encode()
print(data)
"#,
    );
    assert!(out.contains("Gatehouse refused") && out.contains("delete_without_where"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("42"), "the session goes on: {out}");
    w.assert_server_untouched();
}

#[test]
fn guard_rails_hold_on_the_server() {
    let w = world("byguard");
    let o = w.psql(&w.ana, &[], "SHOW default_transaction_read_only");
    assert_eq!(text(&o).trim(), "on", "a select-only rule logs in read-only\n{}", w.env.agent_log());
    for (i, sql) in [
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "BEGIN; SET TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("attack_guard_{i}");
        w.refused(&w.ana, &format!("{sql} /* {marker} */"), &marker);
    }
    // Code attached by the DBA runs as part of an allowed read; its write is
    // stopped by the server, not by Gatehouse's reading of the text.
    let o = w.psql(&w.ana, &[], "SELECT * FROM touching");
    assert!(text(&o).contains("read-only transaction"), "{}", text(&o));
    assert_eq!(w.count("SELECT count(*) FROM audit_log"), 0);
    // RESET ALL and DISCARD ALL return to the login's settings, guard included.
    let o = w.psql(&w.ana, &["-c", "RESET ALL", "-c", "DISCARD ALL"], "SHOW default_transaction_read_only");
    assert_eq!(text(&o).trim().lines().last(), Some("on"), "{}", text(&o));
    // Timeouts set by the rule hold and cannot be lifted.
    let o = w.psql(&w.rep, &[], "SHOW statement_timeout");
    assert_eq!(text(&o).trim(), "1s", "{}", text(&o));
    w.refused(&w.rep, "SET statement_timeout = 0 /* attack_timeout */", "attack_timeout");
    let o = w.psql(&w.rep, &[], "SELECT count(*) FROM generate_series(1, 500000000)");
    assert!(text(&o).contains("statement timeout"), "{}", text(&o));
    let o = w.psql(&w.rep, &["-c", "SHOW idle_in_transaction_session_timeout"], "SELECT 1");
    assert!(text(&o).contains("5s"), "{}", text(&o));
    w.assert_server_untouched();
}

#[test]
fn client_metadata_works_for_a_select_only_rule() {
    let w = world("bymeta");
    for meta in [
        "\\d",
        "\\d orders",
        "\\dt",
        "\\df",
        "\\l",
        "\\dn",
        "\\du",
        "\\dv",
        "\\di",
        "\\dT",
        "\\d+ orders",
        "\\conninfo",
    ] {
        let o = w.psql(&w.ana, &[], meta);
        assert!(
            o.status.success() && !text(&o).contains("refused"),
            "psql {meta}: {}\n{}",
            text(&o),
            w.env.agent_log()
        );
    }
    let out = w.python(
        &w.ana,
        r#"
import sys, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
for q in [
    "SELECT current_schema()", "SELECT current_database()", "SELECT pg_backend_pid() > 0", "SELECT pg_is_in_recovery()",
    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    "SELECT stddev(amount), percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders",
    "SELECT lpad('a', 3, '-'), array_to_string(ARRAY[1, 2], ','), to_json(1), 'a_b' LIKE 'a!_b' ESCAPE '!'",
    "SELECT 'abc' SIMILAR TO 'a%', (DATE '2001-02-16', DATE '2001-12-21') OVERLAPS (DATE '2001-10-30', DATE '2002-10-30')",
    "SELECT current_setting('server_version_num')", "SHOW search_path",
    "DISCARD ALL", "RESET ALL", "SET search_path = public", "BEGIN", "COMMIT",
]:
    cur = conn.execute(q)
    if cur.description:
        cur.fetchall()
print("psycopg ok")
"#,
    );
    assert!(out.contains("psycopg ok"), "{out}\n{}", w.env.agent_log());
    let out = w.python(
        &w.ana,
        r#"
import sys, asyncio, asyncpg
async def main():
    pool = await asyncpg.create_pool(host=sys.argv[1], port=int(sys.argv[2]), database="appdb", user="whoever", ssl=False, min_size=1, max_size=1)
    for _ in range(3):
        async with pool.acquire() as c:
            print("rows", await c.fetchval("SELECT count(*) FROM orders WHERE id <= $1", 5))
    await pool.close()
    print("asyncpg pool ok")
asyncio.run(main())
"#,
    );
    assert!(out.contains("asyncpg pool ok") && out.contains("rows 5"), "{out}\n{}", w.env.agent_log());
    let out = w.python(
        &w.ana,
        r#"
import sys, sqlalchemy
e = sqlalchemy.create_engine(f"postgresql+psycopg2://whoever@{sys.argv[1]}:{sys.argv[2]}/appdb")
with e.connect() as c:
    print("tables", sorted(sqlalchemy.inspect(c).get_table_names()))
    print("count", c.execute(sqlalchemy.text("SELECT count(*) FROM orders")).scalar())
print("sqlalchemy ok")
"#,
    );
    assert!(out.contains("sqlalchemy ok") && out.contains("count 100"), "{out}\n{}", w.env.agent_log());
}

/// The server reads an unqualified name from the first schema on the path
/// that the current role may use (USAGE) and that holds it, and `$user` is
/// the current role: a schema the login cannot use, or a SET ROLE, makes it
/// read another relation than the first one holding the name.
#[test]
fn names_resolve_as_the_current_role_resolves_them() {
    let w = world("byrole");
    w.pg.admin_db(
        "appdb",
        &format!(
            "CREATE SCHEMA locked; CREATE TABLE locked.bonuses (emp int, amount int); REVOKE ALL ON SCHEMA locked FROM PUBLIC;
             CREATE ROLE hr_reader; GRANT hr_reader TO {app};
             CREATE SCHEMA hr_reader AUTHORIZATION hr_reader;
             CREATE TABLE hr_reader.orders AS SELECT * FROM hr.salaries; ALTER TABLE hr_reader.orders OWNER TO hr_reader;
             GRANT USAGE ON SCHEMA hr TO hr_reader; GRANT SELECT ON hr.bonuses TO hr_reader;
             ALTER SCHEMA hr OWNER TO {app}; ALTER TABLE hr.bonuses OWNER TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let leaked = |o: &Output| text(o).contains("777777") || text(o).contains("123456");
    let o = w.psql(
        &w.pat,
        &["-c", "CREATE SCHEMA mine", "-c", "CREATE TABLE mine.bonuses (emp int, amount int)"],
        "SELECT 1",
    );
    assert!(o.status.success(), "{}", text(&o));
    for (setup, attack) in [
        // `locked` holds a `bonuses` the login may not use: the server skips it for hr.bonuses.
        ("SET search_path = locked, hr", "SELECT amount FROM bonuses /* attack_usage */"),
        // `$user` is the role set, not the login: the server reads hr_reader.orders.
        ("SET ROLE hr_reader", "SELECT amount FROM orders /* attack_user */"),
        // Still the role after the path is set again: `$user` is hr_reader.
        ("SET ROLE hr_reader; SET search_path = \"$user\", public", "SELECT amount FROM orders /* attack_user_path */"),
        // The schemas the server passes by are the role's: hr_reader may not use `mine`.
        ("SET ROLE hr_reader; SET search_path = mine, hr", "SELECT amount FROM bonuses /* attack_role_usage */"),
        // Its own schema, whose USAGE it revokes from itself in the transaction that reads.
        (
            "SET search_path = mine, hr",
            "BEGIN; REVOKE USAGE ON SCHEMA mine FROM CURRENT_USER; SELECT amount FROM bonuses /* attack_revoke */; COMMIT",
        ),
        // Its own table, renamed, moved or dropped in the transaction that reads.
        (
            "SET search_path = mine, hr",
            "BEGIN; ALTER TABLE mine.bonuses RENAME TO gone; SELECT amount FROM bonuses /* attack_rename */; ROLLBACK",
        ),
        (
            "SET search_path = mine, hr",
            "BEGIN; ALTER TABLE mine.bonuses SET SCHEMA public; SELECT amount FROM bonuses /* attack_move */; ROLLBACK",
        ),
        (
            "SET search_path = mine, hr",
            "BEGIN; DROP TABLE mine.bonuses; SELECT amount FROM bonuses /* attack_drop */; ROLLBACK",
        ),
        (
            "SET search_path = mine, hr",
            "BEGIN; ALTER SCHEMA mine RENAME TO mine2; SELECT amount FROM bonuses /* attack_schema */; ROLLBACK",
        ),
        // What the rule denies, renamed out from under it (the login owns `hr` and `hr.bonuses`).
        ("ALTER SCHEMA hr RENAME TO hrx /* attack_schema_rename */", "SELECT amount FROM hrx.bonuses"),
        ("ALTER TABLE hr.bonuses RENAME TO bx /* attack_table_rename */", "SELECT amount FROM hr.bx"),
        ("ALTER TABLE hr.bonuses SET SCHEMA public /* attack_table_move */", "SELECT amount FROM public.bonuses"),
        // The same, committed, and read at once (before or after Gatehouse reads the catalog again).
        (
            "SET search_path = mine, hr; REVOKE USAGE ON SCHEMA mine FROM CURRENT_USER",
            "SELECT amount FROM bonuses /* attack_revoked */",
        ),
    ] {
        let o = w.psql(&w.pat, &["-c", setup, "-c", attack], "SELECT 1");
        let t = text(&o);
        assert!(t.contains("Gatehouse refused") && !leaked(&o), "{setup}; {attack}: {t}\n{}", w.env.agent_log());
        let marker = [setup, attack]
            .iter()
            .find_map(|x| x.split("/* ").nth(1).and_then(|m| m.split(' ').next()))
            .unwrap_or_else(|| panic!("{setup}; {attack}: no marker"));
        assert!(!w.pg.log().contains(marker), "{setup}; {attack} reached the server");
    }
    // Dropping whatever the login owns would drop hr.bonuses too.
    let o = w.psql(&w.pat, &["-c", "DROP OWNED BY CURRENT_USER /* attack_drop_owned */"], "SELECT 1");
    assert!(text(&o).contains("Gatehouse refused"), "{}\n{}", text(&o), w.env.agent_log());
    assert!(!w.pg.log().contains("attack_drop_owned"), "DROP OWNED reached the server");
    assert_eq!(w.count("SELECT count(*) FROM hr.bonuses"), 1);
    // Without them, the same names are public's and allowed.
    let o = w.psql(&w.pat, &["-c", "SELECT count(*) FROM orders"], "SELECT 1");
    assert!(o.status.success() && text(&o).contains("100"), "{}\n{}", text(&o), w.env.agent_log());
}

/// A relation taken out of a name's way by another session of the same
/// login: its transaction commits before Gatehouse has read the catalog
/// again, and a statement of this session that arrives in between must not
/// be resolved with the catalog from before.
#[test]
fn a_name_moved_by_another_session_counts_as_moved() {
    let w = world("bymoved");
    let o = w.psql(
        &w.pat,
        &["-c", "CREATE SCHEMA mine", "-c", "CREATE TABLE mine.bonuses (emp int, amount int)"],
        "SELECT 1",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = w.python(
        &w.pat,
        &format!(
            "{}{}",
            pg::RAW_CLIENT_PY,
            r#"
import time
def values(frames): return [f[1][6:].decode() for f in frames if f[0] == b"D"]
# A second session of the same user, which renames.
b = socket.create_connection((sys.argv[1], int(sys.argv[2])))
b.settimeout(20)
start = b"user\x00x\x00database\x00appdb\x00\x00"
b.sendall(struct.pack("!ii", 8 + len(start), 196608) + start)
def b_ready():
    data = b""
    while not (len(data) >= 6 and data[-6:-1] == b"Z\x00\x00\x00\x05"):
        c = b.recv(65536)
        if not c: raise SystemExit("second session closed")
        data += c
    return data
b_ready()
query("path", "SET search_path = mine, hr")
for i in range(3):
    b.sendall(msg(b"Q", cstr("ALTER TABLE mine.bonuses RENAME TO gone")))
    print("rename", b"ALTER TABLE\x00" in b_ready(), flush=True)
    s.sendall(msg(b"Q", cstr("SELECT amount FROM bonuses /* attack_moved */")))
    a = answer(); print("read", codes(a), values(a), flush=True)
    b.sendall(msg(b"Q", cstr("ALTER TABLE mine.gone RENAME TO bonuses")))
    print("back", b"ALTER TABLE\x00" in b_ready(), flush=True)
    time.sleep(0.5)
s.sendall(msg(b"X", b"")); b.sendall(msg(b"X", b""))
"#
        ),
    );
    assert_eq!(out.matches("rename True").count(), 3, "{out}\n{}", w.env.agent_log());
    assert!(!out.contains("777777"), "{out}\n{}", w.env.agent_log());
    assert_eq!(out.matches("read ['42501', 'Z']").count(), 3, "{out}\n{}", w.env.agent_log());
    assert!(!w.pg.log().contains("attack_moved"), "a read past the moved name reached the server");
}

/// For a raw-client script: `other(sql)` runs `sql` in another session of
/// the same user (psql), then has Gatehouse read the catalog again (a
/// statement naming a relation it does not hold, refused); `values(frames)`
/// are the first column's values of an answer.
const OTHER_SESSION_PY: &str = r#"
import subprocess, time
def values(frames): return [f[1][6:].decode() for f in frames if f[0] == b"D"]
def other(sql):
    o = subprocess.run(["psql", "-X", "-h", sys.argv[1], "-p", sys.argv[2], "-d", "appdb", "-U", "x", "-c", sql],
                       capture_output=True, text=True)
    print("other", o.returncode, o.stdout.strip(), o.stderr.strip(), flush=True)
    time.sleep(1)
    query("look", "SELECT 1 FROM no_such_relation_anywhere")
"#;

/// A session's search path is the one it began with: a default stored for
/// the role (`ALTER ROLE … SET search_path`) or the database later does not
/// change it, though the catalog Gatehouse reads afterwards has the new one.
/// Likewise the role a session runs as (`ALTER ROLE … SET role`), which is
/// `$user` on the path: every session runs as its login.
#[test]
fn a_session_keeps_the_search_path_and_role_it_began_with() {
    let w = world("bydefault");
    let o = w.psql(
        &w.pat,
        &[
            "-c",
            "CREATE SCHEMA mine",
            "-c",
            "CREATE TABLE mine.bonuses (emp int, amount int)",
            "-c",
            "ALTER ROLE CURRENT_USER SET search_path = hr, mine",
        ],
        "SELECT 1",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = w.python_with_another_session(
        &w.pat,
        r#"
# This session began with hr, mine. Another one stores mine, hr for the sessions to come.
other("ALTER ROLE CURRENT_USER SET search_path = mine, hr")
s.sendall(msg(b"Q", cstr("SELECT amount FROM bonuses /* attack_default */")))
a = answer(); print("default", codes(a), values(a), flush=True)
s.sendall(msg(b"Q", cstr("RESET search_path; SELECT amount FROM bonuses /* attack_reset */")))
a = answer(); print("reset", codes(a), values(a), flush=True)
s.sendall(msg(b"X", b""))
"#,
    );
    assert!(out.contains("other 0"), "{out}\n{}", w.env.agent_log());
    assert!(!out.contains("777777"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("default ['42501', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("reset ['42501', 'Z']"), "{out}\n{}", w.env.agent_log());
    let log = w.pg.log();
    assert!(!log.contains("attack_default") && !log.contains("attack_reset"), "an attack reached the server");
    // A new session begins with the stored default, and reads what it names.
    let o = w.psql(&w.pat, &["-c", "SHOW search_path"], "SELECT count(*) FROM bonuses");
    assert!(o.status.success(), "{}\n{}", text(&o), w.env.agent_log());
    assert_eq!(text(&o).lines().collect::<Vec<_>>(), ["\"mine\", \"hr\"", "0"], "{}", text(&o));

    // A default role stored for the login: sessions that began with it run
    // as hr_reader, whose `$user` schema holds a copy of salaries as `orders`.
    w.pg.admin_db(
        "appdb",
        &format!(
            "CREATE ROLE hr_reader; GRANT hr_reader TO {app};
             CREATE SCHEMA hr_reader AUTHORIZATION hr_reader;
             CREATE TABLE hr_reader.orders AS SELECT * FROM hr.salaries; ALTER TABLE hr_reader.orders OWNER TO hr_reader;",
            app = pg::APP_ROLE
        ),
    );
    let o = w.psql(
        &w.pat,
        &["-c", "ALTER ROLE CURRENT_USER RESET search_path"],
        "ALTER ROLE CURRENT_USER SET role = 'hr_reader'",
    );
    assert!(o.status.success(), "{}", text(&o));
    // A name the catalog does not hold: Gatehouse reads it again (refused).
    let _ = w.psql(&w.pat, &[], "SELECT 1 FROM no_such_relation_anywhere");
    let out = w.python_with_another_session(
        &w.pat,
        r#"
s.sendall(msg(b"Q", cstr("SELECT current_user")))
a = answer(); print("role", codes(a), values(a), flush=True)
other("SET ROLE NONE; ALTER ROLE CURRENT_USER RESET role")
s.sendall(msg(b"Q", cstr("SELECT amount FROM orders /* attack_default_role */")))
a = answer(); print("orders", codes(a), values(a), flush=True)
s.sendall(msg(b"X", b""))
"#,
    );
    assert!(out.contains("other 0"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains(&format!("role ['T', 'D', 'C', 'Z'] ['{}']", pg::APP_ROLE)), "{out}\n{}", w.env.agent_log());
    assert!(!out.contains("123456"), "{out}\n{}", w.env.agent_log());
    // The server read public.orders: the login has no schema of its name.
    assert!(out.contains("orders ['T', 'D'") && out.contains("'1000'"), "{out}\n{}", w.env.agent_log());

    // The catalog is read before a session's own login: a database that
    // does not exist is the login's error, once, and the agent goes on.
    let port = w.pg.port.to_string();
    for db in ["no_such_db_1", "no_such_db_2"] {
        let args = ["-h", w.pg.host.as_str(), "-p", &port, "-U", "x", "-d", db, "-X", "-c", "SELECT 1"];
        let t = text(&w.env.run_as(&w.pat, None, Path::new("/usr/bin/psql"), &args));
        assert!(t.contains("could not log in to backend") && t.contains("does not exist"), "{t}");
    }
    assert_eq!(w.pg.log().matches("database \"no_such_db_1\" does not exist").count(), 1, "one login attempt");
    let o = w.psql(&w.pat, &[], "SELECT 1");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn prepared_statements_and_pipelines_are_decided_every_time() {
    let w = world("byprep");
    // Protocol-level Bind of a name prepared with SQL PREPARE, and of a name
    // never prepared through Gatehouse; pipelined refusals keep their 42501.
    let out = w.python(
        &w.dev,
        &format!(
            "{}{}",
            pg::RAW_CLIENT_PY,
            r#"
# SQL PREPARE, then a protocol Bind/Execute of it: decided on its text.
s.sendall(msg(b"Q", cstr("PREPARE mine AS SELECT count(*) FROM orders")))
print("prepare", codes(answer()))
s.sendall(msg(b"B", cstr("") + cstr("mine") + struct.pack("!hhh", 0, 0, 0)) + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b""))
print("bind sql-prepared", codes(answer()))
# A statement name never prepared through Gatehouse.
s.sendall(msg(b"B", cstr("") + cstr("ghost") + struct.pack("!hhh", 0, 0, 0)) + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b""))
print("bind unknown", codes(answer()))
# A pipeline of three exchanges, the second refused: each gets its own answer.
p = b""
for q in ["SELECT 1", "DELETE FROM orders /* attack_pipe */", "SELECT 3"]:
    p += msg(b"P", cstr("") + cstr(q) + struct.pack("!h", 0)) + msg(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0)) + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b"")
s.sendall(p)
print("pipe1", codes(answer()))
print("pipe2", codes(answer()))
print("pipe3", codes(answer()))
# SQL EXECUTE of a name prepared with a refused text never ran: unknown, opaque, refused.
s.sendall(msg(b"Q", cstr("EXECUTE q")))
print("execute unknown", codes(answer()))
s.sendall(msg(b"X", b""))
"#
        ),
    );
    assert!(out.contains("prepare ['C', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("bind sql-prepared ['2', 'D', 'C', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("bind unknown ['26000', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("pipe1 ['1', '2', 'D', 'C', 'Z']"), "{out}");
    assert!(out.contains("pipe2 ['42501', 'Z']"), "{out}");
    assert!(out.contains("pipe3 ['1', '2', 'D', 'C', 'Z']"), "{out}");
    assert!(out.contains("execute unknown ['42501', 'Z']"), "{out}");
    assert!(!w.pg.log().contains("attack_pipe"), "the refused statement reached the server");
    // A prepared statement's names are those of the search path it runs
    // under: after `SET search_path` the server analyses it again (same text,
    // same result shape, another table), and so does Gatehouse.
    w.pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE hr.ledger (emp int, amount int); INSERT INTO hr.ledger VALUES (1, 918273);
             CREATE TABLE public.ledger (emp int, amount int); INSERT INTO public.ledger VALUES (1, 5);
             GRANT ALL ON hr.ledger, public.ledger TO {app};",
            app = pg::APP_ROLE
        ),
    );
    let path = w.python(
        &w.ana,
        &format!(
            "{}{}",
            pg::RAW_CLIENT_PY,
            r#"
def values(frames): return [f[1][6:].decode() for f in frames if f[0] == b"D"]
s.sendall(msg(b"P", cstr("led") + cstr("SELECT amount FROM ledger /* attack_path */") + struct.pack("!h", 0)) + msg(b"D", b"S" + cstr("led")) + msg(b"S", b""))
print("parse", codes(answer()))
run = msg(b"B", cstr("") + cstr("led") + struct.pack("!hhh", 0, 0, 0)) + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b"")
s.sendall(run); a = answer(); print("on public", codes(a), values(a))
query("set", "SET search_path = hr")
s.sendall(run); a = answer(); print("on hr", codes(a), values(a))
# A portal is planned at Bind: bound under hr, executed after the path is back to public.
query("begin", "BEGIN")
s.sendall(msg(b"B", cstr("p1") + cstr("led") + struct.pack("!hhh", 0, 0, 0)) + msg(b"S", b""))
print("bind on hr", codes(answer()))
query("back", "SET search_path = public")
s.sendall(msg(b"E", cstr("p1") + struct.pack("!i", 0)) + msg(b"S", b""))
a = answer(); print("portal", codes(a), values(a))
query("end", "ROLLBACK")
s.sendall(msg(b"Q", cstr("SET search_path = public; PREPARE q AS SELECT amount FROM ledger; SET search_path = hr; EXECUTE q /* attack_sql_path */")))
a = answer(); print("sql", codes(a), values(a))
s.sendall(msg(b"X", b""))
"#
        ),
    );
    assert!(path.contains("on public ['2', 'D', 'C', 'Z'] ['5']"), "{path}\n{}", w.env.agent_log());
    assert!(path.contains("set ['C', 'Z']"), "{path}");
    assert!(path.contains("on hr ['2', '42501', 'Z'] []"), "{path}\n{}", w.env.agent_log());
    assert!(path.contains("bind on hr ['2', 'Z']"), "{path}");
    assert!(path.contains("portal ['42501', 'Z'] []"), "{path}\n{}", w.env.agent_log());
    assert!(path.contains("sql ['42501', 'Z'] []"), "{path}");
    assert!(!path.contains("918273"), "{path}");
    assert_eq!(w.pg.log().matches("execute led:").count(), 1, "the refused Execute ran:\n{}", w.pg.log());
    assert!(!w.pg.log().contains("attack_sql_path"), "the refused text reached the server");
    // Every execution is a record; none of those that ran is marked "not executed".
    let stmts = w.env.statements(None);
    let ran: Vec<&serde_json::Value> = stmts.iter().filter(|s| s["decision"] == "allow").collect();
    assert!(ran.len() >= 4, "{stmts:#?}");
    assert!(
        ran.iter().all(|s| !s["error"].as_str().is_some_and(|e| e.contains("not executed"))),
        "statements that ran are recorded as such: {stmts:#?}"
    );
    w.assert_server_untouched();
}

/// A name defined in a pipelined exchange counts as user code until a catalog
/// read that began after its own exchange ended. It was settled by the end of
/// an *earlier* exchange of the pipeline: the catalog read that started then
/// ran before the definition committed, and, once installed, took the name
/// off the pending list, so a call made while the definition was still
/// running was decided as the built-in of that name. Here cody (select and
/// define_code, never `hr`) defines `public.upper(int)` — it writes to
/// `pwned` and reads `hr.salaries` — behind a `SELECT 1`, then calls
/// `upper(42)` while the definition's transaction is still busy.
#[test]
fn a_pipelined_definition_counts_as_user_code_until_read_back() {
    let w = world("bypipedef");
    let out = w.python(
        &w.cody,
        &format!(
            "{}{}",
            pg::RAW_CLIENT_PY,
            r#"
import time
def values(frames): return [f[1][6:].decode() for f in frames if f[0] == b"D"]
define = ("BEGIN; CREATE FUNCTION public.upper(i int) RETURNS text LANGUAGE plpgsql AS $f$ "
          "DECLARE r text; BEGIN INSERT INTO pwned VALUES ('upper(int)'); "
          "EXECUTE 'SELECT string_agg(amount::text, '','') FROM hr.' || 'salaries' INTO r; RETURN r; END $f$; "
          "SELECT count(*) FROM generate_series(1, 30000000); COMMIT")
s.sendall(msg(b"Q", cstr("SELECT 1")) + msg(b"Q", cstr(define)))
a = answer(); print("first", codes(a), values(a), flush=True)
time.sleep(0.5)
s.sendall(msg(b"Q", cstr("SELECT upper(42) /* attack_pipelined_def */")))
d = answer(); print("define", codes(d), flush=True)
c = answer(); print("call", codes(c), values(c), flush=True)
s.sendall(msg(b"X", b""))
"#
        ),
    );
    assert!(
        out.contains("define ['C', 'C', 'T', 'D', 'C', 'C', 'Z']"),
        "the definition ran: {out}\n{}",
        w.env.agent_log()
    );
    assert!(out.contains("call ['42501', 'Z']"), "{out}\n{}", w.env.agent_log());
    assert!(!out.contains("123456"), "{out}");
    assert!(!w.pg.log().contains("attack_pipelined_def"), "the call reached the server");
    // The definition itself was allowed; its code never ran.
    assert_eq!(w.count("SELECT count(*) FROM pwned"), 0, "upper(int) ran");
}
