//! The relay of a command's answer (`answer`) on a masked session, between
//! a test that plays the server and reads what the client got, over
//! loopback sockets: what a server puts outside the columns it described
//! never reaches the client.

use super::masking::fixtures::lenenc;
use super::*;
use crate::mask::{Counts, Profile, ProfileSpec, Style};

fn profile() -> Profile {
    Profile::compile(&ProfileSpec {
        name: "p".into(),
        columns: vec![("shop.customers.email".into(), Style::Redact)],
        ..ProfileSpec::default()
    })
    .unwrap()
}

/// A column definition for `shop.customers.<name>` of MySQL type `kind`.
fn coldef(name: &str, kind: u8) -> Vec<u8> {
    super::masking::fixtures::coldef("shop", "customers", name, name, kind)
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// Plays `packets` as the server's answer to a `SELECT id FROM customers`
/// on a masked session (EOF-terminated metadata, as without
/// CLIENT_DEPRECATE_EOF); returns how `answer` ended and every byte the
/// client received.
async fn play(packets: &[Vec<u8>]) -> (Result<Outcome, Fail>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("gh-mysql-test-{}-{}", std::process::id(), SessionId::new()));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let db = dir.join("state/audit.db");
    let raw = crate::settings::AgentRaw { audit_db: Some(db.clone()), ..Default::default() };
    let settings = crate::settings::Settings::resolve(&raw, &crate::settings::Overrides::default()).unwrap();
    let (audit, writer) = crate::audit::open(&db, &crate::settings::host_key_path(&db), &settings.audit).unwrap();
    let (mut server, agent_backend) = pair().await;
    let (agent_client, mut client) = pair().await;
    let mut s = Session {
        backend: Conn::new(agent_backend, 64 << 20, "server's"),
        deprecate_eof: false,
        database: Some("shop".into()),
        fold_case: false,
        mariadb: true,
        seq: 1,
        prepared: prepared::Registry::default(),
        rec: record::Recording::for_test(audit.clone(), SessionId::new()),
        login: "app".into(),
    };
    let mut to_client = Conn::new(agent_client, 64 << 20, "client's");
    let mut bytes = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        bytes.extend(wire::frame(u8::try_from(i + 1).unwrap(), p));
    }
    server.write_all(&bytes).await.unwrap();
    let p = profile();
    let reads = [TableRef { schema: None, name: "customers".into() }];
    let ctes = std::collections::BTreeSet::new();
    let mut counts = Counts::default();
    let mut m =
        MaskCtx { profile: &p, reads: &reads, ctes: &ctes, counts: &mut counts, binary: false, diagnostics: false };
    let (mut out, mut down) = (Vec::new(), 0u64);
    let r = answer(&mut s, &mut to_client, &mut out, &mut down, Some(&mut m)).await;
    // What `answer` leaves in `out` goes to the client after it returns (as
    // `forward` sends it) only when it succeeded.
    if r.is_ok() {
        to_client.send(&out).await.unwrap();
    }
    drop(to_client);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    drop(audit);
    writer.stop();
    let _ = std::fs::remove_dir_all(&dir);
    (r, got)
}

fn eof() -> Vec<u8> {
    vec![0xfe, 0, 0, 0x02, 0]
}

const SECRET: &[u8] = b"zoe@example.com";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_result_with_nothing_to_mask_is_relayed_whole() {
    let (r, got) = play(&[vec![1], coldef("id", 0x03), eof(), lenenc(b"7"), eof()]).await;
    assert!(matches!(r, Ok(Outcome { rows: Some(1), .. })), "{r:?}");
    assert!(contains(&got, &lenenc(b"7")), "{got:?}");
}

#[tokio::test]
async fn a_value_after_the_described_int_column_never_reaches_the_client() {
    let row = [lenenc(b"7"), lenenc(SECRET)].concat();
    let (r, got) = play(&[vec![1], coldef("id", 0x03), eof(), row, eof()]).await;
    assert!(matches!(&r, Err(Fail::Breach(m)) if m.contains("cannot read")), "{r:?}");
    assert!(!contains(&got, SECRET), "the client got the smuggled value: {got:?}");
}

#[tokio::test]
async fn a_value_in_place_of_the_end_of_the_column_definitions_never_reaches_the_client() {
    let (r, got) = play(&[vec![1], coldef("id", 0x03), lenenc(SECRET), eof()]).await;
    assert!(matches!(&r, Err(Fail::Breach(m)) if m.contains("did not end with an EOF")), "{r:?}");
    assert!(!contains(&got, SECRET), "the client got the smuggled value: {got:?}");
}

#[tokio::test]
async fn a_masked_column_is_masked() {
    let (r, got) = play(&[vec![1], coldef("email", 0xfd), eof(), lenenc(SECRET), eof()]).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(!contains(&got, SECRET) && contains(&got, b"****"), "{got:?}");
}
