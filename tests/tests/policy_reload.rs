//! Hot reload end to end: the running agent swaps a new policy in only if it
//! loads and its own test cases pass; a bad one leaves the old in force and
//! shows up in `gatehouse status`. Open TCP sessions that a new policy no
//! longer allows are cut. Needs root.

use std::time::{Duration, Instant};

use gatehouse_e2e::{EchoServer, Env, loopback};
use serde_json::Value;

fn policy(addr: &str, group: &str, extra: &str) -> String {
    format!(
        r#"
[[backend]]
name = "echo"
protocol = "tcp"
address = "{addr}"

[[rule]]
name = "team reaches echo"
who = {{ groups = ["{group}"] }}
backend = "echo"
{extra}
"#
    )
}

fn wait_for(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = env.status();
        if pred(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {st:#}\n{}", env.agent_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reload_swaps_good_policies_keeps_the_old_one_on_errors_and_cuts_revoked_sessions() {
    let mut env = Env::new("reload");
    let team = env.group("team");
    let other = env.group("other");
    let ana = env.user("ana", &[&team]);
    let echo = EchoServer::start(&format!("{}:0", loopback(21)));
    let addr = echo.addr.to_string();
    let config = env.write_policy("policy.toml", &policy(&addr, &team, ""));
    env.start_agent(&config);
    assert_eq!(env.probe(&ana, &["echo", &addr, "100"])["ok"], true);

    // 1. A policy that does not load: refused, old one stays, status says why.
    std::fs::write(&config, policy(&addr, &team, "action = \"alow\"")).unwrap();
    let st = wait_for(&env, "a refused reload", |s| !s["policy"]["last_error"].is_null());
    let err = st["policy"]["last_error"].as_str().unwrap();
    assert!(err.contains("policy.toml:11:10") && err.contains("did you mean `allow`?"), "{err}");
    assert_eq!(st["policy"]["reloads"], 0);
    assert_eq!(env.probe(&ana, &["echo", &addr, "100"])["ok"], true, "the old policy must stay in force");
    let out = env.gatehouse(&["status", "--control-socket", &env.control().display().to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LAST RELOAD REFUSED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 2. A policy whose own test case fails: refused too.
    let failing = format!(
        "{}\n[[test]]\nwho = {{ user = \"{ana}\", groups = [\"{team}\"] }}\nbackend = \"echo\"\nexpect = \"deny\"\n",
        policy(&addr, &team, "")
    );
    std::fs::write(&config, failing).unwrap();
    let st = wait_for(&env, "a refused reload (failing test)", |s| {
        s["policy"]["last_error"].as_str().is_some_and(|e| e.contains("test cases fail"))
    });
    assert_eq!(st["policy"]["reloads"], 0);

    // 3. A good policy that moves access to another group, while ana holds a
    // session open: it is swapped in, and her session is cut with the reason.
    let probe = env.probe.clone();
    let held = {
        let env = &env;
        std::thread::scope(|s| {
            let h = s.spawn(|| env.run_as(&ana, None, &probe, &["hold", &addr, "20"]));
            wait_for(env, "the held session", |s| s["sessions"]["active"] == 1);
            std::fs::write(&config, policy(&addr, &other, "")).unwrap();
            h.join().unwrap()
        })
    };
    let r: Value = serde_json::from_slice(&held.stdout).unwrap();
    assert_eq!(r["ok"], false, "the revoked session must be cut: {r}");
    let st = wait_for(&env, "the good reload", |s| s["policy"]["reloads"] == 1);
    assert!(st["policy"]["last_error"].is_null(), "{st:#}");
    let s = env.wait_session("cut", |s| s["end_reason"].as_str().is_some_and(|e| e.starts_with("cut:")));
    assert!(s["end_reason"].as_str().unwrap().contains("policy reload"), "{s}");
    assert_eq!(env.probe(&ana, &["echo", &addr, "100"])["ok"], false, "ana's group no longer has access");

    // 4. SIGHUP reloads too (same files: a second successful reload).
    let pid = env.agent.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_for(&env, "the SIGHUP reload", |s| s["policy"]["reloads"] == 2);
}

#[test]
fn the_agent_refuses_to_start_with_a_policy_whose_tests_fail() {
    let env = Env::new("startfail");
    let config = env.write_policy(
        "policy.toml",
        &format!(
            "{}\n[[test]]\nwho = {{ user = \"nobody\" }}\nbackend = \"echo\"\nexpect = \"allow\"\n",
            policy(&format!("{}:7", loopback(22)), "somegroup", "")
        ),
    );
    let out =
        std::process::Command::new(gatehouse_e2e::gatehouse_bin()).args(env.agent_args(&config)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy test case(s) fail"), "{err}");
    assert!(!env.pin_dir.exists(), "nothing may be attached");
}
