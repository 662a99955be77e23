//! `gatehouse export`: a signed bundle of audit records that anyone can check
//! without the store, and [`verify_export`], which checks one.
//!
//! A bundle is a directory:
//! - `records.jsonl`: the selected records in chain order, one JSON object
//!   per line, with every field the chain hash covers, so each record's hash
//!   can be recomputed: `body_text` (or `body_hex` when it is not UTF-8)
//!   holds the exact hashed body, `body` the same parsed for reading, and
//!   `data_hex` the raw bytes (stream chunks, checkpoint signatures);
//! - `index.txt`: `seq hash` per record, in order. It is what the manifest's
//!   `records_digest` covers, kept apart from the records so that a record
//!   changed, deleted, inserted or reordered can be named;
//! - per [`Format`]: `ocsf.jsonl` (OCSF 1.1.0 events), or one
//!   `<session>.cast` per session (asciicast v2 of the replay transcript);
//! - `manifest.json`: format, filters, counts, the chain anchor,
//!   `records_digest` and the blake3 hash of every file above;
//! - `signature`: Ed25519 over the bytes of `manifest.json` by the host key,
//!   and `public_key`: the key the bundle claims (both hex). Only a key the
//!   verifier already trusts proves who made the bundle.
//!
//! `records_digest` is blake3 (derive-key context
//! `"gatehouse export records v1"`) over each record's seq (8 bytes,
//! big-endian) and hash (32 bytes), in order. An export reads the store in
//! one SQLite read transaction: a consistent snapshot while the agent writes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chain::{self, Break, Record};
use super::replay;
use super::verify::{self, RECORD_COLUMNS, Report, Trust, TrustSource, record_from_row};
use super::{AuditError, SessionClose, SessionOpen, StatementEnd, StatementStart, hex, keys, now_us, query};

/// What the bundle holds and its files' hashes; the signed bytes.
pub const MANIFEST: &str = "manifest.json";
/// Ed25519 signature over `manifest.json`, hex.
pub const SIGNATURE: &str = "signature";
/// The key the bundle claims was used to sign it, hex.
pub const PUBLIC_KEY: &str = "public_key";
/// The verifiable records, one JSON object per line.
pub const RECORDS: &str = "records.jsonl";
/// `seq hash` per record: the list `records_digest` covers.
pub const INDEX: &str = "index.txt";
/// OCSF events (format `ocsf`).
pub const OCSF: &str = "ocsf.jsonl";
/// The OCSF schema version the `ocsf` format follows.
pub const OCSF_VERSION: &str = "1.1.0";
/// Layout version of a bundle.
const BUNDLE_VERSION: u32 = 2;
const DIGEST_CONTEXT: &str = "gatehouse export records v1";
/// Longest `records.jsonl` line read back: a chunk as large as the largest
/// backend message, hex-encoded, and its other fields.
const MAX_RECORD_LINE: usize = 2 * (256 << 20) + (1 << 20);
/// Longest `index.txt` line: a seq and a hash.
const MAX_INDEX_LINE: usize = 128;
const MAX_MANIFEST: u64 = 64 << 20;
/// `signature` and `public_key`.
const MAX_SMALL_FILE: u64 = 4096;

/// What a bundle holds besides the verifiable records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Only the records (`records.jsonl`).
    Jsonl,
    /// The records and `ocsf.jsonl`, for a SIEM.
    Ocsf,
    /// The records and one asciicast v2 recording per session, for a player.
    Asciicast,
}

impl Format {
    /// The name used on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Ocsf => "ocsf",
            Self::Asciicast => "asciicast",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Self::Jsonl),
            "ocsf" => Ok(Self::Ocsf),
            "asciicast" => Ok(Self::Asciicast),
            other => Err(format!("unknown export format {other:?} (jsonl, ocsf or asciicast)")),
        }
    }
}

/// Which records to export, and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Sessions opened at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Sessions opened before this time.
    pub until_us: Option<i64>,
    /// Sessions of this user name (or, when all digits, this uid).
    pub user: Option<String>,
    /// What to write besides `records.jsonl`.
    pub format: Format,
}

impl ExportOptions {
    fn unfiltered(&self) -> bool {
        self.since_us.is_none() && self.until_us.is_none() && self.user.is_none()
    }
}

/// The filters an export was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub user: Option<String>,
}

/// One file of the bundle, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    /// blake3 of the file's bytes, hex.
    pub blake3: String,
}

/// What a bundle holds; its bytes are what the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub bundle_version: u32,
    pub format: Format,
    pub created_us: i64,
    /// `created_us` in RFC 3339, for people.
    pub created: String,
    /// The key that signed the bundle (hex).
    pub host_public_key: String,
    pub filters: Filters,
    /// Every record of the store, in order: the chain can be checked link by link.
    pub complete: bool,
    pub records: u64,
    pub sessions: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The prev_hash of the first record (hex): where the exported chain hangs from.
    pub anchor: Option<String>,
    /// The hash of the last record (hex).
    pub head: Option<String>,
    /// blake3 over the ordered (seq, hash) pairs (see the module doc), hex.
    pub records_digest: String,
    /// The OCSF version of `ocsf.jsonl`, for that format.
    pub ocsf_version: Option<String>,
    pub files: Vec<FileEntry>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The operator's output directory cannot be used.
    #[error("export directory {path}: {source}")]
    OutDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The operator's output directory holds files already.
    #[error("export directory {path} is not empty")]
    NotEmpty { path: PathBuf },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] AuditError),
    /// The store cannot be read.
    #[error("reading the audit store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A bundle file cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A session's transcript cannot be made (asciicast).
    #[error("session {session}: {source}")]
    Replay {
        session: String,
        #[source]
        source: replay::ReplayError,
    },
    /// The store does not verify: nothing is signed.
    #[error("the audit store does not verify, so it is not exported and signed:\n{problems}")]
    Unverified { problems: String },
    /// Internal: a value could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Which records an export takes.
#[derive(Debug)]
enum Selection {
    All,
    Sessions { sessions: HashSet<String>, since: i64, until: i64 },
}

impl Selection {
    fn wants(&self, session: Option<&str>, kind: &str, time_us: i64) -> bool {
        match self {
            Self::All => true,
            Self::Sessions { sessions, since, until } => {
                session.is_some_and(|s| sessions.contains(s))
                    || (kind == "checkpoint" && (*since..*until).contains(&time_us))
                    // Key rotations always: later checkpoints are signed by the new key.
                    || kind == "key_rotation"
            }
        }
    }
}

/// A bundle file being written, hashed as it goes.
struct BundleFile {
    name: String,
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl BundleFile {
    fn create(dir: &Path, name: &str) -> Result<Self, ExportError> {
        let path = dir.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ExportError::Write { path: path.clone(), source })?;
        Ok(Self { name: name.to_owned(), path, out: BufWriter::new(file), hasher: blake3::Hasher::new(), bytes: 0 })
    }

    fn write(&mut self, b: &[u8]) -> Result<(), ExportError> {
        self.out.write_all(b).map_err(|source| ExportError::Write { path: self.path.clone(), source })?;
        self.hasher.update(b);
        self.bytes = self.bytes.saturating_add(u64::try_from(b.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    fn line(&mut self, b: &[u8]) -> Result<(), ExportError> {
        self.write(b)?;
        self.write(b"\n")
    }

    fn finish(mut self) -> Result<FileEntry, ExportError> {
        let err = |source| ExportError::Write { path: self.path.clone(), source };
        self.out.flush().map_err(err)?;
        self.out.get_ref().sync_all().map_err(err)?;
        Ok(FileEntry { name: self.name, bytes: self.bytes, blake3: self.hasher.finalize().to_hex().to_string() })
    }
}

fn encode_err(what: &'static str) -> impl Fn(serde_json::Error) -> ExportError {
    move |source| ExportError::Encode { what, source }
}

/// Writes a bundle directory `out` (created, mode 0700; must not exist or be
/// empty; files 0600, as they hold what the store holds):
/// the records in the chosen format, `manifest.json`, `signature` (Ed25519
/// over the manifest bytes, hex), `public_key` (hex). `progress(done, total)`
/// is called as records are written.
///
/// Selection: the sessions whose `session_open` record falls in
/// [since, until) (and of `user`, if given), with all their records, plus
/// the checkpoints in that range. With no filter, every record. On error the
/// directory may hold a partial bundle without `manifest.json`, which never
/// verifies.
pub fn export(
    db: &Path,
    out: &Path,
    opts: &ExportOptions,
    key: &SigningKey,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, ExportError> {
    // Sign only what verifies: the chain, its signatures (from this key,
    // following rotations back), redactions and query tables.
    let trust = Trust { keys: vec![key.verifying_key()], source: TrustSource::Given };
    let report = verify::verify_db(db, &trust, None).map_err(|problems| ExportError::Unverified { problems })?;
    if !report.ok() {
        let problems = report.problems.iter().map(|p| format!("  record {}: {}", p.seq, p.what)).collect::<Vec<_>>();
        return Err(ExportError::Unverified { problems: problems.join("\n") });
    }
    let conn = query::open_read_only(db)?;
    let read_err = |source| ExportError::Read { path: db.to_owned(), source };
    // One read transaction: the bundle is one snapshot of the store.
    let tx = conn.unchecked_transaction().map_err(read_err)?;
    let selection = select(&tx, opts).map_err(read_err)?;
    let total = count(&tx, &selection).map_err(read_err)?;
    prepare_out_dir(out)?;

    let mut records = BundleFile::create(out, RECORDS)?;
    let mut index = BundleFile::create(out, INDEX)?;
    let mut ocsf = match opts.format {
        Format::Ocsf => Some((BundleFile::create(out, OCSF)?, OcsfMapper::default())),
        Format::Jsonl | Format::Asciicast => None,
    };
    let mut digest = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    let mut sessions: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut done = 0u64;
    let mut first_rec: Option<(u64, [u8; 32])> = None;
    let mut last: Option<(u64, [u8; 32])> = None;
    {
        let mut st = tx.prepare(&format!("SELECT {RECORD_COLUMNS} FROM events ORDER BY seq")).map_err(read_err)?;
        let mut rows = st.query([]).map_err(read_err)?;
        while let Some(row) = rows.next().map_err(read_err)? {
            let r = record_from_row(row).map_err(read_err)?;
            if !selection.wants(r.session.as_deref(), &r.kind, r.time_us) {
                continue;
            }
            records.line(&record_line(&r)?)?;
            index.line(format!("{} {}", r.seq, hex(&r.hash)).as_bytes())?;
            digest.update(&r.seq.to_be_bytes());
            digest.update(&r.hash);
            if let Some((file, mapper)) = ocsf.as_mut() {
                for event in mapper.record(&r) {
                    file.line(&serde_json::to_vec(&event).map_err(encode_err("an OCSF event"))?)?;
                }
            }
            if let Some(s) = &r.session
                && seen.insert(s.clone())
            {
                sessions.push(s.clone());
            }
            first_rec.get_or_insert((r.seq, r.prev_hash));
            last = Some((r.seq, r.hash));
            done += 1;
            progress(done, total.max(done));
        }
    }
    let mut files = vec![records.finish()?, index.finish()?];
    if let Some((mut file, mut mapper)) = ocsf {
        for event in mapper.finish() {
            file.line(&serde_json::to_vec(&event).map_err(encode_err("an OCSF event"))?)?;
        }
        files.push(file.finish()?);
    }
    if opts.format == Format::Asciicast {
        let mut taken = HashSet::new();
        for s in &sessions {
            let recs =
                replay::session_records(&tx, s).map_err(|source| ExportError::Replay { session: s.clone(), source })?;
            let mut file = BundleFile::create(out, &cast_name(s, &mut taken))?;
            write_cast(&mut file, s, &recs)?;
            files.push(file.finish()?);
        }
    }
    drop(tx);
    files.sort_by(|a, b| a.name.cmp(&b.name));

    let created_us = now_us();
    let manifest = Manifest {
        bundle_version: BUNDLE_VERSION,
        format: opts.format,
        created_us,
        created: jiff::Timestamp::from_microsecond(created_us).map(|t| t.to_string()).unwrap_or_default(),
        host_public_key: hex(&key.verifying_key().to_bytes()),
        filters: Filters { since_us: opts.since_us, until_us: opts.until_us, user: opts.user.clone() },
        complete: opts.unfiltered(),
        records: done,
        sessions: u64::try_from(sessions.len()).unwrap_or(u64::MAX),
        first_seq: first_rec.map(|(s, _)| s),
        last_seq: last.map(|(s, _)| s),
        anchor: first_rec.map(|(_, h)| hex(&h)),
        head: last.map(|(_, h)| hex(&h)),
        records_digest: digest.finalize().to_hex().to_string(),
        ocsf_version: (opts.format == Format::Ocsf).then(|| OCSF_VERSION.to_owned()),
        files,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(encode_err("the manifest"))?;
    bytes.push(b'\n');
    let mut m = BundleFile::create(out, MANIFEST)?;
    m.write(&bytes)?;
    m.finish()?;
    let mut s = BundleFile::create(out, SIGNATURE)?;
    s.line(hex(&chain::sign(key, &bytes)).as_bytes())?;
    s.finish()?;
    let mut k = BundleFile::create(out, PUBLIC_KEY)?;
    k.line(manifest.host_public_key.as_bytes())?;
    k.finish()?;
    Ok(manifest)
}

/// The sessions an export takes (by their opening record).
fn select(conn: &Connection, opts: &ExportOptions) -> rusqlite::Result<Selection> {
    if opts.unfiltered() {
        return Ok(Selection::All);
    }
    let since = opts.since_us.unwrap_or(i64::MIN);
    let until = opts.until_us.unwrap_or(i64::MAX);
    let uid: Option<u64> =
        opts.user.as_deref().filter(|u| u.bytes().all(|b| b.is_ascii_digit())).and_then(|u| u.parse().ok());
    let mut st = conn.prepare(
        "SELECT session, body FROM events
         WHERE kind = 'session_open' AND session IS NOT NULL AND time_us >= ?1 AND time_us < ?2
         ORDER BY seq",
    )?;
    let mut rows = st.query([since, until])?;
    let mut sessions = HashSet::new();
    while let Some(row) = rows.next()? {
        let session: String = row.get(0)?;
        let body: Vec<u8> = row.get(1)?;
        let wanted = match &opts.user {
            None => true,
            Some(user) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                v.get("user").and_then(Value::as_str) == Some(user.as_str())
                    || uid.is_some_and(|u| v.get("uid").and_then(Value::as_u64) == Some(u))
            }
        };
        if wanted {
            sessions.insert(session);
        }
    }
    Ok(Selection::Sessions { sessions, since, until })
}

fn count(conn: &Connection, selection: &Selection) -> rusqlite::Result<u64> {
    if matches!(selection, Selection::All) {
        let n: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    let mut st = conn.prepare("SELECT session, kind, time_us FROM events")?;
    let mut rows = st.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let session: Option<String> = row.get(0)?;
        let kind: String = row.get(1)?;
        if selection.wants(session.as_deref(), &kind, row.get(2)?) {
            n += 1;
        }
    }
    Ok(n)
}

fn prepare_out_dir(out: &Path) -> Result<(), ExportError> {
    let err = |source| ExportError::OutDir { path: out.to_owned(), source };
    match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ExportError::NotEmpty { path: out.to_owned() });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(out).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// A record as a `records.jsonl` line.
#[derive(Debug, Serialize)]
struct RecordOut<'a> {
    seq: u64,
    time_us: i64,
    session: Option<&'a str>,
    kind: &'a str,
    /// The body parsed, for reading (null when it is not JSON).
    body: Value,
    /// The exact body the hash covers, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_text: Option<&'a str>,
    /// The exact body the hash covers, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
    data_hex: Option<String>,
    /// The hash of body and data, which the record hash covers.
    content_hash: String,
    /// The content was removed (`gatehouse redact`); a redaction record says why.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    redacted: bool,
    prev_hash: String,
    hash: String,
}

/// A `records.jsonl` line read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    seq: u64,
    time_us: i64,
    session: Option<String>,
    kind: String,
    body: Value,
    body_text: Option<String>,
    body_hex: Option<String>,
    data_hex: Option<String>,
    content_hash: String,
    #[serde(default)]
    redacted: bool,
    prev_hash: String,
    hash: String,
}

fn record_line(r: &Record) -> Result<Vec<u8>, ExportError> {
    let text = if r.redacted { None } else { std::str::from_utf8(&r.body).ok() };
    let line = RecordOut {
        seq: r.seq,
        time_us: r.time_us,
        session: r.session.as_deref(),
        kind: &r.kind,
        body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        body_text: text,
        body_hex: (text.is_none() && !r.redacted).then(|| hex(&r.body)),
        data_hex: r.data.as_deref().map(hex),
        content_hash: hex(&r.content_hash),
        redacted: r.redacted,
        prev_hash: hex(&r.prev_hash),
        hash: hex(&r.hash),
    };
    serde_json::to_vec(&line).map_err(encode_err("a record"))
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| match p {
            [h, l] => Some(nibble(*h)? << 4 | nibble(*l)?),
            _ => None,
        })
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s).and_then(|v| <[u8; 32]>::try_from(v).ok())
}

/// A record line back as a record; `false` when the readable body does
/// not say what the hashed one does.
fn parse_record(line: &[u8]) -> Result<(Record, bool), String> {
    let r: RecordIn = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let body = match (&r.body_text, &r.body_hex, r.redacted) {
        (Some(t), None, false) => t.as_bytes().to_vec(),
        (None, Some(h), false) => unhex(h).ok_or("body_hex is not hex")?,
        (None, None, true) if r.data_hex.is_none() => Vec::new(),
        (_, _, true) => return Err("a redacted record carries no body or data".into()),
        _ => return Err("a record needs exactly one of body_text and body_hex".into()),
    };
    let data = match &r.data_hex {
        Some(h) => Some(unhex(h).ok_or("data_hex is not hex")?),
        None => None,
    };
    let readable_matches = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null) == r.body;
    let record = Record {
        seq: r.seq,
        time_us: r.time_us,
        session: r.session,
        kind: r.kind,
        body,
        data,
        content_hash: unhex32(&r.content_hash).ok_or("content_hash is not 32 bytes of hex")?,
        redacted: r.redacted,
        prev_hash: unhex32(&r.prev_hash).ok_or("prev_hash is not 32 bytes of hex")?,
        hash: unhex32(&r.hash).ok_or("hash is not 32 bytes of hex")?,
    };
    Ok((record, readable_matches))
}

/// A file name for a session's cast: the id's safe characters, made unique.
fn cast_name(session: &str, taken: &mut HashSet<String>) -> String {
    let clean: String =
        session.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).take(80).collect();
    let base = if clean.is_empty() { "session".to_owned() } else { clean };
    let mut name = format!("{base}.cast");
    let mut n = 1u32;
    while !taken.insert(name.clone()) {
        n += 1;
        name = format!("{base}-{n}.cast");
    }
    name
}

/// One session's transcript as asciicast v2, with CRLF line endings.
fn write_cast(file: &mut BundleFile, session: &str, records: &[Record]) -> Result<(), ExportError> {
    let lines =
        replay::transcript(records).map_err(|source| ExportError::Replay { session: session.to_owned(), source })?;
    let open = records
        .iter()
        .find(|r| r.kind == "session_open")
        .and_then(|r| serde_json::from_slice::<SessionOpen>(&r.body).ok());
    let start = records.first().map_or(0, |r| r.time_us);
    let title = match &open {
        Some(o) => format!(
            "Gatehouse session {}: {}@{}",
            replay::escape_all(session),
            o.user
                .as_deref()
                .map_or_else(|| o.uid.map_or_else(|| "?".to_owned(), |u| format!("uid {u}")), replay::escape_all),
            o.backend.as_deref().map_or_else(|| "?".to_owned(), replay::escape_all)
        ),
        None => format!("Gatehouse session {}", replay::escape_all(session)),
    };
    let header = json!({
        "version": 2,
        "width": 120,
        "height": 40,
        "timestamp": start.div_euclid(1_000_000),
        "idle_time_limit": 5.0,
        "title": title,
    });
    file.line(&serde_json::to_vec(&header).map_err(encode_err("a cast header"))?)?;
    for l in lines {
        let t = l.at_us.saturating_sub(start).max(0) as f64 / 1e6;
        let text = format!("{}\r\n", l.text.replace('\n', "\r\n"));
        file.line(&serde_json::to_vec(&(t, "o", text)).map_err(encode_err("a cast event"))?)?;
    }
    Ok(())
}

// ---- OCSF ----

/// Maps records to OCSF 1.1.0 events: session open/close → Authentication
/// (3002), statements → Datastore Activity (6005, one event per statement,
/// with its end record's outcome), agent start/stop → Application Lifecycle
/// (6002). Chunks, truncations and checkpoints have no OCSF event; they are
/// in `records.jsonl`.
#[derive(Debug, Default)]
struct OcsfMapper {
    /// Sessions open so far: who and where, for the events that follow.
    sessions: HashMap<String, SessionOpen>,
    /// Allowed statements waiting for their end record.
    pending: HashMap<(String, u64), Pending>,
    /// How each session's backend was logged in to (shown on its logoff).
    logins: HashMap<String, super::BackendLogin>,
}

#[derive(Debug)]
struct Pending {
    start: StatementStart,
    record_seq: u64,
    time_us: i64,
    hash: [u8; 32],
}

/// OCSF `time`: milliseconds since the epoch.
fn ms(us: i64) -> i64 {
    us.div_euclid(1000)
}

fn endpoint(addr: &str) -> Value {
    match addr.parse::<SocketAddr>() {
        Ok(a) => json!({ "ip": a.ip().to_string(), "port": a.port() }),
        Err(_) => json!({ "name": addr }),
    }
}

fn ocsf_user(o: Option<&SessionOpen>) -> Value {
    let mut u = Map::new();
    if let Some(name) = o.and_then(|o| o.user.clone()) {
        u.insert("name".into(), name.into());
    }
    if let Some(uid) = o.and_then(|o| o.uid) {
        u.insert("uid".into(), uid.to_string().into());
    }
    if u.is_empty() {
        u.insert("name".into(), "unknown".into());
    }
    Value::Object(u)
}

fn ocsf_actor(o: Option<&SessionOpen>, session: &str) -> Value {
    let mut a = Map::new();
    a.insert("user".into(), ocsf_user(o));
    if let Some(o) = o
        && (o.pid.is_some() || o.comm.is_some())
    {
        let mut p = Map::new();
        if let Some(pid) = o.pid {
            p.insert("pid".into(), pid.into());
        }
        if let Some(comm) = &o.comm {
            p.insert("name".into(), comm.clone().into());
        }
        a.insert("process".into(), Value::Object(p));
    }
    a.insert("session".into(), json!({ "uid": session }));
    Value::Object(a)
}

/// `status_id`, `status`: Some(true) Success, Some(false) Failure, None Unknown.
fn status(ok: Option<bool>) -> (u8, &'static str) {
    match ok {
        Some(true) => (1, "Success"),
        Some(false) => (2, "Failure"),
        None => (0, "Unknown"),
    }
}

/// The record an event comes from: `metadata.uid` is its hash.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    hash: &'a [u8; 32],
    logged_us: i64,
    session: Option<&'a str>,
}

impl<'a> From<&'a Record> for Source<'a> {
    fn from(r: &'a Record) -> Self {
        Self { hash: &r.hash, logged_us: r.time_us, session: r.session.as_deref() }
    }
}

/// How it went: `ok` (None: not known), and whether Gatehouse refused it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    ok: Option<bool>,
    refused: bool,
}

/// The OCSF category of the classes used here.
fn category(class_uid: u32) -> (u32, &'static str) {
    match class_uid {
        3000..=3999 => (3, "Identity & Access Management"),
        _ => (6, "Application Activity"),
    }
}

/// The fields every event has.
fn ocsf_base(
    (class_uid, class_name): (u32, &str),
    (activity_id, activity_name): (u32, &str),
    time_us: i64,
    src: Source<'_>,
    outcome: Outcome,
    message: String,
) -> Map<String, Value> {
    let (category_uid, category_name) = category(class_uid);
    let (status_id, status_name) = status(outcome.ok);
    let (severity_id, severity) = if outcome.refused { (3, "Medium") } else { (1, "Informational") };
    let mut e = Map::new();
    let mut put = |k: &str, v: Value| {
        e.insert(k.to_owned(), v);
    };
    put("class_uid", class_uid.into());
    put("class_name", class_name.into());
    put("category_uid", category_uid.into());
    put("category_name", category_name.into());
    put("activity_id", activity_id.into());
    put("activity_name", activity_name.into());
    put("type_uid", (u64::from(class_uid) * 100 + u64::from(activity_id)).into());
    put("type_name", format!("{class_name}: {activity_name}").into());
    put("time", ms(time_us).into());
    put("severity_id", severity_id.into());
    put("severity", severity.into());
    put("status_id", status_id.into());
    put("status", status_name.into());
    put("message", message.into());
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": { "name": "Gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") },
        "uid": hex(src.hash),
        "logged_time": ms(src.logged_us),
    });
    if let (Some(s), Some(m)) = (src.session, metadata.as_object_mut()) {
        m.insert("correlation_uid".into(), s.into());
    }
    put("metadata", metadata);
    e
}

/// The Datastore Activity (6005) activity of a statement, by its kinds:
/// the most consequential one wins.
fn datastore_activity(kinds: &str) -> (u32, &'static str) {
    let ks: Vec<&str> = kinds.split('+').collect();
    let any = |names: &[&str]| ks.iter().any(|k| names.contains(k));
    if any(&["delete", "delete_without_where", "truncate", "drop"]) {
        (7, "Delete")
    } else if any(&["update", "update_without_where", "merge", "alter"]) {
        (2, "Update")
    } else if any(&["insert", "create"]) {
        (6, "Create")
    } else if any(&["copy_from"]) {
        (5, "Write")
    } else if any(&["copy_to", "show"]) {
        (1, "Read")
    } else if any(&["select"]) {
        (4, "Query")
    } else {
        (99, "Other")
    }
}

impl OcsfMapper {
    fn record(&mut self, r: &Record) -> Vec<Value> {
        let session = r.session.clone().unwrap_or_default();
        match r.kind.as_str() {
            "session_open" => match serde_json::from_slice::<SessionOpen>(&r.body) {
                Ok(o) => {
                    let e = self.logon(r, &o);
                    self.sessions.insert(session, o);
                    vec![e]
                }
                Err(_) => vec![],
            },
            "session_close" => match serde_json::from_slice::<SessionClose>(&r.body) {
                Ok(c) => {
                    // Its allowed statements without an end record: outcome unknown.
                    let mut keys: Vec<(String, u64)> =
                        self.pending.keys().filter(|(s, _)| *s == session).cloned().collect();
                    keys.sort();
                    let open: Vec<Pending> = keys.iter().filter_map(|k| self.pending.remove(k)).collect();
                    let mut out: Vec<Value> = open.iter().map(|p| self.statement(&session, p, None)).collect();
                    out.push(self.logoff(r, &c));
                    self.sessions.remove(&session);
                    self.logins.remove(&session);
                    out
                }
                Err(_) => vec![],
            },
            "statement" => match serde_json::from_slice::<StatementStart>(&r.body) {
                Ok(s) => {
                    let p = Pending { record_seq: r.seq, time_us: r.time_us, hash: r.hash, start: s };
                    if p.start.decision == "allow" {
                        self.pending.insert((session, p.start.seq), p);
                        vec![]
                    } else {
                        vec![self.statement(&session, &p, None)]
                    }
                }
                Err(_) => vec![],
            },
            "backend_login" => {
                if let Ok(l) = serde_json::from_slice::<super::BackendLogin>(&r.body) {
                    self.logins.insert(session, l);
                }
                vec![]
            }
            "statement_end" => match serde_json::from_slice::<StatementEnd>(&r.body) {
                Ok(end) => match self.pending.remove(&(session.clone(), end.seq)) {
                    Some(p) => vec![self.statement(&session, &p, Some((&end, r)))],
                    None => vec![],
                },
                Err(_) => vec![],
            },
            "agent" => {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let activity = match v.get("what").and_then(Value::as_str) {
                    Some("start") => (3, "Start"),
                    Some("stop") => (4, "Stop"),
                    _ => (99, "Other"),
                };
                let mut e = ocsf_base(
                    (6002, "Application Lifecycle"),
                    activity,
                    r.time_us,
                    r.into(),
                    Outcome { ok: Some(true), refused: false },
                    format!("the Gatehouse agent: {}", activity.1.to_lowercase()),
                );
                e.insert(
                    "app".into(),
                    json!({ "name": "Gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") }),
                );
                vec![Value::Object(e)]
            }
            _ => vec![],
        }
    }

    /// Allowed statements whose end is not in the export: outcome unknown.
    fn finish(&mut self) -> Vec<Value> {
        let mut rest: Vec<((String, u64), Pending)> = self.pending.drain().collect();
        rest.sort_by_key(|(_, p)| p.record_seq);
        rest.iter().map(|((s, _), p)| self.statement(s, p, None)).collect()
    }

    fn logon(&self, r: &Record, o: &SessionOpen) -> Value {
        let allowed = o.decision == "allow";
        let who = o.user.clone().unwrap_or_else(|| o.uid.map_or_else(|| "unknown".into(), |u| format!("uid {u}")));
        let backend = o.backend.as_deref().unwrap_or("an unnamed backend");
        let message = if allowed {
            format!("{who} opened a session to {backend}")
        } else {
            format!("{who} was refused a session to {backend}: {}", o.reason)
        };
        let mut e = ocsf_base(
            (3002, "Authentication"),
            (1, "Logon"),
            o.started_us,
            r.into(),
            Outcome { ok: Some(allowed), refused: !allowed },
            message,
        );
        let session = r.session.as_deref().unwrap_or_default();
        e.insert("status_detail".into(), o.reason.clone().into());
        e.insert("user".into(), ocsf_user(Some(o)));
        e.insert("actor".into(), ocsf_actor(Some(o), session));
        e.insert("src_endpoint".into(), endpoint(&o.client));
        e.insert("dst_endpoint".into(), o.orig_dst.as_deref().map_or_else(|| json!({}), endpoint));
        if let Some(b) = &o.backend {
            e.insert("service".into(), json!({ "name": b }));
        }
        e.insert("session".into(), json!({ "uid": session, "created_time": ms(o.started_us) }));
        e.insert(
            "unmapped".into(),
            json!({
                "decision": o.decision,
                "rule": o.rule,
                "protocol": o.protocol,
                "gid": o.gid,
                "cgroup_id": o.cgroup_id,
                "backend": o.backend,
                "record_seq": r.seq,
            }),
        );
        Value::Object(e)
    }

    fn logoff(&self, r: &Record, c: &SessionClose) -> Value {
        let session = r.session.as_deref().unwrap_or_default();
        let o = self.sessions.get(session);
        let who = ocsf_user(o);
        let mut e = ocsf_base(
            (3002, "Authentication"),
            (2, "Logoff"),
            c.ended_us,
            r.into(),
            Outcome { ok: Some(true), refused: false },
            format!("session {session} ended: {}", c.end_reason),
        );
        e.insert("status_detail".into(), c.end_reason.clone().into());
        e.insert("user".into(), who);
        e.insert("actor".into(), ocsf_actor(o, session));
        if let Some(o) = o {
            e.insert("src_endpoint".into(), endpoint(&o.client));
            e.insert("dst_endpoint".into(), o.orig_dst.as_deref().map_or_else(|| json!({}), endpoint));
            if let Some(b) = &o.backend {
                e.insert("service".into(), json!({ "name": b }));
            }
            e.insert("start_time".into(), ms(o.started_us).into());
            e.insert("duration".into(), ms(c.ended_us.saturating_sub(o.started_us)).into());
        }
        e.insert("end_time".into(), ms(c.ended_us).into());
        e.insert("session".into(), json!({ "uid": session }));
        let login = self.logins.get(session);
        e.insert(
            "unmapped".into(),
            json!({
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "record_seq": r.seq,
                "backend_tls": login.map(super::BackendLogin::tls_summary),
                "backend_auth": login.map(|l| l.auth.clone()),
                "backend_certificate_sha256": login.and_then(|l| l.certificate_sha256.clone()),
            }),
        );
        Value::Object(e)
    }

    /// A statement, with its end when known.
    fn statement(&self, session: &str, p: &Pending, end: Option<(&StatementEnd, &Record)>) -> Value {
        let s = &p.start;
        let o = self.sessions.get(session);
        let refused = s.decision != "allow";
        let ok = if refused { Some(false) } else { end.map(|(e, _)| e.error.is_none()) };
        let (id, name) = datastore_activity(&s.kinds);
        let activity_name = if id == 99 { s.kinds.as_str() } else { name };
        let message = if refused {
            format!("statement refused by Gatehouse: {}", s.reason.as_deref().unwrap_or("no reason recorded"))
        } else {
            format!("statement {} ({})", s.seq, s.kinds)
        };
        // The metadata uid is the statement record's hash (not its end's).
        let src = Source { hash: &p.hash, logged_us: p.time_us, session: Some(session) };
        let mut e = ocsf_base(
            (6005, "Datastore Activity"),
            (id, activity_name),
            s.started_us,
            src,
            Outcome { ok, refused },
            message,
        );
        if refused {
            e.insert("status_detail".into(), s.reason.clone().into());
        } else if let Some(err) = end.and_then(|(e, _)| e.error.clone()) {
            e.insert("status_detail".into(), err.into());
        }
        e.insert("actor".into(), ocsf_actor(o, session));
        e.insert("src_endpoint".into(), o.map_or_else(|| json!({}), |o| endpoint(&o.client)));
        if let Some(d) = o.and_then(|o| o.orig_dst.as_deref()) {
            e.insert("dst_endpoint".into(), endpoint(d));
        }
        let db = o.and_then(|o| o.backend.clone()).unwrap_or_else(|| "unknown".into());
        e.insert("database".into(), json!({ "name": db, "type_id": 1, "type": "Relational" }));
        if let Some(t) = s.tables.split(',').map(str::trim).find(|t| !t.is_empty()) {
            e.insert("table".into(), json!({ "name": t }));
        }
        e.insert(
            "query_info".into(),
            json!({ "query_string": s.text, "query_time": ms(s.started_us), "uid": format!("{session}/{}", s.seq) }),
        );
        e.insert("start_time".into(), ms(s.started_us).into());
        let mut unmapped = json!({
            "decision": s.decision,
            "rule": s.rule,
            "reason": s.reason,
            "kinds": s.kinds,
            "tables": s.tables,
            "statement_seq": s.seq,
            "record_seq": p.record_seq,
        });
        if let Some((end, end_rec)) = end {
            e.insert("end_time".into(), ms(end.ended_us).into());
            e.insert("duration".into(), (end.duration_us / 1000).into());
            if let Some(u) = unmapped.as_object_mut() {
                u.insert("rows".into(), end.rows.into());
                u.insert("error".into(), end.error.clone().into());
                u.insert(
                    "masked".into(),
                    end.masked.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(Value::Null),
                );
                u.insert("end_record_seq".into(), end_rec.seq.into());
                u.insert("end_record_hash".into(), hex(&end_rec.hash).into());
            }
        }
        e.insert("unmapped".into(), unmapped);
        Value::Object(e)
    }
}

// ---- verification ----

/// Reads a whole file of at most `max` bytes.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(buf)
}

/// Reads one line of at most `max` bytes (without its newline); `Ok(None)` at the end.
fn read_line(r: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> Result<Option<()>, String> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', buf).map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Err(format!("a line is longer than {max} bytes"));
    }
    Ok(Some(()))
}

fn hash_file(path: &Path) -> Result<(u64, String), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut h = blake3::Hasher::new();
    let n = io::copy(&mut f, &mut h).map_err(|e| e.to_string())?;
    Ok((n, h.finalize().to_hex().to_string()))
}

/// A name that stays inside the bundle directory.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && ![MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&name)
}

fn digest_of(list: &[(u64, [u8; 32])]) -> String {
    let mut d = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    for (seq, hash) in list {
        d.update(&seq.to_be_bytes());
        d.update(hash);
    }
    d.finalize().to_hex().to_string()
}

/// The first place where the exported records differ from the signed list,
/// said as what happened there.
fn first_difference(expected: &[(u64, [u8; 32])], actual: &[(u64, [u8; 32])]) -> Option<Break> {
    let in_expected: HashSet<&(u64, [u8; 32])> = expected.iter().collect();
    let in_actual: HashSet<&(u64, [u8; 32])> = actual.iter().collect();
    let i = expected.iter().zip(actual).position(|(e, a)| e != a);
    let i = match i {
        Some(i) => i,
        None if expected.len() > actual.len() => {
            let (seq, _) = expected.get(actual.len())?;
            return Some(Break {
                seq: *seq,
                what: format!("record {seq} and the ones after it were deleted (the export ends early)"),
            });
        }
        None if actual.len() > expected.len() => {
            let (seq, _) = actual.get(expected.len())?;
            return Some(Break {
                seq: *seq,
                what: format!("record {seq} was inserted at the end (the manifest does not list it)"),
            });
        }
        None => return None,
    };
    let (e, a) = (expected.get(i)?, actual.get(i)?);
    Some(if !in_expected.contains(a) {
        if actual.get(i + 1) == Some(e) {
            Break {
                seq: a.0,
                what: format!("a record {} the manifest does not list was inserted before record {}", a.0, e.0),
            }
        } else if a.0 == e.0 {
            Break { seq: a.0, what: format!("record {} was changed (its hash is not the one the manifest signs)", a.0) }
        } else {
            Break { seq: a.0, what: format!("record {} was inserted (the manifest does not list it)", a.0) }
        }
    } else if !in_actual.contains(e) {
        Break { seq: e.0, what: format!("record {} was deleted (the manifest lists it before record {})", e.0, a.0) }
    } else {
        Break {
            seq: e.0.min(a.0),
            what: format!(
                "records were reordered: record {} is where the manifest puts record {} (position {})",
                a.0,
                e.0,
                i + 1
            ),
        }
    })
}

#[derive(Debug)]
struct Checkpoint {
    seq: u64,
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Checks a bundle on any machine: the manifest's signature with `trust`
/// (or, if `None`, the bundle's own public key: then the report says its
/// keys came from the bundle, which proves nothing about who made it),
/// following the key rotations the bundle holds; every file's hash, every
/// exported record's own hash (recomputed from its fields), the ordered
/// (seq, hash) list the manifest signs, the chain links between consecutive
/// records (from the manifest's anchor when the export is complete), the
/// checkpoints' signatures and the redactions. Reports the first record
/// changed, deleted, inserted or reordered. Bundle-level problems carry seq
/// 0. `Err` only when `dir` cannot be read as a directory.
pub fn verify_export(dir: &Path, trust: Option<&Trust>) -> Result<Report, String> {
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory (an export bundle is one)", dir.display()));
    }
    let mut report = Report::new(trust.map_or(TrustSource::Bundle, |t| t.source.clone()));
    check_bundle(dir, trust, &mut report);
    report.problems.sort_by_key(|b| b.seq);
    Ok(report)
}

fn flag(report: &mut Report, seq: u64, what: String) {
    report.problems.push(Break { seq, what });
}

/// What a first pass over `records.jsonl` collects: rotations, redactions,
/// and each checkpoint's valid signer (for following rotations back).
#[derive(Default)]
struct Prepass {
    rotations: Vec<verify::RotationRow>,
    redactions: Vec<(u64, Vec<u8>, Vec<u8>)>,
    checkpoints: Vec<(u64, Option<VerifyingKey>)>,
}

fn prepass(path: &Path) -> Prepass {
    let mut p = Prepass::default();
    let Ok(f) = File::open(path) else { return p };
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    while let Ok(Some(())) = read_line(&mut r, MAX_RECORD_LINE, &mut line) {
        let Ok((rec, _)) = parse_record(&line) else { continue };
        if !rec.intact() || rec.redacted {
            continue;
        }
        let sig = rec.data.clone().unwrap_or_default();
        match rec.kind.as_str() {
            "key_rotation" => p.rotations.push((rec.seq, rec.body, sig)),
            "redaction" => p.redactions.push((rec.seq, rec.body, sig)),
            "checkpoint" => p.checkpoints.push((rec.seq, verify::checkpoint_signer(&rec.body, &sig))),
            _ => {}
        }
    }
    p
}

fn check_bundle(dir: &Path, trust: Option<&Trust>, report: &mut Report) {
    let bundle_key = read_capped(&dir.join(PUBLIC_KEY), MAX_SMALL_FILE)
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()))
        .and_then(|s| keys::parse_public(&s));
    let base = match (trust, &bundle_key) {
        (Some(t), _) => t.clone(),
        (None, Ok(k)) => Trust { keys: vec![*k], source: TrustSource::Bundle },
        (None, Err(e)) => {
            flag(report, 0, format!("no trusted key was given and the bundle's {PUBLIC_KEY} cannot be read: {e}"));
            return;
        }
    };
    let pre = prepass(&dir.join(RECORDS));
    let next_signer = |seq: u64| -> Result<Option<VerifyingKey>, String> {
        Ok(pre.checkpoints.iter().find(|(s, _)| *s > seq).and_then(|(_, k)| *k))
    };
    let Ok(keys) = verify::follow_rotations(&pre.rotations, &base, &next_signer, report) else { return };
    let redactions: Vec<(u64, super::Redaction)> = pre
        .redactions
        .iter()
        .filter_map(|(seq, body, sig)| verify::check_redaction(*seq, body, sig, &keys, report).map(|r| (*seq, r)))
        .collect();
    let key_hex = report.public_keys.join(" or ");

    // The manifest and its signature.
    let manifest_bytes = match read_capped(&dir.join(MANIFEST), MAX_MANIFEST) {
        Ok(b) => b,
        Err(e) => {
            flag(report, 0, format!("{MANIFEST}: {e}"));
            return;
        }
    };
    let signature = read_capped(&dir.join(SIGNATURE), MAX_SMALL_FILE)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| unhex(s.trim()));
    let signer = signature
        .as_deref()
        .and_then(|s| keys.trusted.iter().find(|k| chain::verify_signature(k, &manifest_bytes, s)).copied());
    if signer.is_none() {
        let claimed = match &bundle_key {
            Ok(b) if !keys.is_trusted(b) => format!(" (the bundle says it was signed by {})", hex(&b.to_bytes())),
            _ => String::new(),
        };
        flag(
            report,
            0,
            format!(
                "the manifest's signature is not valid for key {key_hex}{claimed}: the manifest was changed, or another key signed it"
            ),
        );
    }
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            flag(report, 0, format!("{MANIFEST} cannot be read: {e}"));
            return;
        }
    };
    if manifest.bundle_version != BUNDLE_VERSION {
        flag(
            report,
            0,
            format!("bundle version {} is not one this Gatehouse reads ({BUNDLE_VERSION})", manifest.bundle_version),
        );
        return;
    }

    // Every file the manifest lists, and nothing else.
    let mut listed: HashSet<&str> = HashSet::new();
    for f in &manifest.files {
        if !plain_name(&f.name) {
            flag(report, 0, format!("the manifest lists a file name that is not allowed: {:?}", f.name));
            continue;
        }
        listed.insert(f.name.as_str());
        match hash_file(&dir.join(&f.name)) {
            Ok((bytes, h)) if bytes == f.bytes && h == f.blake3 => {}
            Ok(_) => flag(report, 0, format!("{} was changed (its hash is not the one the manifest lists)", f.name)),
            Err(e) => flag(report, 0, format!("{}: {e}", f.name)),
        }
    }
    for required in [RECORDS, INDEX] {
        if !listed.contains(required) {
            flag(report, 0, format!("the manifest does not list {required}"));
        }
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut extra: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !listed.contains(n.as_str()) && ![MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&n.as_str()))
                .collect();
            extra.sort();
            for n in extra {
                flag(report, 0, format!("{n} is not part of the signed bundle (added)"));
            }
        }
        Err(e) => flag(report, 0, format!("listing the bundle: {e}")),
    }

    // The signed list, from the index.
    let expected = match read_index(&dir.join(INDEX)) {
        Ok(list) if digest_of(&list) == manifest.records_digest => Some(list),
        Ok(_) => {
            flag(report, 0, format!("{INDEX} is not the list the manifest's records_digest covers"));
            None
        }
        Err(e) => {
            flag(report, 0, format!("{INDEX}: {e}"));
            None
        }
    };

    // The records: each one's own hash, its readable body, its links.
    let mut actual: Vec<(u64, [u8; 32])> = Vec::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let (mut changed, mut link): (Option<Break>, Option<Break>) = (None, None);
    let anchor = manifest.anchor.as_deref().and_then(unhex32);
    match File::open(dir.join(RECORDS)) {
        Err(e) => flag(report, 0, format!("{RECORDS}: {e}")),
        Ok(f) => {
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            let mut lineno = 0u64;
            loop {
                match read_line(&mut r, MAX_RECORD_LINE, &mut line) {
                    Ok(None) => break,
                    Ok(Some(())) => {}
                    Err(e) => {
                        flag(report, 0, format!("{RECORDS} line {}: {e}", lineno + 1));
                        break;
                    }
                }
                lineno += 1;
                let (rec, readable) = match parse_record(&line) {
                    Ok(x) => x,
                    Err(e) => {
                        flag(report, 0, format!("{RECORDS} line {lineno} is not a record: {e}"));
                        continue;
                    }
                };
                if !readable {
                    flag(
                        report,
                        rec.seq,
                        format!("record {}'s readable body does not say what its hashed body says (edited)", rec.seq),
                    );
                }
                if changed.is_none() && !rec.intact() {
                    changed = Some(Break {
                        seq: rec.seq,
                        what: format!("record {} was changed (its content does not match its hash)", rec.seq),
                    });
                }
                if rec.redacted && !verify::redaction_covers(&redactions, &rec) {
                    flag(
                        report,
                        rec.seq,
                        format!(
                            "record {}'s content was removed, and no signed redaction record says so (deleted)",
                            rec.seq
                        ),
                    );
                }
                if link.is_none() {
                    link = link_problem(actual.last(), &rec, anchor, manifest.complete);
                }
                if rec.kind == "checkpoint" && !rec.redacted {
                    checkpoints.push(Checkpoint {
                        seq: rec.seq,
                        body: rec.body.clone(),
                        signature: rec.data.clone().unwrap_or_default(),
                    });
                }
                actual.push((rec.seq, rec.hash));
            }
        }
    }
    report.problems.extend(changed);
    report.problems.extend(link);
    report.records = u64::try_from(actual.len()).unwrap_or(u64::MAX);
    report.first_seq = actual.first().map(|(s, _)| *s);
    report.last_seq = actual.last().map(|(s, _)| *s);
    if report.records != manifest.records {
        flag(report, 0, format!("the manifest lists {} records; {RECORDS} holds {}", manifest.records, report.records));
    }
    if digest_of(&actual) != manifest.records_digest {
        flag(report, 0, format!("the records in {RECORDS} are not the ones the manifest signs"));
        if let Some(b) = expected.as_deref().and_then(|e| first_difference(e, &actual)) {
            report.problems.push(b);
        }
    }

    // Checkpoints: signed by the key, naming the exported head where it is here.
    let by_seq: HashMap<u64, [u8; 32]> = actual.iter().copied().collect();
    report.checkpoints = u64::try_from(checkpoints.len()).unwrap_or(u64::MAX);
    for c in &checkpoints {
        let v: Value = serde_json::from_slice(&c.body).unwrap_or_default();
        let head_seq = v.get("head_seq").and_then(Value::as_u64);
        let head_hash = v.get("head_hash").and_then(Value::as_str).and_then(unhex32);
        let time = v.get("time_us").and_then(Value::as_i64);
        let (Some(head_seq), Some(head_hash), Some(time)) = (head_seq, head_hash, time) else {
            report.problems.push(Break { seq: c.seq, what: format!("checkpoint {} cannot be read", c.seq) });
            continue;
        };
        if by_seq.get(&head_seq).is_some_and(|h| *h != head_hash) {
            report.problems.push(Break {
                seq: c.seq,
                what: format!("checkpoint {} names a head (record {head_seq}) other than the exported one", c.seq),
            });
        } else {
            let signer = verify::checkpoint_signer(&c.body, &c.signature).or_else(|| {
                let m = chain::checkpoint_message(head_seq, &head_hash, time);
                keys.trusted.iter().find(|k| chain::verify_signature(k, &m, &c.signature)).copied()
            });
            match signer.map(|k| keys.may_sign(&k, c.seq)) {
                Some(Ok(())) => report.checkpoints_verified += 1,
                Some(Err(e)) => report.problems.push(Break { seq: c.seq, what: format!("checkpoint {}: {e}", c.seq) }),
                None => report.problems.push(Break {
                    seq: c.seq,
                    what: format!("checkpoint {} has no valid signature by key {key_hex}", c.seq),
                }),
            }
        }
    }
}

/// A broken link between a record and the one before it in the export.
fn link_problem(prev: Option<&(u64, [u8; 32])>, r: &Record, anchor: Option<[u8; 32]>, complete: bool) -> Option<Break> {
    let Some(&(pseq, phash)) = prev else {
        return match anchor {
            Some(a) if a != r.prev_hash => {
                Some(Break { seq: r.seq, what: format!("record {} does not chain from the manifest's anchor", r.seq) })
            }
            Some(_) => None,
            None => Some(Break { seq: r.seq, what: "the manifest names no anchor for the first record".into() }),
        };
    };
    if r.seq == pseq.saturating_add(1) && r.prev_hash != phash {
        return Some(Break {
            seq: r.seq,
            what: format!("record {} does not chain from record {pseq}: changed, inserted or reordered", r.seq),
        });
    }
    if complete && r.seq > pseq.saturating_add(1) {
        return Some(Break {
            seq: r.seq,
            what: format!("records {}..{} were deleted from a complete export", pseq + 1, r.seq - 1),
        });
    }
    if r.seq <= pseq {
        return Some(Break {
            seq: r.seq,
            what: format!("record {} comes after record {pseq}: reordered or inserted", r.seq),
        });
    }
    None
}

fn read_index(path: &Path) -> Result<Vec<(u64, [u8; 32])>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    let mut out = Vec::new();
    let mut lineno = 0u64;
    while read_line(&mut r, MAX_INDEX_LINE, &mut line)?.is_some() {
        lineno += 1;
        let text = std::str::from_utf8(&line).map_err(|_| format!("line {lineno} is not text"))?;
        let (seq, hash) = text.split_once(' ').ok_or_else(|| format!("line {lineno} is not `seq hash`"))?;
        let seq: u64 = seq.parse().map_err(|_| format!("line {lineno}: {seq:?} is not a seq"))?;
        let hash = unhex32(hash).ok_or_else(|| format!("line {lineno}: not a 32-byte hex hash"))?;
        out.push((seq, hash));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ChunkHeader, Direction, Event, Mode, Options, SCHEMA, index, insert_event};
    use crate::protocol::postgres::wire;
    use crate::types::SessionId;

    const T0: i64 = 1_714_557_600_000_000;
    const S_A: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000a";
    const S_B: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000b";
    const S_C: &str = "0192e0c4-5b7a-7cc0-8d1e-00000000000c";

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gatehouse-export-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn sid(s: &str) -> SessionId {
        SessionId(s.parse().unwrap())
    }

    fn open(s: &str, user: &str, protocol: &str, at: i64) -> Event {
        Event::SessionOpen(Box::new(SessionOpen {
            id: sid(s),
            started_us: at,
            uid: Some(if user == "alice" { 1000 } else { 1001 }),
            user: Some(user.into()),
            gid: Some(100),
            pid: Some(4242),
            comm: Some("psql".into()),
            cgroup_id: Some(9),
            client: "127.0.0.1:51234".into(),
            backend: Some("appdb".into()),
            orig_dst: Some("127.10.0.5:5432".into()),
            protocol: Some(protocol.into()),
            decision: "allow".into(),
            rule: Some("dba".into()),
            reason: "allowed by rule dba".into(),
        }))
    }

    fn close(s: &str, at: i64) -> Event {
        Event::SessionClose(Box::new(SessionClose {
            id: sid(s),
            ended_us: at,
            bytes_up: 10,
            bytes_down: 20,
            end_reason: "closed".into(),
        }))
    }

    fn statement(seq: u64, text: &str, kinds: &str, decision: &str, at: i64) -> Event {
        Event::Statement(Box::new(StatementStart {
            session: sid(S_A),
            seq,
            started_us: at,
            text: text.into(),
            kinds: kinds.into(),
            tables: "users".into(),
            decision: decision.into(),
            rule: Some("dba".into()),
            reason: (decision != "allow").then(|| "deleting is not allowed".into()),
            redacted: 0,
        }))
    }

    fn chunk(s: &str, dir: Direction, offset: u64, data: Vec<u8>) -> Event {
        Event::Chunk { session: sid(s), header: ChunkHeader { dir, offset }, data }
    }

    /// A store of three sessions (A: alice, postgres; B: bob, tcp,
    /// interleaved with A; C: alice, tcp) and two checkpoints, written with
    /// the writer's own functions.
    fn build_store(dir: &Path) -> PathBuf {
        let db = dir.join("audit.db");
        let mut conn = Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        let mut head = (0u64, chain::GENESIS);
        let sec = 1_000_000;
        let mut result = Vec::new();
        result.extend(wire::data_row([Some(&b"1"[..])].into_iter()));
        result.extend(b"C\0\0\0\x0dSELECT 1\0");
        result.extend(wire::ready_for_query(b'I'));
        let refusal = wire::PgError::new(wire::Severity::Error, "42501", "refused").encode();
        let events = [
            (T0, Event::Agent { what: "start".into() }),
            (T0 + sec, open(S_A, "alice", "postgres", T0 + sec)),
            (T0 + sec + 100, statement(1, "SELECT id FROM users", "select", "allow", T0 + sec + 100)),
            (T0 + 2 * sec, open(S_B, "bob", "tcp", T0 + 2 * sec)),
            (T0 + 2 * sec + 1, chunk(S_A, Direction::Up, 0, wire::query("SELECT id FROM users"))),
            (T0 + 2 * sec + 2, chunk(S_B, Direction::Up, 0, b"hello\n".to_vec())),
            (
                T0 + 2 * sec + 3,
                Event::StatementEnd(Box::new(StatementEnd {
                    session: sid(S_A),
                    seq: 1,
                    ended_us: T0 + 2 * sec + 3,
                    rows: Some(1),
                    duration_us: 2500,
                    error: None,
                    masked: Some(r#"{"email":1}"#.into()),
                    tags: None,
                })),
            ),
            (T0 + 2 * sec + 4, chunk(S_A, Direction::Down, 0, result.clone())),
            (T0 + 2 * sec + 5, chunk(S_B, Direction::Down, 0, vec![0, 1, 2, 3])),
            (T0 + 3 * sec, statement(2, "DELETE FROM users", "delete+delete_without_where", "deny", T0 + 3 * sec)),
            (T0 + 3 * sec + 1, chunk(S_A, Direction::Down, u64::try_from(result.len()).unwrap(), refusal)),
            (T0 + 4 * sec, close(S_B, T0 + 4 * sec)),
            (T0 + 5 * sec, close(S_A, T0 + 5 * sec)),
        ];
        for (at, e) in &events {
            let (body, data) = e.encode();
            head = insert_event(&tx, head, *at, e.session().as_deref(), e.kind(), &body, data).unwrap();
            index(&tx, e).unwrap();
        }
        checkpoint(&tx, &mut head, T0 + 6 * sec);
        for (at, e) in [
            (T0 + 20 * sec, open(S_C, "alice", "tcp", T0 + 20 * sec)),
            (T0 + 20 * sec + 1, chunk(S_C, Direction::Up, 0, b"ping\n".to_vec())),
            (T0 + 21 * sec, close(S_C, T0 + 21 * sec)),
            (T0 + 22 * sec, Event::Agent { what: "stop".into() }),
        ] {
            let (body, data) = e.encode();
            head = insert_event(&tx, head, at, e.session().as_deref(), e.kind(), &body, data).unwrap();
            index(&tx, &e).unwrap();
        }
        checkpoint(&tx, &mut head, T0 + 23 * sec);
        tx.commit().unwrap();
        db
    }

    fn checkpoint(tx: &rusqlite::Transaction<'_>, head: &mut (u64, [u8; 32]), at: i64) {
        let (seq, hash) = *head;
        let sig = chain::sign(&key(), &chain::checkpoint_message(seq, &hash, at));
        let body = json!({
            "head_seq": seq,
            "head_hash": hex(&hash),
            "time_us": at,
            "public_key": hex(&key().verifying_key().to_bytes()),
        })
        .to_string()
        .into_bytes();
        *head = insert_event(tx, *head, at, None, "checkpoint", &body, Some(&sig)).unwrap();
    }

    fn all(format: Format) -> ExportOptions {
        ExportOptions { since_us: None, until_us: None, user: None, format }
    }

    fn export_to(db: &Path, out: &Path, opts: &ExportOptions) -> Manifest {
        export(db, out, opts, &key(), &mut |_, _| {}).unwrap()
    }

    fn copy_bundle(src: &Path, dst: &Path) {
        let _ = fs::remove_dir_all(dst);
        fs::create_dir_all(dst).unwrap();
        for e in fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(RECORDS)).unwrap().lines().map(str::to_owned).collect()
    }

    fn set_lines(dir: &Path, lines: &[String]) {
        fs::write(dir.join(RECORDS), lines.join("\n") + "\n").unwrap();
    }

    fn trust(k: VerifyingKey) -> Trust {
        Trust { keys: vec![k], source: TrustSource::Given }
    }

    fn verify_ok(dir: &Path) -> Report {
        let r = verify_export(dir, Some(&trust(key().verifying_key()))).unwrap();
        assert!(r.ok(), "{:#?}", r.problems);
        r
    }

    #[track_caller]
    fn assert_found(r: &Report, seq: u64, word: &str) {
        assert!(!r.ok());
        assert!(
            r.problems.iter().any(|p| p.seq == seq && p.what.contains(word)),
            "no problem at record {seq} saying {word:?}: {:#?}",
            r.problems
        );
    }

    #[test]
    fn an_untouched_export_verifies_with_the_right_key_and_not_another() {
        let dir = temp("untouched");
        let db = build_store(&dir);
        let out = dir.join("bundle");
        let mut calls = Vec::new();
        let m = export(&db, &out, &all(Format::Jsonl), &key(), &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!((m.records, m.sessions, m.first_seq, m.last_seq), (19, 3, Some(1), Some(19)));
        assert!(m.complete);
        assert_eq!(m.anchor.as_deref(), Some(hex(&chain::GENESIS).as_str()));
        assert_eq!(calls.last(), Some(&(19, 19)));
        assert_eq!(calls.len(), 19);

        let r = verify_ok(&out);
        assert_eq!((r.records, r.checkpoints, r.checkpoints_verified), (19, 2, 2));
        assert_eq!(r.public_keys, vec![hex(&key().verifying_key().to_bytes())]);

        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let r = verify_export(&out, Some(&trust(other))).unwrap();
        assert_found(&r, 0, "signature is not valid");
        assert_found(&r, 14, "not a trusted key");

        // Without a trusted key, the bundle's own key is used, and named.
        let r = verify_export(&out, None).unwrap();
        assert!(r.ok(), "{:#?}", r.problems);
        assert_eq!(r.public_keys, vec![hex(&key().verifying_key().to_bytes())]);

        // Every record is in the file, re-verifiable on its own.
        let first: Value = serde_json::from_str(&lines(&out)[1]).unwrap();
        assert_eq!(first["kind"], "session_open");
        assert_eq!(first["body"]["user"], "alice");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_tampering_is_reported_at_its_record() {
        let dir = temp("tamper");
        let db = build_store(&dir);
        let clean = dir.join("clean");
        export_to(&db, &clean, &all(Format::Jsonl));
        let work = dir.join("work");
        let original = lines(&clean);
        let verify = |d: &Path| verify_export(d, Some(&trust(key().verifying_key()))).unwrap();

        // A body edited (readable and hashed copies alike), hash left alone.
        copy_bundle(&clean, &work);
        let mut l = original.clone();
        l[2] = l[2].replace("SELECT id FROM users", "SELECT 1 FROM users");
        assert_ne!(l[2], original[2]);
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 3, "was changed");
        assert_found(&r, 0, "records.jsonl was changed");

        // Only the readable copy of a body edited: what people read must be what is hashed.
        copy_bundle(&clean, &work);
        let mut l = original.clone();
        let mut v: Value = serde_json::from_str(&l[1]).unwrap();
        v["body"]["user"] = "mallory".into();
        l[1] = v.to_string();
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 2, "readable body does not say what its hashed body says");
        assert!(!r.problems.iter().any(|p| p.what.contains("record 2 was changed")), "{:#?}", r.problems);

        // The same edit with the record's hash recomputed.
        copy_bundle(&clean, &work);
        let (mut rec, _) = parse_record(original[2].as_bytes()).unwrap();
        rec.body = String::from_utf8(rec.body).unwrap().replace("SELECT id", "SELECT 1").into_bytes();
        rec.content_hash = chain::content_hash(&rec.body, rec.data.as_deref());
        rec.hash = rec.computed_hash();
        let mut l = original.clone();
        l[2] = String::from_utf8(record_line(&rec).unwrap()).unwrap();
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 3, "was changed (its hash is not the one the manifest signs)");
        assert_found(&r, 4, "does not chain from record 3");

        // A record deleted.
        copy_bundle(&clean, &work);
        let mut l = original.clone();
        l.remove(4);
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 5, "was deleted");
        assert_found(&r, 6, "records 5..5 were deleted");

        // A forged record inserted.
        copy_bundle(&clean, &work);
        let (mut fake, _) = parse_record(original[5].as_bytes()).unwrap();
        fake.data = Some(b"rm -rf /\n".to_vec());
        fake.content_hash = chain::content_hash(&fake.body, fake.data.as_deref());
        fake.hash = fake.computed_hash();
        let mut l = original.clone();
        l.insert(5, String::from_utf8(record_line(&fake).unwrap()).unwrap());
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 6, "was inserted before record 6");

        // Two records swapped.
        copy_bundle(&clean, &work);
        let mut l = original.clone();
        l.swap(7, 8);
        set_lines(&work, &l);
        let r = verify(&work);
        assert_found(&r, 8, "reordered");

        // The manifest changed.
        copy_bundle(&clean, &work);
        let m = fs::read_to_string(work.join(MANIFEST)).unwrap();
        fs::write(work.join(MANIFEST), m.replace("\"records\": 19", "\"records\": 18")).unwrap();
        let r = verify(&work);
        assert_found(&r, 0, "signature is not valid");
        assert_found(&r, 0, "the manifest lists 18 records");

        // A file added, and one of the signed ones changed.
        copy_bundle(&clean, &work);
        fs::write(work.join("extra.txt"), "hi").unwrap();
        fs::write(work.join(INDEX), "1 00\n").unwrap();
        let r = verify(&work);
        assert_found(&r, 0, "extra.txt is not part of the signed bundle");
        assert_found(&r, 0, "index.txt was changed");

        // A thorough forger rewrites a record, the index, the manifest and re-signs with their own key.
        copy_bundle(&clean, &work);
        let mut l = original.clone();
        l[2] = String::from_utf8(record_line(&rec).unwrap()).unwrap();
        set_lines(&work, &l);
        let list: Vec<(u64, [u8; 32])> =
            l.iter().map(|x| parse_record(x.as_bytes()).unwrap().0).map(|r| (r.seq, r.hash)).collect();
        let index_text: String = list.iter().map(|(s, h)| format!("{s} {}\n", hex(h))).collect();
        fs::write(work.join(INDEX), &index_text).unwrap();
        let mut m: Manifest = serde_json::from_slice(&fs::read(work.join(MANIFEST)).unwrap()).unwrap();
        m.records_digest = digest_of(&list);
        for f in &mut m.files {
            let (bytes, h) = hash_file(&work.join(&f.name)).unwrap();
            (f.bytes, f.blake3) = (bytes, h);
        }
        let forger = SigningKey::from_bytes(&[9; 32]);
        m.host_public_key = hex(&forger.verifying_key().to_bytes());
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        fs::write(work.join(MANIFEST), &bytes).unwrap();
        fs::write(work.join(SIGNATURE), hex(&chain::sign(&forger, &bytes))).unwrap();
        fs::write(work.join(PUBLIC_KEY), &m.host_public_key).unwrap();
        let r = verify(&work);
        assert_found(&r, 0, "signature is not valid");
        assert!(r.problems.iter().any(|p| p.what.contains(&m.host_public_key)), "{:#?}", r.problems);
        // Trusting the bundle's own key, the report names the forger's key.
        let r = verify_export(&work, None).unwrap();
        assert_eq!(r.public_keys, vec![m.host_public_key.clone()]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn filters_select_whole_sessions_and_their_checkpoints() {
        let dir = temp("filters");
        let db = build_store(&dir);
        let alice = dir.join("alice");
        let opts = ExportOptions { user: Some("alice".into()), ..all(Format::Jsonl) };
        let m = export_to(&db, &alice, &opts);
        assert!(!m.complete);
        assert_eq!((m.records, m.sessions), (13, 2), "A: 8 records, C: 3, and both checkpoints: {m:#?}");
        let kinds: Vec<(Option<String>, String)> =
            lines(&alice).iter().map(|l| parse_record(l.as_bytes()).unwrap().0).map(|r| (r.session, r.kind)).collect();
        assert!(kinds.iter().all(|(s, k)| s.as_deref() != Some(S_B) && k != "agent"), "{kinds:?}");
        let r = verify_ok(&alice);
        assert_eq!(r.checkpoints_verified, 2);

        // By uid, and by time: only B opened in [+1.5 s, +10 s), with the checkpoint at +6 s.
        let by_uid = dir.join("uid");
        assert_eq!(
            export_to(&db, &by_uid, &ExportOptions { user: Some("1000".into()), ..all(Format::Jsonl) }).records,
            13
        );
        let window = dir.join("window");
        let opts =
            ExportOptions { since_us: Some(T0 + 1_500_000), until_us: Some(T0 + 10_000_000), ..all(Format::Jsonl) };
        let m = export_to(&db, &window, &opts);
        assert_eq!((m.records, m.sessions), (5, 1));
        verify_ok(&window);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ocsf_maps_sessions_and_statements() {
        let dir = temp("ocsf");
        let db = build_store(&dir);
        let out = dir.join("bundle");
        let m = export_to(&db, &out, &all(Format::Ocsf));
        assert_eq!(m.ocsf_version.as_deref(), Some("1.1.0"));
        assert!(m.files.iter().any(|f| f.name == OCSF));
        verify_ok(&out);
        let events: Vec<Value> =
            fs::read_to_string(out.join(OCSF)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let of = |type_uid: u64| events.iter().filter(move |e| e["type_uid"] == type_uid).collect::<Vec<_>>();
        let logons = of(300_201);
        assert_eq!(logons.len(), 3);
        let a = logons.iter().find(|e| e["session"]["uid"] == S_A).unwrap();
        assert_eq!(a["class_uid"], 3002);
        assert_eq!(a["category_uid"], 3);
        assert_eq!(a["status_id"], 1);
        assert_eq!(a["actor"]["user"]["name"], "alice");
        assert_eq!(a["actor"]["user"]["uid"], "1000");
        assert_eq!(a["actor"]["process"]["name"], "psql");
        assert_eq!(a["src_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(a["dst_endpoint"]["port"], 5432);
        assert_eq!(a["metadata"]["product"]["name"], "Gatehouse");
        assert_eq!(a["metadata"]["version"], "1.1.0");
        assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 64);
        assert_eq!(a["time"], (T0 + 1_000_000) / 1000);
        assert_eq!(of(300_202).len(), 3);

        let query = of(600_504);
        assert_eq!(query.len(), 1, "{events:#?}");
        let q = query[0];
        assert_eq!(q["activity_name"], "Query");
        assert_eq!(q["query_info"]["query_string"], "SELECT id FROM users");
        assert_eq!(q["status_id"], 1);
        assert_eq!(q["duration"], 2);
        assert_eq!(q["database"]["name"], "appdb");
        assert_eq!(q["table"]["name"], "users");
        assert_eq!(q["unmapped"]["decision"], "allow");
        assert_eq!(q["unmapped"]["masked"]["email"], 1);

        let delete = of(600_507);
        assert_eq!(delete.len(), 1);
        assert_eq!(delete[0]["status_id"], 2);
        assert_eq!(delete[0]["status_detail"], "deleting is not allowed");
        assert_eq!(delete[0]["unmapped"]["rule"], "dba");
        assert_eq!(delete[0]["severity_id"], 3);

        assert_eq!(of(600_203).len(), 1, "agent start");
        assert_eq!(of(600_204).len(), 1, "agent stop");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn asciicast_has_a_header_and_the_transcript_with_crlf() {
        let dir = temp("cast");
        let db = build_store(&dir);
        let out = dir.join("bundle");
        let m = export_to(&db, &out, &all(Format::Asciicast));
        verify_ok(&out);
        assert_eq!(m.files.iter().filter(|f| f.name.ends_with(".cast")).count(), 3);
        let cast = fs::read_to_string(out.join(format!("{S_A}.cast"))).unwrap();
        let mut it = cast.lines();
        let header: Value = serde_json::from_str(it.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!((header["width"].as_u64(), header["height"].as_u64()), (Some(120), Some(40)));
        assert_eq!(header["timestamp"], (T0 + 1_000_000) / 1_000_000);
        assert_eq!(header["title"], format!("Gatehouse session {S_A}: alice@appdb"));
        let events: Vec<(f64, String, String)> = it.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(events.iter().all(|(_, kind, text)| kind == "o" && text.ends_with("\r\n")));
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
        let all_text: String = events.iter().map(|e| e.2.as_str()).collect();
        assert!(all_text.contains("appdb=> SELECT id FROM users;\r\n"), "{all_text}");
        assert!(all_text.contains(" ?column?\r\n----------\r\n 1\r\n(1 row)\r\n"), "{all_text}");
        assert!(!all_text.replace("\r\n", "").contains('\n'), "{all_text}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_output_directory_must_be_new_or_empty() {
        let dir = temp("outdir");
        let db = build_store(&dir);
        let e = export(&db, &dir, &all(Format::Jsonl), &key(), &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, ExportError::NotEmpty { .. }), "{e}");
        let empty = dir.join("empty");
        fs::create_dir(&empty).unwrap();
        export_to(&db, &empty, &all(Format::Jsonl));
        verify_ok(&empty);
        assert!(verify_export(&dir.join("missing"), None).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_written_by_the_real_writer_exports_and_verifies() {
        let dir = temp("writer");
        let db = dir.join("audit.db");
        let key_path = dir.join("host.key");
        let opts = Options {
            mode: Mode::BestEffort,
            fsync: false,
            checkpoint_every: std::time::Duration::from_secs(3600),
            retention_days: None,
            publish: crate::audit::anchors::Publish::default(),
        };
        let (audit, writer) = crate::audit::open(&db, &key_path, &opts).unwrap();
        let at = now_us();
        audit.record(open(S_A, "alice", "tcp", at)).unwrap();
        audit.record(chunk(S_A, Direction::Up, 0, b"hello".to_vec())).unwrap();
        audit.record(close(S_A, at + 1)).unwrap();
        writer.stop();
        let key = keys::load_or_create(&key_path).unwrap();
        let out = dir.join("bundle");
        let m = export(&db, &out, &all(Format::Asciicast), &key, &mut |_, _| {}).unwrap();
        assert_eq!(m.records, 6, "agent start, 3 session records, agent stop, checkpoint");
        let r = verify_export(&out, Some(&trust(key.verifying_key()))).unwrap();
        assert!(r.ok(), "{:#?}", r.problems);
        assert_eq!(r.checkpoints_verified, 1);
        // The store itself verifies too: the export read it without changing it.
        assert!(crate::audit::verify::verify_db(&db, &trust(key.verifying_key()), None).unwrap().ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_and_hex_from_the_bundle_are_checked() {
        assert!(!plain_name("../x") && !plain_name("a/b") && !plain_name(MANIFEST) && !plain_name(""));
        assert!(plain_name("records.jsonl"));
        assert_eq!(unhex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        let mut taken = HashSet::new();
        assert_eq!(cast_name("../../etc/passwd", &mut taken), "etcpasswd.cast");
        assert_eq!(cast_name("etc/passwd", &mut taken), "etcpasswd-2.cast");
        assert_eq!(cast_name("///", &mut taken), "session.cast");
    }
}
