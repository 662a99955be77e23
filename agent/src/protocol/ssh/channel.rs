//! One session channel: the client's requests, in order, to the backend's
//! channel (a held start waits here for its approval, and nothing of the
//! channel passes meanwhile), the backend's output back to the client
//! (masked when the rule says), and what is recorded of both: pty sessions
//! as terminal events (output, input, resizes: asciicast), exec output up
//! to `record_max_bytes`, every sftp operation, the exit status.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig};
use tracing::{info, warn};

use super::Shared;
use super::sftp::{self, Framer, Op};
use crate::audit::SshWhat;
use crate::policy::decide::Verdict;
use crate::policy::ssh::SshRequest;

/// What the client asked of a channel, in the order it asked.
pub enum Cmd {
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env(String, String),
    /// Start it; with a request to wait for when the start is held.
    Start(Start, Option<crate::approval::Waiting>),
    Data(Bytes),
    Eof,
    Close,
    Resize {
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
    },
    Signal(Sig),
    /// A refused start: said on stderr, then exit status 126.
    Refuse(String),
}

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

pub struct Chan {
    s: Arc<Shared>,
    id: u32,
    client: ChannelWriteHalf<russh::server::Msg>,
    up_read: ChannelReadHalf,
    up: ChannelWriteHalf<russh::client::Msg>,
    rx: tokio::sync::mpsc::Receiver<Cmd>,
    pty: bool,
    /// Bytes recorded of output and input (`o`, `i`), for the cap.
    recorded: u64,
    out_offset: u64,
    in_offset: u64,
    truncated: bool,
    started: bool,
    exit: Option<u32>,
    signal: Option<String>,
    /// SFTP: client packets being framed.
    sftp: Option<Framer>,
}

impl Chan {
    pub fn new(
        s: Arc<Shared>,
        client: Channel<russh::server::Msg>,
        upstream: Channel<russh::client::Msg>,
        rx: tokio::sync::mpsc::Receiver<Cmd>,
    ) -> Self {
        let id = client.id().number();
        // Client data reaches us through the handler: the channel's own
        // queue is dropped so it never fills.
        let (_, client) = client.split();
        let (up_read, up) = upstream.split();
        Self {
            s,
            id,
            client,
            up_read,
            up,
            rx,
            pty: false,
            recorded: 0,
            out_offset: 0,
            in_offset: 0,
            truncated: false,
            started: false,
            exit: None,
            signal: None,
            sftp: None,
        }
    }

    pub async fn run(mut self) {
        loop {
            let go_on = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.apply(c).await,
                    None => false,
                },
                msg = self.up_read.wait() => match msg {
                    Some(m) => self.backend_msg(m).await,
                    None => false,
                },
            };
            if !go_on {
                break;
            }
        }
        if self.started {
            let what = SshWhat::Exit {
                status: self.exit,
                signal: self.signal.take(),
                output_bytes: self.out_offset,
                input_bytes: self.in_offset,
                truncated: self.truncated,
            };
            self.s.record(self.id, what, Vec::new());
        }
        let _ = self.up.close().await;
        let _ = self.client.close().await;
    }

    /// Records bytes of a stream (`o` or `i`) within the cap.
    fn record_io(&mut self, stream: &str, data: &[u8]) {
        let offset = if stream == "o" { &mut self.out_offset } else { &mut self.in_offset };
        let at = *offset;
        *offset += data.len() as u64;
        // Exec input is not recorded (it may be a file being copied); pty input is.
        if stream == "i" && !self.pty {
            return;
        }
        let room = self.s.record_max().saturating_sub(self.recorded);
        if room == 0 {
            self.truncated = true;
            return;
        }
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        if n < data.len() {
            self.truncated = true;
        }
        self.recorded += n as u64;
        let mut kept = data.get(..n).unwrap_or_default().to_vec();
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

    async fn apply(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Pty { term, cols, rows, pw, ph, modes } => {
                self.pty = true;
                self.s.record(self.id, SshWhat::Pty { term: term.clone(), cols, rows }, Vec::new());
                self.up.request_pty(false, &term, cols, rows, pw, ph, &modes).await.is_ok()
            }
            Cmd::Env(k, v) => self.up.set_env(false, k, v).await.is_ok(),
            Cmd::Start(start, held) => self.start(start, held).await,
            Cmd::Data(d) => self.client_data(d).await,
            Cmd::Eof => self.up.eof().await.is_ok(),
            Cmd::Close => false,
            Cmd::Resize { cols, rows, pw, ph } => {
                self.s.record(self.id, SshWhat::Resize { cols, rows }, Vec::new());
                self.up.window_change(cols, rows, pw, ph).await.is_ok()
            }
            Cmd::Signal(sig) => self.up.signal(sig).await.is_ok(),
            Cmd::Refuse(why) => {
                self.say(&why).await;
                let _ = self.client.exit_status(126).await;
                let _ = self.client.eof().await;
                false
            }
        }
    }

    /// A line on the client's stderr.
    async fn say(&self, text: &str) {
        let line = format!("{text}\r\n");
        let _ = self.client.extended_data_bytes(1, Bytes::from(line)).await;
    }

    async fn start(&mut self, start: Start, held: Option<crate::approval::Waiting>) -> bool {
        if let Some(w) = held {
            let agent = &self.s.ctx.agent;
            self.say(&format!(
                "Gatehouse: waiting for approval by {} (request {}; `gatehouse approve {}`)",
                w.approvers, w.id, w.id
            ))
            .await;
            let state = w.clone().outcome(&agent.approvals, |t| agent.approval_transition(t)).await;
            if !matches!(state, crate::approval::State::Approved { .. }) {
                let why = w.refusal(&state);
                info!(channel = self.id, "held ssh request not approved: {why}");
                self.say(&format!("Gatehouse: not approved: {why}")).await;
                let _ = self.client.exit_status(126).await;
                let _ = self.client.eof().await;
                return false;
            }
            self.say(&format!("Gatehouse: request {} approved", w.id)).await;
        }
        self.started = true;
        let r = match start {
            Start::Shell => self.up.request_shell(false).await,
            Start::Exec(cmd) => self.up.exec(false, cmd).await,
            Start::Sftp => {
                self.sftp = Some(Framer::default());
                self.up.request_subsystem(false, "sftp").await
            }
            Start::Subsystem(name) => self.up.request_subsystem(false, name).await,
        };
        r.is_ok()
    }

    async fn client_data(&mut self, d: Bytes) -> bool {
        if !self.started {
            // Data before any start is not for a program: dropped.
            return true;
        }
        if self.sftp.is_some() {
            return self.sftp_data(&d).await;
        }
        self.record_io("i", &d);
        self.up.data_bytes(d).await.is_ok()
    }

    /// Frames client SFTP packets; forwards allowed ones, answers refused ones.
    async fn sftp_data(&mut self, d: &[u8]) -> bool {
        let Some(f) = self.sftp.as_mut() else { return false };
        f.push(d);
        loop {
            let packet = match self.sftp.as_mut().map(Framer::next_packet) {
                Some(Ok(Some(p))) => p,
                Some(Ok(None)) | None => return true,
                Some(Err(e)) => {
                    warn!(channel = self.id, error = %e, "sftp stream refused");
                    self.say(&format!("Gatehouse: {e}")).await;
                    return false;
                }
            };
            let verdict = match sftp::classify(&packet) {
                Ok(op) => self.decide_sftp(&op),
                Err(e) => {
                    // The request id cannot be trusted: close the channel.
                    warn!(channel = self.id, error = %e, "malformed sftp packet: channel closed");
                    self.s.record(
                        self.id,
                        SshWhat::Sftp {
                            op: "malformed".into(),
                            path: String::new(),
                            target: None,
                            size: None,
                            mode: None,
                            decision: "deny".into(),
                            reason: Some(e.to_string()),
                        },
                        Vec::new(),
                    );
                    return false;
                }
            };
            match verdict {
                Ok(()) => {
                    if self.up.data_bytes(Bytes::from(packet)).await.is_err() {
                        return false;
                    }
                }
                Err((id, why)) => {
                    let reply = sftp::denied(id, &format!("Gatehouse: {why}"));
                    self.s.down_bytes.fetch_add(reply.len() as u64, Ordering::Relaxed);
                    if self.client.data_bytes(Bytes::from(reply)).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Decides and records one SFTP operation: `Err((id, why))` refuses it.
    fn decide_sftp(&self, op: &Op<'_>) -> Result<(), (u32, String)> {
        let (id, name, path, target, write, mode, resolve_only) = match op {
            Op::Pass { name, .. } if *name == "write" || *name == "read" => return Ok(()),
            Op::Pass { name, .. } => {
                self.s.record(self.id, sftp_rec(name, "", None, None, "allow", None), Vec::new());
                return Ok(());
            }
            Op::Unknown { id, name } => {
                let why = format!("sftp operation {name} is not supported");
                self.s.record(self.id, sftp_rec(name, "", None, None, "deny", Some(&why)), Vec::new());
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
            let d = self.s.decide(&SshRequest::Sftp { path: p, write });
            if d.verdict != Verdict::Allow {
                refusal = Some(d.reason().into_owned());
                break;
            }
        }
        let decision = if refusal.is_some() { "deny" } else { "allow" };
        self.s.record(self.id, sftp_rec(name, path, target, mode, decision, refusal.as_deref()), Vec::new());
        match refusal {
            None => Ok(()),
            Some(why) => Err((id, why)),
        }
    }

    async fn backend_msg(&mut self, m: ChannelMsg) -> bool {
        match m {
            ChannelMsg::Data { data } => self.output(None, data).await,
            ChannelMsg::ExtendedData { data, ext } => self.output(Some(ext), data).await,
            ChannelMsg::Eof => self.client.eof().await.is_ok(),
            ChannelMsg::Close => false,
            ChannelMsg::ExitStatus { exit_status } => {
                self.exit = Some(exit_status);
                self.client.exit_status(exit_status).await.is_ok()
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                self.signal = Some(format!("{signal_name:?}"));
                true
            }
            _ => true,
        }
    }

    /// Backend output to the client: masked (when the rule says; not SFTP,
    /// whose bytes are a protocol) and recorded.
    async fn output(&mut self, ext: Option<u32>, data: Bytes) -> bool {
        let data = match &self.s.ctx.mask {
            Some(profile) if self.sftp.is_none() => {
                let mut out = Vec::with_capacity(data.len());
                let mut counts = crate::mask::Counts::default();
                match profile.scan(&data, &mut out, &mut counts) {
                    crate::mask::MaskOutput::Written => Bytes::from(out),
                    crate::mask::MaskOutput::Null => Bytes::from_static(b"****"),
                    crate::mask::MaskOutput::Unchanged => data,
                }
            }
            _ => data,
        };
        if self.sftp.is_none() {
            self.record_io("o", &data);
        }
        self.s.down_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        match ext {
            None => self.client.data_bytes(data).await.is_ok(),
            Some(e) => self.client.extended_data_bytes(e, data).await.is_ok(),
        }
    }
}

fn sftp_rec(
    op: &str,
    path: &str,
    target: Option<&str>,
    mode: Option<u32>,
    decision: &str,
    reason: Option<&str>,
) -> SshWhat {
    SshWhat::Sftp {
        op: op.into(),
        path: path.into(),
        target: target.map(Into::into),
        size: None,
        mode,
        decision: decision.into(),
        reason: reason.map(Into::into),
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
