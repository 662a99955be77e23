//! A WebSocket upgrade: bytes relayed both ways as they are (save copies of
//! a held credential from the backend, overwritten: [`Blanker`]), and every
//! frame recorded (`ws_frame` records: direction, opcode, length, and the
//! payload, unmasked from the client's XOR key, up to `record_max_bytes`).
//!
//! [`FrameReader`] is sans-IO: it follows the frames in a byte stream
//! without holding more than one frame header and the recorded part of a
//! payload.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::body::Needles;

use crate::audit::{Audit, Direction, Event, WsFrame};
use crate::types::SessionId;

/// One frame, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1 (permessage-deflate).
    pub compressed: bool,
    pub opcode: u8,
    pub len: u64,
    /// The payload's first bytes (unmasked), up to the cap.
    pub payload: Vec<u8>,
}

/// Follows frames through a stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: Vec<u8>,
    /// The frame whose payload is being read: (frame, bytes of payload left, key, position).
    current: Option<(Frame, u64, Option<[u8; 4]>, u64)>,
}

impl FrameReader {
    /// Feeds bytes; returns the frames that ended in them.
    pub fn feed(&mut self, mut input: &[u8], cap: usize) -> Vec<Frame> {
        let mut done = Vec::new();
        while !input.is_empty() {
            if let Some((frame, left, key, pos)) = &mut self.current {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(input.len());
                let (part, rest) = input.split_at(n);
                let room = cap.saturating_sub(frame.payload.len()).min(part.len());
                for (i, b) in part.iter().take(room).enumerate() {
                    let k = key.map_or(0, |k| k.get(((*pos + i as u64) % 4) as usize).copied().unwrap_or(0));
                    frame.payload.push(b ^ k);
                }
                *pos += n as u64;
                *left -= n as u64;
                input = rest;
                if *left == 0
                    && let Some((f, ..)) = self.current.take()
                {
                    done.push(f);
                }
                continue;
            }
            let (&b, rest) = input.split_first().unwrap_or((&0, &[]));
            self.header.push(b);
            input = rest;
            if let Some((frame, len, key)) = parse_header(&self.header) {
                self.header.clear();
                if len == 0 {
                    done.push(frame);
                } else {
                    self.current = Some((frame, len, key, 0));
                }
            }
        }
        done
    }
}

/// A complete frame header: the frame (without payload), payload length, mask key.
fn parse_header(h: &[u8]) -> Option<(Frame, u64, Option<[u8; 4]>)> {
    let b0 = *h.first()?;
    let b1 = *h.get(1)?;
    let masked = b1 & 0x80 != 0;
    let (len, at) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*h.get(2)?, *h.get(3)?])), 4),
        127 => {
            let b: [u8; 8] = h.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let key = if masked {
        let k: [u8; 4] = h.get(at..at + 4)?.try_into().ok()?;
        Some(k)
    } else {
        None
    };
    let need = at + if masked { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    Some((
        Frame { fin: b0 & 0x80 != 0, compressed: b0 & 0x40 != 0, opcode: b0 & 0x0f, len, payload: Vec::new() },
        len,
        key,
    ))
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        0 => "continuation",
        1 => "text",
        2 => "binary",
        8 => "close",
        9 => "ping",
        10 => "pong",
        _ => "reserved",
    }
}

/// The backend's side of an upgraded connection on a backend that holds a
/// credential: every copy of it (in each form `Needles` knows) is
/// overwritten with `*` where it lies, so frame lengths stay as they were.
/// Bytes at the end of a read that begin a copy wait for the next read (or
/// for [`HOLD`] to pass without one), so a copy split across two reads is
/// still found whole. On a WebSocket the data frames' payloads are also
/// searched as one text, so a copy split across two frames (a fragmented
/// message, or two messages) is found across the frame header between its
/// halves. Sans-IO.
#[derive(Debug)]
pub struct Blanker {
    needles: Needles,
    carry: Vec<u8>,
    /// WebSocket only: which bytes of `carry` are data-frame payload, and
    /// where the frames of the stream are.
    frames: Option<(Payloads, Vec<bool>)>,
    pub hits: u64,
}

/// Where the payload bytes of data frames (text, binary, continuation) lie
/// in a server's WebSocket stream. A masked frame (servers must not mask)
/// or a compressed one (the agent drops the extension) is left out.
#[derive(Debug, Default)]
struct Payloads {
    header: Vec<u8>,
    left: u64,
    data: bool,
}

impl Payloads {
    /// Appends, for each byte of `input`, whether it is data-frame payload.
    fn classify(&mut self, input: &[u8], flags: &mut Vec<bool>) {
        for &b in input {
            if self.left > 0 {
                self.left -= 1;
                flags.push(self.data);
                continue;
            }
            self.header.push(b);
            flags.push(false);
            if let Some((frame, len, key)) = parse_header(&self.header) {
                self.header.clear();
                self.left = len;
                self.data = key.is_none() && frame.opcode <= 2 && !frame.compressed;
            }
        }
    }
}

/// How long bytes that may begin a held credential wait for the rest.
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(20);

impl Blanker {
    /// `websocket`: the stream is WebSocket frames (else opaque bytes: SPDY, tcp).
    pub fn new(needles: Needles, websocket: bool) -> Self {
        Self { needles, carry: Vec::new(), frames: websocket.then(|| (Payloads::default(), Vec::new())), hits: 0 }
    }

    /// Bytes read from the backend in; what may go to the client now.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.carry);
        out.extend_from_slice(input);
        self.hits += self.needles.blank_in_place(&mut out);
        let mut keep = self.needles.partial_tail(&out);
        if let Some((payloads, carried)) = &mut self.frames {
            let mut flags = std::mem::take(carried);
            payloads.classify(input, &mut flags);
            // The payload bytes alone, as one text: a copy across a frame header.
            let at: Vec<usize> = flags.iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| i).collect();
            let mut view: Vec<u8> = at.iter().filter_map(|&i| out.get(i).copied()).collect();
            let hits = self.needles.blank_in_place(&mut view);
            if hits > 0 {
                self.hits += hits;
                for (&i, &b) in at.iter().zip(&view) {
                    if let Some(o) = out.get_mut(i) {
                        *o = b;
                    }
                }
            }
            // Payload that may begin a copy waits, with whatever follows it (the next frame's header).
            let k = self.needles.partial_tail(&view);
            if let Some(&first) = at.len().checked_sub(k).filter(|_| k > 0).and_then(|j| at.get(j)) {
                keep = keep.max(out.len() - first);
            }
            *carried = flags.split_off(flags.len() - keep);
        }
        self.carry = out.split_off(out.len() - keep);
        out
    }

    /// The bytes held back, once nothing more is coming soon (or at all).
    pub fn flush(&mut self) -> Vec<u8> {
        if let Some((_, carried)) = &mut self.frames {
            carried.clear();
        }
        std::mem::take(&mut self.carry)
    }

    pub fn holding(&self) -> bool {
        !self.carry.is_empty()
    }
}

/// Relays the upgraded connection in its own task until either side
/// closes or the session is cut (`cut`: max_session, a revoked grant, shutdown).
/// `frames`: the upgrade is to WebSocket, whose frames are recorded; any
/// other protocol (SPDY, as older kubectl speaks for exec) is relayed unread.
/// `scrub`: the backend holds a credential, which it could echo (the
/// upgrade request carried it): see [`Blanker`].
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of one upgraded exchange")]
pub(super) fn relay(
    audit: Audit,
    session: SessionId,
    exchange: u64,
    cap: usize,
    (client, server): (OnUpgrade, OnUpgrade),
    cut: tokio_util::sync::CancellationToken,
    frames: bool,
    scrub: Option<Needles>,
    hold: Option<super::upstream::SlotHold>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The backend connection counts against its user until this relay ends.
        let _hold = hold;
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
        let (mut sr, mut sw) = tokio::io::split(TokioIo::new(server));
        let record = |dir: Direction, f: Frame| {
            let rec = WsFrame {
                session,
                exchange,
                dir,
                opcode: opcode_name(f.opcode).into(),
                fin: f.fin,
                compressed: f.compressed,
                len: f.len,
            };
            let _ = audit.record(Event::WsFrame(Box::new(rec), f.payload));
        };
        let up = async {
            let mut reader = FrameReader::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = cr.read(&mut buf).await?;
                if n == 0 {
                    let _ = sw.shutdown().await;
                    return Ok::<_, std::io::Error>(());
                }
                let chunk = buf.get(..n).unwrap_or_default();
                sw.write_all(chunk).await?;
                for f in reader.feed(if frames { chunk } else { &[] }, cap) {
                    record(Direction::Up, f);
                }
            }
        };
        let down = async {
            let mut reader = FrameReader::default();
            let mut buf = vec![0u8; 16 * 1024];
            let mut blanker = scrub.map(|n| Blanker::new(n, frames));
            let mut pass = async |bytes: &[u8], reader: &mut FrameReader| {
                cw.write_all(bytes).await?;
                for f in reader.feed(if frames { bytes } else { &[] }, cap) {
                    record(Direction::Down, f);
                }
                Ok::<_, std::io::Error>(())
            };
            let result = loop {
                let read = match blanker.as_ref().is_some_and(Blanker::holding) {
                    false => sr.read(&mut buf).await,
                    // Bytes that may begin the credential wait HOLD for the rest.
                    true => match tokio::time::timeout(HOLD, sr.read(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => {
                            let held = blanker.as_mut().map(Blanker::flush).unwrap_or_default();
                            pass(&held, &mut reader).await?;
                            continue;
                        }
                    },
                };
                let n = read?;
                if n == 0 {
                    let held = blanker.as_mut().map(Blanker::flush).unwrap_or_default();
                    pass(&held, &mut reader).await?;
                    break Ok::<_, std::io::Error>(());
                }
                let chunk = buf.get(..n).unwrap_or_default();
                match blanker.as_mut() {
                    Some(b) => {
                        let before = b.hits;
                        let out = b.push(chunk);
                        if b.hits > before {
                            warn!(
                                session = %session,
                                exchange,
                                copies = b.hits - before,
                                "the backend sent the held credential over an upgraded connection; each copy was overwritten"
                            );
                        }
                        pass(&out, &mut reader).await?;
                    }
                    None => pass(chunk, &mut reader).await?,
                }
            };
            let _ = cw.shutdown().await;
            result
        };
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => if let Err(e) = r {
                debug!(error = %e, "websocket relay ended");
            },
            () = cut.cancelled() => debug!("websocket cut with its session"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_client_frames_are_read_across_chunks() {
        let key = [1u8, 2, 3, 4];
        let payload = b"hello";
        let mut bytes = vec![0x81, 0x80 | 5];
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        bytes.extend_from_slice(&[0x88, 0x00]);
        let mut r = FrameReader::default();
        let mut frames = Vec::new();
        for c in bytes.chunks(3) {
            frames.extend(r.feed(c, 1024));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"hello");
        assert_eq!(frames[0].opcode, 1);
        assert_eq!(frames[1].opcode, 8);
    }

    /// `stream` through a WebSocket blanker in reads of `size`: what came out, and the copies found.
    fn blank_in_reads(needles: &Needles, stream: &[u8], size: usize) -> (Vec<u8>, u64) {
        let mut b = Blanker::new(needles.clone(), true);
        let mut out = Vec::new();
        for chunk in stream.chunks(size) {
            out.extend(b.push(chunk));
        }
        out.extend(b.flush());
        (out, b.hits)
    }

    /// A held credential sent back over an upgraded connection is
    /// overwritten wherever the reads split it, the stream keeps its length
    /// (frame headers stay true), and other bytes pass as they are, those
    /// that only begin a copy of it included.
    #[test]
    fn a_held_credential_is_blanked_wherever_the_reads_split_it() {
        let needles = Needles::new(&[b"Bearer tok-12345678".to_vec(), b"tok-12345678".to_vec()]).unwrap();
        let mut stream = vec![0x81, 0];
        stream.extend_from_slice(b"you are Bearer tok-12345678, tok-1234 is not it; again tok-12345678");
        stream[1] = u8::try_from(stream.len() - 2).unwrap();
        let mut want = stream.clone();
        let text = String::from_utf8_lossy(&want[2..]).replace("Bearer tok-12345678", "*******************");
        let text = text.replace("tok-12345678", "************");
        want.truncate(2);
        want.extend_from_slice(text.as_bytes());
        for size in 1..stream.len() {
            let (out, hits) = blank_in_reads(&needles, &stream, size);
            assert_eq!(out, want, "reads of {size}");
            assert_eq!(hits, 2, "reads of {size}");
        }
        // A read that ends in the start of a copy holds only those bytes back.
        let mut b = Blanker::new(needles.clone(), false);
        assert_eq!(b.push(b"hello Bear"), b"hello ");
        assert!(b.holding());
        assert_eq!(b.flush(), b"Bear");
        assert_eq!(b.push(b"plain"), b"plain");
        assert!(!b.holding());
    }

    /// A copy split across two frames — a message sent in fragments, or two
    /// messages — has a frame header between its halves: the payloads are
    /// searched as one text, wherever the reads split the stream, and only
    /// payload bytes are overwritten (the headers stay true).
    #[test]
    fn a_held_credential_split_across_frames_is_blanked() {
        let needles = Needles::new(&[b"Bearer tok-12345678".to_vec(), b"tok-12345678".to_vec()]).unwrap();
        let frame = |first: u8, payload: &[u8]| {
            let mut f = vec![first, u8::try_from(payload.len()).unwrap()];
            f.extend_from_slice(payload);
            f
        };
        // A text message in two fragments (text, then continuation + FIN), a ping, a second message.
        let mut stream = frame(0x01, b"you are Bearer tok-123");
        stream.extend(frame(0x80, b"45678 ok"));
        stream.extend(frame(0x89, b"tok-1234"));
        stream.extend(frame(0x81, b"again tok-1234"));
        stream.extend(frame(0x81, b"5678!"));
        let mut want = frame(0x01, b"you are **************");
        want.extend(frame(0x80, b"***** ok"));
        want.extend(frame(0x89, b"tok-1234"));
        want.extend(frame(0x81, b"again ********"));
        want.extend(frame(0x81, b"****!"));
        for size in 1..stream.len() {
            let (out, hits) = blank_in_reads(&needles, &stream, size);
            assert_eq!(out, want, "reads of {size}: {}", String::from_utf8_lossy(&out));
            assert_eq!(hits, 2, "reads of {size}");
            assert_eq!(FrameReader::default().feed(&out, 64).len(), 5, "frames intact, reads of {size}");
        }
        // Not a WebSocket: the bytes are opaque, nothing is read as frames.
        let mut b = Blanker::new(needles, false);
        assert_eq!(b.push(&stream), stream);
    }

    /// Random streams of frames (data, control, long lengths) with copies of
    /// the credential cut at random places, read in random pieces: the output
    /// keeps every frame's header, length and opcode, and no copy is left in
    /// the data frames' payloads read as one text.
    #[test]
    fn random_streams_keep_their_frames_and_lose_every_copy() {
        let secret = b"Bearer tok-12345678";
        let needles = Needles::new(&[secret.to_vec(), b"tok-12345678".to_vec()]).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n.max(1) as u64).unwrap_or(0)
        };
        for _ in 0..300 {
            // The text the data frames carry, with copies in it, cut into frames.
            let mut text = Vec::new();
            for _ in 0..1 + next(4) {
                text.extend(std::iter::repeat_n(b'x', next(40)));
                text.extend_from_slice(secret);
            }
            text.extend(std::iter::repeat_n(b'y', next(300)));
            let mut stream = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let n = (1 + next(30)).min(text.len() - at);
                let opcode = if next(2) == 0 { 0x81 } else { 0x01 };
                stream.push(opcode);
                if n > 125 || next(5) == 0 {
                    stream.push(126);
                    stream.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
                } else {
                    stream.push(u8::try_from(n).unwrap());
                }
                stream.extend_from_slice(&text[at..at + n]);
                at += n;
                if next(4) == 0 {
                    // A ping between data frames, carrying a piece of the secret.
                    stream.extend_from_slice(&[0x89, 4]);
                    stream.extend_from_slice(&secret[7..11]);
                }
            }
            let mut b = Blanker::new(needles.clone(), true);
            let mut out = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let (piece, more) = rest.split_at((1 + next(40)).min(rest.len()));
                out.extend(b.push(piece));
                rest = more;
            }
            out.extend(b.flush());
            assert_eq!(out.len(), stream.len());
            let frames_in = FrameReader::default().feed(&stream, usize::MAX);
            let frames_out = FrameReader::default().feed(&out, usize::MAX);
            assert_eq!(frames_in.len(), frames_out.len());
            let data: Vec<u8> = frames_out.iter().filter(|f| f.opcode <= 2).flat_map(|f| f.payload.clone()).collect();
            assert!(
                !data.windows(12).any(|w| w == b"tok-12345678"),
                "a copy is left: {}",
                String::from_utf8_lossy(&data)
            );
            for (a, z) in frames_in.iter().zip(&frames_out) {
                assert_eq!((a.opcode, a.len, a.fin), (z.opcode, z.len, z.fin));
            }
        }
    }

    #[test]
    fn long_payloads_are_capped() {
        let mut bytes = vec![0x82, 126, 0x01, 0x00];
        bytes.extend(std::iter::repeat_n(7u8, 256));
        let mut r = FrameReader::default();
        let f = r.feed(&bytes, 10);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].len, 256);
        assert_eq!(f[0].payload.len(), 10);
    }
}
