//! One session channel: the client's requests, in order, to the backend's
//! channel (a held start waits here for its approval, and nothing of the
//! channel passes meanwhile), the backend's output back to the client
//! (masked when the rule says), and what is recorded of both: pty sessions
//! as terminal events (output, input, resizes: asciicast), exec output up
//! to `record_max_bytes`, every sftp operation, the exit status.
//!
//! The client's commands reach a channel through its [`super::inbox::Inbox`]
//! (see there for when the connection waits on a channel).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
pub use super::inbox::Cmd;
use super::inbox::{CONNECTION_BUFFER, HELD_BUFFER, Queue};
use super::masking::{HOLD, OutputMasker};
use super::sftp::{self, Framer, Op};
use crate::audit::SshWhat;
use crate::policy::decide::Verdict;
use crate::policy::ssh::SshRequest;

#[derive(Debug, Clone)]
pub enum Start {
    Shell,
    Exec(String),
    Sftp,
    Subsystem(String),
}

/// `scp -t PATH` (upload) or `scp -f PATH` (download), as legacy scp runs it.
pub fn legacy_scp(cmd: &str) -> Option<(String, bool)> {
    let mut words = cmd.split_ascii_whitespace();
    if words.next()? != "scp" {
        return None;
    }
    let mut write = None;
    let mut path = None;
    for w in words {
        match w {
            "--" => {}
            _ if w.starts_with('-') => {
                if w.contains('t') {
                    write = Some(true);
                } else if w.contains('f') && write.is_none() {
                    write = Some(false);
                }
            }
            _ => path = Some(w.to_owned()),
        }
    }
    Some((path?, write?))
}

/// How long a channel the client closed waits for the host's last words.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// One session channel: two halves, so that neither direction waits on
/// the other (the client's input may wait for the host's window while the
/// host's output waits for the client's).
pub struct Chan {
    common: Arc<Common>,
    input: Input,
    output: Output,
}

/// What both halves of a channel share.
struct Common {
    s: Arc<Shared>,
    id: u32,
    q: Arc<Queue>,
    client: ChannelWriteHalf<russh::server::Msg>,
    /// Cancelled when either half ends: the other follows.
    done: CancellationToken,
    pty: AtomicBool,
    /// The channel speaks SFTP: output is neither masked nor recorded as text.
    sftp: AtomicBool,
    rec: std::sync::Mutex<Rec>,
    /// SFTP: open files and what went through them.
    files: std::sync::Mutex<sftp::Files>,
}

/// What is recorded of a channel's streams, for the cap and the exit record.
#[derive(Default)]
struct Rec {
    /// Bytes recorded of output and input (`o`, `i`).
    recorded: u64,
    out_offset: u64,
    in_offset: u64,
    truncated: bool,
}

/// The client's commands, in order, to the host's channel.
struct Input {
    up: ChannelWriteHalf<russh::client::Msg>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    started: bool,
    /// The client's pty request, kept until the start says whether it is given.
    pty: Option<Cmd>,
    /// The started program has a terminal (a later pty request is passed on).
    terminal: bool,
    /// SFTP: client packets being framed.
    sftp: Option<Framer>,
}

/// The host's output and status to the client.
struct Output {
    up_read: ChannelReadHalf,
    /// Output through the rule's masking profile (stdout, stderr), when it has one.
    masks: Option<[OutputMasker; 2]>,
    /// When held-back output is flushed if no more comes.
    flush_at: Option<tokio::time::Instant>,
    /// SFTP: the server's answers, followed for the files' byte counts.
    replies: sftp::Replies,
    exit: Option<u32>,
    signal: Option<String>,
    /// The host sent EOF; not yet passed on.
    eof: bool,
}

impl Chan {
    pub fn new(
        s: Arc<Shared>,
        client: Channel<russh::server::Msg>,
        upstream: Channel<russh::client::Msg>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        q: Arc<Queue>,
    ) -> Self {
        let id = client.id().number();
        // Client data reaches us through the handler: the channel's own
        // queue is dropped so it never fills.
        let (_, client) = client.split();
        let (up_read, up) = upstream.split();
        let masks = s.ctx.mask.clone().map(|p| [OutputMasker::new(p.clone()), OutputMasker::new(p)]);
        let common = Arc::new(Common {
            s,
            id,
            q,
            client,
            done: CancellationToken::new(),
            pty: AtomicBool::new(false),
            sftp: AtomicBool::new(false),
            rec: std::sync::Mutex::new(Rec::default()),
            files: std::sync::Mutex::new(sftp::Files::default()),
        });
        Self {
            common,
            input: Input { up, rx, started: false, pty: None, terminal: false, sftp: None },
            output: Output {
                up_read,
                masks,
                flush_at: None,
                replies: sftp::Replies::default(),
                exit: None,
                signal: None,
                eof: false,
            },
        }
    }

    pub async fn run(self) {
        let Self { common: c, mut input, mut output } = self;
        tokio::join!(input.run(&c), output.run(&c));
        // What the channel was sent after it stopped is dropped with it.
        c.q.abandon.cancel();
        input.rx.close();
        c.q.drained.notify_one();
        if input.started {
            let what = {
                let r = crate::live::lock(&c.rec);
                SshWhat::Exit {
                    status: output.exit,
                    signal: output.signal.take(),
                    output_bytes: r.out_offset,
                    input_bytes: r.in_offset,
                    truncated: r.truncated,
                }
            };
            c.s.record(c.id, what, Vec::new());
        }
        let _ = input.up.close().await;
        let _ = c.client.close().await;
    }
}

impl Common {
    /// Records bytes of a stream (`o` or `i`) within the cap.
    fn record_io(&self, stream: &str, data: &[u8]) {
        let pty = self.pty.load(Ordering::Relaxed);
        let (at, kept) = {
            let mut r = crate::live::lock(&self.rec);
            let offset = if stream == "o" { &mut r.out_offset } else { &mut r.in_offset };
            let at = *offset;
            *offset += data.len() as u64;
            // Exec input is not recorded (it may be a file being copied); pty input is.
            if stream == "i" && !pty {
                return;
            }
            let room = self.s.record_max().saturating_sub(r.recorded);
            if room == 0 {
                r.truncated = true;
                return;
            }
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            if n < data.len() {
                r.truncated = true;
            }
            r.recorded += n as u64;
            (at, data.get(..n).unwrap_or_default().to_vec())
        };
        let mut kept = kept;
        // Output was masked before it got here; typed input is masked for the record only.
        if stream == "i"
            && let Some(profile) = &self.s.ctx.mask
        {
            let mut out = Vec::with_capacity(kept.len());
            let mut counts = crate::mask::Counts::default();
            match profile.scan(&kept, &mut out, &mut counts) {
                crate::mask::MaskOutput::Written => kept = out,
                crate::mask::MaskOutput::Null => kept = b"****".to_vec(),
                crate::mask::MaskOutput::Unchanged => {}
            }
        }
        self.s.record(self.id, SshWhat::Io { stream: stream.into(), offset: at }, kept);
    }

    /// A line on the client's stderr.
    async fn say(&self, text: &str) {
        let line = format!("{text}\r\n");
        let _ = self.client.extended_data_bytes(1, Bytes::from(line)).await;
    }

    /// Tells the client a start did not happen: exit status 126.
    async fn refuse(&self, text: &str) {
        self.say(text).await;
        let _ = self.client.exit_status(126).await;
        let _ = self.client.eof().await;
    }
}

impl Input {
    async fn run(&mut self, c: &Common) {
        loop {
            let go_on = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        c.q.took(cmd.cost());
                        // A write to a host channel that is gone may wait for ever: the output half's end stops it.
                        tokio::select! {
                            go = self.apply(c, cmd) => go,
                            () = c.done.cancelled() => false,
                        }
                    }
                    None => false,
                },
                () = c.q.abandon.cancelled() => {
                    if c.q.overflowed.load(Ordering::SeqCst) {
                        warn!(channel = c.id, "ssh channel closed: its client sent more than the host could take");
                        c.say(&format!(
                            "Gatehouse: channel closed: more than {} MiB sent that the host could not take yet \
                             (or {} MiB over all channels of this connection)",
                            HELD_BUFFER >> 20,
                            CONNECTION_BUFFER >> 20
                        ))
                        .await;
                    }
                    false
                }
                () = c.done.cancelled() => false,
            };
            if !go_on {
                break;
            }
        }
        c.done.cancel();
    }

    /// Applies one client command; `false` ends the channel. A write the
    /// host's channel refuses (it has closed) does not: the output half
    /// still has the host's last words (exit status, close) to pass on, and
    /// ends the channel when they are through.
    async fn apply(&mut self, c: &Common, cmd: Cmd) -> bool {
        match cmd {
            pty @ Cmd::Pty { .. } => {
                if !self.started {
                    self.pty = Some(pty);
                } else if self.terminal {
                    self.request_pty(c, pty).await;
                }
            }
            Cmd::Env(k, v) => {
                let _ = self.up.set_env(false, k, v).await;
            }
            Cmd::Start(start, held, terminal) => {
                self.terminal = terminal;
                return self.start(c, start, held).await;
            }
            Cmd::Data(d) => return self.client_data(c, d).await,
            Cmd::Eof => {
                let _ = self.up.eof().await;
            }
            Cmd::Close => {
                // The client may close once both sides sent EOF, before the
                // host's exit status (which follows its EOF) is through: close
                // the host's channel and let the output half pass on what the
                // host still says, until the host closes (or 2 s pass).
                let _ = self.up.close().await;
                tokio::time::sleep(CLOSE_GRACE).await;
                return false;
            }
            Cmd::Resize { cols, rows, pw, ph } => {
                c.s.record(c.id, SshWhat::Resize { cols, rows }, Vec::new());
                let _ = self.up.window_change(cols, rows, pw, ph).await;
            }
            Cmd::Signal(sig) => {
                let _ = self.up.signal(sig).await;
            }
            Cmd::Refuse(why) => {
                c.refuse(&why).await;
                return false;
            }
        }
        true
    }

    async fn start(&mut self, c: &Common, start: Start, held: Option<crate::approval::Waiting>) -> bool {
        if let Some(w) = held {
            let desk = &c.s.ctx.svc.desk;
            c.say(&format!(
                "Gatehouse: waiting for approval by {} (request {}; `gatehouse approve {}`)",
                w.approvers, w.id, w.id
            ))
            .await;
            // Meanwhile what the client sends queues up (see `Inbox::send`).
            let state = tokio::select! {
                s = w.clone().outcome(desk.registry(), |t| desk.transition(t)) => s,
                () = c.q.abandon.cancelled() => {
                    desk.withdraw(w.id);
                    if c.q.overflowed.load(Ordering::SeqCst) {
                        let why = format!(
                            "more than {} MiB sent to a command waiting for approval (or {} MiB over all \
                             channels of this connection): request {} withdrawn",
                            HELD_BUFFER >> 20,
                            CONNECTION_BUFFER >> 20,
                            w.id
                        );
                        info!(channel = c.id, "held ssh request abandoned: {why}");
                        c.refuse(&format!("Gatehouse: refused: {why}")).await;
                    }
                    return false;
                }
                () = c.done.cancelled() => return false,
            };
            c.q.held.store(false, Ordering::SeqCst);
            c.q.drained.notify_one();
            if !matches!(state, crate::approval::State::Approved { .. }) {
                let why = w.refusal(&state);
                info!(channel = c.id, "held ssh request not approved: {why}");
                c.refuse(&format!("Gatehouse: not approved: {why}")).await;
                return false;
            }
            c.say(&format!("Gatehouse: request {} approved", w.id)).await;
        }
        self.started = true;
        if let Some(pty) = self.pty.take() {
            if self.terminal {
                self.request_pty(c, pty).await;
            } else {
                info!(channel = c.id, "no terminal given: the rules allow this command, not a shell");
            }
        }
        let r = match start {
            Start::Shell => self.up.request_shell(false).await,
            Start::Exec(cmd) => self.up.exec(false, cmd).await,
            Start::Sftp => {
                self.sftp = Some(Framer::default());
                c.sftp.store(true, Ordering::SeqCst);
                self.up.request_subsystem(false, "sftp").await
            }
            Start::Subsystem(name) => self.up.request_subsystem(false, name).await,
        };
        if let Err(e) = r {
            warn!(channel = c.id, error = %e, "the host's channel refused the start");
        }
        true
    }

    async fn request_pty(&mut self, c: &Common, pty: Cmd) {
        if let Cmd::Pty { term, cols, rows, pw, ph, modes } = pty {
            c.pty.store(true, Ordering::Relaxed);
            c.s.record(c.id, SshWhat::Pty { term: term.clone(), cols, rows }, Vec::new());
            let _ = self.up.request_pty(false, &term, cols, rows, pw, ph, &modes).await;
        }
    }

    async fn client_data(&mut self, c: &Common, d: Bytes) -> bool {
        if !self.started {
            // Data before any start is not for a program: dropped.
            return true;
        }
        if self.sftp.is_some() {
            return self.sftp_data(c, &d).await;
        }
        c.record_io("i", &d);
        let _ = self.up.data_bytes(d).await;
        true
    }

    /// Frames client SFTP packets; forwards allowed ones, answers refused ones.
    async fn sftp_data(&mut self, c: &Common, d: &[u8]) -> bool {
        let Some(f) = self.sftp.as_mut() else { return false };
        f.push(d);
        loop {
            let packet = match self.sftp.as_mut().map(Framer::next_packet) {
                Some(Ok(Some(p))) => p,
                Some(Ok(None)) | None => return true,
                Some(Err(e)) => {
                    warn!(channel = c.id, error = %e, "sftp stream refused");
                    c.say(&format!("Gatehouse: {e}")).await;
                    return false;
                }
            };
            let verdict = match sftp::classify(&packet) {
                Ok(op) => decide_sftp(c, &op),
                Err(e) => {
                    // The request id cannot be trusted: close the channel.
                    warn!(channel = c.id, error = %e, "malformed sftp packet: channel closed");
                    c.s.record(
                        c.id,
                        sftp_rec("malformed", "", None, None, crate::audit::Verdict::Deny, Some(&e.to_string())),
                        Vec::new(),
                    );
                    return false;
                }
            };
            match verdict {
                Ok(()) => {
                    let _ = self.up.data_bytes(Bytes::from(packet)).await;
                }
                Err((id, why)) => {
                    let reply = sftp::denied(id, &format!("Gatehouse: {why}"));
                    c.s.down_bytes.fetch_add(reply.len() as u64, Ordering::Relaxed);
                    if c.client.data_bytes(Bytes::from(reply)).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Decides and records one SFTP operation: `Err((id, why))` refuses it.
fn decide_sftp(c: &Common, op: &Op<'_>) -> Result<(), (u32, String)> {
    let (id, name, path, target, write, mode, resolve_only) = match op {
        Op::OnHandle { id, name: "read", handle, .. } => {
            crate::live::lock(&c.files).reading(*id, handle);
            return Ok(());
        }
        Op::OnHandle { name: "write", handle, len, .. } => {
            crate::live::lock(&c.files).wrote(handle, *len);
            return Ok(());
        }
        Op::OnHandle { handle, .. } => {
            let closed = crate::live::lock(&c.files).closed(handle);
            let what = match closed {
                Some(f) => SshWhat::Sftp {
                    op: "close".into(),
                    path: f.path,
                    target: None,
                    size: Some(if f.write { f.written } else { f.read }),
                    mode: f.mode,
                    decision: crate::audit::Verdict::Allow,
                    reason: None,
                    read_bytes: Some(f.read),
                    written_bytes: Some(f.written),
                },
                None => sftp_rec("close", "", None, None, crate::audit::Verdict::Allow, None),
            };
            c.s.record(c.id, what, Vec::new());
            return Ok(());
        }
        Op::Pass { name, .. } => {
            c.s.record(c.id, sftp_rec(name, "", None, None, crate::audit::Verdict::Allow, None), Vec::new());
            return Ok(());
        }
        Op::Unknown { id, name } => {
            let why = format!("sftp operation {name} is not supported");
            c.s.record(c.id, sftp_rec(name, "", None, None, crate::audit::Verdict::Deny, Some(&why)), Vec::new());
            return Err((*id, why));
        }
        Op::HandleWrite { id, name } => (*id, *name, "", None, true, None, false),
        Op::Path { id, name, path, target, write, mode, resolve_only } => {
            (*id, name.as_ref(), path.as_ref(), target.as_deref(), *write, *mode, *resolve_only)
        }
    };
    let mut refusal = None;
    // realpath only resolves a name: the sftp access (decided at the
    // subsystem's start) is enough. A write through a handle is decided
    // as a write of the root: only an unrestricted read-write rule allows it.
    let checks: Vec<&str> = match op {
        _ if resolve_only => vec![],
        Op::HandleWrite { .. } => vec!["/"],
        _ => std::iter::once(path).chain(target).collect(),
    };
    for p in checks {
        let d = c.s.decide(&SshRequest::Sftp { path: p, write });
        if d.verdict != Verdict::Allow {
            refusal = Some(d.reason().into_owned());
            break;
        }
    }
    let decision = if refusal.is_some() { crate::audit::Verdict::Deny } else { crate::audit::Verdict::Allow };
    c.s.record(c.id, sftp_rec(name, path, target, mode, decision, refusal.as_deref()), Vec::new());
    if refusal.is_none() && name.starts_with("open-") {
        crate::live::lock(&c.files).opening(id, path, mode, write);
    }
    match refusal {
        None => Ok(()),
        Some(why) => Err((id, why)),
    }
}

impl Output {
    async fn run(&mut self, c: &Common) {
        loop {
            let flush_at = self.flush_at;
            let go_on = tokio::select! {
                msg = self.up_read.wait() => match msg {
                    Some(m) => self.backend_msg(c, m).await,
                    None => false,
                },
                () = async { if let Some(t) = flush_at { tokio::time::sleep_until(t).await } }, if flush_at.is_some() => {
                    self.flush_masked(c).await
                }
                () = c.done.cancelled() => false,
            };
            if !go_on {
                break;
            }
        }
        c.done.cancel();
    }

    async fn backend_msg(&mut self, c: &Common, m: ChannelMsg) -> bool {
        match m {
            ChannelMsg::Data { data } => self.output(c, None, data).await,
            ChannelMsg::ExtendedData { data, ext } => self.output(c, Some(ext), data).await,
            // The host's EOF is passed on with its exit status (or its close):
            // a client that has sent its own EOF closes the channel on ours,
            // and an exit status sent after that would be lost.
            ChannelMsg::Eof if self.exit.is_some() => self.flush_masked(c).await && c.client.eof().await.is_ok(),
            ChannelMsg::Eof => {
                self.eof = true;
                self.flush_masked(c).await
            }
            ChannelMsg::Close => {
                self.flush_masked(c).await;
                if self.eof {
                    let _ = c.client.eof().await;
                }
                false
            }
            ChannelMsg::ExitStatus { exit_status } => {
                self.exit = Some(exit_status);
                self.flush_masked(c).await
                    && c.client.exit_status(exit_status).await.is_ok()
                    && (!std::mem::take(&mut self.eof) || c.client.eof().await.is_ok())
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                self.signal = Some(format!("{signal_name:?}"));
                true
            }
            _ => true,
        }
    }

    /// Backend output to the client: masked as a stream (when the rule
    /// says; not SFTP, whose bytes are a protocol) and recorded.
    async fn output(&mut self, c: &Common, ext: Option<u32>, data: Bytes) -> bool {
        if ext.is_none() && c.sftp.load(Ordering::SeqCst) {
            let mut seen = Vec::new();
            self.replies.push(&data, &mut seen);
            let mut files = crate::live::lock(&c.files);
            for r in seen {
                files.reply(r);
            }
        }
        let data = match self.masks.as_mut() {
            Some([out, err]) if !c.sftp.load(Ordering::SeqCst) => {
                let m = if ext.is_some() { err } else { out };
                let mut masked = Vec::with_capacity(data.len());
                m.push(&data, &mut masked);
                if m.holding() {
                    self.flush_at = Some(tokio::time::Instant::now() + HOLD);
                }
                Bytes::from(masked)
            }
            _ => data,
        };
        write_out(c, ext, data).await
    }

    /// Sends what the maskers held back (the host went quiet, or is done).
    async fn flush_masked(&mut self, c: &Common) -> bool {
        self.flush_at = None;
        let Some([out, err]) = self.masks.as_mut() else { return true };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        out.flush(&mut o);
        err.flush(&mut e);
        write_out(c, None, Bytes::from(o)).await && write_out(c, Some(1), Bytes::from(e)).await
    }
}

/// Records (not SFTP) and writes output to the client. While the write
/// waits (for the client's window), the connection must not wait on this
/// channel's queue: see [`Inbox::send`].
async fn write_out(c: &Common, ext: Option<u32>, data: Bytes) -> bool {
    if data.is_empty() {
        return true;
    }
    if !c.sftp.load(Ordering::SeqCst) {
        c.record_io("o", &data);
    }
    c.s.down_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    c.q.writing.store(true, Ordering::SeqCst);
    c.q.drained.notify_one();
    let ok = match ext {
        None => c.client.data_bytes(data).await.is_ok(),
        Some(e) => c.client.extended_data_bytes(e, data).await.is_ok(),
    };
    c.q.writing.store(false, Ordering::SeqCst);
    ok
}

fn sftp_rec(
    op: &str,
    path: &str,
    target: Option<&str>,
    mode: Option<u32>,
    decision: crate::audit::Verdict,
    reason: Option<&str>,
) -> SshWhat {
    SshWhat::Sftp {
        op: op.into(),
        path: path.into(),
        target: target.map(Into::into),
        size: None,
        mode,
        decision,
        reason: reason.map(Into::into),
        read_bytes: None,
        written_bytes: None,
    }
}

/// A `direct-tcpip` channel a rule allowed: bytes both ways, counted.
pub async fn tunnel(s: Arc<Shared>, client: Channel<russh::server::Msg>, upstream: Channel<russh::client::Msg>) {
    let (mut cr, cw) = client.split();
    let (mut ur, uw) = upstream.split();
    loop {
        tokio::select! {
            m = cr.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    s.up_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if uw.data_bytes(data).await.is_err() { break }
                }
                Some(ChannelMsg::Eof) => { let _ = uw.eof().await; }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            m = ur.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    s.down_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if cw.data_bytes(data).await.is_err() { break }
                }
                Some(ChannelMsg::Eof) => { let _ = cw.eof().await; }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = uw.close().await;
    let _ = cw.close().await;
}

#[cfg(test)]
mod tests {
    use super::legacy_scp;

    #[test]
    fn legacy_scp_command_lines() {
        assert_eq!(legacy_scp("scp -t /srv/x"), Some(("/srv/x".into(), true)));
        assert_eq!(legacy_scp("scp -v -f -- /etc/passwd"), Some(("/etc/passwd".into(), false)));
        assert_eq!(legacy_scp("scp -r -d -t /srv"), Some(("/srv".into(), true)));
        assert_eq!(legacy_scp("ls -t"), None);
        assert_eq!(legacy_scp("scp /x"), None);
    }
}
