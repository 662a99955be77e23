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

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod check;
mod ocsf;

pub use check::verify_export;
pub(crate) use ocsf::OcsfMapper;

use super::chain::{self, Record};
use super::replay;
use super::verify::{self, RECORD_COLUMNS, Trust, TrustSource, record_from_row};
use super::{AuditError, RecordKind, SessionOpen, hex, now_us, query};

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
                    || (kind == RecordKind::Checkpoint.as_str() && (*since..*until).contains(&time_us))
                    // Key rotations always: later checkpoints are signed by the new key.
                    || kind == RecordKind::KeyRotation.as_str()
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
         WHERE kind = ?3 AND session IS NOT NULL AND time_us >= ?1 AND time_us < ?2
         ORDER BY seq",
    )?;
    let mut rows = st.query(rusqlite::params![since, until, RecordKind::SessionOpen])?;
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

pub(crate) fn record_line(r: &Record) -> Result<Vec<u8>, ExportError> {
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
        .find(|r| r.is(RecordKind::SessionOpen))
        .and_then(|r| serde_json::from_slice::<SessionOpen>(&r.body).ok());
    let start = records.first().map_or(0, |r| r.time_us);
    // An SSH session with a pty: its terminal as it was (output, input, resizes).
    let terminal = replay::ssh::cast(records);
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
    if let Some(c) = terminal {
        let header = json!({
            "version": 2,
            "width": c.width,
            "height": c.height,
            "timestamp": start.div_euclid(1_000_000),
            "title": title,
            "env": { "TERM": c.term },
        });
        file.line(&serde_json::to_vec(&header).map_err(encode_err("a cast header"))?)?;
        for (at, kind, data) in c.events {
            let t = at.saturating_sub(start).max(0) as f64 / 1e6;
            file.line(&serde_json::to_vec(&(t, kind, data)).map_err(encode_err("a cast event"))?)?;
        }
        return Ok(());
    }
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

#[cfg(test)]
mod tests;
