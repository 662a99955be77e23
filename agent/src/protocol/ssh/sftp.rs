//! SFTP (version 3, as OpenSSH speaks it) seen from the middle: the
//! client's requests are framed and classified (which path, read or write)
//! so each can be decided; a refused one is answered with
//! `SSH_FX_PERMISSION_DENIED` and never reaches the server. `scp` of
//! OpenSSH 9 and later speaks SFTP too.
//!
//! Sans-IO: [`Framer`] takes bytes and yields whole packets; [`classify`]
//! reads one packet. Lengths are bounded before anything is allocated.
//! [`Replies`] follows the server's answers (without holding them) and
//! [`Files`] adds up what was read and written through each open file, so
//! a file's `close` record says how many bytes went each way.

use std::borrow::Cow;
use std::collections::HashMap;

/// OpenSSH's sftp-server accepts packets up to 256 KiB; a little more here.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("sftp packet of {len} bytes is over the {MAX_PACKET}-byte limit")]
    TooLarge { len: usize },
    #[error("malformed sftp packet (type {kind})")]
    Malformed { kind: u8 },
}

/// Splits a byte stream into packets (length prefix included).
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, SftpError> {
        let Some(len) = self.buf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) else {
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_PACKET || len == 0 {
            return Err(SftpError::TooLarge { len });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(4 + len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

/// What one client packet asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Needs no decision (init, handle operations, harmless queries).
    Pass { id: Option<u32>, name: &'static str },
    /// Touches `path` (and `target`, for rename and links).
    Path {
        id: u32,
        name: Cow<'static, str>,
        path: Cow<'a, str>,
        target: Option<Cow<'a, str>>,
        write: bool,
        /// Permissions given (open, mkdir, setstat), if any.
        mode: Option<u32>,
        /// Whether the path is only resolved (realpath): no path rule applies.
        resolve_only: bool,
    },
    /// A write through a handle (`fsetstat`): allowed only read-write.
    HandleWrite { id: u32, name: &'static str },
    /// `read`, `write` or `close` of an open handle (allowed: the open was
    /// decided); `len` is the bytes asked for (read) or given (write).
    OnHandle { id: u32, name: &'static str, handle: &'a [u8], len: u64 },
    /// An extension Gatehouse does not know: refused.
    Unknown { id: u32, name: String },
}

struct Reader<'a> {
    b: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, SftpError> {
        let (head, rest) = self.b.split_first_chunk::<4>().ok_or(SftpError::Malformed { kind: self.kind })?;
        self.b = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SftpError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let (head, rest) = self.b.split_at_checked(n).ok_or(SftpError::Malformed { kind: self.kind })?;
        self.b = rest;
        Ok(head)
    }

    /// A path: UTF-8 only (a lossy conversion could make a refused path look like an allowed one).
    fn path(&mut self) -> Result<Cow<'a, str>, SftpError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| SftpError::Malformed { kind: self.kind })
    }

    /// The permissions of an ATTRS block, if given.
    fn attrs_mode(&mut self) -> Result<Option<u32>, SftpError> {
        let flags = self.u32()?;
        if flags & 0x1 != 0 {
            self.u32()?;
            self.u32()?;
        }
        if flags & 0x2 != 0 {
            self.u32()?;
            self.u32()?;
        }
        Ok(if flags & 0x4 != 0 { Some(self.u32()?) } else { None })
    }
}

const WRITE_FLAGS: u32 = 0x2 | 0x4 | 0x8 | 0x10; // WRITE, APPEND, CREAT, TRUNC

/// Classifies one client packet (as [`Framer`] returns it).
pub fn classify(packet: &[u8]) -> Result<Op<'_>, SftpError> {
    let kind = packet.get(4).copied().ok_or(SftpError::Malformed { kind: 0 })?;
    let mut r = Reader { b: packet.get(5..).unwrap_or_default(), kind };
    if kind == 1 {
        return Ok(Op::Pass { id: None, name: "init" });
    }
    let id = r.u32()?;
    let path = |name: &'static str, path, write, mode| Op::Path {
        id,
        name: Cow::Borrowed(name),
        path,
        target: None,
        write,
        mode,
        resolve_only: false,
    };
    Ok(match kind {
        3 => {
            let p = r.path()?;
            let pflags = r.u32()?;
            let mode = r.attrs_mode()?;
            let write = pflags & WRITE_FLAGS != 0;
            path(if write { "open-write" } else { "open-read" }, p, write, mode)
        }
        4 => Op::OnHandle { id, name: "close", handle: r.bytes()?, len: 0 },
        5 => {
            let handle = r.bytes()?;
            let _offset = (r.u32()?, r.u32()?);
            Op::OnHandle { id, name: "read", handle, len: u64::from(r.u32()?) }
        }
        // A handle is opened for writing only after its open was allowed as a write.
        6 => {
            let handle = r.bytes()?;
            let _offset = (r.u32()?, r.u32()?);
            Op::OnHandle { id, name: "write", handle, len: r.bytes()?.len() as u64 }
        }
        7 => path("lstat", r.path()?, false, None),
        8 => Op::Pass { id: Some(id), name: "fstat" },
        9 => {
            let p = r.path()?;
            let mode = r.attrs_mode()?;
            path("setstat", p, true, mode)
        }
        10 => Op::HandleWrite { id, name: "fsetstat" },
        11 => path("opendir", r.path()?, false, None),
        12 => Op::Pass { id: Some(id), name: "readdir" },
        13 => path("remove", r.path()?, true, None),
        14 => {
            let p = r.path()?;
            let mode = r.attrs_mode()?;
            path("mkdir", p, true, mode)
        }
        15 => path("rmdir", r.path()?, true, None),
        16 => Op::Path {
            id,
            name: Cow::Borrowed("realpath"),
            path: r.path()?,
            target: None,
            write: false,
            mode: None,
            resolve_only: true,
        },
        17 => path("stat", r.path()?, false, None),
        18 | 20 => {
            let (a, b) = (r.path()?, r.path()?);
            let name = if kind == 18 { "rename" } else { "symlink" };
            Op::Path {
                id,
                name: Cow::Borrowed(name),
                path: a,
                target: Some(b),
                write: true,
                mode: None,
                resolve_only: false,
            }
        }
        19 => path("readlink", r.path()?, false, None),
        200 => extended(id, &mut r)?,
        _ => Op::Unknown { id, name: format!("packet type {kind}") },
    })
}

fn extended<'a>(id: u32, r: &mut Reader<'a>) -> Result<Op<'a>, SftpError> {
    let name = r.bytes()?;
    let name = String::from_utf8_lossy(name).into_owned();
    let two = |r: &mut Reader<'a>, label: &'static str| -> Result<Op<'a>, SftpError> {
        let (a, b) = (r.path()?, r.path()?);
        Ok(Op::Path {
            id,
            name: Cow::Borrowed(label),
            path: a,
            target: Some(b),
            write: true,
            mode: None,
            resolve_only: false,
        })
    };
    Ok(match name.as_str() {
        "posix-rename@openssh.com" => two(r, "rename")?,
        "hardlink@openssh.com" => two(r, "hardlink")?,
        "statvfs@openssh.com" => Op::Path {
            id,
            name: Cow::Borrowed("statvfs"),
            path: r.path()?,
            target: None,
            write: false,
            mode: None,
            resolve_only: false,
        },
        "lsetstat@openssh.com" => {
            let p = r.path()?;
            let mode = r.attrs_mode()?;
            Op::Path {
                id,
                name: Cow::Borrowed("lsetstat"),
                path: p,
                target: None,
                write: true,
                mode,
                resolve_only: false,
            }
        }
        "expand-path@openssh.com" => Op::Path {
            id,
            name: Cow::Borrowed("expand-path"),
            path: r.path()?,
            target: None,
            write: false,
            mode: None,
            resolve_only: true,
        },
        "limits@openssh.com" => Op::Pass { id: Some(id), name: "limits" },
        "fsync@openssh.com" => Op::Pass { id: Some(id), name: "fsync" },
        "fstatvfs@openssh.com" => Op::Pass { id: Some(id), name: "fstatvfs" },
        "home-directory" => Op::Pass { id: Some(id), name: "home-directory" },
        "users-groups-by-id@openssh.com" => Op::Pass { id: Some(id), name: "users-groups-by-id" },
        "copy-data" => Op::HandleWrite { id, name: "copy-data" },
        _ => Op::Unknown { id, name },
    })
}

/// A server answer [`Replies`] noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `SSH_FXP_HANDLE`: request `id` opened `handle`.
    Handle { id: u32, handle: Vec<u8> },
    /// `SSH_FXP_DATA`: `len` bytes read for request `id`.
    Data { id: u32, len: u64 },
    /// Any other answer (`STATUS`, …) to request `id`.
    Other { id: u32 },
}

/// Follows the server's packets as they stream by: reads each one's head
/// (a `HANDLE` whole: it is small) and skips the rest, holding no data.
#[derive(Debug, Default)]
pub struct Replies {
    head: Vec<u8>,
    skip: usize,
}

/// The longest `HANDLE` answer read whole (OpenSSH's handles are a few bytes).
const MAX_HANDLE_PACKET: usize = 1024;

impl Replies {
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Reply>) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            // Length, type and id; a HANDLE packet whole.
            let want = match (self.head.first_chunk::<4>(), self.head.get(4)) {
                (Some(len), Some(102)) => {
                    let len = u32::from_be_bytes(*len) as usize;
                    if len <= MAX_HANDLE_PACKET { 4 + len } else { 9 }
                }
                _ => 9,
            };
            let n = want.saturating_sub(self.head.len()).min(data.len());
            self.head.extend_from_slice(data.get(..n).unwrap_or_default());
            data = data.get(n..).unwrap_or_default();
            if self.head.len() < want || (want == 9 && self.head.get(4) == Some(&102) && self.needs_more()) {
                continue;
            }
            let len = self.head.first_chunk::<4>().map_or(0, |b| u32::from_be_bytes(*b) as usize);
            let id = self.head.get(5..9).and_then(|b| b.first_chunk::<4>()).map(|b| u32::from_be_bytes(*b));
            match (self.head.get(4), id) {
                (Some(102), Some(id)) => {
                    let mut r = Reader { b: self.head.get(9..).unwrap_or_default(), kind: 102 };
                    if let Ok(h) = r.bytes() {
                        out.push(Reply::Handle { id, handle: h.to_vec() });
                    }
                }
                (Some(103), Some(id)) => out.push(Reply::Data { id, len: len.saturating_sub(9) as u64 }),
                // The version answer (type 2) carries no request id.
                (Some(2) | None, _) | (_, None) => {}
                (Some(_), Some(id)) => out.push(Reply::Other { id }),
            }
            self.skip = (4 + len).saturating_sub(self.head.len());
            self.head.clear();
        }
    }

    /// A HANDLE packet whose whole length is not in yet.
    fn needs_more(&self) -> bool {
        self.head.first_chunk::<4>().is_some_and(|b| {
            let len = u32::from_be_bytes(*b) as usize;
            len <= MAX_HANDLE_PACKET && self.head.len() < 4 + len
        })
    }
}

/// One file opened through an SFTP channel, and what went through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUse {
    pub path: String,
    pub mode: Option<u32>,
    pub write: bool,
    pub read: u64,
    pub written: u64,
}

/// Requests in flight and open handles of one SFTP channel (bounded: past
/// [`MAX_TRACKED`] entries, new ones go uncounted rather than grow memory).
#[derive(Debug, Default)]
pub struct Files {
    opening: HashMap<u32, FileUse>,
    reading: HashMap<u32, Vec<u8>>,
    open: HashMap<Vec<u8>, FileUse>,
}

const MAX_TRACKED: usize = 4096;

impl Files {
    /// An allowed `open` (request `id`) of `path`.
    pub fn opening(&mut self, id: u32, path: &str, mode: Option<u32>, write: bool) {
        if self.opening.len() < MAX_TRACKED {
            self.opening.insert(id, FileUse { path: path.to_owned(), mode, write, read: 0, written: 0 });
        }
    }

    /// A `read` (request `id`) of `handle`.
    pub fn reading(&mut self, id: u32, handle: &[u8]) {
        if self.open.contains_key(handle) && self.reading.len() < MAX_TRACKED {
            self.reading.insert(id, handle.to_vec());
        }
    }

    /// A `write` of `len` bytes through `handle`.
    pub fn wrote(&mut self, handle: &[u8], len: u64) {
        if let Some(f) = self.open.get_mut(handle) {
            f.written += len;
        }
    }

    /// `close` of `handle`: the file and what went through it, if it was followed.
    pub fn closed(&mut self, handle: &[u8]) -> Option<FileUse> {
        self.open.remove(handle)
    }

    /// A server answer.
    pub fn reply(&mut self, r: Reply) {
        match r {
            Reply::Handle { id, handle } => {
                if let Some(f) = self.opening.remove(&id)
                    && self.open.len() < MAX_TRACKED
                {
                    self.open.insert(handle, f);
                }
            }
            Reply::Data { id, len } => {
                if let Some(h) = self.reading.remove(&id)
                    && let Some(f) = self.open.get_mut(&h)
                {
                    f.read += len;
                }
            }
            Reply::Other { id } => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }
}

/// `SSH_FXP_STATUS` with `SSH_FX_PERMISSION_DENIED` (3) for request `id`.
pub fn denied(id: u32, message: &str) -> Vec<u8> {
    let msg = message.as_bytes();
    let msg = msg.get(..msg.len().min(1024)).unwrap_or_default();
    let body_len = 1 + 4 + 4 + 4 + msg.len() + 4;
    let mut out = Vec::with_capacity(4 + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    out.push(101);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&3u32.to_be_bytes());
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(msg);
    out.extend_from_slice(&0u32.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = u32::try_from(body.len()).expect("len").to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(x: &str) -> Vec<u8> {
        let mut v = u32::try_from(x.len()).expect("len").to_be_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    #[test]
    fn frames_and_classifies_opens_and_renames() {
        let open = packet(3, 7, &[&s("/srv/a"), &0x1au32.to_be_bytes(), &4u32.to_be_bytes(), &0o644u32.to_be_bytes()]);
        let rename = packet(18, 8, &[&s("/srv/a"), &s("/etc/passwd")]);
        let mut f = Framer::default();
        let mut all = open.clone();
        all.extend(&rename);
        f.push(&all[..5]);
        assert_eq!(f.next_packet(), Ok(None));
        f.push(&all[5..]);
        let p1 = f.next_packet().expect("ok").expect("one");
        match classify(&p1).expect("open") {
            Op::Path { id: 7, path, write: true, mode: Some(0o644), .. } => assert_eq!(path, "/srv/a"),
            other => panic!("{other:?}"),
        }
        let p2 = f.next_packet().expect("ok").expect("two");
        match classify(&p2).expect("rename") {
            Op::Path { target: Some(t), write: true, .. } => assert_eq!(t, "/etc/passwd"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.next_packet(), Ok(None));
    }

    /// A server packet: length, type, id, then `rest`.
    fn reply(kind: u8, id: u32, rest: &[u8]) -> Vec<u8> {
        packet(kind, id, &[rest])
    }

    #[test]
    fn bytes_read_and_written_are_counted_per_file() {
        let mut files = Files::default();
        let mut replies = Replies::default();
        let mut seen = Vec::new();
        // Upload: open for writing (id 1) → handle "h1"; two writes; close.
        let open =
            packet(3, 1, &[&s("/srv/up.bin"), &0x1au32.to_be_bytes(), &4u32.to_be_bytes(), &0o640u32.to_be_bytes()]);
        let Op::Path { id, path, mode, write, .. } = classify(&open).expect("open") else { panic!() };
        files.opening(id, &path, mode, write);
        // The server's answers, cut at awkward places: version, handle, status.
        let mut stream = vec![0, 0, 0, 5, 2, 0, 0, 0, 3];
        stream.extend(reply(102, 1, &s("h1")));
        stream.extend(reply(101, 2, &[0; 12]));
        for piece in stream.chunks(3) {
            replies.push(piece, &mut seen);
        }
        assert_eq!(seen, [Reply::Handle { id: 1, handle: b"h1".to_vec() }, Reply::Other { id: 2 }]);
        for r in seen.drain(..) {
            files.reply(r);
        }
        for (id, n) in [(3u32, 1000usize), (4, 24)] {
            let w = packet(6, id, &[&s("h1"), &[0; 8], &s(&"x".repeat(n))]);
            match classify(&w).expect("write") {
                Op::OnHandle { name: "write", handle, len, .. } => files.wrote(handle, len),
                other => panic!("{other:?}"),
            }
        }
        // Download through another handle: a read answered by 300 bytes of DATA, split.
        files.opening(5, "/srv/down.txt", None, false);
        files.reply(Reply::Handle { id: 5, handle: b"h2".to_vec() });
        let read = packet(5, 6, &[&s("h2"), &[0; 8], &32768u32.to_be_bytes()]);
        match classify(&read).expect("read") {
            Op::OnHandle { id, name: "read", handle, len: 32768 } => files.reading(id, handle),
            other => panic!("{other:?}"),
        }
        let data = reply(103, 6, &s(&"y".repeat(300)));
        replies.push(&data[..7], &mut seen);
        replies.push(&data[7..200], &mut seen);
        replies.push(&data[200..], &mut seen);
        assert_eq!(seen, [Reply::Data { id: 6, len: 300 }]);
        for r in seen.drain(..) {
            files.reply(r);
        }
        let up = files.closed(b"h1").expect("h1");
        assert_eq!(
            (up.path.as_str(), up.written, up.read, up.mode, up.write),
            ("/srv/up.bin", 1024, 0, Some(0o640), true)
        );
        let down = files.closed(b"h2").expect("h2");
        assert_eq!((down.read, down.written), (300, 0));
        assert!(files.closed(b"h1").is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut f = Framer::default();
        f.push(&u32::MAX.to_be_bytes());
        assert!(f.next_packet().is_err());
        for cut in 0..20 {
            let p = packet(3, 1, &[&s("/srv/a"), &0u32.to_be_bytes()]);
            let _ = classify(p.get(..cut).unwrap_or_default());
        }
        let bad = packet(17, 1, &[&[0, 0, 0, 2, 0xff, 0xfe]]);
        assert!(classify(&bad).is_err(), "non-UTF-8 paths are refused");
        let d = denied(9, "no");
        assert_eq!(d.get(4), Some(&101));
    }
}
