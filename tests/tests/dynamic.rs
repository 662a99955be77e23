//! Short-lived backend credentials end to end: a login role made per
//! session on a real PostgreSQL 15 (a member of the template role, valid
//! until its time is up, with a password no one sees), used by the session,
//! named in the server's own log, dropped when the session ends or its time
//! is up, and reaped after the agent is killed and restarted. Needs root.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_login_role_per_session_made_used_and_dropped() {
    let mut env = Env::new("dynroles");
    let analysts = env.group("analyst");
    let ana = env.user("ana", &[&analysts]);
    let pg = PgServer::start(&env.dir, &loopback(80), free_port(), "log_connections = on\n");
    pg.admin(&format!(
        "CREATE ROLE gh_admin LOGIN CREATEROLE PASSWORD '{p}';
         CREATE ROLE app_ro NOLOGIN;
         GRANT app_ro TO gh_admin WITH ADMIN OPTION;",
        p = pg::APP_PASSWORD
    ));
    pg.admin_db(
        "appdb",
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2), (3);
         GRANT SELECT ON orders TO app_ro;",
    );
    let secret = pg::password_file(&env.dir, "admin.secret", pg::APP_PASSWORD);
    let policy = format!(
        r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ dynamic = {{ admin_user = "gh_admin", admin_password_file = "{s}", template_role = "app_ro", ttl = "6s", admin_database = "appdb" }} }}

[[rule]]
name = "analysts read"
who = {{ groups = ["{analysts}"] }}
backend = "appdb"
statements = ["select"]
"#,
        addr = pg.addr(),
        s = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let port = pg.port.to_string();
    let psql = |sql: &str| {
        env.run_as(
            &ana,
            None,
            Path::new("/usr/bin/psql"),
            &["-h", &pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t", "-c", sql],
        )
    };
    let roles =
        || pg.admin("SELECT coalesce(string_agg(rolname, ','), '') FROM pg_roles WHERE rolname LIKE 'gh_dyn_%'");

    // The session runs as a role made for it, with the template's privileges.
    let o = psql("SELECT current_user, (SELECT count(*) FROM orders), pg_has_role(current_user, 'app_ro', 'MEMBER')");
    let t = text(&o);
    assert!(o.status.success(), "{t}\n{}", env.agent_log());
    let made = t.trim().split('|').next().unwrap().to_owned();
    assert!(made.starts_with("gh_dyn_") && made.contains("ana"), "{t}");
    assert!(t.contains("|3|t"), "{t}");
    // The server's own log names that role, and nobody knows its password.
    assert!(pg.log().contains(&format!("user={made}")), "{}", pg.log());
    assert!(!env.agent_log().contains("PASSWORD"), "the agent log never carries the CREATE ROLE text");
    // Dropped when the session ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    while roles().contains(&made) {
        assert!(Instant::now() < deadline, "role {made} still exists after its session ended: {}", roles());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A session longer than the role's time is cut, and the role goes.
    let script = env.path("long.py");
    std::fs::write(
        &script,
        r#"
import sys, time, psycopg
conn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname="appdb", user="whoever", autocommit=True)
print("as", conn.execute("SELECT current_user").fetchone()[0], flush=True)
time.sleep(9)
try:
    conn.execute("SELECT 1")
    print("still open")
except psycopg.Error as e:
    print("cut", str(e).splitlines()[0])
"#,
    )
    .unwrap();
    let o = env.run_as(&ana, None, Path::new("/usr/bin/python3"), &[script.to_str().unwrap(), &pg.host, &port]);
    let t = text(&o);
    assert!(t.contains("as gh_dyn_") && t.contains("cut") && t.contains("expired"), "{t}\n{}", env.agent_log());

    // Killed mid-session, the agent leaves a role behind; restarted, it reaps it.
    let hold = env.path("hold.py");
    std::fs::write(
        &hold,
        "import sys, time, psycopg\nconn = psycopg.connect(host=sys.argv[1], port=sys.argv[2], dbname='appdb', user='x')\ntime.sleep(60)\n",
    )
    .unwrap();
    let child = env.spawn_as(&ana, None, Path::new("/usr/bin/python3"), &[hold.to_str().unwrap(), &pg.host, &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !roles().contains("gh_dyn_") {
        assert!(Instant::now() < deadline, "no role made for the long session");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = roles();
    let _ = env.signal_agent("KILL");
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(roles(), left, "a killed agent drops nothing");
    env.start_agent(&config);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !roles().is_empty() {
        assert!(Instant::now() < deadline, "leftover roles not reaped: {}\n{}", roles(), env.agent_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(env.agent_log().contains("reaped a dynamic login role"), "{}", env.agent_log());
    drop(pg);
}
