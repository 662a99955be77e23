//! The hash chain: every record's hash covers its canonical encoding and the
//! previous record's hash, so changing, deleting, inserting or reordering a
//! record breaks the chain from that record on. Checkpoints sign the chain
//! head with the host's Ed25519 key. Pure functions, no I/O.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One record of the chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_us: i64,
    pub session: Option<String>,
    pub kind: String,
    /// JSON, exactly as stored (and hashed).
    pub body: Vec<u8>,
    /// Raw bytes (stream chunks, signatures), exactly as stored.
    pub data: Option<Vec<u8>>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
    h.update(bytes);
}

/// The hash of a record: blake3 over the previous hash and each field,
/// length-prefixed (so field boundaries cannot shift).
pub fn hash(
    prev: &[u8; 32],
    seq: u64,
    time_us: i64,
    session: Option<&str>,
    kind: &str,
    body: &[u8],
    data: Option<&[u8]>,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("gatehouse audit record v1");
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(&time_us.to_be_bytes());
    match session {
        Some(s) => {
            h.update(&[1]);
            field(&mut h, s.as_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    field(&mut h, kind.as_bytes());
    field(&mut h, body);
    match data {
        Some(d) => {
            h.update(&[1]);
            field(&mut h, d);
        }
        None => {
            h.update(&[0]);
        }
    }
    *h.finalize().as_bytes()
}

impl Record {
    pub fn computed_hash(&self) -> [u8; 32] {
        hash(
            &self.prev_hash,
            self.seq,
            self.time_us,
            self.session.as_deref(),
            &self.kind,
            &self.body,
            self.data.as_deref(),
        )
    }
}

/// What a checkpoint signs: the chain head at a point in time.
pub fn checkpoint_message(head_seq: u64, head_hash: &[u8; 32], time_us: i64) -> Vec<u8> {
    let mut m = b"gatehouse checkpoint v1\0".to_vec();
    m.extend_from_slice(&head_seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    m.extend_from_slice(&time_us.to_be_bytes());
    m
}

pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}

pub fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(signature) else { return false };
    key.verify(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// A problem found while walking a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Break {
    pub seq: u64,
    pub what: String,
}

/// Walks records in order; returns the first break. `anchor`: the hash the
/// first record must chain from (the genesis, or a pruning anchor).
pub fn walk<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    anchor: ([u8; 32], u64),
) -> Result<([u8; 32], u64), Break> {
    let (mut prev, mut last_seq) = anchor;
    for r in records {
        if r.seq <= last_seq {
            return Err(Break {
                seq: r.seq,
                what: format!("record {} is out of order (after {last_seq}): reordered or inserted", r.seq),
            });
        }
        if r.computed_hash() != r.hash {
            return Err(Break {
                seq: r.seq,
                what: format!("record {} was changed (its content does not match its hash)", r.seq),
            });
        }
        if r.prev_hash != prev {
            let what = if r.seq > last_seq + 1 {
                format!(
                    "records {}..{} were deleted (record {} does not chain from {last_seq})",
                    last_seq + 1,
                    r.seq - 1,
                    r.seq
                )
            } else {
                format!("record {} does not chain from record {last_seq}: inserted, reordered or rewritten", r.seq)
            };
            return Err(Break { seq: r.seq, what });
        }
        if r.seq != last_seq + 1 {
            return Err(Break {
                seq: r.seq,
                what: format!(
                    "records {}..{} are missing, and the chain was rewritten to hide it",
                    last_seq + 1,
                    r.seq - 1
                ),
            });
        }
        prev = r.hash;
        last_seq = r.seq;
    }
    Ok((prev, last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let body = format!("{{\"n\":{seq}}}").into_bytes();
                let h = hash(&prev, seq, 1000 + i64::try_from(seq).unwrap(), Some("s"), "k", &body, None);
                let r = Record {
                    seq,
                    time_us: 1000 + i64::try_from(seq).unwrap(),
                    session: Some("s".into()),
                    kind: "k".into(),
                    body,
                    data: None,
                    prev_hash: prev,
                    hash: h,
                };
                prev = h;
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_walks() {
        let c = chain(5);
        assert_eq!(walk(&c, (GENESIS, 0)).unwrap().1, 5);
    }

    #[test]
    fn every_tampering_is_found_at_its_record() {
        let mut c = chain(5);
        c[2].body = b"{\"n\":99}".to_vec();
        let b = walk(&c, (GENESIS, 0)).unwrap_err();
        assert_eq!(b.seq, 3);
        assert!(b.what.contains("changed"), "{b:?}");

        let mut c = chain(5);
        c.remove(2);
        let b = walk(&c, (GENESIS, 0)).unwrap_err();
        assert_eq!(b.seq, 4);
        assert!(b.what.contains("deleted"), "{b:?}");

        let mut c = chain(5);
        c.swap(1, 2);
        let b = walk(&c, (GENESIS, 0)).unwrap_err();
        assert_eq!(b.seq, 3);

        let mut c = chain(5);
        let mut fake = c[1].clone();
        fake.seq = 3;
        c.insert(2, fake);
        assert!(walk(&c, (GENESIS, 0)).is_err());
    }

    #[test]
    fn signatures() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let m = checkpoint_message(5, &[1; 32], 99);
        let s = sign(&key, &m);
        assert!(verify_signature(&key.verifying_key(), &m, &s));
        assert!(!verify_signature(&key.verifying_key(), &checkpoint_message(6, &[1; 32], 99), &s));
    }
}
