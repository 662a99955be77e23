//! The walking skeleton end to end: real eBPF in the kernel, a child cgroup
//! per test, unprivileged users, real sockets. Needs root.

use gatehouse_e2e::{EchoServer, Env, loopback};
use serde_json::Value;

const ECONNREFUSED: i64 = 111;

/// A policy with one allowed group on `echo`, an explicit deny rule, and a
/// second backend only the group reaches.
fn policy(echo: &str, echo6: &str, mapped: &str, allowed: &str, banned: &str) -> String {
    format!(
        r#"
[agent]
shutdown_grace = "1s"

[[backend]]
name = "echo"
protocol = "tcp"
address = "{echo}"

[[backend]]
name = "echo6"
protocol = "tcp"
address = "{echo6}"

[[backend]]
name = "echo-mapped"
protocol = "tcp"
address = "{mapped}"

[[rule]]
name = "team reaches echo"
who = {{ groups = ["{allowed}"] }}
backends = ["echo*"]

[[rule]]
name = "banned never"
who = {{ users = ["{banned}"] }}
backends = ["*"]
action = "deny"
"#
    )
}

struct World {
    env: Env,
    echo: EchoServer,
    echo6: EchoServer,
    mapped: EchoServer,
    /// Not protected: must stay reachable whatever the agent does.
    plain: EchoServer,
    ana: String,
    eve: String,
    bob: String,
    config: std::path::PathBuf,
}

fn world(name: &str) -> World {
    let mut env = Env::new(name);
    let team = env.group("team");
    let ana = env.user("ana", &[&team]);
    let eve = env.user("eve", &[]);
    let bob = env.user("bob", &[&team]);
    let echo = EchoServer::start(&format!("{}:0", loopback(1)));
    let echo6 = EchoServer::start("[::1]:0");
    let mapped = EchoServer::start(&format!("{}:0", loopback(2)));
    let plain = EchoServer::start(&format!("{}:0", loopback(3)));
    let text = policy(&echo.addr.to_string(), &echo6.addr.to_string(), &mapped.addr.to_string(), &team, &bob);
    let config = env.write_policy("policy.toml", &text);
    env.start_agent(&config);
    World { env, echo, echo6, mapped, plain, ana, eve, bob, config }
}

fn ok(v: &Value) -> bool {
    v["ok"].as_bool() == Some(true)
}

#[test]
fn allowed_user_reaches_backend_byte_exact_and_sees_its_address() {
    let w = world("allow");
    let addr = w.echo.addr.to_string();
    let r = w.env.probe(&w.ana, &["echo", &addr, "4194304"]);
    assert!(ok(&r), "echo through the proxy failed: {r}\n{}", w.env.agent_log());
    assert_eq!(r["identical"], true, "{r}");
    assert_eq!(r["peer"], addr.as_str(), "getpeername must show the backend, not the proxy: {r}");

    let s = w.env.wait_session("for ana", |s| s["user"] == w.ana.as_str());
    assert_eq!(s["decision"], "allow", "{s}");
    assert_eq!(s["rule"], "team reaches echo", "{s}");
    assert_eq!(s["backend"], "echo", "{s}");
    assert_eq!(s["orig_dst"], addr.as_str(), "{s}");
    assert_eq!(s["uid"], w.env.uid(&w.ana), "{s}");
    assert_eq!(s["comm"], "gatehouse-probe", "{s}");
    assert_eq!(s["bytes_up"], 4_194_304, "{s}");
    assert_eq!(s["bytes_down"], 4_194_304, "{s}");
    assert_eq!(s["end_reason"], "closed", "{s}");

    // The agent runs inside the test cgroup: its upstream connect was seen
    // by connect4 and skipped because of its SO_MARK (else it would loop).
    let st = w.env.status();
    assert!(st["kernel"]["skipped_mark"].as_u64() >= Some(1), "{st:#}");
    assert!(st["kernel"]["redirected"].as_u64() >= Some(1), "{st:#}");
}

#[test]
fn ipv6_and_v4_mapped_connections_are_redirected() {
    let w = world("ipv6");
    let v6 = w.echo6.addr.to_string();
    let r = w.env.probe(&w.ana, &["echo", &v6, "65536"]);
    assert!(ok(&r), "IPv6: {r}\n{}", w.env.agent_log());
    assert_eq!(r["peer"], v6.as_str(), "{r}");

    let mapped = format!("[::ffff:{}]:{}", w.mapped.addr.ip(), w.mapped.addr.port());
    let r = w.env.probe(&w.ana, &["echo", &mapped, "65536"]);
    assert!(ok(&r), "v4-mapped: {r}\n{}", w.env.agent_log());
    assert_eq!(r["peer"], mapped.as_str(), "{r}");

    let sessions = w.env.sessions();
    for backend in ["echo6", "echo-mapped"] {
        let s = w.env.wait_session(backend, |s| s["backend"] == backend);
        assert_eq!(s["decision"], "allow", "{s}\n{sessions:#?}");
    }
}

#[test]
fn users_without_an_allowing_rule_are_refused_and_recorded() {
    let w = world("refuse");
    let addr = w.echo.addr.to_string();

    let r = w.env.probe(&w.eve, &["echo", &addr, "1024"]);
    assert!(!ok(&r), "eve has no rule and must not get through: {r}");
    assert_ne!(r["identical"], true, "{r}");
    let s = w.env.wait_session("for eve", |s| s["user"] == w.eve.as_str());
    assert_eq!(s["decision"], "deny", "{s}");
    assert!(s["rule"].is_null(), "default deny names no rule: {s}");
    assert_eq!(s["uid"], w.env.uid(&w.eve), "{s}");
    assert_eq!(s["backend"], "echo", "{s}");
    assert_eq!(s["bytes_up"], 0, "{s}");

    // bob is in the allowed group, but a deny rule names him: deny wins.
    let r = w.env.probe(&w.bob, &["echo", &addr, "1024"]);
    assert!(!ok(&r), "deny must beat allow: {r}");
    let s = w.env.wait_session("for bob", |s| s["user"] == w.bob.as_str());
    assert_eq!(s["decision"], "deny", "{s}");
    assert_eq!(s["rule"], "banned never", "{s}");
    assert_eq!(s["uid"], w.env.uid(&w.bob), "{s}");
}

#[test]
fn direct_connections_to_the_proxy_port_are_refused() {
    let w = world("direct");
    let proxy = format!("127.0.0.1:{}", w.env.port);
    let r = w.env.probe(&w.ana, &["echo", &proxy, "1024"]);
    assert!(!ok(&r), "dialing the proxy port directly must not reach anything: {r}");
    let s = w.env.wait_session("not redirected", |s| s["backend"].is_null());
    assert_eq!(s["decision"], "deny", "{s}");
    assert!(s["reason"].as_str().unwrap_or("").contains("not redirected"), "{s}");
    let st = w.env.status();
    assert_eq!(st["sessions"]["not_redirected"], 1, "{st:#}");
}

#[test]
fn a_killed_agent_fails_closed_and_a_restarted_one_reuses_its_pins() {
    let mut w = world("restart");
    let addr = w.echo.addr.to_string();
    let plain = w.plain.addr.to_string();
    assert!(ok(&w.env.probe(&w.ana, &["echo", &addr, "1024"])));

    w.env.signal_agent("KILL");
    for target in [&addr, &w.echo6.addr.to_string()] {
        let r = w.env.probe(&w.ana, &["connect", target]);
        assert_eq!(r["errno"], ECONNREFUSED, "with the agent down, {target} must be refused: {r}");
    }
    let r = w.env.probe(&w.ana, &["echo", &plain, "1024"]);
    assert!(ok(&r), "unprotected traffic must be untouched: {r}");
    let out = w.env.gatehouse(&[
        "status",
        "--pin-dir",
        &w.env.pin_dir.display().to_string(),
        "--control-socket",
        &w.env.control().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(3), "status exits 3 when the agent is down");
    assert!(String::from_utf8_lossy(&out.stdout).contains("fail closed"), "{}", String::from_utf8_lossy(&out.stdout));

    w.env.start_agent(&w.config.clone());
    assert_eq!(w.env.status()["reused_pins"], true, "a restart must pick the pins up");
    let r = w.env.probe(&w.ana, &["echo", &addr, "1024"]);
    assert!(ok(&r), "after restart: {r}\n{}", w.env.agent_log());
}

#[test]
fn sockets_of_other_network_namespaces_are_left_alone() {
    let mut w = world("netns");
    let ns = w.env.netns();
    let addr = w.echo.addr.to_string();
    // In the new namespace nothing listens on the backend address: a
    // connection left alone is refused by that namespace's own loopback.
    let r = w.env.probe_in(&w.ana, Some(&ns), &["connect", &addr]);
    assert_eq!(r["errno"], ECONNREFUSED, "{r}");
    let st = w.env.status();
    assert!(st["kernel"]["skipped_netns"].as_u64() >= Some(1), "{st:#}");
    assert_eq!(st["kernel"]["redirected"], 0, "{st:#}");
}

#[test]
fn shutdown_cuts_open_sessions_after_the_grace_period_and_closes_their_records() {
    let mut w = world("shutdown");
    let addr = w.echo.addr.to_string();
    let env = &w.env;
    let probe = env.probe.clone();
    let ana = w.ana.clone();
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| env.run_as(&ana, None, &probe, &["hold", &addr, "20"]));
        // Wait until the session is open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while env.status()["sessions"]["active"] != 1 {
            assert!(std::time::Instant::now() < deadline, "session never became active");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pid = env.agent.as_ref().map(std::process::Child::id).unwrap_or_default();
        let out = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).output().unwrap();
        assert!(out.status.success());
        let out = holder.join().unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["ok"], false, "the held session must be cut: {r}");
        assert!(r["cut_after_ms"].as_u64() < Some(15_000), "{r}");
    });
    let status = w.env.agent.take().unwrap().wait().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", w.env.agent_log());
    let s = w.env.wait_session("held", |s| s["user"] == w.ana.as_str());
    assert!(s["end_reason"].as_str().unwrap_or("").starts_with("cut:"), "{s}");
    assert!(s["bytes_up"].as_u64() > Some(0), "{s}");
}

#[test]
fn malformed_policies_are_rejected_with_file_line_and_column() {
    let w = world("badpolicy");
    let bad = w.env.write_policy(
        "bad.toml",
        "[[backend]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"127.10.0.1:99999\"\n\n[[rule]]\nnmae = \"r\"\n",
    );
    let bad_s = bad.display().to_string();
    let out = w.env.gatehouse(&["policy", "check", &bad_s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad_s}:4:11:")), "{err}");
    assert!(err.contains(&format!("{bad_s}:7:1: unknown field `nmae`")), "{err}");
    assert!(err.contains("did you mean `name`?"), "{err}");

    // `run` refuses it too, before attaching anything.
    let mut args = w.env.agent_args(&bad);
    let pin = format!("{}-bad", w.env.pin_dir.display());
    args[8] = pin.clone();
    let out = std::process::Command::new(gatehouse_e2e::gatehouse_bin()).args(&args).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{bad_s}:7:1")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::path::Path::new(&pin).exists(), "nothing may be pinned for a bad policy");
}
