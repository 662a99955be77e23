//! The key values one statement returned from one table, stored compactly:
//! non-negative integer keys in a compressed bitmap (roaring, 64-bit), every
//! other key (text, uuid, negative integers, and any key whose column was
//! masked) as sorted 64-bit keyed hashes (blake3, keyed by the store's trail
//! key, so an exported trail does not reveal masked or textual keys).
//!
//! Data layout (the record's `data`): `1` (version), the bitmap's length
//! (u32 LE), the bitmap (roaring's portable format), then the hashes (u64 LE,
//! sorted, distinct).

use roaring::RoaringTreemap;

/// The store's key for hashed key values (32 bytes, in the store's `meta`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey(pub [u8; 32]);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    /// The keyed hash of a key value as PostgreSQL prints it in text format.
    pub fn hash(&self, text: &[u8]) -> u64 {
        let h = blake3::keyed_hash(&self.0, text);
        let mut b = [0u8; 8];
        b.copy_from_slice(h.as_bytes().get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(b)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("trail data: {what}")]
    Malformed { what: &'static str },
}

/// One statement's keys of one table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeySet {
    pub ints: RoaringTreemap,
    /// Sorted and distinct once [`KeySet::seal`]ed.
    pub hashes: Vec<u64>,
}

impl KeySet {
    pub fn seal(&mut self) {
        self.hashes.sort_unstable();
        self.hashes.dedup();
    }

    /// Distinct keys (after [`KeySet::seal`]).
    pub fn len(&self) -> u64 {
        self.ints.len() + self.hashes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.ints.is_empty() && self.hashes.is_empty()
    }

    pub fn union_with(&mut self, other: &KeySet) {
        self.ints |= &other.ints;
        self.hashes.extend_from_slice(&other.hashes);
    }

    pub fn contains_int(&self, v: u64) -> bool {
        self.ints.contains(v)
    }

    pub fn contains_hash(&self, h: u64) -> bool {
        self.hashes.binary_search(&h).is_ok()
    }

    /// Serialises a sealed set.
    pub fn encode(&self) -> Vec<u8> {
        let bitmap_len = self.ints.serialized_size();
        let mut out = Vec::with_capacity(5 + bitmap_len + self.hashes.len() * 8);
        out.push(1);
        out.extend_from_slice(&u32::try_from(bitmap_len).unwrap_or(u32::MAX).to_le_bytes());
        // Writing into a Vec cannot fail.
        let _ = self.ints.serialize_into(&mut out);
        for h in &self.hashes {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<Self, KeysError> {
        let bad = |what| KeysError::Malformed { what };
        let (&version, rest) = data.split_first().ok_or_else(|| bad("empty"))?;
        if version != 1 {
            return Err(bad("unknown version"));
        }
        let len = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| bad("length"))?;
        let len = usize::try_from(len).map_err(|_| bad("length"))?;
        let bitmap = rest.get(4..4 + len).ok_or_else(|| bad("bitmap cut short"))?;
        let ints = RoaringTreemap::deserialize_from(bitmap).map_err(|_| bad("bitmap"))?;
        let tail = rest.get(4 + len..).unwrap_or_default();
        if tail.len() % 8 != 0 {
            return Err(bad("hashes cut short"));
        }
        let hashes =
            tail.chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).map(u64::from_le_bytes).unwrap_or_default()).collect();
        Ok(Self { ints, hashes })
    }

    /// The index buckets the set touches: integer keys by `key >> 16`,
    /// hashes by their top 12 bits, as negative numbers.
    pub fn buckets(&self) -> Vec<i64> {
        let mut out: Vec<i64> = Vec::new();
        let mut last = None;
        for v in self.ints.iter() {
            let b = int_bucket(v);
            if last != Some(b) {
                out.push(b);
                last = Some(b);
            }
        }
        out.extend(self.hashes.iter().map(|h| hash_bucket(*h)));
        out.sort_unstable();
        out.dedup();
        out
    }
}

pub fn int_bucket(v: u64) -> i64 {
    i64::try_from(v >> 16).unwrap_or(i64::MAX)
}

pub fn hash_bucket(h: u64) -> i64 {
    -1 - i64::try_from(h >> 52).unwrap_or(0)
}

/// A key value as the operator types it: an integer, and in any case a hash.
pub fn parse_query_key(key: &str) -> Option<u64> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok().filter(|v: &u64| i64::try_from(*v).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_round_trip_and_answer_membership() {
        let k = HashKey([7; 32]);
        let mut s = KeySet::default();
        for v in [42u64, 7, 1 << 40, 65_536] {
            s.ints.insert(v);
        }
        s.hashes.extend([k.hash(b"zoe"), k.hash(b"-5"), k.hash(b"zoe")]);
        s.seal();
        assert_eq!(s.len(), 6);
        let back = KeySet::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert!(back.contains_int(42) && !back.contains_int(43));
        assert!(back.contains_hash(k.hash(b"zoe")) && !back.contains_hash(k.hash("zoé".as_bytes())));
        assert_ne!(HashKey([8; 32]).hash(b"zoe"), k.hash(b"zoe"), "the hash is keyed");
        let b = back.buckets();
        assert!(b.contains(&0) && b.contains(&1) && b.contains(&int_bucket(1 << 40)));
        assert_eq!(b.iter().filter(|x| **x < 0).count(), 2);
        assert!(KeySet::decode(&[1, 200, 0, 0, 0]).is_err());
        assert!(KeySet::decode(&[]).is_err());
        assert_eq!(parse_query_key("42"), Some(42));
        assert_eq!(parse_query_key("-4"), None);
        assert_eq!(parse_query_key("4a"), None);
    }
}
