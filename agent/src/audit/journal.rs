//! The audit journal: where strict recording becomes durable.
//!
//! A strict record (a statement about to be forwarded) is acknowledged once
//! it is in an append-only file beside the store, not once SQLite committed
//! it: one copy per batch (a batch is what a session forwards at once) into
//! the current segment, a file allocated whole when it is started and mapped
//! shared ([`crate::sys::SharedMap`]), so the bytes are in the page cache,
//! where a killed process cannot take them back, without a `write(2)` each;
//! `fdatasync` when `audit_fsync` is on, shared by every session waiting at
//! that moment (group commit). The records go on, in the same order, to the
//! writer thread, which appends them to the hash chain and the query tables
//! and notes, in the same transaction, the journal position it has ingested
//! (`meta.journal_ingested`). Segments wholly ingested are deleted.
//!
//! After a crash, [`replay`] appends what the journal holds beyond that
//! position to the chain before the agent serves (and `gatehouse verify`,
//! `sessions`, `statements` do the same on a store no agent holds). A
//! segment's entries are followed by the zeros it was allocated with. A copy
//! cut short by the crash leaves a torn last entry, which was never
//! acknowledged; its checksum tells it apart and it is dropped, said so in
//! the log. The chain itself is unchanged: the journal only moves the point
//! at which the data path may go on.
//!
//! Entry: `u32 len ‖ payload ‖ 16-byte checksum`, payload
//! `u64 jseq ‖ i64 time_us ‖ u8 len‖kind ‖ u8 len‖session (0xff: none) ‖
//! u32 len‖body ‖ u32 len‖data (u32::MAX: none)`, little-endian. The
//! checksum is `crc32(payload)` (IEEE, little-endian) followed by the
//! 12-byte tag [`CRC_TAG`]; an entry written before it was introduced
//! carries the first 16 bytes of `blake3(payload)` instead, and replay
//! accepts either. It only tells a torn or damaged entry from a whole one
//! (what a crash leaves), as PostgreSQL's WAL does with a CRC: the
//! evidence against tampering is the hash chain the entries are appended
//! to, never the journal. blake3 cost the sessions ≈ 1.4 ns per byte,
//! 3.7% of the agent's samples under `bench pg` select-only; with the CRC,
//! `bench ingest` (alternating runs, five each; medians) has the sessions'
//! and the journal's CPU per statement at 4.5 µs against 5.1, and `bench pg
//! --select-only 6 --compare` the agent's per select-only transaction at
//! 45.9 µs against 48.3 (per-round ratios 0.99 0.99 1.09 1.11 1.14 1.12).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension};

use super::{Command, Event};

/// A segment's size, allocated (and mapped) when it is started; a batch
/// that does not fit in what is left starts the next one (a larger batch
/// gets a segment of its own size). One MiB: a segment is started every
/// ≈ 2,000 select-only statements, and the journal holds little of a disk
/// that is filling up (a store on a few MiB still starts).
pub(super) const SEGMENT_BYTES: usize = 1 << 20;
/// The granule a larger segment is rounded up to.
const PAGE: usize = 4096;
/// The largest entry replay accepts (a chunk is bounded far below it).
const ENTRY_MAX: usize = 64 << 20;
const CHECKSUM: usize = 16;
/// What follows an entry's CRC in its checksum field (see the module doc).
const CRC_TAG: [u8; CHECKSUM - 4] = *b"gh-crc32-v1\0";

/// An entry's checksum field, as written now, computed over the whole
/// payload at once ([`stamp`] combines the CRCs of its two parts).
#[cfg(test)]
fn checksum(payload: &[u8]) -> [u8; CHECKSUM] {
    let mut sum = [0u8; CHECKSUM];
    let (crc, tag) = sum.split_at_mut(4);
    crc.copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    tag.copy_from_slice(&CRC_TAG);
    sum
}

/// Whether `sum` is `payload`'s checksum: a CRC with its tag, or (an entry
/// written before the CRC) the first bytes of its blake3 hash.
fn checksum_matches(payload: &[u8], sum: &[u8]) -> bool {
    match sum.split_at_checked(4) {
        Some((crc, tag)) if tag == CRC_TAG => crc == crc32fast::hash(payload).to_le_bytes(),
        _ => blake3::hash(payload).as_bytes().get(..CHECKSUM) == Some(sum),
    }
}

/// One record, encoded once on the data path: the journal writes it and
/// the writer thread chains it, without serialising it again.
#[derive(Debug)]
pub(super) struct Entry {
    pub jseq: u64,
    pub time_us: i64,
    pub kind: super::RecordKind,
    pub session: Option<super::SessionKey>,
    /// The body, then (a statement or its end) the bytes folded into it.
    bytes: Vec<u8>,
    /// Where those bytes start in `bytes`, when there are (the body ends there).
    data_at: Option<usize>,
    /// What the writer reads of the event besides its body (see [`Kept`]).
    pub kept: Kept,
}

impl Entry {
    /// The entry of `e`, encoded, made on the thread that made `e` (the
    /// session's: see [`Kept`]); its jseq and time are stamped later.
    pub(super) fn of(e: Event) -> Self {
        let (kind, session) = (e.kind(), e.session());
        let (bytes, data_at) = e.encode_joined();
        Self { jseq: 0, time_us: 0, kind, session, bytes, data_at, kept: Kept::of(e) }
    }

    /// A record that does not go through the journal (best-effort, or
    /// written by the writer itself), timed now.
    pub(super) fn now(e: Event) -> Self {
        Self { time_us: super::now_us(), ..Self::of(e) }
    }

    /// An entry of only a body (a test's).
    #[cfg(test)]
    pub(super) fn bare(jseq: u64, time_us: i64, kind: super::RecordKind, session: Option<&str>, body: &[u8]) -> Self {
        let session = session.map(|s| super::SessionKey::Text(s.into()));
        Self { jseq, time_us, kind, session, bytes: body.to_vec(), data_at: None, kept: Kept::Nothing }
    }

    pub(super) fn body(&self) -> &[u8] {
        self.bytes.get(..self.data_at.unwrap_or(self.bytes.len())).unwrap_or_default()
    }

    pub(super) fn data(&self) -> Option<&[u8]> {
        match (&self.kept, self.data_at) {
            (Kept::Event(e), _) => e.data(),
            (_, at) => at.and_then(|at| self.bytes.get(at..)),
        }
    }
}

/// What the audit writer reads of a record besides its body: for a
/// statement and its end (most records) only what the fold
/// ([`super::fold`]) and the metrics read (their bytes, the record's data,
/// are in the entry's own allocation, after the body); any other record
/// whole, for the query tables.
///
/// A statement's record comes through the journal ([`Journal::append`]):
/// the rest of its event (its text, kinds, tables, rule, its bytes' own
/// buffer: half a dozen allocations) is dropped there, on the session's
/// thread that allocated it, not on the writer's. A block freed on another
/// thread goes back to its own thread's heap through an atomic list, and
/// the session's next allocation of it reads a cache line last written on
/// the writer's core (under `bench pg` select-only, mimalloc's allocation
/// fast path was 7% of the sessions' time against 2% of their
/// instructions). A statement's end is queued without the journal
/// ([`super::Audit::offer`]) and cut down by the writer as it takes it:
/// encoding it on the session's thread instead was tried (the writer's
/// instructions per statement −10%, the sessions' +5%) and used no less
/// CPU per transaction (paired medians 1.01 and 0.92, the old way ahead).
#[derive(Debug)]
pub(super) enum Kept {
    /// Nothing (a test's entry: the body is all there is).
    #[cfg(test)]
    Nothing,
    Statement {
        seq: u64,
        decision: super::Verdict,
        /// Its first kind (the metrics' label).
        kind: Option<crate::sql::KindName>,
        /// Neither an end nor `up_len` in it already: a fresh statement.
        fresh: bool,
    },
    End {
        seq: u64,
        /// Values masked, as JSON (the metrics' counts).
        masked: Option<String>,
    },
    Event(Event),
}

impl Kept {
    /// What the metrics count of it.
    pub(super) fn counted(&self) -> Option<crate::metrics::Counted<'_>> {
        use crate::metrics::Counted;
        match self {
            Self::Statement { kind, decision, .. } => Some(Counted::Statement(kind.as_ref(), *decision)),
            Self::End { masked, .. } => masked.as_deref().map(Counted::Masked),
            Self::Event(e) => Some(Counted::Event(e)),
            #[cfg(test)]
            Self::Nothing => None,
        }
    }

    fn of(e: Event) -> Self {
        match e {
            Event::Statement(s) => Self::Statement {
                seq: s.seq,
                decision: s.decision,
                kind: s.kinds.first().cloned(),
                fresh: s.end.is_none() && s.up_len.is_none(),
            },
            Event::StatementEnd(x) => Self::End { seq: x.seq, masked: x.masked },
            e => Self::Event(e),
        }
    }
}

/// The entries of one [`Journal::append`], handed to the writer thread as
/// they are: a batch of one entry (a statement's, most often) needs no
/// allocation of its own, which the writer would free (see [`Kept`]).
pub(super) type Entries = smallvec::SmallVec<[Entry; 1]>;

thread_local! {
    /// Each thread's buffer for the frames of one [`Journal::append`].
    static FRAMES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The journal of one store.
#[derive(Debug)]
pub struct Journal {
    prefix: PathBuf,
    fsync: bool,
    inner: Mutex<Inner>,
    /// Highest jseq written, and highest made durable with `fdatasync`.
    written: AtomicU64,
    synced: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// Highest jseq the writer has committed to SQLite.
    pub(super) ingested: Arc<AtomicU64>,
    /// Commands queued to the writer and not yet taken (bounds the queue).
    pub(super) queued: Arc<AtomicUsize>,
    tx: Sender<Command>,
    /// The next segment, made ahead by the writer thread.
    spares: Arc<Spares>,
}

#[derive(Debug)]
struct Inner {
    file: Arc<File>,
    /// The segment's bytes, mapped: entries are copied in at `len`.
    map: crate::sys::SharedMap,
    /// The segment's size, allocated on its device and mapped.
    cap: usize,
    path: PathBuf,
    len: usize,
    next: u64,
    /// Closed segments and the last jseq each holds.
    older: VecDeque<(PathBuf, u64)>,
    failed: Option<String>,
}

/// Why the journal did not take a batch.
#[derive(Debug)]
pub(super) enum AppendError {
    QueueFull,
    Failed(String),
}

/// The journal segments of the store at `db`: `<db>.journal.<first jseq>`, oldest first.
pub(super) fn segments(db: &Path) -> Vec<(u64, PathBuf)> {
    let dir = crate::secrets::dir_of(db);
    let Some(name) = db.file_name().and_then(|n| n.to_str()) else { return Vec::new() };
    let prefix = format!("{name}.journal.");
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let first = n.to_str()?.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((first, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn prefix_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.journal.", db.display()))
}

/// A new segment of `cap` bytes whose first entry will be `first`: the file
/// (allocated on its device, so no copy into it can find the disk full), and
/// its bytes mapped. A segment that cannot be made whole is removed.
fn create_segment(prefix: &Path, first: u64, cap: usize) -> std::io::Result<(PathBuf, File, crate::sys::SharedMap)> {
    let path = segment_path(prefix, first);
    let (f, map) = make_segment_file(&path, cap)?;
    Ok((path, f, map))
}

/// The name of the segment whose first entry is `first`.
fn segment_path(prefix: &Path, first: u64) -> PathBuf {
    PathBuf::from(format!("{}{first:020}", prefix.display()))
}

/// A new file of `cap` bytes at `path`, allocated and mapped (see
/// [`create_segment`]); removed again if it cannot be made whole.
fn make_segment_file(path: &Path, cap: usize) -> std::io::Result<(File, crate::sys::SharedMap)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let made = allocate(&f, cap).and_then(|()| crate::sys::SharedMap::new(&f, cap));
    match made {
        Ok(map) => Ok((f, map)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Where the spare segment of the journal at `prefix` is made: a name
/// [`segments`] does not read as a segment (no jseq), so replay never takes
/// it for one; it holds no entry until it is renamed into place.
fn spare_path(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}spare", prefix.display()))
}

/// The journal's next segment, made ahead of need by the writer thread
/// ([`Spares::prepare`], between its batches) instead of by the session
/// whose batch does not fit in the current one: that session held the
/// journal's lock, which every other session waits for, while the file was
/// created, allocated and mapped, and each session then took a page fault
/// (with the file system's `page_mkwrite`) at its first copy into each
/// 4 KiB page of it — 2.2% of the sessions' samples under `bench pg`
/// select-only. The spare is faulted in whole when it is made
/// ([`crate::sys::SharedMap::populate_write`]); taking it is a rename
/// under the lock. While the writer is making one, or none could be made
/// (a full disk: tried again after [`SPARE_RETRY`]), the session makes the
/// segment itself, as before.
#[derive(Debug)]
pub(super) struct Spares {
    path: PathBuf,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    spare: Option<(File, crate::sys::SharedMap)>,
    /// When making one last failed.
    failed_at: Option<std::time::Instant>,
}

/// How long after a spare could not be made (a full disk) the writer tries again.
const SPARE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Spares {
    fn new(prefix: &Path) -> Self {
        let path = spare_path(prefix);
        // One a killed agent left (never renamed into place: it holds nothing).
        let _ = std::fs::remove_file(&path);
        Self { path, slot: Mutex::default() }
    }

    /// Makes the spare segment if there is none (the writer thread, between
    /// its batches).
    pub(super) fn prepare(&self) {
        let Ok(mut slot) = self.slot.try_lock() else { return };
        if slot.spare.is_some() || slot.failed_at.is_some_and(|t| t.elapsed() < SPARE_RETRY) {
            return;
        }
        match make_segment_file(&self.path, SEGMENT_BYTES) {
            Ok((file, map)) => {
                // An older kernel has no MADV_POPULATE_WRITE: the copies fault the pages in.
                let _ = map.populate_write();
                *slot = Slot { spare: Some((file, map)), failed_at: None };
            }
            Err(_) => slot.failed_at = Some(std::time::Instant::now()),
        }
    }

    /// The spare, renamed to `path` (never over a file there), if one is
    /// ready and holds `cap` bytes; else `None`, and the caller makes the
    /// segment itself.
    fn take(&self, path: &Path, cap: usize) -> Option<(File, crate::sys::SharedMap)> {
        if cap != SEGMENT_BYTES {
            return None;
        }
        let spare = self.slot.try_lock().ok()?.spare.take()?;
        let renamed = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &self.path,
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        match renamed {
            Ok(()) => Some(spare),
            Err(_) => {
                drop(spare);
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }
    }

    /// Removes the spare (a clean stop).
    fn remove(&self) {
        if let Some(spare) = self.slot.lock().unwrap_or_else(PoisonError::into_inner).spare.take() {
            drop(spare);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Gives the (new, empty) `file` `len` bytes of zeros with their blocks
/// allocated: `fallocate(2)`, or where the file system has none, the zeros
/// written. Never a sparse file: a copy into a hole of a shared mapping on
/// a full disk would be a `SIGBUS`, not an error.
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    let off = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, off) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => write_zeros(file, len),
        Err(e) => Err(e.into()),
    }
}

/// Writes `len` zeros to `file` (from where it is): the blocks are
/// allocated by the writes themselves, and a full disk fails them here.
fn write_zeros(file: &File, len: usize) -> std::io::Result<()> {
    let zeros = vec![0u8; len.min(64 << 10)];
    let mut left = len;
    let mut w = file;
    while left > 0 {
        let n = left.min(zeros.len());
        w.write_all(zeros.get(..n).unwrap_or_default())?;
        left -= n;
    }
    Ok(())
}

/// A failed write, said so that an operator sees a full disk for what it is.
fn describe(e: &std::io::Error, path: &Path) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        format!("the audit journal {}: database or disk is full ({e})", path.display())
    } else {
        format!("the audit journal {}: {e}", path.display())
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Where an entry's jseq and time go in its frame: after the length.
const STAMP: usize = 4;
const STAMP_LEN: usize = 16;

/// An entry framed by [`frame`] and not yet stamped: where it starts in the
/// buffer and where its checksum goes.
struct Framed {
    at: usize,
    sum_at: usize,
}

/// Appends `e`'s frame to `buf` with its jseq and time left blank (filled in
/// by [`stamp`] once they are known, under the journal's lock: everything
/// else, the body's JSON included, is done before it).
fn frame(buf: &mut Vec<u8>, e: &Entry) -> Framed {
    let at = buf.len();
    buf.extend_from_slice(&[0; STAMP + STAMP_LEN]);
    let kind = e.kind.as_str();
    buf.push(u8::try_from(kind.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(kind.as_bytes());
    match &e.session {
        Some(s) => {
            buf.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
            buf.extend_from_slice(s.as_bytes());
        }
        None => buf.push(0xff),
    }
    put_bytes(buf, e.body());
    match e.data() {
        Some(d) => put_bytes(buf, d),
        None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    let len = u32::try_from(buf.len() - at - STAMP).unwrap_or(u32::MAX);
    if let Some(h) = buf.get_mut(at..at + STAMP) {
        h.copy_from_slice(&len.to_le_bytes());
    }
    let sum_at = buf.len();
    buf.extend_from_slice(&[0; CHECKSUM]);
    Framed { at, sum_at }
}

/// Fills in a framed entry's jseq and time, and its checksum: the CRC of
/// its whole payload, made here (hardware CRC, a fraction of a µs for a
/// statement's record; the CRC of the rest made before the lock and combined
/// with the stamp's cost more: `crc32fast`'s combine is ≈ 2k instructions).
fn stamp(buf: &mut [u8], f: &Framed, jseq: u64, time_us: i64) {
    if let Some((j, t)) = buf.get_mut(f.at + STAMP..f.at + STAMP + STAMP_LEN).map(|h| h.split_at_mut(8)) {
        j.copy_from_slice(&jseq.to_le_bytes());
        t.copy_from_slice(&time_us.to_le_bytes());
    }
    let crc = crc32fast::hash(buf.get(f.at + STAMP..f.sum_at).unwrap_or_default());
    if let Some((sum, tag)) = buf.get_mut(f.sum_at..f.sum_at + CHECKSUM).map(|h| h.split_at_mut(4)) {
        sum.copy_from_slice(&crc.to_le_bytes());
        tag.copy_from_slice(&CRC_TAG);
    }
}

#[cfg(test)]
fn encode(buf: &mut Vec<u8>, e: &Entry) {
    let f = frame(buf, e);
    stamp(buf, &f, e.jseq, e.time_us);
}

#[cfg(test)]
pub(super) fn encode_for_test(buf: &mut Vec<u8>, e: &Entry) {
    encode(buf, e);
}

/// Where the whole entries at the start of `bytes` end.
#[cfg(test)]
pub(super) fn entries_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, n)) = bytes.get(at..).and_then(decode) {
        at += n;
    }
    at
}

/// A replayed entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Replayed {
    pub jseq: u64,
    pub time_us: i64,
    pub kind: String,
    pub session: Option<String>,
    pub body: Vec<u8>,
    pub data: Option<Vec<u8>>,
}

/// Reads one entry at the start of `b`: `None` at a torn or damaged entry.
fn decode(b: &[u8]) -> Option<(Replayed, usize)> {
    let len = usize::try_from(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
    if len > ENTRY_MAX {
        return None;
    }
    let payload = b.get(4..4 + len)?;
    let sum = b.get(4 + len..4 + len + CHECKSUM)?;
    if !checksum_matches(payload, sum) {
        return None;
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = payload.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let jseq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let time_us = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let klen = usize::from(*take(1)?.first()?);
    let kind = String::from_utf8(take(klen)?.to_vec()).ok()?;
    let slen = *take(1)?.first()?;
    let session = if slen == 0xff { None } else { Some(String::from_utf8(take(usize::from(slen))?.to_vec()).ok()?) };
    let blen = usize::try_from(u32::from_le_bytes(take(4)?.try_into().ok()?)).ok()?;
    let body = take(blen)?.to_vec();
    let dlen = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let data = if dlen == u32::MAX { None } else { Some(take(usize::try_from(dlen).ok()?)?.to_vec()) };
    Some((Replayed { jseq, time_us, kind, session, body, data }, 4 + len + CHECKSUM))
}

/// The chain's head: (seq, hash) of its last record.
type Head = (u64, [u8; 32]);

/// The journal position the store has ingested.
pub(super) fn ingested(conn: &Connection) -> rusqlite::Result<u64> {
    let v: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'journal_ingested'", [], |r| r.get(0)).optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Every commit of the writer sets it. An upsert updates the row in place
/// and touches only the meta table's page, where INSERT OR REPLACE deleted
/// the row and inserted another (a new rowid), rewriting the key's index
/// page too: one WAL frame more per commit.
pub(super) fn set_ingested(tx: &Connection, jseq: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('journal_ingested', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([jseq.to_string()])?;
    Ok(())
}

/// Appends to the chain whatever the journal of `db` holds beyond what the
/// store has ingested, then removes the journal. Returns the new head, the
/// next jseq to use, and how many records were replayed.
pub(super) fn replay(conn: &mut Connection, db: &Path, mut head: Head) -> Result<(Head, u64, usize), String> {
    let err = |e: rusqlite::Error| format!("replaying the audit journal: {e}");
    let done = ingested(conn).map_err(err)?;
    let mut last = done;
    let mut count = 0usize;
    let segs = segments(db);
    for (_, path) in &segs {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut at = 0usize;
        let tx = conn.transaction().map_err(err)?;
        while at < bytes.len() {
            let Some((r, n)) = bytes.get(at..).and_then(decode) else {
                // The zeros the segment was allocated with: its end.
                let torn = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| (last + 1).saturating_sub(at));
                if torn > 0 {
                    tracing::warn!(
                        journal = %path.display(),
                        bytes = torn,
                        "the audit journal ends with a torn or damaged entry (a copy cut short: never acknowledged); ignored"
                    );
                }
                break;
            };
            at += n;
            if r.jseq <= last {
                continue;
            }
            head = super::insert_event(&tx, head, r.time_us, r.session.as_deref(), &r.kind, &r.body, r.data.as_deref())
                .map_err(err)?;
            // A kind this build does not know (a journal a newer agent wrote) is chained as it is.
            let kind = super::RecordKind::parse(&r.kind);
            if let Some(e) = kind.and_then(|k| super::verify::event_for_index(k, &r.body)) {
                super::index(&tx, &e).map_err(err)?;
            } else if kind == Some(super::RecordKind::Trail)
                && let Ok(t) = serde_json::from_slice::<crate::trail::TrailRecord>(&r.body)
            {
                // Its index needs the key set (the data), which the other kinds' do not.
                let seq = tx.last_insert_rowid().unsigned_abs();
                crate::trail::store::index(&tx, seq, &t, r.data.as_deref().unwrap_or_default()).map_err(err)?;
            }
            last = r.jseq;
            count += 1;
        }
        set_ingested(&tx, last).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    for (_, path) in &segs {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(spare_path(&prefix_of(db)));
    if count > 0 {
        tracing::warn!(records = count, "replayed the audit journal of an agent that did not stop cleanly");
    }
    Ok((head, last + 1, count))
}

/// Replays the journal of a store no agent holds (for the CLI: `verify`,
/// `sessions`, `statements` after a crash). A store in use is left to its agent.
pub fn recover(db: &Path) -> Result<(), String> {
    if segments(db).is_empty() || !db.exists() {
        return Ok(());
    }
    let Ok(_lock) = super::lock_store(db) else { return Ok(()) };
    let mut conn = super::open_conn(db, true).map_err(|e| e.to_string())?;
    let head = super::head(&conn).map_err(|e| e.to_string())?;
    replay(&mut conn, db, head).map(|_| ())
}

/// Waits (up to two seconds) until the agent holding the store at `db` has
/// ingested everything its journal holds so far: a reader then sees every
/// record the agent acknowledged before the read began (a session's opening
/// and its statements are acknowledged from the journal, not from SQLite).
pub fn settle(db: &Path) {
    let Some(last) = last_written(db) else { return };
    let Ok(conn) = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if ingested(&conn).is_ok_and(|done| done >= last) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The last jseq the journal of `db` holds (whole entries only), if any.
fn last_written(db: &Path) -> Option<u64> {
    segments(db).iter().rev().find_map(|(_, path)| {
        let bytes = std::fs::read(path).ok()?;
        let mut at = 0usize;
        let mut last = None;
        while let Some((r, n)) = bytes.get(at..).and_then(decode) {
            at += n;
            last = Some(r.jseq);
        }
        last
    })
}

impl Journal {
    /// Starts a journal at `next` (after [`replay`] emptied the old one).
    pub(super) fn create(
        db: &Path,
        next: u64,
        fsync: bool,
        tx: Sender<Command>,
        queued: Arc<AtomicUsize>,
    ) -> Result<Self, String> {
        let prefix = prefix_of(db);
        let spares = Arc::new(Spares::new(&prefix));
        let (path, file, map) = create_segment(&prefix, next, SEGMENT_BYTES).map_err(|e| describe(&e, &prefix))?;
        if fsync && let Ok(d) = File::open(crate::secrets::dir_of(db)) {
            let _ = d.sync_all();
        }
        Ok(Self {
            prefix,
            fsync,
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                map,
                cap: SEGMENT_BYTES,
                path,
                len: 0,
                next,
                older: VecDeque::new(),
                failed: None,
            }),
            written: AtomicU64::new(next.saturating_sub(1)),
            synced: AtomicU64::new(next.saturating_sub(1)),
            sync_lock: tokio::sync::Mutex::new(()),
            ingested: Arc::new(AtomicU64::new(next.saturating_sub(1))),
            queued,
            tx,
            spares,
        })
    }

    /// The spare segment's maker, for the writer thread.
    pub(super) fn spares(&self) -> Arc<Spares> {
        self.spares.clone()
    }

    /// Copies `events` into the journal at once and hands them to the writer
    /// thread in the same order. Returns the last jseq (for [`Self::sync`]).
    pub(super) fn append(&self, events: Vec<Event>, depth: usize) -> Result<u64, AppendError> {
        // Everything but the entries' jseq, time and checksum is made
        // before the lock, which sessions on other threads wait for (asleep,
        // once its brief spin is over): under `bench pg` select-only it was
        // the agent's one contended lock, held while the record's JSON was
        // made.
        FRAMES.with_borrow_mut(|buf| {
            buf.clear();
            let mut entries = Entries::with_capacity(events.len());
            // Where each frame is (kept on this thread: no allocation for a statement's one or two).
            let mut framed: smallvec::SmallVec<[Framed; 4]> = smallvec::SmallVec::with_capacity(events.len());
            for e in events {
                let entry = Entry::of(e);
                framed.push(frame(buf, &entry));
                entries.push(entry);
            }
            let r = self.append_framed(buf, &framed, entries, depth);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::with_capacity(64 * 1024);
            }
            r
        })
    }

    /// Stamps framed entries with their jseq, time and checksum, copies them
    /// into the segment (a new one first when they do not fit in what is
    /// left) and hands them to the writer thread in the same order.
    fn append_framed(
        &self,
        buf: &mut [u8],
        framed: &[Framed],
        mut entries: Entries,
        depth: usize,
    ) -> Result<u64, AppendError> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = &g.failed {
            return Err(AppendError::Failed(f.clone()));
        }
        if self.queued.load(Ordering::Relaxed) >= depth {
            return Err(AppendError::QueueFull);
        }
        let inner = &mut *g;
        // A batch never spans two segments: the next one starts with it.
        if inner.len.saturating_add(buf.len()) > inner.cap
            && let Err(why) = self.rotate(inner, buf.len())
        {
            inner.failed = Some(why.clone());
            return Err(AppendError::Failed(why));
        }
        let time_us = super::now_us();
        for (f, entry) in framed.iter().zip(entries.iter_mut()) {
            entry.jseq = inner.next;
            entry.time_us = time_us;
            stamp(buf, f, inner.next, time_us);
            inner.next += 1;
        }
        let last = inner.next - 1;
        if !inner.map.write_at(inner.len, buf) {
            // Cannot happen: the segment was started for what did not fit.
            let why = format!("the audit journal {}: a batch past the segment's end", inner.path.display());
            inner.failed = Some(why.clone());
            return Err(AppendError::Failed(why));
        }
        inner.len += buf.len();
        self.written.store(last, Ordering::Release);
        self.queued.fetch_add(1, Ordering::Relaxed);
        crate::metrics::queued();
        if self.tx.send(Command::Journaled(entries)).is_err() {
            return Err(AppendError::Failed("the audit writer has stopped".into()));
        }
        Ok(last)
    }

    /// Starts a new segment with room for at least `need` bytes; removes the
    /// closed ones the writer has ingested.
    fn rotate(&self, inner: &mut Inner, need: usize) -> Result<(), String> {
        let cap = need.div_ceil(PAGE).saturating_mul(PAGE).max(SEGMENT_BYTES);
        if inner.len == 0 {
            // Nothing in it yet (a first batch larger than a segment): the
            // segment is made again in its place, large enough, under the
            // same name (its first entry's jseq).
            let _ = std::fs::remove_file(&inner.path);
            let (path, file, map) =
                create_segment(&self.prefix, inner.next, cap).map_err(|e| describe(&e, &self.prefix))?;
            inner.path = path;
            inner.file = Arc::new(file);
            inner.map = map;
            inner.cap = cap;
            return Ok(());
        }
        if self.fsync {
            inner.file.sync_data().map_err(|e| describe(&e, &inner.path))?;
            self.synced.fetch_max(inner.next - 1, Ordering::AcqRel);
        }
        let path = segment_path(&self.prefix, inner.next);
        let (file, map) = match self.spares.take(&path, cap) {
            Some(spare) => spare,
            None => make_segment_file(&path, cap).map_err(|e| describe(&e, &self.prefix))?,
        };
        let old = std::mem::replace(&mut inner.path, path);
        inner.older.push_back((old, inner.next - 1));
        inner.file = Arc::new(file);
        inner.map = map;
        inner.cap = cap;
        inner.len = 0;
        self.prune(inner);
        Ok(())
    }

    fn prune(&self, inner: &mut Inner) {
        let done = self.ingested.load(Ordering::Acquire);
        while inner.older.front().is_some_and(|(_, last)| *last <= done) {
            if let Some((p, _)) = inner.older.pop_front() {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Waits until `jseq` is on stable storage (with `audit_fsync`; without
    /// it, a written entry already survives a killed process). Sessions
    /// waiting at once share one `fdatasync`.
    pub(super) async fn sync(&self, jseq: u64) -> Result<(), String> {
        if !self.fsync || self.synced.load(Ordering::Acquire) >= jseq {
            return Ok(());
        }
        let _turn = self.sync_lock.lock().await;
        if self.synced.load(Ordering::Acquire) >= jseq {
            return Ok(());
        }
        let (file, path) = {
            let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            (g.file.clone(), g.path.clone())
        };
        let upto = self.written.load(Ordering::Acquire);
        let r = tokio::task::spawn_blocking(move || file.sync_data()).await;
        match r {
            Ok(Ok(())) => {
                self.synced.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Ok(Err(e)) => {
                let why = describe(&e, &path);
                self.inner.lock().unwrap_or_else(PoisonError::into_inner).failed = Some(why.clone());
                Err(why)
            }
            Err(e) => Err(format!("the audit journal sync failed: {e}")),
        }
    }

    /// After a clean stop (everything ingested): the journal is removed.
    pub(super) fn close(&self) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if self.ingested.load(Ordering::Acquire) + 1 >= g.next {
            let inner = &mut *g;
            while let Some((p, _)) = inner.older.pop_front() {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_file(&inner.path);
        }
        self.spares.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_or_changed_one_is_refused() {
        let e = Entry::bare(7, 42, crate::audit::RecordKind::Statement, Some("abc"), b"{\"x\":1}");
        let mut buf = Vec::new();
        encode(&mut buf, &e);
        let (r, n) = decode(&buf).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!((r.jseq, r.time_us, r.kind.as_str(), r.session.as_deref()), (7, 42, "statement", Some("abc")));
        assert_eq!((r.body.as_slice(), r.data), (&b"{\"x\":1}"[..], None));
        for cut in 0..buf.len() {
            assert!(decode(buf.get(..cut).unwrap()).is_none(), "a torn entry ({cut} bytes) is not read");
        }
        let mut changed = buf.clone();
        if let Some(b) = changed.get_mut(20) {
            *b ^= 1;
        }
        assert!(decode(&changed).is_none(), "a changed entry fails its checksum");
        // Every bit of the length, the payload and the checksum matters.
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            if let Some(b) = flipped.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
            assert!(decode(&flipped).is_none(), "bit {bit} flipped: refused");
        }
        // A tail of zeros (a write the crash cut off after the length) is no entry.
        let mut zeroed = buf.clone();
        zeroed.iter_mut().skip(4).for_each(|b| *b = 0);
        assert!(decode(&zeroed).is_none(), "a zeroed entry is refused");
    }

    #[test]
    fn a_segment_on_a_file_system_without_fallocate_is_zeros_written_whole_and_mapped() {
        // The fallback `allocate` takes where fallocate(2) is not supported.
        let path = std::env::temp_dir().join(format!("gh-journal-zeros-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let len = (64 << 10) * 2 + 4099;
        write_zeros(&f, len).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mapped = crate::sys::SharedMap::new(&f, len);
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes.len(), len);
        assert!(bytes.iter().all(|b| *b == 0));
        assert!(mapped.is_ok(), "{mapped:?}");
        // Its blocks are on the device: not a sparse file.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap());
        assert!(blocks * 512 >= len as u64, "{blocks} blocks of 512 bytes for {len} bytes");
    }

    #[test]
    fn entries_framed_first_and_stamped_later_are_whole() {
        // As `append` does: frames made before the lock, stamped under it.
        let entry =
            |session: Option<&str>, body: &[u8]| Entry::bare(0, 0, crate::audit::RecordKind::Statement, session, body);
        let big = vec![b'x'; 70_000];
        let entries = [entry(Some("s-1"), b"{\"a\":1}"), entry(None, b""), entry(Some("s-2"), &big)];
        let mut buf = Vec::new();
        let framed: Vec<Framed> = entries.iter().map(|e| frame(&mut buf, e)).collect();
        for (i, f) in framed.iter().enumerate().rev() {
            stamp(&mut buf, f, 100 + i as u64, -5 + i as i64);
        }
        let mut at = 0;
        for (i, e) in entries.iter().enumerate() {
            let rest = buf.get(at..).unwrap();
            let (r, n) = decode(rest).unwrap();
            assert_eq!((r.jseq, r.time_us), (100 + i as u64, -5 + i as i64));
            assert_eq!((r.session.as_deref(), r.body.as_slice()), (e.session.as_deref(), e.body()));
            // The checksum is the CRC of the whole payload.
            let payload = rest.get(4..n - CHECKSUM).unwrap();
            assert_eq!(rest.get(n - CHECKSUM..n).unwrap(), checksum(payload));
            at += n;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn an_entry_written_with_the_blake3_checksum_is_still_read() {
        // Entries a Gatehouse from before the CRC left in a journal (a crash,
        // then an upgrade) are replayed, and damage to them is still seen.
        let e = Entry::bare(3, 9, crate::audit::RecordKind::Statement, None, b"{}");
        let mut buf = Vec::new();
        encode(&mut buf, &e);
        let payload_end = buf.len() - CHECKSUM;
        let old_sum = *blake3::hash(buf.get(4..payload_end).unwrap()).as_bytes();
        buf.truncate(payload_end);
        buf.extend_from_slice(old_sum.get(..CHECKSUM).unwrap());
        let (r, n) = decode(&buf).unwrap();
        assert_eq!((n, r.jseq, r.body.as_slice()), (buf.len(), 3, &b"{}"[..]));
        for at in 0..buf.len() {
            let mut changed = buf.clone();
            if let Some(b) = changed.get_mut(at) {
                *b ^= 0x40;
            }
            assert!(decode(&changed).is_none(), "byte {at} changed: refused");
        }
    }
}
