//! Text as a terminal (or a browser showing `text/plain`) shows it:
//! escape sequences and control bytes between the characters of a value
//! (`grep --color` colouring the matched digits of a card) are not what the
//! reader sees, so the detectors must not see them either (sans-IO).

use super::{Counts, MaskOutput, Profile};

/// `text` through the profile as it is shown: a piece with control
/// sequences is scanned without them; if the detectors find something there
/// it goes out masked and without them, otherwise as it came (colours and
/// all). A piece without control bytes is scanned as it is.
pub(crate) fn scan_as_shown(profile: &Profile, text: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
    match scan_shown(profile, text, out, counts) {
        MaskOutput::Unchanged => out.extend_from_slice(text),
        MaskOutput::Written => {}
        // Text cannot be NULL: the whole piece is redacted.
        MaskOutput::Null => out.extend_from_slice(b"****"),
    }
}

/// [`Profile::scan`] of `text` as it is shown: `Written` leaves in `out` the
/// shown text, masked; `Unchanged` writes nothing (the caller keeps `text`).
pub(crate) fn scan_shown(profile: &Profile, text: &[u8], out: &mut Vec<u8>, counts: &mut Counts) -> MaskOutput {
    let controls = text.iter().any(|&b| b == 0x1b || b == 0x7f || (b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t')));
    if controls { profile.scan(&Shown::of(text).text, out, counts) } else { profile.scan(text, out, counts) }
}

/// Text as a terminal shows its characters: escape sequences (CSI `ESC [ …
/// final`, OSC/DCS/APC/PM/SOS strings up to BEL or `ESC \`, other `ESC x`)
/// and control bytes but line ends and tabs removed.
pub(crate) struct Shown {
    pub text: Vec<u8>,
    /// For each byte of `text`, where it is in the raw bytes.
    pub at: Vec<usize>,
    /// Where an escape sequence starts that the raw bytes do not finish.
    pub open: Option<usize>,
}

impl Shown {
    pub fn of(raw: &[u8]) -> Self {
        let mut v = Self { text: Vec::with_capacity(raw.len()), at: Vec::with_capacity(raw.len()), open: None };
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            let start = i;
            i += 1;
            match b {
                0x1b => {
                    let finished = match raw.get(i) {
                        Some(b'[') => {
                            i += 1;
                            while raw.get(i).is_some_and(|c| !(0x40..=0x7e).contains(c)) {
                                i += 1;
                            }
                            i += 1;
                            i <= raw.len()
                        }
                        Some(b']' | b'P' | b'_' | b'^' | b'X') => {
                            i += 1;
                            let mut done = false;
                            while let Some(&c) = raw.get(i) {
                                i += 1;
                                if c == 0x07 {
                                    done = true;
                                    break;
                                }
                                if c == 0x1b && raw.get(i) == Some(&b'\\') {
                                    i += 1;
                                    done = true;
                                    break;
                                }
                            }
                            done
                        }
                        Some(_) => {
                            i += 1;
                            true
                        }
                        None => false,
                    };
                    if !finished {
                        v.open = Some(start);
                        break;
                    }
                }
                b'\n' | b'\r' | b'\t' => {
                    v.text.push(b);
                    v.at.push(start);
                }
                0..0x20 | 0x7f => {}
                _ => {
                    v.text.push(b);
                    v.at.push(start);
                }
            }
        }
        v
    }
}
