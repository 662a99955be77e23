//! `cargo xtask bench http`: wrk keep-alive GETs against one origin, three
//! ways in the same run: direct, through Gatehouse (request policy and
//! recording on) and through haproxy in HTTP mode; then a 10 MB JSON body
//! fetched direct and through Gatehouse with a masking profile.
//!
//! The origin for the GETs is haproxy answering from memory
//! (`http-request return`), so the origin is not the bottleneck; the 10 MB
//! body comes from Python's http.server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bench::{Rig, free_port};

const PROTECTED: &str = "127.10.202.1";
const DIRECT: &str = "127.10.202.2";
const HAPROXY: &str = "127.10.202.3";
const BIG: &str = "127.10.202.4";

struct Servers {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BIG_PY: &str = r#"
import http.server, json, sys
doc = json.dumps([{"id": i, "customer": {"name": "Ann Smith", "card": "4111 1111 1111 1111",
       "email": "user%d@example.com" % i}, "note": "order %d shipped" % i, "total": i * 1.5}
      for i in range(70000)]).encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(doc)))
        self.end_headers()
        self.wfile.write(doc)
print(len(doc), flush=True)
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

fn start(port: u16) -> Result<(Servers, u64)> {
    let dir = std::env::temp_dir().join(format!("gh-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut s = Servers { dir: dir.clone(), children: vec![] };
    // The origin (on the protected and the direct address) and the haproxy HTTP proxy in front of it.
    let body = r#"{"id":7,"status":"open","total":12.5}"#;
    s.children.push(crate::bench::haproxy(&dir, &format!(
            "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1m\n  timeout server 1m\n\
             frontend origin\n  bind {PROTECTED}:{port}\n  bind {DIRECT}:{port}\n  \
             http-request return status 200 content-type application/json string '{body}'\n\
             frontend proxy\n  bind {HAPROXY}:{port}\n  option http-keep-alive\n  default_backend o\n\
             backend o\n  http-reuse always\n  server s {DIRECT}:{port}\n"
        ))?);
    let script = dir.join("big.py");
    std::fs::write(&script, BIG_PY)?;
    let mut big = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([BIG, &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(big.stdout.take().context("stdout")?), &mut line)?;
    s.children.push(big);
    let size: u64 = line.trim().parse().context("big body size")?;
    for a in [PROTECTED, DIRECT, HAPROXY, BIG] {
        crate::util::wait_port(&format!("{a}:{port}"))?;
    }
    Ok((s, size))
}

fn wrk(rig: &Rig, in_cg: bool, url: &str, secs: u64) -> Result<f64> {
    let mut c = if in_cg { rig.in_cgroup("/usr/bin/wrk") } else { Command::new("/usr/bin/wrk") };
    c.args(["-t2", "-c16", &format!("-d{secs}s"), url]);
    let out = c.output().context("wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {text}"))
}

/// Seconds for curl to fetch `url` (best of 3), checking that `must_not` is not in the body.
fn fetch(rig: &Rig, in_cg: bool, url: &str, must_not: Option<&str>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut c = if in_cg { rig.in_cgroup("/usr/bin/curl") } else { Command::new("/usr/bin/curl") };
        c.args(["-sS", "-f", url]);
        let t = Instant::now();
        let out = c.output().context("curl")?;
        best = best.min(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(s) = must_not
            && String::from_utf8_lossy(&out.stdout).contains(s)
        {
            bail!("{url}: the body still holds {s:?}: not masked");
        }
    }
    Ok(best)
}

pub fn http(secs: u64) -> Result<()> {
    let port = free_port()?;
    let (servers, size) = start(port)?;
    let mut rig = Rig::new("http")?;
    let policy = format!(
        "[[backend]]\nname = \"api\"\nprotocol = \"http\"\naddress = \"{PROTECTED}:{port}\"\n\n\
         [[backend]]\nname = \"big\"\nprotocol = \"http\"\naddress = \"{BIG}:{port}\"\n\n\
         [[mask]]\nname = \"pii\"\ndetectors = [\"card\", \"email\"]\nfields = [\"$[*].customer.name\"]\n\n\
         [[rule]]\nname = \"api reads\"\nwho = {{ users = [\"root\"] }}\nbackend = \"api\"\nmethods = [\"GET\"]\npaths = [\"/api/*\"]\n\n\
         [[rule]]\nname = \"big masked\"\nwho = {{ users = [\"root\"] }}\nbackend = \"big\"\nmethods = [\"GET\"]\nmask = \"pii\"\n"
    );
    rig.start_agent(&policy, free_port()?)?;
    let path = "/api/v1/orders/7";
    let direct = wrk(&rig, false, &format!("http://{DIRECT}:{port}{path}"), secs)?;
    let gatehouse = wrk(&rig, true, &format!("http://{PROTECTED}:{port}{path}"), secs)?;
    let haproxy = wrk(&rig, false, &format!("http://{HAPROXY}:{port}{path}"), secs)?;
    println!();
    println!("http_get direct     {direct:>10.0} req/s");
    println!("http_get gatehouse  {gatehouse:>10.0} req/s  (policy + recording on)");
    println!("http_get haproxy    {haproxy:>10.0} req/s  (HTTP mode)");
    let url = format!("http://{BIG}:{port}/orders");
    let big_direct = fetch(&rig, false, &url, None)?;
    let big_masked = fetch(&rig, true, &url, Some("4111 1111 1111 1111"))?;
    let mb = size as f64 / 1e6;
    println!("json_{mb:.0}mb direct            {big_direct:>7.3} s  {:>7.1} MB/s", mb / big_direct);
    println!("json_{mb:.0}mb gatehouse masked  {big_masked:>7.3} s  {:>7.1} MB/s", mb / big_masked);
    println!();
    println!("ratio http_get gatehouse/direct = {:.2}", gatehouse / direct);
    println!("ratio http_get gatehouse/haproxy = {:.2}", gatehouse / haproxy);
    println!("ratio json_10mb_masked gatehouse/direct = {:.2}", big_direct / big_masked);
    drop(rig);
    drop(servers);
    Ok(())
}
