//! Published checkpoints: what makes deleting the newest records (tail
//! truncation) detectable.
//!
//! The chain and its signed checkpoints prove that what is in the store was
//! not changed, but not that nothing was cut off its end: root on the
//! bastion can delete the newest records together with the newest
//! checkpoint and the rest still verifies. So every checkpoint is also
//! published where that root cannot silently take it back: one JSON line
//! per checkpoint appended to an anchors file (default `anchors.jsonl`
//! beside the store), which the operator ships off the host with their log
//! shipper, and the same line sent to syslog (`/dev/log`, facility auth,
//! tag `gatehouse`), which journald or rsyslog forward. `gatehouse verify
//! --anchors FILE` reads such lines (from the file, or from syslog output:
//! any line holding the JSON) and checks that the store still reaches the
//! newest validly signed checkpoint.
//!
//! Publishing never blocks the writer for long and never fails a commit: a
//! publisher that cannot write logs the problem (rate-limited) and goes on.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The tag syslog lines carry and the JSON field every anchor line has.
pub const MARKER: &str = "gatehouse_checkpoint";

/// One published checkpoint: the chain head at a time, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Layout of the line (1).
    pub gatehouse_checkpoint: u32,
    pub head_seq: u64,
    /// Hex.
    pub head_hash: String,
    pub time_us: i64,
    /// The signing key (hex).
    pub public_key: String,
    /// Ed25519 over `chain::checkpoint_message(head_seq, head_hash, time_us)`, hex.
    pub signature: String,
}

/// Where checkpoints are published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// Append-only JSON lines file.
    pub file: Option<PathBuf>,
    /// Also send each line to syslog (`/dev/log`).
    pub syslog: bool,
}

/// Publishes anchors as the writer signs checkpoints.
#[derive(Debug)]
pub struct Publisher {
    publish: Publish,
    last_complaint: Option<Instant>,
}

impl Publisher {
    pub fn new(publish: Publish) -> Self {
        Self { publish, last_complaint: None }
    }

    /// Appends the anchor to the file (fsynced) and sends it to syslog.
    pub fn publish(&mut self, a: &Anchor) {
        let Ok(line) = serde_json::to_string(a) else { return };
        if let Some(path) = self.publish.file.clone()
            && let Err(e) = append_line(&path, &line)
        {
            self.complain(&format!("anchors file {}: {e}", path.display()));
        }
        if self.publish.syslog
            && let Err(e) = send_syslog(&line)
        {
            // No syslog daemon on this host is common (containers): say so once an hour.
            self.complain(&format!("syslog (/dev/log): {e}"));
        }
    }

    fn complain(&mut self, what: &str) {
        if self.last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            self.last_complaint = Some(Instant::now());
            tracing::warn!(
                "cannot publish the audit checkpoint to {what}; tail truncation of the store is then detectable only from the anchors published elsewhere"
            );
        }
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

fn send_syslog(line: &str) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    // <37>: facility auth (4), severity notice (5).
    let msg = format!("<37>gatehouse[{}]: {MARKER} {line}", std::process::id());
    sock.send_to(msg.as_bytes(), "/dev/log").map(|_| ())
}

/// Reads published anchors: every line holding an anchor's JSON (a line of
/// the anchors file, or a syslog line that carries one). Other lines are
/// skipped; a line that claims to be an anchor and is not readable is an error.
pub fn read(path: &Path) -> Result<Vec<Anchor>, String> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(std::io::Read::take(f, 1 << 30)).lines().enumerate() {
        let line = line.map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
        if !line.contains(MARKER) {
            continue;
        }
        let Some(start) = line.find('{') else { continue };
        let a: Anchor = serde_json::from_str(line.get(start..).unwrap_or_default())
            .map_err(|e| format!("{} line {}: not a checkpoint anchor: {e}", path.display(), i + 1))?;
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_read_from_files_and_syslog_lines() {
        let dir = std::env::temp_dir().join(format!("gatehouse-anchors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("anchors.jsonl");
        let a = Anchor {
            gatehouse_checkpoint: 1,
            head_seq: 7,
            head_hash: "00".repeat(32),
            time_us: 5,
            public_key: "11".repeat(32),
            signature: "22".repeat(64),
        };
        let mut p = Publisher::new(Publish { file: Some(file.clone()), syslog: false });
        p.publish(&a);
        p.publish(&Anchor { head_seq: 9, ..a.clone() });
        let syslog = dir.join("syslog");
        std::fs::write(
            &syslog,
            format!(
                "Jan 1 00:00:00 bastion sshd[1]: unrelated\nJan 1 00:00:01 bastion gatehouse[42]: {MARKER} {}\n",
                serde_json::to_string(&a).unwrap()
            ),
        )
        .unwrap();
        let got = read(&file).unwrap();
        assert_eq!(got.iter().map(|a| a.head_seq).collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(read(&syslog).unwrap(), vec![a]);
        std::fs::write(&syslog, format!("{MARKER} {{\"head_seq\": \"x\"}}\n")).unwrap();
        assert!(read(&syslog).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
