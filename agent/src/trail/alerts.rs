//! `[[alert]]` rules over captured keys, per user: distinct rows of a table
//! read over a sliding window above a threshold (one alert per crossing:
//! the rule re-arms once the count falls back to the threshold or below),
//! and reads of listed keys (one alert per statement that returned one).
//!
//! The windows live in the agent's memory (per rule and user: each key's
//! last read time), fed by every session, so a slow reader is counted across
//! sessions. They start empty when the agent starts.

use std::collections::HashMap;
use std::sync::Mutex;

use super::keys::{HashKey, KeySet, parse_query_key};
use super::{AlertRecord, AlertRule, TrailRecord};

/// Hashed keys are kept with the top bit set, so they never collide with
/// integer keys (which are below 2^63).
const HASHED: u64 = 1 << 63;

#[derive(Debug, Default)]
struct Window {
    /// Key → last time read (µs).
    seen: HashMap<u64, i64>,
    /// Over the threshold and already reported.
    alerted: bool,
    pruned_us: i64,
}

/// The alert state of the agent.
#[derive(Debug, Default)]
pub struct Alerts {
    windows: Mutex<HashMap<(String, String), Window>>,
}

/// Who read, for the record.
#[derive(Debug, Clone)]
pub struct Reader {
    pub uid: u32,
    pub user: String,
}

impl Alerts {
    /// Feeds one statement's keys of one table; returns the alerts it raises.
    pub fn observe(
        &self,
        rules: &[AlertRule],
        hash_key: HashKey,
        who: &Reader,
        rec: &TrailRecord,
        set: &KeySet,
        now_us: i64,
    ) -> Vec<AlertRecord> {
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.table == rec.table) {
            let window_s = rule.window.as_secs();
            let base = AlertRecord {
                session: rec.session,
                statement: rec.statement,
                time_us: now_us,
                rule: rule.name.clone(),
                table: rec.table.clone(),
                uid: who.uid,
                user: who.user.clone(),
                distinct: None,
                threshold: rule.threshold,
                window_s,
                listed_keys: Vec::new(),
                action: rule.action,
            };
            if !rule.keys.is_empty() {
                let hit: Vec<String> = rule
                    .keys
                    .iter()
                    .filter(|k| {
                        parse_query_key(k).is_some_and(|v| set.contains_int(v))
                            || set.contains_hash(hash_key.hash(k.as_bytes()))
                    })
                    .cloned()
                    .collect();
                if !hit.is_empty() {
                    out.push(AlertRecord { listed_keys: hit, ..base.clone() });
                }
            }
            let Some(threshold) = rule.threshold else { continue };
            let window_us = i64::try_from(rule.window.as_micros()).unwrap_or(i64::MAX);
            let since = now_us.saturating_sub(window_us);
            let mut all = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let w = all.entry((rule.name.clone(), who.user.clone())).or_default();
            for k in set.ints.iter() {
                w.seen.insert(k, now_us);
            }
            for h in &set.hashes {
                w.seen.insert(h | HASHED, now_us);
            }
            // Expired keys leave the window; pruned at most every 1/100 of it.
            if now_us.saturating_sub(w.pruned_us) >= window_us / 100 {
                w.seen.retain(|_, t| *t >= since);
                w.pruned_us = now_us;
            }
            let distinct = w.seen.len() as u64;
            if distinct > threshold {
                if !w.alerted {
                    w.alerted = true;
                    out.push(AlertRecord { distinct: Some(distinct), ..base });
                }
            } else {
                w.alerted = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::trail::AlertAction;
    use crate::types::SessionId;

    fn rec() -> TrailRecord {
        TrailRecord {
            session: SessionId::new(),
            statement: 1,
            time_us: 0,
            table: "public.customers".into(),
            table_oid: 1,
            key: Some("id".into()),
            rows: 0,
            keys: 0,
            hashed: false,
            key_masked: false,
            masked: false,
            keyless: None,
        }
    }

    fn set(range: std::ops::Range<u64>) -> KeySet {
        let mut s = KeySet::default();
        for v in range {
            s.ints.insert(v);
        }
        s
    }

    #[test]
    fn a_threshold_fires_once_per_crossing_and_a_listed_key_each_time() {
        let k = HashKey([1; 32]);
        let rules = [
            AlertRule {
                name: "bulk".into(),
                table: "public.customers".into(),
                window: Duration::from_secs(30 * 86_400),
                threshold: Some(100),
                keys: vec![],
                action: AlertAction::Log,
            },
            AlertRule {
                name: "vip".into(),
                table: "public.customers".into(),
                window: Duration::from_secs(3600),
                threshold: None,
                keys: vec!["42".into(), "zoe".into()],
                action: AlertAction::Cut,
            },
        ];
        let a = Alerts::default();
        let who = Reader { uid: 1001, user: "ann".into() };
        let other = Reader { uid: 1002, user: "bob".into() };
        let bulk = &rules[..1];
        let day = 86_400_000_000i64;
        assert!(a.observe(bulk, k, &who, &rec(), &set(0..40), 0).is_empty());
        assert!(a.observe(bulk, k, &who, &rec(), &set(20..80), day).is_empty(), "60 of them repeated");
        assert!(a.observe(bulk, k, &other, &rec(), &set(100..180), day).is_empty(), "per user");
        let fired = a.observe(bulk, k, &who, &rec(), &set(80..101), 2 * day);
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].rule.as_str(), fired[0].distinct), ("bulk", Some(101)));
        assert!(a.observe(bulk, k, &who, &rec(), &set(200..300), 3 * day).is_empty(), "once per crossing");
        // 31 days later the window holds only the newest reads: re-armed, then crossed again.
        assert!(a.observe(bulk, k, &who, &rec(), &set(500..510), 40 * day).is_empty());
        assert_eq!(a.observe(bulk, k, &who, &rec(), &set(600..700), 41 * day).len(), 1);
        let mut vip = set(40..45);
        vip.hashes.push(k.hash(b"zoe"));
        vip.seal();
        let fired = a.observe(&rules[1..], k, &other, &rec(), &vip, 0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].listed_keys, vec!["42".to_owned(), "zoe".to_owned()]);
        assert_eq!(a.observe(&rules[1..], k, &other, &rec(), &vip, 1).len(), 1, "each statement");
    }
}
