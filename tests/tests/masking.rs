//! Masking end to end: a real PostgreSQL, real clients (psql, psycopg 3 in
//! text and binary formats), a masked and an unmasked user. Needs root.

use std::path::Path;
use std::process::Output;

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};

/// Fields drop in order: the server stops before the test directory goes.
struct World {
    pg: PgServer,
    env: Env,
    sam: String,
    ana: String,
}

const VALID_CARD: &str = "4111 1111 1111 1111";
const BAD_CARD: &str = "4111 1111 1111 1112";
const VALID_IBAN: &str = "DE89370400440532013000";
const BAD_IBAN: &str = "DE89370400440532013001";

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let support = env.group("support");
    let analyst = env.group("analyst");
    let sam = env.user("sam", &[&support]);
    let ana = env.user("ana", &[&analyst]);
    let pg = PgServer::start(&env.dir, &loopback(60), free_port(), "");
    pg.admin_db(
        "appdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, card_number text, ssn text, iban text, notes text, balance numeric);
             INSERT INTO customers VALUES
               (1, 'Zoë Ünal', 'zoe@example.com', '+44 20 7946 0958', '{VALID_CARD}', '123-45-6789', '{VALID_IBAN}', 'called from ana@corp.example about card {VALID_CARD}; ssn 078-05-1120', 10.5),
               (2, 'Bob', NULL, NULL, '{BAD_CARD}', NULL, '{BAD_IBAN}', 'order 4111111111111112 and ref {BAD_IBAN}', NULL),
               (3, '日本語の名前', 'long@example.org', NULL, NULL, NULL, NULL, repeat('x', 200000) || ' tail bob@example.net', 0);
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
columns = [{{ column = "customers.ssn", style = "redact" }}, {{ column = "email", style = "partial" }}]
detectors = {{ card = "partial", email = "partial", us_ssn = "redact", iban = "redact", phone = "partial" }}

[[rule]]
name = "support masked"
who = {{ groups = ["{support}"] }}
backend = "appdb"
statements = ["select", "copy_to"]
mask = "pii"

[[rule]]
name = "analysts unmasked"
who = {{ groups = ["{analyst}"] }}
backend = "appdb"
statements = ["select", "copy_to"]
"#,
        addr = pg.addr(),
        app = pg::APP_ROLE,
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    World { env, pg, sam, ana }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl World {
    fn psql(&self, user: &str, sql: &str) -> String {
        let port = self.pg.port.to_string();
        let args = ["-h", &self.pg.host, "-p", &port, "-d", "appdb", "-X", "-A", "-t", "-F", "|", "-c", sql];
        text(&self.env.run_as(user, None, Path::new("/usr/bin/psql"), &args))
    }
}

#[test]
fn masked_users_see_masked_values_and_others_see_real_ones() {
    let w = world("mask");
    let q =
        "SELECT id, name, email, phone, card_number, ssn, iban, notes, balance FROM customers WHERE id < 3 ORDER BY id";
    let masked = w.psql(&w.sam, q);
    // The masked user: column rules and detectors applied, types and row count unchanged.
    let lines: Vec<&str> = masked.lines().collect();
    assert_eq!(lines.len(), 2, "{masked}\n{}", w.env.agent_log());
    assert!(!masked.contains("zoe@example.com") && masked.contains("****@example.com"), "{masked}");
    assert!(!masked.contains(VALID_CARD) && masked.contains("****1111"), "{masked}");
    assert!(!masked.contains("123-45-6789") && !masked.contains("078-05-1120"), "{masked}");
    assert!(!masked.contains(VALID_IBAN), "{masked}");
    assert!(!masked.contains("ana@corp.example"), "free text is scanned: {masked}");
    assert!(masked.contains("Zoë Ünal"), "names pass untouched: {masked}");
    assert!(masked.contains("10.5"), "numbers pass untouched: {masked}");
    // False positives stay visible: a Luhn-failing card, a mod-97-failing IBAN.
    assert!(masked.contains(BAD_CARD) && masked.contains("4111111111111112") && masked.contains(BAD_IBAN), "{masked}");
    // NULLs stay NULL (empty fields).
    assert!(lines[1].starts_with("2|Bob|||"), "{masked}");

    // Very long values and multi-byte UTF-8.
    let long = w.psql(&w.sam, "SELECT name, length(notes), notes FROM customers WHERE id = 3");
    assert!(long.contains("日本語の名前") && long.contains("200021"), "{}", &long[..200.min(long.len())]);
    assert!(long.contains("****@example.net") && !long.contains("bob@example.net"), "tail masked");

    // COPY TO STDOUT is masked too.
    let copy = w.psql(&w.sam, "COPY (SELECT notes FROM customers WHERE id = 1) TO STDOUT");
    assert!(!copy.contains(VALID_CARD) && !copy.contains("ana@corp.example"), "{copy}");

    // The statement's audit record counts what was masked; the recorded bytes are masked.
    let sessions = w.env.sessions();
    let sam_session = sessions.iter().find(|s| s["user"] == w.sam.as_str()).unwrap();
    let st = w.env.statements(sam_session["id"].as_str());
    // A masked rule's statements are recorded with placeholders for their literals.
    let recorded = q.replace("id < 3", "id < $1");
    let first = st.iter().find(|s| s["text"] == recorded.as_str()).unwrap_or_else(|| panic!("{st:#?}"));
    let masked_counts: serde_json::Value = serde_json::from_str(first["masked"].as_str().unwrap_or("{}")).unwrap();
    assert!(masked_counts["card"].as_u64() >= Some(1) && masked_counts["columns"].as_u64() >= Some(1), "{first}");
    // Only masked sessions so far: the store must hold no raw value (stream chunks included).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let db = std::fs::read(w.env.db()).unwrap();
    let wal = std::fs::read(format!("{}-wal", w.env.db().display())).unwrap_or_default();
    assert!(
        memmem(&wal, b"****@example.com").is_some() || memmem(&db, b"****@example.com").is_some(),
        "masked bytes are recorded"
    );
    for bytes in [&db, &wal] {
        assert!(memmem(bytes, b"123-45-6789").is_none(), "the audit store must not hold the raw SSN");
        assert!(memmem(bytes, b"zoe@example.com").is_none(), "the audit store must not hold the raw e-mail");
    }

    // Errors that echo a value are masked by the detectors. (psql's "LINE 1:"
    // echoes the statement from the client side; the record keeps placeholders.)
    let err = w.psql(&w.sam, "SELECT 'zoe@example.com'::int");
    let line = err.lines().find(|l| l.starts_with("ERROR:")).unwrap_or_default();
    assert!(
        line.contains("invalid input syntax") && line.contains("****@example.com") && !line.contains("zoe@"),
        "{err}"
    );

    // The unmasked analyst sees everything as stored.
    let plain = w.psql(&w.ana, q);
    assert!(
        plain.contains("zoe@example.com") && plain.contains(VALID_CARD) && plain.contains("123-45-6789"),
        "{plain}"
    );
}

#[test]
fn binary_results_through_psycopg_are_masked_and_parse() {
    let w = world("maskbin");
    let script = w.env.path("bin.py");
    std::fs::write(
        &script,
        r#"
import sys, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="x")
for binary in (False, True):
    cur = conn.cursor(binary=binary)
    cur.execute("SELECT id, email, notes, balance FROM customers ORDER BY id")
    rows = cur.fetchall()
    print("binary" if binary else "text", len(rows), [type(r[3]).__name__ for r in rows], rows[0][1], rows[0][2][:60])
"#,
    )
    .unwrap();
    let port = w.pg.port.to_string();
    let out = text(&w.env.run_as(
        &w.sam,
        None,
        Path::new("/usr/bin/python3"),
        &[script.to_str().unwrap(), &w.pg.host, &port],
    ));
    assert!(out.contains("text 3") && out.contains("binary 3"), "{out}\n{}", w.env.agent_log());
    assert!(out.contains("Decimal"), "numeric types untouched: {out}");
    assert!(!out.contains("zoe@example.com") && !out.contains(VALID_CARD), "{out}");
    assert_eq!(out.matches("****@example.com").count(), 2, "{out}");
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
