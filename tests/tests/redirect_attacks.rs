//! The redirect against a hostile local user (issue 10, part 2): other local
//! addresses of a local backend, a pin directory made by someone else, pins
//! removed under a running agent, a stand-in proxy port, and a kernel record
//! borrowed by another socket. Each test asserts what the user got and what
//! the audit store and `gatehouse status` say. Needs root.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_e2e::{EchoServer, Env, gatehouse_bin, loopback, monotonic_ns, read_json_line, sock_key};
use serde_json::Value;

const ECONNREFUSED: i64 = 111;

fn ok(v: &Value) -> bool {
    v["ok"].as_bool() == Some(true)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn tcp_policy(name: &str, addr: &str, group: &str, extra_agent: &str) -> String {
    format!(
        r#"
[agent]
shutdown_grace = "1s"
{extra_agent}

[[backend]]
name = "{name}"
protocol = "tcp"
address = "{addr}"

[[rule]]
name = "team reaches {name}"
who = {{ groups = ["{group}"] }}
backends = ["{name}"]
"#
    )
}

/// An echo server on every address of network namespace `ns`, once it listens.
fn serve_in(env: &Env, ns: &str, port: u16) -> std::process::Child {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(&env.probe)
        .args(["serve", &format!("[::]:{port}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("probe serve: {e}"));
    let v = read_json_line(&mut c);
    assert!(v.get("listening").is_some_and(Value::is_string), "{v}");
    c
}

fn wait_for(what: &str, env: &Env, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\nagent log:\n{}", env.agent_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A backend that listens on every address of a test network namespace (as
/// a database with `listen_addresses = '*'` does), reached by an
/// unprivileged user through every other local address: the unspecified
/// address (alone and after binding the backend's address), `::`,
/// `::ffff:0.0.0.0`, another 127/8 address, `::1`, and the namespace's own
/// interface address. Each is redirected and decided like the backend's own
/// address; none reaches the backend directly. The namespace has no route
/// anywhere, so its interface address (documentation range) stays local.
/// Before the fix, all but the first reached the backend unrecorded.
#[test]
fn every_local_address_of_a_local_backend_goes_through_the_proxy() {
    let mut env = Env::new("alias");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let eve = env.user("eve", &[]);
    let ns = env.netns();
    // A non-loopback interface address of the namespace's host (on its `lo`:
    // this kernel has no dummy links; getifaddrs lists it like any other).
    sh(Command::new("ip").args(["-n", &ns, "addr", "add", "192.0.2.1/32", "dev", "lo"]));
    let port = gatehouse_e2e::free_port();
    let plain_port = gatehouse_e2e::free_port();
    let mut backend = serve_in(&env, &ns, port);
    let mut plain = serve_in(&env, &ns, plain_port);
    let own = loopback(1);
    let config = env.write_policy("policy.toml", &tcp_policy("local", &format!("{own}:{port}"), &team, ""));
    env.agent_netns = Some(ns.clone());
    env.start_agent(&config);

    let alias9 = loopback(9);
    let variants: Vec<(&str, String, Option<String>)> = vec![
        ("the backend's own address", format!("{own}:{port}"), None),
        ("0.0.0.0", format!("0.0.0.0:{port}"), None),
        ("bind the backend's address, connect 0.0.0.0", format!("0.0.0.0:{port}"), Some(format!("{own}:0"))),
        ("::", format!("[::]:{port}"), None),
        ("::ffff:0.0.0.0", format!("[::ffff:0.0.0.0]:{port}"), None),
        ("another 127/8 address", format!("{alias9}:{port}"), None),
        ("::1", format!("[::1]:{port}"), None),
        ("an interface address", format!("192.0.2.1:{port}"), None),
        ("an interface address, v4-mapped", format!("[::ffff:192.0.2.1]:{port}"), None),
    ];
    let probe = |user: &str, target: &str, bind: &Option<String>| {
        let mut args = vec!["echo", target, "4096"];
        if let Some(b) = bind {
            args.extend(["--bind", b]);
        }
        env.probe_in(user, Some(&ns), &args)
    };
    for (what, target, bind) in &variants {
        let r = probe(&ana, target, bind);
        assert!(ok(&r), "{what} ({target}): ana is allowed and must get through the proxy: {r}\n{}", env.agent_log());
    }
    for (what, target, bind) in &variants {
        let r = probe(&eve, target, bind);
        assert!(!ok(&r), "{what} ({target}): eve has no rule and reached the backend: {r}");
        assert_ne!(r["received"], 4096, "{what}: {r}");
    }
    // What the store says: every one of ana's connections is a session of
    // the backend, decided by the rule, with the address as dialed.
    let ana_uid = env.uid(&ana);
    wait_for("ana's sessions to close", &env, || {
        env.sessions().iter().filter(|s| s["uid"] == ana_uid && !s["end_reason"].is_null()).count() >= variants.len()
    });
    let sessions = env.sessions();
    let ana_s: Vec<&Value> = sessions.iter().filter(|s| s["uid"] == ana_uid).collect();
    assert_eq!(ana_s.len(), variants.len(), "{sessions:#?}");
    for s in &ana_s {
        assert_eq!(s["decision"], "allow", "{s}");
        assert_eq!(s["backend"], "local", "{s}");
        assert_eq!(s["rule"], "team reaches local", "{s}");
        assert_eq!(s["bytes_up"], 4096, "{s}");
    }
    let dialed: Vec<&str> = ana_s.iter().filter_map(|s| s["orig_dst"].as_str()).collect();
    for want in [
        format!("0.0.0.0:{port}"),
        format!("[::]:{port}"),
        format!("{alias9}:{port}"),
        format!("[::1]:{port}"),
        format!("192.0.2.1:{port}"),
    ] {
        assert!(dialed.contains(&want.as_str()), "no session dialed {want}: {dialed:?}");
    }
    let eve_uid = env.uid(&eve);
    let denied =
        sessions.iter().find(|s| s["uid"] == eve_uid).unwrap_or_else(|| panic!("eve's refusal: {sessions:#?}"));
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["backend"], "local", "{denied}");
    let st = env.status();
    assert_eq!(st["sessions"]["denied"], variants.len(), "{st:#}");
    assert!(st["kernel"]["alias_redirected"].as_u64() >= Some(2 * (variants.len() as u64 - 1)), "{st:#}");

    // A port no backend uses is left alone on the same addresses.
    let r = env.probe_in(&ana, Some(&ns), &["echo", &format!("0.0.0.0:{plain_port}"), "1024"]);
    assert!(ok(&r), "unprotected ports stay reachable: {r}");
    assert!(
        !env.sessions().iter().any(|s| s["orig_dst"].as_str().is_some_and(|d| d.ends_with(&format!(":{plain_port}")))),
        "an unprotected port must not be redirected"
    );
    let _ = backend.kill();
    let _ = plain.kill();
    let _ = backend.wait();
    let _ = plain.wait();
}

/// A backend on every address of a test namespace; ana (whose group's rule
/// reaches it) and eve (no rule) each echo 4096 bytes to every target
/// (`targets(own address, port)`) with the probe's `flag`. Ana's go through
/// the proxy and are recorded, every byte; eve's reach nothing and are
/// counted as refusals. Returns ana's probe results.
#[expect(clippy::indexing_slicing, reason = "indexing a serde_json value by key yields Null, it cannot panic")]
fn echo_through_the_proxy(name: &str, flag: &str, targets: impl Fn(&str, u16) -> Vec<String>) -> Vec<Value> {
    let mut env = Env::new(name);
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let eve = env.user("eve", &[]);
    let ns = env.netns();
    let port = gatehouse_e2e::free_port();
    let mut backend = serve_in(&env, &ns, port);
    let own = loopback(1);
    let config = env.write_policy("policy.toml", &tcp_policy("local", &format!("{own}:{port}"), &team, ""));
    env.agent_netns = Some(ns.clone());
    env.start_agent(&config);
    let targets = targets(&own, port);
    let mut results = Vec::new();
    for target in &targets {
        let r = env.probe_in(&ana, Some(&ns), &["echo", target, "4096", flag]);
        assert!(ok(&r), "{target}: ana is allowed and must get through the proxy: {r}\n{}", env.agent_log());
        results.push(r);
        let r = env.probe_in(&eve, Some(&ns), &["echo", target, "4096", flag]);
        assert!(!ok(&r), "{target}: eve has no rule and reached the backend ({flag}): {r}");
        assert_ne!(r["received"], 4096, "{r}");
    }
    let (ana_uid, eve_uid) = (env.uid(&ana), env.uid(&eve));
    wait_for("ana's sessions to close", &env, || {
        env.sessions().iter().filter(|s| s["uid"] == ana_uid && !s["end_reason"].is_null()).count() >= targets.len()
    });
    let sessions = env.sessions();
    let mine: Vec<&Value> = sessions.iter().filter(|s| s["uid"] == ana_uid).collect();
    assert_eq!(mine.len(), targets.len(), "{sessions:#?}");
    for s in mine {
        assert_eq!(s["decision"], "allow", "{s}");
        assert_eq!(s["bytes_up"], 4096, "every byte went through the proxy: {s}");
    }
    // Refusals of one uid to one backend are recorded once per window, counted each.
    let denied =
        sessions.iter().find(|s| s["uid"] == eve_uid).unwrap_or_else(|| panic!("eve's refusal: {sessions:#?}"));
    assert_eq!(denied["decision"], "deny", "{denied}");
    let st = env.status();
    assert_eq!(st["sessions"]["denied"], targets.len(), "{st:#}");
    let _ = backend.kill();
    let _ = backend.wait();
    results
}

/// TCP Fast Open starts a connection without connect(2): `sendto` with
/// `MSG_FASTOPEN` sends the SYN (with data). The kernel runs the same
/// cgroup connect hook for it: every byte, the SYN's included, goes through
/// the proxy.
#[test]
fn a_fast_open_connection_goes_through_the_proxy() {
    let results = echo_through_the_proxy("tfo", "--fastopen", |own, port| vec![format!("{own}:{port}")]);
    assert!(results.iter().all(|r| r["fastopen"] == true), "{results:?}");
}

/// Multipath TCP (`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`, enabled by
/// default on Debian's kernels) connects through its own socket layer, which
/// opens a TCP subflow underneath: it goes through the proxy like TCP, over
/// IPv4 and v4-mapped IPv6.
#[test]
fn a_multipath_tcp_connection_goes_through_the_proxy() {
    echo_through_the_proxy("mptcp", "--mptcp", |own, port| {
        vec![format!("{own}:{port}"), format!("[::ffff:{own}]:{port}")]
    });
}

/// bpffs at /sys/fs/bpf may be world-writable: a pin directory that exists
/// with another owner or an open mode is refused, and nothing is pinned in it.
#[test]
fn a_pin_directory_someone_else_controls_is_refused() {
    let mut env = Env::new("pindir");
    let team = env.group("team");
    let eve = env.user("eve", &[]);
    let echo = EchoServer::start(&format!("{}:0", loopback(1)));
    let config = env.write_policy("policy.toml", &tcp_policy("echo", &echo.addr.to_string(), &team, ""));
    let pin = env.pin_dir.clone();
    let start = |env: &Env| Command::new(gatehouse_bin()).args(env.agent_args(&config)).output().unwrap();

    // eve got there first.
    std::fs::create_dir(&pin).unwrap();
    sh(Command::new("chown").arg(format!("{eve}:{eve}")).arg(&pin));
    let out = start(&env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse eve's pin directory");
    assert!(err.contains(&format!("is owned by uid {}", env.uid(&eve))), "{err}");
    assert_eq!(std::fs::read_dir(&pin).unwrap().count(), 0, "nothing may be pinned into it");
    std::fs::remove_dir(&pin).unwrap();

    // Root's, but others may enter it.
    std::fs::create_dir(&pin).unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = start(&env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mode 0755"), "{err}");
    assert_eq!(std::fs::read_dir(&pin).unwrap().count(), 0);
    std::fs::remove_dir(&pin).unwrap();

    // The agent makes its own: root, 0700.
    env.start_agent(&config);
    let meta = std::fs::metadata(&pin).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o700);
}

fn world_echo(name: &str, extra_agent: &str) -> (Env, EchoServer, String, String, std::path::PathBuf) {
    let mut env = Env::new(name);
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let eve = env.user("eve", &[]);
    let echo = EchoServer::start(&format!("{}:0", loopback(1)));
    let config = env.write_policy("policy.toml", &tcp_policy("echo", &echo.addr.to_string(), &team, extra_agent));
    env.start_agent(&config);
    (env, echo, ana, eve, config)
}

/// Pins removed under a running agent do not detach it (it holds its own
/// link descriptors); it notices, says so loudly, pins them again and shows
/// it in `gatehouse status`, so a later crash still fails closed.
/// `gatehouse detach --force` detaches the links in the kernel for real.
#[test]
fn removed_pins_neither_detach_a_running_agent_nor_go_unnoticed() {
    let (mut env, echo, ana, _eve, config) = world_echo("pins", "");
    let addr = echo.addr.to_string();
    let pinned: Vec<_> = std::fs::read_dir(&env.pin_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(pinned.len() >= 13, "5 links and 8 maps: {pinned:?}");
    for p in &pinned {
        std::fs::remove_file(p).unwrap();
    }
    assert_eq!(std::fs::read_dir(&env.pin_dir).unwrap().count(), 0);
    let r = env.probe(&ana, &["echo", &addr, "65536"]);
    assert!(ok(&r), "redirection must hold with the pins gone: {r}\n{}", env.agent_log());
    let s = env.wait_session("through the proxy", |s| s["uid"] == env.uid(&ana));
    assert_eq!(s["decision"], "allow", "{s}");

    wait_for("the pins to be restored", &env, || pinned.iter().all(|p| p.exists()));
    let st = env.status();
    assert!(st["pin_health"]["repinned"].as_u64() >= Some(13), "{st:#}");
    assert!(st["pin_health"]["last_event"].as_str().is_some_and(|e| e.contains("pinned again")), "{st:#}");
    assert!(env.agent_log().contains("PIN REMOVED OR REPLACED"), "{}", env.agent_log());

    // Restored pins keep failing closed after the agent dies.
    env.signal_agent("KILL");
    let r = env.probe(&ana, &["connect", &addr]);
    assert_eq!(r["errno"], ECONNREFUSED, "with the agent dead the re-pinned links must refuse: {r}");

    // detach --force while an agent runs really detaches.
    env.start_agent(&config);
    let pin = env.pin_dir.display().to_string();
    let ctl = env.control().display().to_string();
    let out = env.gatehouse(&["detach", "--force", "--pin-dir", &pin, "--control-socket", &ctl]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = env.probe(&ana, &["echo", &addr, "1024"]);
    assert!(ok(&r), "{r}");
    wait_for("status to show the links detached", &env, || {
        env.status()["pin_health"]["detached"].as_array().is_some_and(|d| d.len() == 5)
    });
    let allowed = env.sessions().iter().filter(|s| s["uid"] == env.uid(&ana)).count();
    assert_eq!(allowed, 1, "after detach --force the connection went direct, unrecorded");
}

/// A proxy port that unprivileged users may bind is refused unless the
/// operator passes --allow-unprivileged-port (as these tests do).
#[test]
fn an_unprivileged_proxy_port_needs_the_explicit_override() {
    let env = Env::new("port");
    let config = env.write_policy("policy.toml", &tcp_policy("echo", &format!("{}:9", loopback(1)), "root", ""));
    let args: Vec<String> = env.agent_args(&config).into_iter().filter(|a| a != "--allow-unprivileged-port").collect();
    let out = Command::new(gatehouse_bin()).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("port {} is not privileged", env.port)), "{err}");
    assert!(!env.pin_dir.exists(), "nothing may be attached for a refused port");
}

/// The issue's reproduction: while the agent is stopped a legitimate user
/// connects (queued, never accepted, its record left in the pinned map); the
/// agent is killed and restarted; another user binds the victim's source port
/// and dials the proxy port directly. The restarted agent cleared the stale
/// record, so the attacker is refused and recorded under their own uid.
#[test]
fn a_record_left_by_an_unaccepted_connection_cannot_be_borrowed() {
    let (mut env, echo, ana, eve, config) = world_echo("borrow", "");
    let addr = echo.addr.to_string();
    let pid = env.agent.as_ref().unwrap().id().to_string();
    sh(Command::new("kill").args(["-STOP", &pid]));
    let mut victim = env.spawn_as(&ana, None, &env.probe, &["park", &addr]);
    let v = read_json_line(&mut victim);
    assert!(ok(&v), "the victim's connect completes into the listen queue: {v}");
    let local: std::net::SocketAddr = v["local"].as_str().unwrap().parse().unwrap();
    let key = sock_key(local);
    let rec = env.handoff_map().get(&key, 0).expect("the kernel recorded the victim's connection");
    assert_eq!(rec.uid, env.uid(&ana));
    env.signal_agent("KILL");
    drop(victim.stdin.take());
    let _ = victim.wait();
    assert!(env.handoff_map().get(&key, 0).is_ok(), "the stale record outlives the agent in the pinned map");

    env.start_agent(&config);
    assert!(env.handoff_map().get(&key, 0).is_err(), "a starting agent removes records older than itself");
    let proxy = format!("127.0.0.1:{}", env.port);
    // The victim's address can take a while to be free again: after its
    // connection was reset, or while an earlier connection from the same
    // port (ports are reused) sits in TIME-WAIT, which a bind cannot share
    // when that socket did not set SO_REUSEADDR (60 s at most). A bind or
    // connect that failed reached no agent, and is tried again (the attack
    // needs the connection made).
    let mut r = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(70);
    while std::time::Instant::now() < deadline {
        r = env.probe(&eve, &["echo", &proxy, "64", "--bind", &local.to_string()]);
        if !matches!(r["stage"].as_str(), Some("bind" | "connect")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if !r["stage"].is_null() {
        // What holds the address (for the next one to read): the kernel's sockets on its port.
        let ss = Command::new("ss").args(["-tanpe", &format!("sport = :{}", local.port())]).output();
        let ss = ss.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        panic!("eve's connection was never made: {r}\nsockets on {local}:\n{ss}");
    }
    assert!(!ok(&r), "eve must not be served as ana: {r}");
    assert_ne!(r["received"], 64, "{r}");
    let eve_uid = env.uid(&eve);
    let s = env.wait_session(&format!("eve's attempt ({r})"), |s| s["uid"] == eve_uid);
    assert_eq!(s["decision"], "deny", "{s}");
    assert_eq!(s["client"], local.to_string(), "{s}");
    assert!(s["reason"].as_str().unwrap().contains("not redirected"), "{s}");
    let ana_uid = env.uid(&ana);
    assert!(!env.sessions().iter().any(|s| s["uid"] == ana_uid), "nothing may be recorded as ana");
    assert!(env.agent_log().contains("stale_records_cleared"), "{}", env.agent_log());
}

/// A record present for the client's address is trusted only for the
/// socket it was made for (same cookie, by sock_diag) and only while fresh.
/// The test writes the records itself (root), standing in for a record the
/// kernel made for a connection the proxy never accepted.
#[test]
fn a_kernel_record_is_trusted_only_for_its_own_socket_and_only_while_fresh() {
    let (env, echo, ana, eve, _config) = world_echo("cookie", r#"refusal_window = "1ms""#);
    let (ana_uid, eve_uid) = (env.uid(&ana), env.uid(&eve));
    let proxy = format!("127.0.0.1:{}", env.port);
    let cases: [(&str, u64, u64, bool, &str); 3] = [
        ("a record made for another socket", 1, 0, false, "made for another socket"),
        ("a record ten seconds old", 0, 10_000_000_000, false, "old"),
        ("this socket's own fresh record (positive control)", 0, 0, true, ""),
    ];
    for (what, cookie_delta, age, served, reason) in cases {
        let mut p = env.spawn_as(&eve, None, &env.probe, &["bindwait", "127.0.0.1:0", &proxy, "64"]);
        let v = read_json_line(&mut p);
        let local: std::net::SocketAddr = v["local"].as_str().unwrap().parse().unwrap();
        let cookie = v["cookie"].as_u64().unwrap();
        let now = monotonic_ns();
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"victim");
        let forged = agent_common::Handoff {
            cgroup_id: 0,
            cookie: cookie + cookie_delta,
            connect_ns: now - age,
            established_ns: now - age,
            orig: sock_key(echo.addr),
            uid: ana_uid,
            gid: ana_uid,
            tgid: 1,
            comm,
        };
        env.handoff_map().insert(sock_key(local), forged, 0).unwrap();
        p.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let r = read_json_line(&mut p);
        let _ = p.wait();
        assert_eq!(ok(&r), served, "{what}: {r}\n{}", env.agent_log());
        let client = local.to_string();
        let s = env.wait_session(what, |s| s["client"] == client.as_str());
        if served {
            assert_eq!(s["uid"], ana_uid, "{s}");
            assert_eq!(s["comm"], "victim", "{s}");
            assert_eq!(s["decision"], "allow", "{s}");
        } else {
            assert_eq!(s["uid"], eve_uid, "refusals name who really dialed: {s}");
            assert_eq!(s["decision"], "deny", "{s}");
            assert!(s["reason"].as_str().unwrap().contains(reason), "{what}: {s}");
            assert!(env.handoff_map().get(&sock_key(local), 0).is_ok() == (cookie_delta == 1), "{what}");
        }
    }
    assert_eq!(env.status()["sessions"]["unverified"], 2);
}

/// A server on this host that also listens on a Unix socket every local
/// user can reach is reachable around the redirect, which sees TCP connects
/// only: eve, whom no rule names, logs in through the socket (the fixture's
/// `local … trust`; Debian's `peer` does the same for a role of her name).
/// The agent names the socket in its log when it reads the catalog; a
/// directory closed to others shuts the way.
#[test]
fn a_local_servers_unix_socket_open_to_all_is_named_in_the_log() {
    use gatehouse_e2e::pg::{self, PgServer};
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new("unixsock");
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let eve = env.user("eve", &[]);
    let pg = PgServer::start(&env.dir, &loopback(75), gatehouse_e2e::free_port(), "");
    let set = |mode: u32| std::fs::set_permissions(&pg.dir, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o755);
    // The login may read the server's settings (without, the agent looks at the default directories).
    pg.admin(&format!("GRANT pg_read_all_settings TO {}", pg::APP_ROLE));
    let secret = pg::password_file(&env.dir, "s.secret", pg::APP_PASSWORD);
    let policy = format!(
        "[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"{}\"\ntls = \"off\"\ncredentials = {{ user = \"{}\", password_file = \"{}\" }}\n\n\
         [[rule]]\nname = \"team reads\"\nwho = {{ groups = [\"{team}\"] }}\nbackend = \"db\"\nstatements = [\"select\"]\n",
        pg.addr(),
        pg::APP_ROLE,
        secret.display()
    );
    let config = env.write_policy("policy.toml", &policy);
    env.start_agent(&config);
    let psql = std::path::Path::new("/usr/bin/psql");
    let port = pg.port.to_string();
    let dir = pg.dir.display().to_string();
    let around = ["-h", dir.as_str(), "-p", &port, "-U", "postgres", "-d", "appdb", "-XAtc", "SELECT current_user"];
    let out = env.run_as(&eve, None, psql, &around);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), "postgres", "the way around Gatehouse this test is about: {said}");
    // ana's session makes the agent read the catalog, which says where the server's sockets are.
    let through = ["-h", pg.host.as_str(), "-p", &port, "-d", "appdb", "-XAtc", "SELECT 1"];
    let out = env.run_as(&ana, None, psql, &through);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{}", env.agent_log());
    let socket = format!("{dir}/.s.PGSQL.{port}");
    wait_for("the warning", &env, || {
        env.agent_log().lines().any(|l| l.contains("every local user can connect to") && l.contains(&socket))
    });
    set(0o700);
    let out = env.run_as(&eve, None, psql, &around);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
}
