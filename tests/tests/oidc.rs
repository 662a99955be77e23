//! Identity from an OpenID provider, end to end: a real provider (the npm
//! package `oidc-provider`, installed by `cargo xtask setup`) started by the
//! test over TLS on a 127.10.x.y address, `gatehouse login` run by an
//! unprivileged user with the device flow completed through the provider's
//! own HTML forms, the agent verifying and binding the identity, and psql
//! through the eBPF redirect refused before the login and allowed after.
//! Forged and foreign tokens are handed to the agent's control socket the
//! way any local program could. Needs root.
#![expect(clippy::unwrap_used, reason = "test helpers panic with context on failure")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_e2e::pg::{self, PgServer};
use gatehouse_e2e::{Env, free_port, loopback};
use serde_json::{Value, json};

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The provider, killed (by its pid) on drop.
struct Idp {
    child: Child,
    issuer: String,
    ca: PathBuf,
    signing_key: PathBuf,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Idp {
    fn start(env: &Env, host: &str, accounts: &Value, id_token_ttl: u32) -> Self {
        let modules = idp_dir().join("node_modules").join("oidc-provider");
        assert!(
            modules.exists(),
            "{} is missing: run `cargo xtask setup` (it installs the test IdP with npm)",
            modules.display()
        );
        let dir = env.path("idp");
        let (ca, cert, key) = pg::certs(&dir, host, 2);
        openssl(&dir, &["genrsa", "-out", "signing.pem", "2048"]);
        let port = free_port();
        let issuer = format!("https://{host}:{port}");
        let log = std::fs::File::create(env.path("idp.log")).unwrap();
        let mut child = Command::new("node")
            .arg(idp_dir().join("provider.mjs"))
            .args(["serve", "--issuer", &issuer, "--listen", &format!("{host}:{port}")])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--signing-key")
            .arg(dir.join("signing.pem"))
            .args(["--accounts", &accounts.to_string(), "--id-token-ttl", &id_token_ttl.to_string()])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the provider did not start:\n{}",
            std::fs::read_to_string(env.path("idp.log")).unwrap_or_default()
        );
        Self { child, issuer, ca, signing_key: dir.join("signing.pem") }
    }

    /// An RS256 JWT of `claims` signed with `key` under the provider's key id.
    fn forge(&self, key: &Path, claims: &Value) -> String {
        let out = Command::new("node")
            .arg(idp_dir().join("provider.mjs"))
            .arg("forge")
            .arg(key)
            .args(["k1", &claims.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "forge: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// Fields drop in order: the servers stop before the test directory goes.
struct World {
    idp: Idp,
    pg: PgServer,
    env: Env,
    alice: String,
    bob: String,
    bin: PathBuf,
}

fn world(name: &str, id_token_ttl: u32) -> World {
    let mut env = Env::new(name);
    let alice = env.user("alice", &[]);
    let bob = env.user("bob", &[]);
    let idp = Idp::start(
        &env,
        &loopback(61),
        &json!({ "alice.idp": ["db-admins", "staff"], "bob.idp": ["staff"] }),
        id_token_ttl,
    );
    let pg = PgServer::start(&env.dir, &loopback(60), free_port(), "");
    let secret = pg::password_file(&env.dir, "appdb.secret", pg::APP_PASSWORD);
    let policy = format!(
        r#"
[identity]
issuer = "{issuer}"
client_id = "gatehouse"
scopes = ["email", "groups", "offline_access"]
ca_file = "{ca}"
max_binding = "1h"

[[backend]]
name = "appdb"
protocol = "postgres"
address = "{addr}"
tls = "off"
credentials = {{ user = "{app}", password_file = "{secret}" }}

[[rule]]
name = "dbas from the idp"
who = {{ oidc_groups = ["db-admins"] }}
backend = "appdb"
require = {{ login = true, max_age = "8h" }}
"#,
        issuer = idp.issuer,
        ca = idp.ca.display(),
        addr = pg.addr(),
        app = pg::APP_ROLE,
        secret = secret.display(),
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    // Users run their own copy of the CLI and the helper scripts.
    let bin = env.path("gatehouse");
    std::fs::copy(gatehouse_e2e::gatehouse_bin(), &bin).unwrap();
    std::fs::copy(idp_dir().join("control.py"), env.path("control.py")).unwrap();
    World { idp, pg, env, alice, bob, bin }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl World {
    fn ctl(&self) -> String {
        self.env.control().display().to_string()
    }

    fn psql(&self, user: &str, sql: &str) -> Output {
        let port = self.pg.port.to_string();
        let args = ["-h", &self.pg.host, "-p", &port, "-U", "whoever", "-d", "appdb", "-X", "-A", "-t", "-c", sql];
        self.env.run_as(user, None, Path::new("/usr/bin/psql"), &args)
    }

    fn cli(&self, user: &str, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let ctl = self.ctl();
        all.extend(["--control-socket", &ctl]);
        self.env.run_as(user, None, &self.bin, &all)
    }

    fn whoami(&self, user: &str) -> Value {
        let out = self.cli(user, &["whoami", "--json"]);
        assert!(out.status.success(), "whoami: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `gatehouse login` as `user`, with the code entered at the provider by
    /// a person who signs in there as `login`.
    fn login(&self, user: &str, login: &str) -> String {
        let ctl = self.ctl();
        let mut child = self.env.spawn_as(user, None, &self.bin, &["login", "--control-socket", &ctl]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut url, mut code) = (None, None);
        let mut seen = String::new();
        while url.is_none() || code.is_none() {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!(
                    "gatehouse login ended ({status}) before showing a code:\n{seen}\nagent:\n{}",
                    self.env.agent_log()
                );
            }
            seen.push_str(&line);
            if let Some(u) = line.trim().strip_prefix("To log in, open ") {
                url = Some(u.to_owned());
            }
            if let Some(c) = line.trim().strip_prefix("and enter the code: ") {
                code = Some(c.to_owned());
            }
        }
        let browser = Command::new("python3")
            .arg(idp_dir().join("approve_device.py"))
            .args([url.as_deref().unwrap(), code.as_deref().unwrap(), login])
            .arg(&self.idp.ca)
            .output()
            .unwrap();
        assert!(
            browser.status.success(),
            "the provider's pages did not end in success: {}\nprovider log:\n{}",
            text(&browser),
            std::fs::read_to_string(self.env.path("idp.log")).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "gatehouse login still waiting after the approval");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        seen.push_str(&rest);
        assert!(status.success(), "gatehouse login failed:\n{seen}\nagent:\n{}", self.env.agent_log());
        seen
    }

    /// Starts a login on the control socket as `user` (as any program can): the nonce.
    fn start(&self, user: &str) -> String {
        let out = self.control(user, &["start"]);
        assert!(out.len() == 64 && out.chars().all(|c| c.is_ascii_hexdigit()), "login_start: {out}");
        out
    }

    fn hand_in(&self, user: &str, token: &str) -> Value {
        serde_json::from_str(&self.control(user, &["login", token])).unwrap()
    }

    fn control(&self, user: &str, args: &[&str]) -> String {
        let script = self.env.path("control.py").display().to_string();
        let ctl = self.ctl();
        let mut all = vec![script.as_str(), ctl.as_str()];
        all.extend_from_slice(args);
        let out = self.env.run_as(user, None, Path::new("/usr/bin/python3"), &all);
        assert!(out.status.success(), "control.py {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn sessions_of(&self, who: &str) -> Vec<Value> {
        let db = self.env.db().display().to_string();
        let out = self.env.gatehouse(&["sessions", "--json", "--db", &db, "--user", who]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().try_into().unwrap()
}

#[test]
fn psql_is_refused_before_gatehouse_login_and_allowed_after() {
    // ID tokens live 24 s, so the agent must refresh the binding to keep it.
    let w = world("oidc-login", 24);

    // Before any login: a protocol-native refusal that says what to do.
    let out = w.psql(&w.alice, "SELECT current_user");
    let t = text(&out);
    assert!(!out.status.success() && t.contains("FATAL") && t.contains("run `gatehouse login`"), "{t}");
    let refused = w.env.wait_session("alice refused", |s| s["user"] == w.alice.as_str() && s["decision"] == "deny");
    assert!(refused["reason"].as_str().unwrap().contains("gatehouse login"), "{refused}");
    assert!(refused["oidc_subject"].is_null(), "{refused}");
    let me = w.whoami(&w.alice);
    assert!(me["login"].is_null() && me["identity_configured"] == true, "{me}");

    // The device flow, with the code typed into the provider's own pages.
    let shown = w.login(&w.alice, "alice.idp");
    assert!(shown.contains("Logged in: alice.idp <alice.idp@example.test>, groups [db-admins, staff]"), "{shown}");
    let me = w.whoami(&w.alice);
    let login = &me["login"]["identity"];
    assert_eq!(login["subject"], "alice.idp", "{me}");
    assert_eq!(login["issuer"], w.idp.issuer.as_str(), "{me}");
    assert_eq!(login["groups"], json!(["db-admins", "staff"]), "{me}");
    assert_eq!(me["login"]["refreshes"], true, "{me}");
    let first_expiry = login["expires"].as_i64().unwrap();
    assert!(first_expiry <= now() + 25, "the binding follows the token's expiry: {me}");

    // Allowed now, by the rule on the IdP group; the server ran it as the rule's login.
    let out = w.psql(&w.alice, "SELECT current_user");
    assert!(out.status.success(), "{}\nagent:\n{}", text(&out), w.env.agent_log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pg::APP_ROLE);
    let s = w.env.wait_session("alice allowed", |s| s["user"] == w.alice.as_str() && s["decision"] == "allow");
    assert_eq!(s["rule"], "dbas from the idp", "{s}");
    assert_eq!(s["oidc_subject"], "alice.idp", "{s}");
    assert_eq!(s["oidc_email"], "alice.idp@example.test", "{s}");
    let id = s["id"].as_str().unwrap();
    let statements = w.env.statements(Some(id));
    assert!(
        statements
            .iter()
            .any(|st| st["text"].as_str().unwrap().contains("current_user") && st["oidc_subject"] == "alice.idp"),
        "{statements:?}"
    );
    // Auditors find it by the IdP's subject or e-mail.
    for who in ["alice.idp", "alice.idp@example.test"] {
        let found = w.sessions_of(who);
        assert!(
            found.iter().any(|f| f["id"] == id) && found.iter().all(|f| f["oidc_subject"] == "alice.idp"),
            "{who}: {found:?}"
        );
    }

    // Another user is not logged in by alice's login.
    let out = w.psql(&w.bob, "SELECT 1");
    assert!(!out.status.success() && text(&out).contains("gatehouse login"), "{}", text(&out));

    // The token expires after 24 s; the agent refreshed the binding before that.
    std::thread::sleep(Duration::from_secs(u64::try_from((first_expiry - now()).max(0)).unwrap() + 2));
    let me = w.whoami(&w.alice);
    let later = me["login"]["identity"]["expires"].as_i64().unwrap_or(0);
    assert!(later > first_expiry && later > now(), "not refreshed: {me}\nagent:\n{}", w.env.agent_log());
    let out = w.psql(&w.alice, "SELECT 'still in'");
    assert!(out.status.success(), "{}", text(&out));

    // Logout: the next connection carries no identity and is refused.
    let out = w.cli(&w.alice, &["logout"]);
    assert!(out.status.success() && text(&out).contains("Logged out"), "{}", text(&out));
    let out = w.psql(&w.alice, "SELECT 1");
    assert!(!out.status.success() && text(&out).contains("run `gatehouse login`"), "{}", text(&out));
}

#[test]
fn forged_expired_and_foreign_tokens_bind_nothing() {
    let w = world("oidc-forged", 600);
    let other_key = w.env.path("idp").join("forger.pem");
    openssl(&w.env.path("idp"), &["genrsa", "-out", "forger.pem", "2048"]);
    let claims = |nonce: &str| {
        let t = now();
        json!({ "iss": w.idp.issuer, "sub": "bob.idp", "aud": "gatehouse", "iat": t, "exp": t + 300,
                "nonce": nonce, "groups": ["db-admins"], "email": "bob.idp@example.test", "email_verified": true })
    };
    let with = |nonce: &str, key: &str, value: Value| {
        let mut c = claims(nonce);
        c[key] = value;
        c
    };
    // No login started: nothing to hand a token to.
    let r = w.hand_in(&w.bob, &w.idp.forge(&w.idp.signing_key, &claims("x")));
    assert!(r["message"].as_str().unwrap_or_default().contains("no login was started"), "{r}");
    let t = now();
    type Make<'a> = Box<dyn Fn(&str) -> (Value, PathBuf) + 'a>;
    let cases: [(&str, Make<'_>, &str); 5] = [
        ("expired", Box::new(|n| (with(n, "exp", json!(t - 60)), w.idp.signing_key.clone())), "expired"),
        ("wrong audience", Box::new(|n| (with(n, "aud", json!("another-app")), w.idp.signing_key.clone())), "audience"),
        (
            "wrong issuer",
            Box::new(|n| (with(n, "iss", json!("https://127.10.0.250:1")), w.idp.signing_key.clone())),
            "issuer",
        ),
        ("badly signed", Box::new(|n| (claims(n), other_key.clone())), "signature"),
        // A valid token of the provider, but made for another login (another user's nonce).
        ("foreign", Box::new(|_| (claims("the-nonce-of-alices-login"), w.idp.signing_key.clone())), "nonce"),
    ];
    for (what, make, word) in &cases {
        let nonce = w.start(&w.bob);
        let (c, key) = make(&nonce);
        let r = w.hand_in(&w.bob, &w.idp.forge(&key, &c));
        assert_eq!(r["result"], "error", "{what} was accepted: {r}");
        let msg = r["message"].as_str().unwrap().to_lowercase();
        assert!(msg.contains("refused") && msg.contains(word), "{what}: {msg}");
        assert!(w.whoami(&w.bob)["login"].is_null(), "{what} bound an identity");
        let out = w.psql(&w.bob, "SELECT 1");
        assert!(!out.status.success(), "{what}: psql got in: {}", text(&out));
    }
    // A nonce is used once: the same start cannot be retried after a refusal.
    let nonce = w.start(&w.bob);
    let _ = w.hand_in(&w.bob, &w.idp.forge(&other_key, &claims(&nonce)));
    let r = w.hand_in(&w.bob, &w.idp.forge(&w.idp.signing_key, &claims(&nonce)));
    assert!(r["message"].as_str().unwrap_or_default().contains("no login was started"), "{r}");
    // Control: the same claims, signed by the provider, for bob's own login, bind.
    let nonce = w.start(&w.bob);
    let r = w.hand_in(&w.bob, &w.idp.forge(&w.idp.signing_key, &claims(&nonce)));
    assert_eq!(r["result"], "logged_in", "{r}\nagent:\n{}", w.env.agent_log());
    assert_eq!(w.whoami(&w.bob)["login"]["identity"]["subject"], "bob.idp");
    let out = w.psql(&w.bob, "SELECT current_user");
    assert!(out.status.success(), "{}", text(&out));
    // And alice, who handed nothing in, is still refused.
    assert!(!w.psql(&w.alice, "SELECT 1").status.success());
}
