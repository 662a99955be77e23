//! Terminal and exec output through a rule's masking profile, as a stream
//! (sans-IO). The host writes output in pieces of its own choosing, so a
//! value the detectors find (a card number, an e-mail) may arrive split
//! across two data messages: the tail of the output that could still be the
//! start of such a value is held back until more output comes, or until the
//! channel has been quiet for [`HOLD`] (the caller flushes it then).
//!
//! Output is cut only at a boundary no value spans (the rule HTTP text
//! bodies use, `protocol/http/body.rs`): a line end, or a whitespace byte
//! with no digit on either side. A tail without letters or digits (a `$ `
//! prompt) is never held. A tail longer than [`MAX_CARRY`] with no boundary
//! is scanned as it is.

use std::sync::Arc;
use std::time::Duration;

use crate::mask::{Counts, Profile};

/// How long a held tail waits for the rest of a value.
pub const HOLD: Duration = Duration::from_millis(20);
/// The most output held back at a time.
pub const MAX_CARRY: usize = 4096;

/// One output stream (stdout or stderr) of one channel.
pub struct OutputMasker {
    profile: Arc<Profile>,
    carry: Vec<u8>,
    counts: Counts,
}

impl OutputMasker {
    pub fn new(profile: Arc<Profile>) -> Self {
        Self { profile, carry: Vec::new(), counts: Counts::default() }
    }

    /// Takes `input`; appends to `out` what can go now, masked.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(input);
        let cut = cut_point(&self.carry);
        if cut > 0 {
            let rest = self.carry.split_off(cut);
            scan_into(&self.profile, &self.carry, out, &mut self.counts);
            self.carry = rest;
        }
    }

    /// Appends what is held back, masked (the stream ended or went quiet).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.carry);
        if !rest.is_empty() {
            scan_into(&self.profile, &rest, out, &mut self.counts);
        }
    }

    /// Whether some output is held back.
    pub fn holding(&self) -> bool {
        !self.carry.is_empty()
    }
}

/// How much of `b` can be scanned now: up to its last boundary, or all of
/// it when its tail could not start a value or is too long to wait for.
/// Boundaries are found in the text as the terminal shows it (control
/// sequences skipped), and an escape sequence still arriving is held whole.
fn cut_point(b: &[u8]) -> usize {
    let view = crate::mask::shown::Shown::of(b);
    let s = &view.text;
    let boundary = s
        .iter()
        .enumerate()
        .rev()
        .find(|&(i, &c)| {
            c == b'\n'
                || c == b'\r'
                || (c.is_ascii_whitespace()
                    && !i.checked_sub(1).and_then(|j| s.get(j)).is_some_and(u8::is_ascii_digit)
                    && !s.get(i + 1).is_some_and(u8::is_ascii_digit))
        })
        .map_or(0, |(i, _)| i + 1);
    let tail = s.get(boundary..).unwrap_or_default();
    let raw_boundary = boundary.checked_sub(1).and_then(|k| view.at.get(k)).map_or(0, |&r| r + 1);
    let cut = if b.len() - raw_boundary > MAX_CARRY || !tail.iter().any(u8::is_ascii_alphanumeric) {
        b.len()
    } else {
        raw_boundary
    };
    view.open.map_or(cut, |o| cut.min(o))
}

fn scan_into(profile: &Profile, text: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
    crate::mask::shown::scan_as_shown(profile, text, out, counts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Arc<Profile> {
        use crate::mask::{Detector, ProfileSpec};
        let spec = ProfileSpec {
            name: "cards".into(),
            detectors: vec![
                (Detector::Card, Detector::Card.default_style()),
                (Detector::Email, Detector::Email.default_style()),
            ],
            ..ProfileSpec::default()
        };
        Arc::new(Profile::compile(&spec).expect("profile"))
    }

    /// Pushes every piece, flushing only at the end, as a quiet channel would.
    fn through(pieces: &[&str]) -> (String, Vec<String>) {
        let mut m = OutputMasker::new(profile());
        let mut sent = Vec::new();
        let mut all = Vec::new();
        for p in pieces {
            let mut out = Vec::new();
            m.push(p.as_bytes(), &mut out);
            sent.push(String::from_utf8_lossy(&out).into_owned());
            all.extend(out);
        }
        m.flush(&mut all);
        (String::from_utf8_lossy(&all).into_owned(), sent)
    }

    #[test]
    fn a_card_split_across_two_messages_is_still_masked() {
        for split in 1..19 {
            let line = "card 4111 1111 1111 1111 end\r\n";
            let at = 5 + split;
            let (all, sent) = through(&[&line[..at], &line[at..]]);
            assert!(!all.contains("4111 1111 1111 1111"), "split at {at}: {all:?}");
            assert!(all.starts_with("card ") && all.ends_with(" end\r\n"), "split at {at}: {all:?}");
            // Nothing of the number went out before its end arrived.
            assert!(!sent[0].contains("4111"), "split at {at}: first piece sent {:?}", sent[0]);
        }
        // Three pieces, and an e-mail address across two.
        let (all, _) = through(&["4111 11", "11 1111 ", "1111\n"]);
        assert!(!all.contains("1111 1111"), "{all:?}");
        let (all, _) = through(&["mail ana.lopez@exa", "mple.com now\n"]);
        assert!(!all.contains("ana.lopez@example.com"), "{all:?}");
    }

    /// What the terminal shows whole is found whole: `grep --color` wraps
    /// the matched part of a card in colour codes, a backspace or a NUL
    /// between its digits shows nothing. Output without a finding keeps its colours.
    #[test]
    fn control_sequences_do_not_split_a_value() {
        for line in [
            "\x1b[01;31m\x1b[K4111\x1b[m\x1b[K 1111 1111 1111\n",
            "4111 11\x1b[1m11 1111 1111\x1b[0m\r\n",
            "4111 1111\x00 1111 1111\n",
            "\x1b]0;title\x074111 1111 1111 1111\x1b]8;;http://x\x1b\\ end\n",
            "ann\x1b[32m@\x1b[0mexample.com\n",
        ] {
            for split in [1, 5, 9, line.len()] {
                let (a, b) = line.split_at(split.min(line.len()));
                let (all, _) = through(&[a, b]);
                let digits: String = all.chars().filter(char::is_ascii_digit).collect();
                assert!(
                    !digits.contains("4111111111111111") && !all.contains("ann"),
                    "{line:?} split at {split}: {all:?}"
                );
            }
        }
        let colours = "\x1b[01;34mreports\x1b[0m  \x1b[01;32mrun.sh\x1b[0m\n";
        assert_eq!(through(&[colours]).0, colours);
    }

    #[test]
    fn prompts_and_finished_lines_are_not_held() {
        let mut m = OutputMasker::new(profile());
        let mut out = Vec::new();
        m.push(b"hello\r\n$ ", &mut out);
        assert_eq!(out, b"hello\r\n$ ");
        assert!(!m.holding());
        // A word could be the start of an address: held until more comes or a flush.
        out.clear();
        m.push(b"ana", &mut out);
        assert!(out.is_empty() && m.holding());
        m.flush(&mut out);
        assert_eq!(out, b"ana");
        // A long run without a boundary is not held for ever.
        out.clear();
        m.push(&[b'x'; MAX_CARRY + 1], &mut out);
        assert_eq!(out.len(), MAX_CARRY + 1);
    }
}
