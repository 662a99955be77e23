//! Telling people about requests that wait for them: a webhook (an
//! HMAC-signed JSON body with a Slack-compatible `text` field) and/or a local
//! command, for every `[[notify]]` of the policy, when a request is opened
//! and when it is decided. Sent in the background and retried with backoff:
//! a failing webhook never blocks or changes a decision.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::approval::{Subject, Transition};

/// One `[[notify]]` target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Where the policy defines it.
    pub at: crate::policy::Location,
    pub url: Option<Endpoint>,
    /// HMAC-SHA256 key for the `X-Gatehouse-Signature` header (root-owned 0600 file).
    pub secret_file: Option<PathBuf>,
    /// Program and arguments; the JSON body arrives on its standard input.
    pub command: Option<Vec<String>>,
    /// Which steps to announce (`requested`, `approved`, …); empty: all.
    pub events: Vec<String>,
}

/// An `http://` or `https://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/path]` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: a host is needed (and no credentials in the URL)"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: bad host")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| format!("{url:?}: bad port"))?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(format!("{url:?}: bad host"));
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?}: bad path"));
        }
        Ok(Self { tls, host, port, path: path.to_owned() })
    }
}

/// What a notification says.
#[derive(Debug, Serialize)]
struct Body<'a> {
    /// Slack-compatible one-line summary.
    text: String,
    event: &'a str,
    request: &'a crate::approval::Request,
    by: Option<&'a crate::approval::Person>,
}

/// The one-line summary of a step: one line whatever the request holds (a
/// statement's line breaks, carriage returns and escape sequences are shown
/// escaped, so a chat message or a terminal cannot be shown another
/// statement), with `&`, `<` and `>` written as Slack's message text asks
/// (`&amp;` `&lt;` `&gt;`): a statement holding `<https://…|Approve>` or
/// `<!channel>` would otherwise become a link or a mention in the approvers'
/// channel. The request itself goes beside it in the body, as it is.
pub fn summary(t: &Transition) -> String {
    chat_line(&summary_text(t))
}

/// Text for a chat message's `text`: one line, controls escaped, `&<>` as Slack asks.
fn chat_line(text: &str) -> String {
    let line = crate::audit::replay::escape_all(text);
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn summary_text(t: &Transition) -> String {
    let r = &t.request;
    let who = r.requester.label();
    let what = match &r.subject {
        Subject::Grant { grant, backend, duration_s } => {
            format!("the grant \"{grant}\" on {backend} for {}", crate::settings::format_duration_s(*duration_s))
        }
        other => other.describe(),
    };
    let by = t.by.as_ref().map(|p| format!(" by {}", p.label())).unwrap_or_default();
    match t.event {
        "requested" => format!(
            "Gatehouse request {}: {who} asks to {what}{} — approvers: {} (`gatehouse approve {}` / `gatehouse deny {}`)",
            r.id,
            r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default(),
            r.approvers,
            r.id,
            r.id
        ),
        event => format!("Gatehouse request {} ({who}: {what}) {}{by}", r.id, event.replace('_', " ")),
    }
}

/// Announces `t` to every target that wants it, in the background.
pub fn announce(targets: &[Target], t: &Transition) {
    for target in targets {
        if !target.events.is_empty() && !target.events.iter().any(|e| e == t.event) {
            continue;
        }
        let body = Body { text: summary(t), event: t.event, request: &t.request, by: t.by.as_ref() };
        let Ok(json) = serde_json::to_vec(&body) else { continue };
        deliver(target, json, t.event, t.request.id.to_string());
    }
}

/// Announces a row-level trail alert (event `trail_alert`) to every target that wants it.
pub fn announce_alert(targets: &[Target], a: &crate::trail::AlertRecord) {
    const EVENT: &str = "trail_alert";
    for target in targets.iter().filter(|t| t.events.is_empty() || t.events.iter().any(|e| e == EVENT)) {
        let body = serde_json::json!({ "text": chat_line(&format!("Gatehouse {}", a.describe())), "event": EVENT, "alert": a });
        let Ok(json) = serde_json::to_vec(&body) else { continue };
        deliver(target, json, EVENT, a.rule.clone());
    }
}

/// Sends in the background, retrying with backoff.
fn deliver(target: &Target, json: Vec<u8>, event: &'static str, id: String) {
    let target = Arc::new(target.clone());
    tokio::spawn(async move {
        for (attempt, pause) in [0u64, 1, 2, 4, 8].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            match send(&target, &json, event).await {
                Ok(()) => {
                    info!(notify = %target.name, request = %id, event, "notification sent");
                    return;
                }
                Err(e) => {
                    warn!(notify = %target.name, request = %id, event, attempt = attempt + 1, error = %e, "notification failed")
                }
            }
        }
        warn!(notify = %target.name, request = %id, event, "notification given up after 5 attempts");
    });
}

const TIMEOUT: Duration = Duration::from_secs(10);

async fn send(target: &Target, body: &[u8], event: &str) -> Result<(), String> {
    if let Some(url) = &target.url {
        let signature = match &target.secret_file {
            Some(path) => {
                let path = path.clone();
                let key = tokio::task::spawn_blocking(move || crate::secrets::read_secret(&path, "notify secret_file"))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.first_line().expose());
                Some(crate::audit::hex(ring::hmac::sign(&key, body).as_ref()))
            }
            None => None,
        };
        tokio::time::timeout(TIMEOUT, post(url, body, event, signature.as_deref()))
            .await
            .map_err(|_| format!("no answer from {}:{} in {TIMEOUT:?}", url.host, url.port))??;
    }
    if let Some(cmd) = &target.command {
        tokio::time::timeout(TIMEOUT, run(cmd, body, event))
            .await
            .map_err(|_| format!("{} did not finish in {TIMEOUT:?}", cmd.first().map_or("", String::as_str)))??;
    }
    Ok(())
}

/// One HTTP/1.1 POST; success is a 2xx status line. Only the status line of
/// the answer is read.
async fn post(url: &Endpoint, body: &[u8], event: &str, signature: Option<&str>) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await.map_err(|e| e.to_string())?;
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Gatehouse-Event: {event}\r\nConnection: close\r\n",
        url.path,
        body.len()
    );
    if let Some(sig) = signature {
        head.push_str(&format!("X-Gatehouse-Signature: sha256={sig}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let answer = if url.tls {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let mut tls =
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
        exchange(&mut tls, &request).await?
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &request).await?
    };
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    if (200..300).contains(&status) { Ok(()) } else { Err(format!("HTTP {status}")) }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<String, String> {
    s.write_all(request).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    while buf.len() < 512 && !buf.contains(&b'\n') {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

async fn run(cmd: &[String], body: &[u8], event: &str) -> Result<(), String> {
    let (program, args) = cmd.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("GATEHOUSE_EVENT", event)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).await.map_err(|e| e.to_string())?;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(format!("{program} exited with {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cannot_format_the_chat_message_it_is_announced_in() {
        let text = "DROP TABLE t -- <!channel> <https://evil.example/ok|Approve #7> & more\r\x1b[2K";
        let t = Transition {
            request: crate::approval::Request {
                id: 7,
                subject: crate::approval::Subject::Statement {
                    session: "s".into(),
                    backend: "db".into(),
                    text: text.into(),
                    kinds: "drop".into(),
                    rule: "r".into(),
                    parameters: Vec::new(),
                },
                requester: crate::approval::Person { uid: 1000, user: Some("dan".into()), subject: None },
                reason: Some("<@U123> please".into()),
                approvers: "leads".into(),
                needed: 1,
                approvals: Vec::new(),
                state: crate::approval::State::Pending,
                created_us: 0,
                deadline_us: 0,
                until_us: None,
            },
            event: "requested",
            by: None,
        };
        let line = summary(&t);
        assert!(!line.contains(['<', '>', '\r', '\x1b']), "{line}");
        assert!(
            line.contains(r"run on db: DROP TABLE t -- &lt;!channel&gt; &lt;https://evil.example/ok|Approve #7&gt; &amp; more\r\u{1b}[2K"),
            "{line}"
        );
        assert!(line.contains("(&lt;@U123&gt; please)"), "{line}");
    }

    #[test]
    fn urls_are_taken_apart_strictly() {
        assert_eq!(
            Endpoint::parse("http://127.10.0.1:8080/hook").unwrap(),
            Endpoint { tls: false, host: "127.10.0.1".into(), port: 8080, path: "/hook".into() }
        );
        assert_eq!(
            Endpoint::parse("https://hooks.slack.com/services/T/B/X").unwrap(),
            Endpoint { tls: true, host: "hooks.slack.com".into(), port: 443, path: "/services/T/B/X".into() }
        );
        assert_eq!(Endpoint::parse("http://[::1]:9/").unwrap().host, "::1");
        for bad in ["ftp://x", "http://", "http://user:pw@host/", "http://h:port/", "http://h/a b", "http://[::1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
