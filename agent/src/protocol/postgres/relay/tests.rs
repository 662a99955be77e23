//! The relay driven with byte fixtures: the test is both the client and
//! the server, over loopback sockets, and the relay between them is the
//! real one (both directions, the classifier, the catalog, the policy, the
//! masking, strict recording into a real audit store). Each test writes
//! what a client sends, checks what reached the server (the server is what
//! must never see a refused statement), answers as PostgreSQL would, and
//! checks what the client got and what the store recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::identity::Principal;
use crate::live::{LiveSession, Snapshot};
use crate::policy::Protocol;
use crate::protocol::postgres::io::Stream;
use crate::protocol::postgres::{Ctx, Services, SessionDb, catalog, wire};
use crate::protocol::tcp::{End, RelayOutcome};
use crate::types::{BackendName, SessionId};

/// `public.orders` (16400: id, customer_id), `public.customers` (16401:
/// id, email) and more: `crate::catalog::tests::sample`. Statements are
/// allowed as selects on two rules, one of them masked.
const POLICY: &str = r#"
[[backend]]
name = "appdb"
protocol = "postgres"
address = "127.0.0.1:9"
credentials = { user = "gh_app", password_file = "/dev/null" }

[[mask]]
name = "pii"
columns = [{ column = "email", style = "partial" }]

[[rule]]
name = "alice reads"
who = { users = ["alice"] }
backend = "appdb"
statements = ["select"]

[[rule]]
name = "mallory reads masked"
who = { users = ["mallory"] }
backend = "appdb"
statements = ["select"]
mask = "pii"
"#;

/// An approval desk with nobody at it: these tests hold nothing.
#[derive(Debug, Default)]
struct NoDesk(crate::approval::Registry);

impl crate::approval::Desk for NoDesk {
    fn registry(&self) -> &crate::approval::Registry {
        &self.0
    }

    fn request(
        &self,
        _: crate::approval::Subject,
        _: Principal,
        _: &crate::policy::Approval,
        _: Option<String>,
        _: Option<String>,
    ) -> Result<crate::approval::Waiting, String> {
        Err("no approvals in these tests".into())
    }

    fn transition(&self, _: &crate::approval::Transition) {}
}

struct Relay {
    /// The test's ends: it is the client on one and the server on the other.
    client: TcpStream,
    server: TcpStream,
    relay: tokio::task::JoinHandle<RelayOutcome>,
    writer: Option<audit::AuditWriter>,
    db: PathBuf,
    dir: PathBuf,
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

impl Relay {
    /// A session of `user` (on the rule the policy gives them), already
    /// logged in: the server's first message is the login's ReadyForQuery.
    async fn start(user: &str) -> Relay {
        let dir = std::env::temp_dir().join(format!("gh-relay-test-{}-{}", std::process::id(), SessionId::new()));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let db = dir.join("state/audit.db");
        let raw = crate::settings::AgentRaw { audit_db: Some(db.clone()), ..Default::default() };
        let settings = crate::settings::Settings::resolve(&raw, &crate::settings::Overrides::default()).unwrap();
        let (audit, writer) =
            audit::open(&db, &crate::settings::host_key_path(&db), &settings.audit).expect("open the audit store");
        let audit = Arc::new(audit);
        let source = crate::policy::diag::Source { path: "t.toml".into(), text: POLICY.into() };
        let policy = crate::policy::load::load(&[source]).unwrap();
        let backend = policy.backend(&BackendName::new("appdb")).unwrap().clone();
        let principal = Principal::named(user, &[]);
        let decision = policy.decide(
            &principal,
            &crate::policy::Request { backend: &backend.name, statement: None, now: jiff::Timestamp::now() },
        );
        let mask = decision.mask.as_deref().and_then(|m| policy.mask(m).cloned());
        let record = policy.record_options(decision.rule.as_ref());
        let login = backend.login(None).unwrap().clone();
        let svc = Services {
            settings: Arc::new(settings),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot { policy, routes: Default::default() })),
            grant_rules: Arc::new(ArcSwap::from_pointee(Vec::new())),
            audit: audit.clone(),
            classifier: Arc::default(),
            catalogs: Arc::default(),
            cancel_keys: Arc::default(),
            made_roles: Arc::default(),
            trail_alerts: Arc::default(),
            trail_holds: Arc::default(),
            backends: Arc::default(),
            desk: Arc::new(NoDesk::default()),
        };
        let id = SessionId::new();
        let open = audit::SessionOpen {
            id,
            started_us: audit::now_us(),
            uid: Some(principal.uid.0),
            user: Some(user.into()),
            gid: None,
            pid: None,
            comm: None,
            cgroup_id: None,
            client: "127.0.0.1:1".into(),
            backend: Some("appdb".into()),
            orig_dst: None,
            protocol: Some("postgres".into()),
            decision: audit::Verdict::Allow,
            rule: decision.rule.as_ref().map(ToString::to_string),
            reason: "allowed (test)".into(),
            oidc: None,
        };
        audit.open_session(open).await.unwrap();
        let ctx = Ctx {
            svc: Arc::new(svc),
            id,
            principal: principal.clone(),
            uid: principal.uid,
            backend: backend.clone(),
            addr: "127.0.0.1:9".parse().unwrap(),
            as_role: None,
            mask,
            guard: decision.guard.clone(),
            record,
            live: Arc::new(LiveSession {
                principal,
                backend: backend.name.clone(),
                protocol: Protocol::Postgres,
                rule: decision.rule.as_ref().map(ToString::to_string),
                cut: CancellationToken::new(),
                cut_reason: std::sync::OnceLock::new(),
            }),
            connect_approval: None,
        };
        let session_db = SessionDb {
            login,
            database: "appdb".into(),
            catalog: Arc::new(catalog::Entry::loaded(crate::catalog::tests::sample())),
            search_path: None,
        };
        let (client, relay_client) = pair().await;
        let (relay_server, server) = pair().await;
        let login_ready = BytesMut::from(&wire::ready_for_query(b'I')[..]);
        let relay = tokio::spawn(async move {
            super::run(
                &ctx,
                &session_db,
                Stream::Plain(relay_client),
                BytesMut::new(),
                Stream::Plain(relay_server),
                login_ready,
            )
            .await
        });
        let mut r = Relay { client, server, relay, writer: Some(writer), db, dir };
        // The login's ReadyForQuery reaches the client as it is.
        assert_eq!(r.client_reads().await, vec![(b'Z', b"I".to_vec())]);
        r
    }

    async fn client_sends(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    async fn server_sends(&mut self, bytes: &[u8]) {
        self.server.write_all(bytes).await.unwrap();
    }

    /// Messages the client is sent, up to and including a ReadyForQuery (or the end).
    async fn client_reads(&mut self) -> Vec<(u8, Vec<u8>)> {
        read_until(&mut self.client, |tag| tag == b'Z').await
    }

    /// Messages the server is sent, up to and including a Sync or Query (or the end).
    async fn server_reads(&mut self) -> Vec<(u8, Vec<u8>)> {
        read_until(&mut self.server, |tag| matches!(tag, b'S' | b'Q' | b'X')).await
    }

    /// Ends the session (the client's Terminate) and returns the store's
    /// statements rows of it: (text, decision, rows, error, masked).
    async fn finish(mut self) -> (RelayOutcome, Vec<StatementRow>) {
        self.client.write_all(&msg(b'X', b"")).await.unwrap();
        assert_eq!(self.server_reads().await.last().map(|m| m.0), Some(b'X'), "the Terminate is passed on");
        self.server.shutdown().await.unwrap();
        let out =
            tokio::time::timeout(Duration::from_secs(10), &mut self.relay).await.expect("the relay ends").unwrap();
        (out, self.records())
    }

    /// The store's statements rows, once the relay has ended: (text,
    /// decision, rows, error, masked).
    fn records(&mut self) -> Vec<StatementRow> {
        self.stop_writer();
        let c = rusqlite::Connection::open(&self.db).unwrap();
        let mut q =
            c.prepare("SELECT text, decision, rows, error, masked FROM statements ORDER BY started_us, seq").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<Vec<StatementRow>, _>>()
            .unwrap()
    }

    /// Stops the audit writer: what was recorded is in the store's tables.
    fn stop_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.stop();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.relay.abort();
        self.stop_writer();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type StatementRow = (String, String, Option<i64>, Option<String>, Option<String>);

/// Reads whole messages until one whose tag `last` accepts, or the peer closes.
async fn read_until(s: &mut TcpStream, last: impl Fn(u8) -> bool) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let mut head = [0u8; 5];
        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return got,
            Err(_) => panic!("nothing more came within 10 s; so far: {got:?}"),
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        got.push((head[0], body));
        if last(head[0]) {
            return got;
        }
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A RowDescription of text columns: (name, table OID, column number).
fn row_description(cols: &[(&str, u32, i16)]) -> Vec<u8> {
    row_description_of(cols, 25)
}

/// A RowDescription of columns of one type (its OID: 25 text, 23 int4).
fn row_description_of(cols: &[(&str, u32, i16)], type_oid: u32) -> Vec<u8> {
    let mut b = i16::try_from(cols.len()).unwrap().to_be_bytes().to_vec();
    for (name, table, attnum) in cols {
        b.extend(cstr(name));
        b.extend(table.to_be_bytes());
        b.extend(attnum.to_be_bytes());
        b.extend(type_oid.to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend(0i16.to_be_bytes());
    }
    msg(b'T', &b)
}

fn data_row(values: &[&str]) -> Vec<u8> {
    wire::data_row(values.iter().map(|v| Some(v.as_bytes())))
}

fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

fn error(code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message)] {
        b.push(k);
        b.extend(cstr(v));
    }
    b.push(0);
    msg(b'E', &b)
}

fn parse(text: &str) -> Vec<u8> {
    let mut b = cstr("");
    b.extend(cstr(text));
    b.extend(0i16.to_be_bytes());
    msg(b'P', &b)
}

fn bind() -> Vec<u8> {
    let mut b = cstr("");
    b.extend(cstr(""));
    b.extend(0i16.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    let mut b = cstr("");
    b.extend(0i32.to_be_bytes());
    msg(b'E', &b)
}

/// Parse, Bind and Execute of `text` (unnamed statement and portal), no Sync.
fn extended(text: &str) -> Vec<u8> {
    [parse(text), bind(), execute()].concat()
}

/// PostgreSQL's answer to a stand-in (it fails, quoting it) and the exchange's ReadyForQuery.
fn stand_in_fails(stand_in: &str) -> Vec<u8> {
    [error("42601", &format!("syntax error at or near \"{stand_in}\"")), wire::ready_for_query(b'I')].concat()
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned()
}

/// The fields of an ErrorResponse, by code.
fn fields(body: &[u8]) -> std::collections::BTreeMap<char, String> {
    wire::error_fields(body)
        .unwrap()
        .into_iter()
        .map(|(c, v)| (char::from(c), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

#[tokio::test]
async fn a_refused_query_never_reaches_the_server_and_the_client_gets_gatehouses_error() {
    let mut r = Relay::start("alice").await;
    r.client_sends(&msg(b'Q', &cstr("DELETE FROM orders"))).await;
    let got = r.server_reads().await;
    assert_eq!(got.len(), 1);
    let stand_in = text(&got[0].1);
    assert!(stand_in.starts_with("gatehouse_refused_"), "the server is sent a stand-in, not the DELETE: {stand_in}");
    // PostgreSQL's answer to the stand-in, which quotes it.
    r.server_sends(&stand_in_fails(&stand_in)).await;
    let answer = r.client_reads().await;
    assert_eq!(answer.iter().map(|m| m.0).collect::<Vec<_>>(), vec![b'E', b'Z']);
    let e = fields(&answer[0].1);
    assert_eq!(e[&'C'], "42501");
    assert!(e[&'M'].starts_with("Gatehouse refused this statement"), "{e:?}");
    assert!(!e[&'M'].contains("gatehouse_refused_"), "the stand-in does not show: {e:?}");
    let (_, rows) = r.finish().await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("DELETE FROM orders", "deny"));
}

#[tokio::test]
async fn pipelined_queries_end_in_order_with_their_own_row_counts() {
    let mut r = Relay::start("alice").await;
    let mut burst = Vec::new();
    for q in ["SELECT id FROM orders", "SELECT 1", "SELECT id FROM customers"] {
        burst.extend(msg(b'Q', &cstr(q)));
    }
    r.client_sends(&burst).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(r.server_reads().await.into_iter().map(|m| text(&m.1)));
    }
    assert_eq!(seen, ["SELECT id FROM orders", "SELECT 1", "SELECT id FROM customers"]);
    let mut answers = Vec::new();
    for (n, table) in [(2, 16400), (1, 0), (3, 16401)] {
        answers.extend(row_description(&[("id", table, 1)]));
        for i in 0..n {
            answers.extend(data_row(&[&i.to_string()]));
        }
        answers.extend(command_complete(&format!("SELECT {n}")));
        answers.extend(wire::ready_for_query(b'I'));
    }
    r.server_sends(&answers).await;
    for n in [2, 1, 3] {
        let got = r.client_reads().await;
        assert_eq!(got.iter().filter(|m| m.0 == b'D').count(), n);
        assert_eq!(got.iter().find(|m| m.0 == b'C').map(|m| text(&m.1)), Some(format!("SELECT {n}")));
    }
    let (_, rows) = r.finish().await;
    let recorded: Vec<(&str, &str, Option<i64>)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str(), r.2)).collect();
    assert_eq!(
        recorded,
        [
            ("SELECT id FROM orders", "allow", Some(2)),
            ("SELECT 1", "allow", Some(1)),
            ("SELECT id FROM customers", "allow", Some(3))
        ]
    );
}

#[tokio::test]
async fn a_refusal_inside_an_extended_pipeline_skips_to_its_sync_and_the_rest_runs() {
    let mut r = Relay::start("alice").await;
    let burst: Vec<Vec<u8>> = ["SELECT id FROM orders", "UPDATE orders SET customer_id = 0", "SELECT 2"]
        .iter()
        .flat_map(|q| [extended(q), sync()])
        .collect();
    r.client_sends(&burst.concat()).await;
    let mut exchanges = Vec::new();
    while exchanges.len() < 3 {
        exchanges.push(r.server_reads().await);
    }
    let parsed: Vec<String> = exchanges
        .iter()
        .map(|x| x.iter().find(|m| m.0 == b'P').map(|m| text(wire::parse_body(&m.1).unwrap().1)).unwrap_or_default())
        .collect();
    assert_eq!(parsed[0], "SELECT id FROM orders");
    assert!(parsed[1].starts_with("gatehouse_refused_"), "the UPDATE never reaches the server: {parsed:?}");
    assert_eq!(parsed[2], "SELECT 2");
    let mut answers = Vec::new();
    answers.extend(msg(b'1', b""));
    answers.extend(msg(b'2', b""));
    answers.extend(data_row(&["7"]));
    answers.extend(command_complete("SELECT 1"));
    answers.extend(wire::ready_for_query(b'I'));
    answers.extend(stand_in_fails(&parsed[1]));
    answers.extend(msg(b'1', b""));
    answers.extend(msg(b'2', b""));
    answers.extend(data_row(&["2"]));
    answers.extend(command_complete("SELECT 1"));
    answers.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answers).await;
    let tags = |x: &[(u8, Vec<u8>)]| x.iter().map(|m| m.0).collect::<Vec<_>>();
    assert_eq!(tags(&r.client_reads().await), b"12DCZ");
    let refused = r.client_reads().await;
    assert_eq!(tags(&refused), b"EZ");
    assert_eq!(fields(&refused[0].1)[&'C'], "42501");
    assert_eq!(tags(&r.client_reads().await), b"12DCZ");
    let (_, rows) = r.finish().await;
    let recorded: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        recorded,
        [("SELECT id FROM orders", "allow"), ("UPDATE orders SET customer_id = 0", "deny"), ("SELECT 2", "allow")]
    );
}

#[tokio::test]
async fn a_masked_column_reaches_the_client_masked_and_is_counted() {
    let mut r = Relay::start("mallory").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT email FROM customers"))).await;
    let got = r.server_reads().await;
    assert_eq!(text(&got[0].1), "SELECT email FROM customers");
    let mut answer = row_description(&[("email", 16401, 2)]);
    answer.extend(data_row(&["zoe@example.com"]));
    answer.extend(data_row(&["sam@example.org"]));
    answer.extend(command_complete("SELECT 2"));
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    let got = r.client_reads().await;
    let values: Vec<Vec<Option<Vec<u8>>>> = got
        .iter()
        .filter(|m| m.0 == b'D')
        .map(|m| wire::data_row_values(&m.1).unwrap().into_iter().map(|v| v.map(<[u8]>::to_vec)).collect())
        .collect();
    assert_eq!(
        values,
        vec![vec![Some(b"****@example.com".to_vec())], vec![Some(b"****@example.org".to_vec())]],
        "the server's values never reach the client"
    );
    let (_, rows) = r.finish().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, Some(2));
    assert_eq!(rows[0].4.as_deref(), Some(r#"{"columns":2}"#), "two values masked, on record");
}

#[tokio::test]
async fn a_server_that_completes_what_it_was_not_sent_ends_the_session_as_a_breach() {
    let mut r = Relay::start("alice").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT id FROM orders"))).await;
    r.server_reads().await;
    // A SELECT answered as a DELETE: the server did something else than what was allowed.
    let mut answer = command_complete("DELETE 5");
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    let got = r.client_reads().await;
    let e = got.iter().find(|m| m.0 == b'E').map(|m| fields(&m.1)).expect("an error");
    assert_eq!((e[&'S'].as_str(), e[&'C'].as_str()), ("FATAL", "42501"), "{e:?}");
    assert!(got.iter().all(|m| m.0 != b'C'), "the DELETE's tag never reaches the client");
    let out = tokio::time::timeout(Duration::from_secs(10), &mut r.relay).await.expect("the relay ends").unwrap();
    assert!(matches!(&out.end, End::Cut(why) if why.starts_with("policy breach")), "{:?}", out.end);
    let rows = r.records();
    assert_eq!(rows.len(), 1);
    let error = rows[0].3.clone().unwrap_or_default();
    assert!(error.starts_with("POLICY BREACH") && error.contains("DELETE"), "on record: {error}");
}

#[tokio::test]
async fn a_query_string_with_one_refused_statement_is_refused_whole() {
    let mut r = Relay::start("alice").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT 1; DELETE FROM orders; SELECT 2"))).await;
    let got = r.server_reads().await;
    assert_eq!(got.len(), 1);
    let sent = text(&got[0].1);
    assert!(sent.starts_with("gatehouse_refused_") && !sent.contains("SELECT"), "nothing of it runs: {sent}");
    r.server_sends(&stand_in_fails(&sent)).await;
    let answer = r.client_reads().await;
    assert_eq!(fields(&answer[0].1)[&'C'], "42501");
    let (_, rows) = r.finish().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "deny");
}

#[tokio::test]
async fn a_message_sent_a_byte_at_a_time_is_decided_whole() {
    let mut r = Relay::start("alice").await;
    for b in msg(b'Q', &cstr("DELETE FROM orders")) {
        r.client_sends(&[b]).await;
        tokio::task::yield_now().await;
    }
    let got = r.server_reads().await;
    assert!(text(&got[0].1).starts_with("gatehouse_refused_"), "{got:?}");
    let stand_in = text(&got[0].1);
    r.server_sends(&stand_in_fails(&stand_in)).await;
    assert_eq!(fields(&r.client_reads().await[0].1)[&'C'], "42501");
    let (_, rows) = r.finish().await;
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("DELETE FROM orders", "deny"));
}

/// Everything the client was sent, as one byte string.
fn all_bytes(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect()
}

/// On a masked session, results whose described columns need no masking
/// (an int column, or none) are passed on unread, their rows checked against
/// the description only; a text column is scanned, so its rows are read.
#[tokio::test]
async fn a_server_sending_more_columns_than_it_described_is_not_passed_on_to_a_masked_session() {
    let id = [("id", 16401, 1)];
    // Rows with more columns than described.
    let two = data_row(&["1", "zoe@example.com"]);
    for described in [row_description_of(&id, 23), row_description(&[]), row_description(&id)] {
        more_columns_than_described(&described, &two).await;
    }
    // One column as described, and the value after it, outside any column.
    let mut smuggled = 1i16.to_be_bytes().to_vec();
    smuggled.extend(1i32.to_be_bytes());
    smuggled.extend(b"1zoe@example.com");
    for described in [row_description_of(&id, 23), row_description(&id)] {
        more_columns_than_described(&described, &msg(b'D', &smuggled)).await;
    }
}

async fn more_columns_than_described(described: &[u8], row: &[u8]) {
    let mut r = Relay::start("mallory").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT id FROM customers"))).await;
    r.server_reads().await;
    let mut answer = described.to_vec();
    answer.extend_from_slice(row);
    answer.extend(command_complete("SELECT 1"));
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    let got = r.client_reads().await;
    assert!(
        memchr::memmem::find(&all_bytes(&got), b"zoe@example.com").is_none(),
        "the undescribed value reached the client: {got:?}"
    );
    let e = got.iter().find(|m| m.0 == b'E').map(|m| fields(&m.1)).expect("an error");
    assert_eq!(e[&'S'], "FATAL", "{e:?}");
}

#[tokio::test]
async fn a_masked_column_the_server_describes_as_computed_is_hidden_whole() {
    let mut r = Relay::start("mallory").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT email FROM customers"))).await;
    r.server_reads().await;
    // No table OID: the column cannot be traced to one the rule leaves alone,
    // and the statement reads a masked one: hidden whole.
    let mut answer = row_description(&[("email", 0, 0)]);
    answer.extend(data_row(&["zoe@example.com"]));
    answer.extend(command_complete("SELECT 1"));
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    let got = r.client_reads().await;
    assert!(memchr::memmem::find(&all_bytes(&got), b"zoe@example.com").is_none(), "{got:?}");
    let values: Vec<Vec<Option<&[u8]>>> =
        got.iter().filter(|m| m.0 == b'D').map(|m| wire::data_row_values(&m.1).unwrap()).collect();
    assert_eq!(
        values,
        vec![vec![Some(&b"****"[..])]],
        "an untraced column that could be the masked one is hidden whole"
    );
}

#[tokio::test]
async fn a_malformed_message_from_the_server_ends_the_session_with_an_error_and_a_record() {
    let mut r = Relay::start("alice").await;
    r.client_sends(&msg(b'Q', &cstr("SELECT id FROM orders"))).await;
    r.server_reads().await;
    // A CommandComplete whose tag is not NUL-terminated.
    let mut answer = msg(b'C', b"SELECT 1");
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    let got = r.client_reads().await;
    let e = got.iter().find(|m| m.0 == b'E').map(|m| fields(&m.1)).expect("an error");
    assert_eq!((e[&'S'].as_str(), e[&'C'].as_str()), ("FATAL", "08006"), "{e:?}");
    let out = tokio::time::timeout(Duration::from_secs(10), &mut r.relay).await.expect("the relay ends").unwrap();
    assert!(matches!(&out.end, End::BackendError(why) if why.contains("malformed")), "{:?}", out.end);
    let rows = r.records();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].3.as_deref().is_some_and(|e| e.starts_with("session ended")), "{:?}", rows[0]);
}

#[tokio::test]
async fn what_follows_a_refused_parse_before_its_sync_is_left_for_the_server_to_skip() {
    let mut r = Relay::start("alice").await;
    r.client_sends(&[extended("DELETE FROM orders"), extended("SELECT id FROM orders"), sync()].concat()).await;
    let got = r.server_reads().await;
    let parsed: Vec<String> =
        got.iter().filter(|m| m.0 == b'P').map(|m| text(wire::parse_body(&m.1).unwrap().1)).collect();
    assert!(parsed.iter().all(|p| !p.contains("DELETE")), "the DELETE never reaches the server: {parsed:?}");
    assert!(parsed.first().is_some_and(|p| p.starts_with("gatehouse_refused_")), "{parsed:?}");
    // PostgreSQL fails the stand-in's Parse and skips the rest of the exchange.
    r.server_sends(&stand_in_fails(&parsed[0])).await;
    let got = r.client_reads().await;
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), b"EZ");
    assert_eq!(fields(&got[0].1)[&'C'], "42501");
    // The session goes on: the next exchange runs.
    r.client_sends(&msg(b'Q', &cstr("SELECT 1"))).await;
    assert_eq!(text(&r.server_reads().await[0].1), "SELECT 1");
    let mut answer = row_description(&[("?column?", 0, 0)]);
    answer.extend(data_row(&["1"]));
    answer.extend(command_complete("SELECT 1"));
    answer.extend(wire::ready_for_query(b'I'));
    r.server_sends(&answer).await;
    assert_eq!(r.client_reads().await.iter().map(|m| m.0).collect::<Vec<_>>(), b"TDCZ");
    let (_, rows) = r.finish().await;
    // The SELECT after the refusal was never executed (the server skipped its
    // Execute), so it has no statement record; the refusal has.
    let recorded: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(recorded, [("DELETE FROM orders", "deny"), ("SELECT 1", "allow")]);
}
