//! Checking a bundle on any machine ([`verify_export`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::{
    BUNDLE_VERSION, DIGEST_CONTEXT, INDEX, MANIFEST, MAX_INDEX_LINE, MAX_MANIFEST, MAX_RECORD_LINE, MAX_SMALL_FILE,
    Manifest, PUBLIC_KEY, RECORDS, SIGNATURE, parse_record, unhex, unhex32,
};
use crate::audit::chain::{self, Break, Record};
use crate::audit::verify::{self, Report, Trust, TrustSource};
use crate::audit::{RecordKind, hex, keys};

/// Reads a whole file of at most `max` bytes.
pub(super) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(buf)
}

/// Reads one line of at most `max` bytes (without its newline); `Ok(None)` at the end.
pub(super) fn read_line(r: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> Result<Option<()>, String> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', buf).map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Err(format!("a line is longer than {max} bytes"));
    }
    Ok(Some(()))
}

pub(super) fn hash_file(path: &Path) -> Result<(u64, String), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut h = blake3::Hasher::new();
    let n = io::copy(&mut f, &mut h).map_err(|e| e.to_string())?;
    Ok((n, h.finalize().to_hex().to_string()))
}

/// A name that stays inside the bundle directory.
pub(super) fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && ![MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&name)
}

pub(super) fn digest_of(list: &[(u64, [u8; 32])]) -> String {
    let mut d = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    for (seq, hash) in list {
        d.update(&seq.to_be_bytes());
        d.update(hash);
    }
    d.finalize().to_hex().to_string()
}

/// The first place where the exported records differ from the signed list,
/// said as what happened there.
pub(super) fn first_difference(expected: &[(u64, [u8; 32])], actual: &[(u64, [u8; 32])]) -> Option<Break> {
    let in_expected: HashSet<&(u64, [u8; 32])> = expected.iter().collect();
    let in_actual: HashSet<&(u64, [u8; 32])> = actual.iter().collect();
    let i = expected.iter().zip(actual).position(|(e, a)| e != a);
    let i = match i {
        Some(i) => i,
        None if expected.len() > actual.len() => {
            let (seq, _) = expected.get(actual.len())?;
            return Some(Break {
                seq: *seq,
                what: format!("record {seq} and the ones after it were deleted (the export ends early)"),
            });
        }
        None if actual.len() > expected.len() => {
            let (seq, _) = actual.get(expected.len())?;
            return Some(Break {
                seq: *seq,
                what: format!("record {seq} was inserted at the end (the manifest does not list it)"),
            });
        }
        None => return None,
    };
    let (e, a) = (expected.get(i)?, actual.get(i)?);
    Some(if !in_expected.contains(a) {
        if actual.get(i + 1) == Some(e) {
            Break {
                seq: a.0,
                what: format!("a record {} the manifest does not list was inserted before record {}", a.0, e.0),
            }
        } else if a.0 == e.0 {
            Break { seq: a.0, what: format!("record {} was changed (its hash is not the one the manifest signs)", a.0) }
        } else {
            Break { seq: a.0, what: format!("record {} was inserted (the manifest does not list it)", a.0) }
        }
    } else if !in_actual.contains(e) {
        Break { seq: e.0, what: format!("record {} was deleted (the manifest lists it before record {})", e.0, a.0) }
    } else {
        Break {
            seq: e.0.min(a.0),
            what: format!(
                "records were reordered: record {} is where the manifest puts record {} (position {})",
                a.0,
                e.0,
                i + 1
            ),
        }
    })
}

#[derive(Debug)]
struct Checkpoint {
    seq: u64,
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Checks a bundle on any machine: the manifest's signature with `trust`
/// (or, if `None`, the bundle's own public key: then the report says its
/// keys came from the bundle, which proves nothing about who made it),
/// following the key rotations the bundle holds; every file's hash, every
/// exported record's own hash (recomputed from its fields), the ordered
/// (seq, hash) list the manifest signs, the chain links between consecutive
/// records (from the manifest's anchor when the export is complete), the
/// checkpoints' signatures and the redactions. Reports the first record
/// changed, deleted, inserted or reordered. Bundle-level problems carry seq
/// 0. `Err` only when `dir` cannot be read as a directory.
pub fn verify_export(dir: &Path, trust: Option<&Trust>) -> Result<Report, String> {
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory (an export bundle is one)", dir.display()));
    }
    let mut report = Report::new(trust.map_or(TrustSource::Bundle, |t| t.source.clone()));
    check_bundle(dir, trust, &mut report);
    report.problems.sort_by_key(|b| b.seq);
    Ok(report)
}

fn flag(report: &mut Report, seq: u64, what: String) {
    report.problems.push(Break { seq, what });
}

/// What a first pass over `records.jsonl` collects: rotations, redactions,
/// and each checkpoint's valid signer (for following rotations back).
#[derive(Default)]
struct Prepass {
    rotations: Vec<verify::RotationRow>,
    redactions: Vec<(u64, Vec<u8>, Vec<u8>)>,
    checkpoints: Vec<(u64, Option<VerifyingKey>)>,
}

fn prepass(path: &Path) -> Prepass {
    let mut p = Prepass::default();
    let Ok(f) = File::open(path) else { return p };
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    while let Ok(Some(())) = read_line(&mut r, MAX_RECORD_LINE, &mut line) {
        let Ok((rec, _)) = parse_record(&line) else { continue };
        if !rec.intact() || rec.redacted {
            continue;
        }
        let sig = rec.data.clone().unwrap_or_default();
        match rec.record_kind() {
            Some(RecordKind::KeyRotation) => p.rotations.push((rec.seq, rec.body, sig)),
            Some(RecordKind::Redaction) => p.redactions.push((rec.seq, rec.body, sig)),
            Some(RecordKind::Checkpoint) => p.checkpoints.push((rec.seq, verify::checkpoint_signer(&rec.body, &sig))),
            _ => {}
        }
    }
    p
}

fn check_bundle(dir: &Path, trust: Option<&Trust>, report: &mut Report) {
    let bundle_key = read_capped(&dir.join(PUBLIC_KEY), MAX_SMALL_FILE)
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()))
        .and_then(|s| keys::parse_public(&s));
    let base = match (trust, &bundle_key) {
        (Some(t), _) => t.clone(),
        (None, Ok(k)) => Trust { keys: vec![*k], source: TrustSource::Bundle },
        (None, Err(e)) => {
            flag(report, 0, format!("no trusted key was given and the bundle's {PUBLIC_KEY} cannot be read: {e}"));
            return;
        }
    };
    let pre = prepass(&dir.join(RECORDS));
    let next_signer = |seq: u64| -> Result<Option<VerifyingKey>, String> {
        Ok(pre.checkpoints.iter().find(|(s, _)| *s > seq).and_then(|(_, k)| *k))
    };
    let Ok(keys) = verify::follow_rotations(&pre.rotations, &base, &next_signer, report) else { return };
    let redactions: Vec<(u64, crate::audit::Redaction)> = pre
        .redactions
        .iter()
        .filter_map(|(seq, body, sig)| verify::check_redaction(*seq, body, sig, &keys, report).map(|r| (*seq, r)))
        .collect();
    let key_hex = report.public_keys.join(" or ");

    // The manifest and its signature.
    let manifest_bytes = match read_capped(&dir.join(MANIFEST), MAX_MANIFEST) {
        Ok(b) => b,
        Err(e) => {
            flag(report, 0, format!("{MANIFEST}: {e}"));
            return;
        }
    };
    let signature = read_capped(&dir.join(SIGNATURE), MAX_SMALL_FILE)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| unhex(s.trim()));
    let signer = signature
        .as_deref()
        .and_then(|s| keys.trusted.iter().find(|k| chain::verify_signature(k, &manifest_bytes, s)).copied());
    if signer.is_none() {
        let claimed = match &bundle_key {
            Ok(b) if !keys.is_trusted(b) => format!(" (the bundle says it was signed by {})", hex(&b.to_bytes())),
            _ => String::new(),
        };
        flag(
            report,
            0,
            format!(
                "the manifest's signature is not valid for key {key_hex}{claimed}: the manifest was changed, or another key signed it"
            ),
        );
    }
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            flag(report, 0, format!("{MANIFEST} cannot be read: {e}"));
            return;
        }
    };
    if manifest.bundle_version != BUNDLE_VERSION {
        flag(
            report,
            0,
            format!("bundle version {} is not one this Gatehouse reads ({BUNDLE_VERSION})", manifest.bundle_version),
        );
        return;
    }

    // Every file the manifest lists, and nothing else.
    let mut listed: HashSet<&str> = HashSet::new();
    for f in &manifest.files {
        if !plain_name(&f.name) {
            flag(report, 0, format!("the manifest lists a file name that is not allowed: {:?}", f.name));
            continue;
        }
        listed.insert(f.name.as_str());
        match hash_file(&dir.join(&f.name)) {
            Ok((bytes, h)) if bytes == f.bytes && h == f.blake3 => {}
            Ok(_) => flag(report, 0, format!("{} was changed (its hash is not the one the manifest lists)", f.name)),
            Err(e) => flag(report, 0, format!("{}: {e}", f.name)),
        }
    }
    for required in [RECORDS, INDEX] {
        if !listed.contains(required) {
            flag(report, 0, format!("the manifest does not list {required}"));
        }
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut extra: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !listed.contains(n.as_str()) && ![MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&n.as_str()))
                .collect();
            extra.sort();
            for n in extra {
                flag(report, 0, format!("{n} is not part of the signed bundle (added)"));
            }
        }
        Err(e) => flag(report, 0, format!("listing the bundle: {e}")),
    }

    // The signed list, from the index.
    let expected = match read_index(&dir.join(INDEX)) {
        Ok(list) if digest_of(&list) == manifest.records_digest => Some(list),
        Ok(_) => {
            flag(report, 0, format!("{INDEX} is not the list the manifest's records_digest covers"));
            None
        }
        Err(e) => {
            flag(report, 0, format!("{INDEX}: {e}"));
            None
        }
    };

    // The records: each one's own hash, its readable body, its links.
    let mut actual: Vec<(u64, [u8; 32])> = Vec::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let (mut changed, mut link): (Option<Break>, Option<Break>) = (None, None);
    let anchor = manifest.anchor.as_deref().and_then(unhex32);
    match File::open(dir.join(RECORDS)) {
        Err(e) => flag(report, 0, format!("{RECORDS}: {e}")),
        Ok(f) => {
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            let mut lineno = 0u64;
            loop {
                match read_line(&mut r, MAX_RECORD_LINE, &mut line) {
                    Ok(None) => break,
                    Ok(Some(())) => {}
                    Err(e) => {
                        flag(report, 0, format!("{RECORDS} line {}: {e}", lineno + 1));
                        break;
                    }
                }
                lineno += 1;
                let (rec, readable) = match parse_record(&line) {
                    Ok(x) => x,
                    Err(e) => {
                        flag(report, 0, format!("{RECORDS} line {lineno} is not a record: {e}"));
                        continue;
                    }
                };
                if !readable {
                    flag(
                        report,
                        rec.seq,
                        format!("record {}'s readable body does not say what its hashed body says (edited)", rec.seq),
                    );
                }
                if changed.is_none() && !rec.intact() {
                    changed = Some(Break {
                        seq: rec.seq,
                        what: format!("record {} was changed (its content does not match its hash)", rec.seq),
                    });
                }
                if rec.redacted && !verify::redaction_covers(&redactions, &rec) {
                    flag(
                        report,
                        rec.seq,
                        format!(
                            "record {}'s content was removed, and no signed redaction record says so (deleted)",
                            rec.seq
                        ),
                    );
                }
                if link.is_none() {
                    link = link_problem(actual.last(), &rec, anchor, manifest.complete);
                }
                if rec.is(RecordKind::Checkpoint) && !rec.redacted {
                    checkpoints.push(Checkpoint {
                        seq: rec.seq,
                        body: rec.body.clone(),
                        signature: rec.data.clone().unwrap_or_default(),
                    });
                }
                actual.push((rec.seq, rec.hash));
            }
        }
    }
    report.problems.extend(changed);
    report.problems.extend(link);
    report.records = u64::try_from(actual.len()).unwrap_or(u64::MAX);
    report.first_seq = actual.first().map(|(s, _)| *s);
    report.last_seq = actual.last().map(|(s, _)| *s);
    if report.records != manifest.records {
        flag(report, 0, format!("the manifest lists {} records; {RECORDS} holds {}", manifest.records, report.records));
    }
    if digest_of(&actual) != manifest.records_digest {
        flag(report, 0, format!("the records in {RECORDS} are not the ones the manifest signs"));
        if let Some(b) = expected.as_deref().and_then(|e| first_difference(e, &actual)) {
            report.problems.push(b);
        }
    }

    // Checkpoints: signed by the key, naming the exported head where it is here.
    let by_seq: HashMap<u64, [u8; 32]> = actual.iter().copied().collect();
    report.checkpoints = u64::try_from(checkpoints.len()).unwrap_or(u64::MAX);
    for c in &checkpoints {
        let v: Value = serde_json::from_slice(&c.body).unwrap_or_default();
        let head_seq = v.get("head_seq").and_then(Value::as_u64);
        let head_hash = v.get("head_hash").and_then(Value::as_str).and_then(unhex32);
        let time = v.get("time_us").and_then(Value::as_i64);
        let (Some(head_seq), Some(head_hash), Some(time)) = (head_seq, head_hash, time) else {
            report.problems.push(Break { seq: c.seq, what: format!("checkpoint {} cannot be read", c.seq) });
            continue;
        };
        if by_seq.get(&head_seq).is_some_and(|h| *h != head_hash) {
            report.problems.push(Break {
                seq: c.seq,
                what: format!("checkpoint {} names a head (record {head_seq}) other than the exported one", c.seq),
            });
        } else {
            let signer = verify::checkpoint_signer(&c.body, &c.signature).or_else(|| {
                let m = chain::checkpoint_message(head_seq, &head_hash, time);
                keys.trusted.iter().find(|k| chain::verify_signature(k, &m, &c.signature)).copied()
            });
            match signer.map(|k| keys.may_sign(&k, c.seq)) {
                Some(Ok(())) => report.checkpoints_verified += 1,
                Some(Err(e)) => report.problems.push(Break { seq: c.seq, what: format!("checkpoint {}: {e}", c.seq) }),
                None => report.problems.push(Break {
                    seq: c.seq,
                    what: format!("checkpoint {} has no valid signature by key {key_hex}", c.seq),
                }),
            }
        }
    }
}

/// A broken link between a record and the one before it in the export.
pub(super) fn link_problem(
    prev: Option<&(u64, [u8; 32])>,
    r: &Record,
    anchor: Option<[u8; 32]>,
    complete: bool,
) -> Option<Break> {
    let Some(&(pseq, phash)) = prev else {
        return match anchor {
            Some(a) if a != r.prev_hash => {
                Some(Break { seq: r.seq, what: format!("record {} does not chain from the manifest's anchor", r.seq) })
            }
            Some(_) => None,
            None => Some(Break { seq: r.seq, what: "the manifest names no anchor for the first record".into() }),
        };
    };
    if r.seq == pseq.saturating_add(1) && r.prev_hash != phash {
        return Some(Break {
            seq: r.seq,
            what: format!("record {} does not chain from record {pseq}: changed, inserted or reordered", r.seq),
        });
    }
    if complete && r.seq > pseq.saturating_add(1) {
        return Some(Break {
            seq: r.seq,
            what: format!("records {}..{} were deleted from a complete export", pseq + 1, r.seq - 1),
        });
    }
    if r.seq <= pseq {
        return Some(Break {
            seq: r.seq,
            what: format!("record {} comes after record {pseq}: reordered or inserted", r.seq),
        });
    }
    None
}

pub(super) fn read_index(path: &Path) -> Result<Vec<(u64, [u8; 32])>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    let mut out = Vec::new();
    let mut lineno = 0u64;
    while read_line(&mut r, MAX_INDEX_LINE, &mut line)?.is_some() {
        lineno += 1;
        let text = std::str::from_utf8(&line).map_err(|_| format!("line {lineno} is not text"))?;
        let (seq, hash) = text.split_once(' ').ok_or_else(|| format!("line {lineno} is not `seq hash`"))?;
        let seq: u64 = seq.parse().map_err(|_| format!("line {lineno}: {seq:?} is not a seq"))?;
        let hash = unhex32(hash).ok_or_else(|| format!("line {lineno}: not a 32-byte hex hash"))?;
        out.push((seq, hash));
    }
    Ok(out)
}
