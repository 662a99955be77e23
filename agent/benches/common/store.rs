//! A fresh audit store in a directory of its own, for the audit benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse::audit::{self, Audit, AuditWriter, Mode, Options};

/// Opens a store in a new `<temp>/gh-bench-<name>-<pid>` (emptied first),
/// without fsync; the caller removes the directory when done.
#[expect(clippy::expect_used, reason = "a benchmark harness: a store that cannot open ends it")]
pub fn open(name: &str, mode: Mode, checkpoint_every: Duration) -> (PathBuf, Audit, AuditWriter) {
    let dir = std::env::temp_dir().join(format!("gh-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let opts = Options { mode, fsync: false, checkpoint_every, retention_days: None, publish: Default::default() };
    let (audit, writer) = audit::open(&dir.join("audit.db"), &dir.join("host.key"), &opts).expect("open");
    (dir, audit, writer)
}
