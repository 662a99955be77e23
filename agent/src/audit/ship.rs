//! Shipping committed audit records to a central PostgreSQL
//! (`[agent.ship] url = "postgres://…"`), for fleets of bastions.
//!
//! The local store stays the source of truth and the write-ahead point: the
//! shipper reads records the writer has already committed (its own
//! read-only SQLite connection, on the blocking pool) and copies them with
//! their chain hashes, unchanged, into `gatehouse_events`, keyed by (host,
//! seq). It resumes from the highest sequence the central store holds for
//! this host, so an outage costs nothing but time: rows are inserted with
//! `ON CONFLICT DO NOTHING`, none is lost or duplicated. It never touches
//! the data path: a slow or absent central server only delays shipping.
//!
//! The central store vouches for nothing: `gatehouse verify --central URL
//! --host H --pubkey K` copies a host's records into a temporary store and
//! runs the same verifier, against the host key given from outside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

/// Records per central transaction unless `batch` says otherwise: few
/// enough commits that the central store's per-transaction cost stays small
/// beside the rows themselves.
pub const DEFAULT_BATCH: usize = 2000;

/// `[agent.ship]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipRaw {
    /// `postgres://user@host:port/db` (the password from `password_file`, or the URL).
    pub url: String,
    /// How this host is named in the central store (default: its host name).
    pub host: Option<String>,
    /// `verify` (default): TLS required, the server's certificate checked
    /// against `ca_file` or the system's trust store and its name against the
    /// URL's host. `off`: plain TCP, only on a trusted network path.
    pub tls: Option<String>,
    /// The CA the central server's certificate must chain to (root-owned).
    pub ca_file: Option<PathBuf>,
    /// Records per central transaction (default 500).
    pub batch: Option<usize>,
}

/// How the shipper reaches the central server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipTls {
    /// Plain TCP (`tls = "off"`).
    Off,
    /// TLS required and verified (`tls = "verify"`, the default).
    Verify { ca_file: Option<PathBuf> },
}

/// Validated shipping settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    pub url: String,
    pub host: String,
    pub batch: usize,
    pub tls: ShipTls,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("[agent.ship] {0}")]
    Config(String),
    #[error("central store: {}", with_causes(.0))]
    Central(#[from] tokio_postgres::Error),
    #[error("local store {path}: {message}")]
    Local { path: PathBuf, message: String },
}

impl TryFrom<&ShipRaw> for Ship {
    type Error = ShipError;

    fn try_from(raw: &ShipRaw) -> Result<Self, ShipError> {
        if !(raw.url.starts_with("postgres://") || raw.url.starts_with("postgresql://")) {
            return Err(ShipError::Config(format!("url {:?} is not a postgres:// URL", redact_url(&raw.url))));
        }
        let tls = match (raw.tls.as_deref(), &raw.ca_file) {
            (None | Some("verify"), ca_file) => ShipTls::Verify { ca_file: ca_file.clone() },
            (Some("off"), None) => ShipTls::Off,
            (Some("off"), Some(_)) => return Err(ShipError::Config("ca_file is set but tls = \"off\"".into())),
            (Some(other), _) => {
                return Err(ShipError::Config(format!("tls = {other:?}: \"verify\" (the default) or \"off\"")));
            }
        };
        if let ShipTls::Verify { ca_file: Some(path) } = &tls {
            crate::secrets::read_checked(path, "[agent.ship] ca_file", crate::secrets::Kind::Trusted)
                .map_err(|e| ShipError::Config(format!("ca_file: {e}")))?;
        }
        let host = match &raw.host {
            Some(h) if !h.is_empty() && h.len() <= 253 => h.clone(),
            Some(h) => return Err(ShipError::Config(format!("host {h:?} must be 1 to 253 characters"))),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| ShipError::Config("no host name: set host".into()))?,
        };
        let batch = raw.batch.unwrap_or(DEFAULT_BATCH);
        if batch == 0 || batch > 10_000 {
            return Err(ShipError::Config("batch must be between 1 and 10000".into()));
        }
        Ok(Self { url: raw.url.clone(), host, batch, tls })
    }
}

/// An error and its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer"): tokio-postgres shows only the first.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !out.ends_with(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
        next = cause.source();
    }
    out
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = url.get(s + 3..at).unwrap_or_default();
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", url.get(..s + 3).unwrap_or_default(), url.get(at..).unwrap_or_default())
        }
        _ => url.to_owned(),
    }
}

/// The central schema, by version. A new version is appended, never edited.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE gatehouse_hosts (
         host        text PRIMARY KEY,
         public_key  text NOT NULL,
         first_seen  timestamptz NOT NULL DEFAULT now(),
         last_seen   timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE gatehouse_events (
         host         text   NOT NULL,
         seq          bigint NOT NULL,
         time_us      bigint NOT NULL,
         session      text,
         kind         text   NOT NULL,
         content_hash bytea  NOT NULL,
         body         bytea,
         data         bytea,
         prev_hash    bytea  NOT NULL,
         hash         bytea  NOT NULL,
         PRIMARY KEY (host, seq)
     );
     CREATE INDEX gatehouse_events_session ON gatehouse_events (session);
     CREATE INDEX gatehouse_events_kind_time ON gatehouse_events (kind, time_us);",
)];

/// Brings the central schema to the newest version (one transaction per
/// version; concurrent agents serialise on an advisory lock).
pub async fn migrate(client: &mut Client) -> Result<i32, ShipError> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7226115);
         CREATE TABLE IF NOT EXISTS gatehouse_schema (version int PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let have: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM gatehouse_schema", &[]).await?.get(0);
    let mut now = have;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > have) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO gatehouse_schema (version) VALUES ($1)", &[v]).await?;
        now = *v;
    }
    tx.commit().await?;
    Ok(now)
}

/// Connects to the central store: TLS required and verified, or plain TCP
/// when the operator said `tls = "off"`. An `sslmode` in the URL cannot
/// weaken this: the mode is set here, after the URL is read.
pub async fn connect(url: &str, tls: &ShipTls) -> Result<Client, ShipError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    let client = match tls {
        ShipTls::Off => {
            config.ssl_mode(SslMode::Disable);
            let (client, conn) = config.connect(NoTls).await?;
            tokio::spawn(log_end(conn));
            client
        }
        ShipTls::Verify { ca_file } => {
            let rustls = crate::protocol::postgres::tls::verifying_config(ca_file.as_deref())
                .map_err(|e| ShipError::Config(format!("TLS: {e}")))?;
            config.ssl_mode(SslMode::Require);
            let (client, conn) = config.connect(MakeRustlsConnect::new(rustls)).await?;
            tokio::spawn(log_end(conn));
            client
        }
    };
    Ok(client)
}

async fn log_end<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "central store connection ended");
    }
}

/// One record as stored (columns of `events`).
type Row = (i64, i64, Option<String>, String, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>, Vec<u8>);

/// A batch of rows, column by column, for one `unnest` insert.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    time_us: Vec<i64>,
    session: Vec<Option<String>>,
    kind: Vec<String>,
    content_hash: Vec<Vec<u8>>,
    body: Vec<Option<Vec<u8>>>,
    data: Vec<Option<Vec<u8>>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

/// Committed records after `after`, at most `n`, from the local store.
fn read_after(conn: &rusqlite::Connection, db: &Path, after: i64, n: usize) -> Result<Vec<Row>, ShipError> {
    let local = |e: rusqlite::Error| ShipError::Local { path: db.to_owned(), message: e.to_string() };
    let mut st = conn
        .prepare_cached(
            "SELECT seq, time_us, session, kind, content_hash, body, data, prev_hash, hash
             FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(local)?;
    let rows = st
        .query_map(rusqlite::params![after, i64::try_from(n).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })
        .map_err(local)?;
    rows.collect::<Result<_, _>>().map_err(local)
}

/// Ships until `stop`, reconnecting with back-off after any failure.
pub async fn run(db: PathBuf, ship: Ship, public_key: String, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match ship_once(&db, &ship, &public_key, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(central = %redact_url(&ship.url), error = %e, retry_in = ?backoff, "audit shipping paused");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn ship_once(db: &Path, ship: &Ship, public_key: &str, stop: &CancellationToken) -> Result<(), ShipError> {
    let mut client = connect(&ship.url, &ship.tls).await?;
    let version = migrate(&mut client).await?;
    client
        .execute(
            "INSERT INTO gatehouse_hosts (host, public_key) VALUES ($1, $2)
             ON CONFLICT (host) DO UPDATE SET public_key = EXCLUDED.public_key, last_seen = now()",
            &[&ship.host, &public_key],
        )
        .await?;
    let mut acked: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM gatehouse_events WHERE host = $1", &[&ship.host])
        .await?
        .get(0);
    tracing::info!(central = %redact_url(&ship.url), host = %ship.host, schema = version, from_seq = acked + 1, "audit shipping");
    // One read-only connection for the whole run (its statement cached),
    // handed to the blocking pool for each read and back.
    let mut conn = Some(
        super::query::open_read_only(db)
            .map_err(|e| ShipError::Local { path: db.to_owned(), message: e.to_string() })?,
    );
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let (path, n) = (db.to_owned(), ship.batch);
        let Some(c) = conn.take() else { return Ok(()) };
        let (c, rows) = tokio::task::spawn_blocking(move || {
            let rows = read_after(&c, &path, acked, n);
            (c, rows)
        })
        .await
        .map_err(|e| ShipError::Local { path: db.to_owned(), message: e.to_string() })?;
        conn = Some(c);
        let rows = rows?;
        let Some(last) = rows.last().map(|r| r.0) else {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        };
        // One statement per batch: the columns as arrays, unnested by the
        // server (a round trip per record would cap shipping far below
        // what the local store takes).
        let mut cols = Columns::default();
        for (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash) in rows.iter().cloned() {
            cols.seq.push(seq);
            cols.time_us.push(time_us);
            cols.session.push(session);
            cols.kind.push(kind);
            cols.content_hash.push(content_hash);
            cols.body.push(body);
            cols.data.push(data);
            cols.prev_hash.push(prev_hash);
            cols.hash.push(hash);
        }
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO gatehouse_events (host, seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
             SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bytea[], $7::bytea[],
                                      $8::bytea[], $9::bytea[], $10::bytea[])
             ON CONFLICT (host, seq) DO NOTHING",
            &[
                &ship.host,
                &cols.seq,
                &cols.time_us,
                &cols.session,
                &cols.kind,
                &cols.content_hash,
                &cols.body,
                &cols.data,
                &cols.prev_hash,
                &cols.hash,
            ],
        )
        .await?;
        tx.commit().await?;
        crate::metrics::shipped(rows.len());
        acked = last;
    }
}

/// Copies `host`'s records from the central store into a new local store
/// at `dest` (the same layout, query tables rebuilt from the records), for
/// the verifier.
pub async fn materialize(url: &str, tls: &ShipTls, host: &str, dest: &Path) -> Result<u64, ShipError> {
    let client = connect(url, tls).await?;
    let rows = client
        .query(
            "SELECT seq, time_us, session, kind, content_hash, body, data, prev_hash, hash
             FROM gatehouse_events WHERE host = $1 ORDER BY seq",
            &[&host],
        )
        .await?;
    let local = |e: rusqlite::Error| ShipError::Local { path: dest.to_owned(), message: e.to_string() };
    let mut conn = rusqlite::Connection::open(dest).map_err(local)?;
    conn.execute_batch(super::SCHEMA).map_err(local)?;
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('layout', ?1)", [super::chain::LAYOUT.to_string()])
        .map_err(local)?;
    let tx = conn.transaction().map_err(local)?;
    let mut n = 0u64;
    {
        let mut st = tx
            .prepare(
                "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(local)?;
        for r in &rows {
            let (seq, time_us, session, kind): (i64, i64, Option<String>, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            let (content_hash, body, data): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) =
                (r.try_get(4)?, r.try_get(5)?, r.try_get(6)?);
            let (prev_hash, hash): (Vec<u8>, Vec<u8>) = (r.try_get(7)?, r.try_get(8)?);
            st.execute(rusqlite::params![seq, time_us, session, kind, content_hash, body, data, prev_hash, hash])
                .map_err(local)?;
            n += 1;
        }
    }
    // The query tables, as the writer would have built them from these records.
    let records =
        super::verify::read_records(&tx).map_err(|message| ShipError::Local { path: dest.to_owned(), message })?;
    for r in &records {
        if let Some(e) = super::verify::indexed_event(r) {
            super::index(&tx, &e).map_err(local)?;
        }
    }
    tx.commit().map_err(local)?;
    Ok(n)
}

/// One session opened anywhere in the fleet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CentralSession {
    pub host: String,
    pub session: String,
    pub time_us: i64,
    pub open: serde_json::Value,
}

/// The newest sessions across hosts (optionally one user's: a Unix user name).
pub async fn sessions(
    url: &str,
    tls: &ShipTls,
    user: Option<&str>,
    limit: u32,
) -> Result<Vec<CentralSession>, ShipError> {
    let client = connect(url, tls).await?;
    let rows = client
        .query(
            "SELECT host, session, time_us, body FROM gatehouse_events
             WHERE kind = $3 AND body IS NOT NULL
               AND ($1::text IS NULL OR convert_from(body, 'UTF8')::jsonb ->> 'user' = $1)
             ORDER BY time_us DESC LIMIT $2",
            &[&user, &i64::from(limit), &super::RecordKind::SessionOpen.as_str()],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let body: Vec<u8> = r.try_get(3)?;
        out.push(CentralSession {
            host: r.try_get(0)?,
            session: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
            time_us: r.try_get(2)?,
            open: serde_json::from_slice(&body).unwrap_or_default(),
        });
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("postgres://gh:s3cret@db.internal:5432/audit"),
            "postgres://gh:***@db.internal:5432/audit"
        );
        assert_eq!(redact_url("postgres://db.internal/audit"), "postgres://db.internal/audit");
    }

    #[test]
    fn settings_are_checked() {
        let raw = ShipRaw { url: "postgres://a@b/c".into(), host: Some("bastion-1".into()), ..ShipRaw::default() };
        assert_eq!(Ship::try_from(&raw).map(|s| s.batch).ok(), Some(DEFAULT_BATCH));
        assert_eq!(Ship::try_from(&raw).map(|s| s.tls).ok(), Some(ShipTls::Verify { ca_file: None }));
        let off = ShipRaw { tls: Some("off".into()), ..raw.clone() };
        assert_eq!(Ship::try_from(&off).map(|s| s.tls).ok(), Some(ShipTls::Off));
        let odd = ShipRaw { tls: Some("prefer".into()), ..raw.clone() };
        assert!(Ship::try_from(&odd).is_err(), "no mode that falls back to plain text");
        let contradictory = ShipRaw { tls: Some("off".into()), ca_file: Some("/etc/ssl/ca.pem".into()), ..raw.clone() };
        assert!(Ship::try_from(&contradictory).is_err());
        let bad = ShipRaw { url: "mysql://x".into(), ..raw };
        assert!(Ship::try_from(&bad).is_err());
    }
}
