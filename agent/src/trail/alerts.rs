//! `[[alert]]` rules over captured keys, per user: distinct rows of a table
//! read over a sliding window above a threshold (one alert per crossing:
//! the rule re-arms once the count falls back to the threshold or below),
//! and reads of listed keys (one alert per statement that returned one).
//!
//! The windows live in the agent's memory (per rule and user: each key's
//! last read time), fed by every session, so a slow reader is counted across
//! sessions. A starting agent rebuilds them from the trail records in the
//! store within each rule's window ([`Alerts::rebuild`]), so a restart does
//! not reset anyone's count.

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

/// The most keys [`Alerts::rebuild`] loads from the store (about 40 bytes
/// each in memory): past it, the newest reads are kept, the rest dropped
/// with a warning.
pub const REBUILD_MAX_KEYS: u64 = 4_000_000;

/// What [`Alerts::rebuild`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Trail records read.
    pub records: u64,
    /// (rule, user) windows filled.
    pub windows: u64,
    /// Keys held in them.
    pub keys: u64,
    /// [`REBUILD_MAX_KEYS`] was reached: older reads were left out.
    pub capped: bool,
}

impl Alerts {
    /// Fills the threshold rules' windows from the trail records in the
    /// store within each rule's window (an agent restart must not give a
    /// slow reader a fresh count). A window already over its threshold is
    /// marked reported: it crossed before the restart, and fires again only
    /// after it re-arms. Reads newest first, at most `max_keys` keys.
    pub fn rebuild(
        &self,
        conn: &rusqlite::Connection,
        rules: &[AlertRule],
        now_us: i64,
        max_keys: u64,
    ) -> rusqlite::Result<Rebuilt> {
        let mut done = Rebuilt::default();
        let mut all = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tables: Vec<&str> = rules.iter().filter(|r| r.threshold.is_some()).map(|r| r.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        for table in tables {
            let mine: Vec<(&AlertRule, i64)> = rules
                .iter()
                .filter(|r| r.table == table && r.threshold.is_some())
                .map(|r| (r, now_us.saturating_sub(i64::try_from(r.window.as_micros()).unwrap_or(i64::MAX))))
                .collect();
            let since = mine.iter().map(|(_, s)| *s).min().unwrap_or(now_us);
            let left = max_keys.saturating_sub(done.keys);
            let capped = super::store::recent_reads(conn, table, since, left, |user, time_us, set| {
                done.records += 1;
                for (rule, rule_since) in &mine {
                    if time_us < *rule_since {
                        continue;
                    }
                    let w = all.entry((rule.name.clone(), user.clone())).or_default();
                    // Newest first: a key's first sighting here is its last read.
                    for k in set.ints.iter() {
                        w.seen.entry(k).or_insert(time_us);
                    }
                    for h in &set.hashes {
                        w.seen.entry(h | HASHED).or_insert(time_us);
                    }
                }
                done.keys += set.len();
            })?;
            done.capped |= capped;
        }
        for ((rule, _), w) in all.iter_mut() {
            let threshold = rules.iter().find(|r| &r.name == rule).and_then(|r| r.threshold).unwrap_or(u64::MAX);
            w.alerted = w.seen.len() as u64 > threshold;
            w.pruned_us = now_us;
        }
        done.windows = all.len() as u64;
        Ok(done)
    }
}

/// An alert with `action = "hold"` that fired and still stands for a user
/// on a backend: their next statement there (in any session) waits for an
/// approval naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The alert rule's name.
    pub rule: String,
    /// What the alert says (the approval request's reason).
    pub reason: String,
    /// When it fired: an approval lifts this firing, not a later one.
    pub since_us: i64,
    /// It lapses then (the rule's window after it fired).
    pub until_us: i64,
}

/// The holds standing, per (user, backend). In memory: an agent restart
/// lifts them (the windows are rebuilt, but a threshold already crossed
/// does not fire again until it re-arms).
#[derive(Debug, Default)]
pub struct Holds {
    inner: Mutex<HashMap<(String, String), Standing>>,
}

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Standing>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An alert with action `hold` fired for `user` reading through `backend`.
    pub fn set(&self, user: &str, backend: &str, alert: &AlertRecord, window: std::time::Duration) {
        let until_us = alert.time_us.saturating_add(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
        let standing =
            Standing { rule: alert.rule.clone(), reason: alert.describe(), since_us: alert.time_us, until_us };
        self.lock().insert((user.to_owned(), backend.to_owned()), standing);
    }

    /// The hold standing for `user` on `backend` now, if any. One whose
    /// time is over, or whose rule is gone from the policy or no longer
    /// says `hold` (a reload), lapses.
    pub fn standing(&self, user: &str, backend: &str, rules: &[AlertRule], now_us: i64) -> Option<Standing> {
        let mut all = self.lock();
        let key = (user.to_owned(), backend.to_owned());
        let s = all.get(&key)?;
        let live =
            s.until_us > now_us && rules.iter().any(|r| r.name == s.rule && r.action == super::AlertAction::Hold);
        if live {
            Some(s.clone())
        } else {
            all.remove(&key);
            None
        }
    }

    /// An approver let a held statement run: the hold that held it is
    /// lifted (unless the alert fired again since).
    pub fn lift(&self, user: &str, backend: &str, since_us: i64) {
        let mut all = self.lock();
        let key = (user.to_owned(), backend.to_owned());
        if all.get(&key).is_some_and(|s| s.since_us == since_us) {
            all.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::trail::AlertAction;
    use crate::types::SessionId;

    pub(super) fn rec() -> TrailRecord {
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

    pub(super) fn set(range: std::ops::Range<u64>) -> KeySet {
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

#[cfg(test)]
mod rebuild_tests {
    use std::time::Duration;

    use super::tests::{rec, set};
    use super::*;
    use crate::trail::{AlertAction, store};
    use crate::types::SessionId;

    const DAY: i64 = 86_400_000_000;

    fn bulk(threshold: u64) -> AlertRule {
        AlertRule {
            name: "bulk".into(),
            table: "public.customers".into(),
            window: Duration::from_secs(30 * 86_400),
            threshold: Some(threshold),
            keys: vec![],
            action: AlertAction::Log,
        }
    }

    /// A store holding, for `user`, one trail record per (time, key range).
    fn store_with(reads: &[(&str, i64, std::ops::Range<u64>)]) -> rusqlite::Connection {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::audit::SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        for (i, (user, time_us, range)) in reads.iter().enumerate() {
            let seq = u64::try_from(i).unwrap() + 1;
            let session = SessionId::new();
            tx.execute(
                "INSERT INTO sessions (id, started_us, uid, user, client, decision, reason)
                 VALUES (?1, ?2, 1001, ?3, 'c', 'allow', '')",
                rusqlite::params![session.to_string(), time_us, user],
            )
            .unwrap();
            let mut set = KeySet::default();
            for k in range.clone() {
                set.ints.insert(k);
            }
            set.seal();
            let rec = TrailRecord {
                session,
                statement: 1,
                time_us: *time_us,
                table: "public.customers".into(),
                table_oid: 1,
                key: Some("id".into()),
                rows: set.len(),
                keys: set.len(),
                hashed: false,
                key_masked: false,
                masked: false,
                keyless: None,
            };
            let data = set.encode();
            tx.execute(
                "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
                 VALUES (?1, ?2, ?3, 'trail', x'', x'', ?4, x'', x'')",
                rusqlite::params![i64::try_from(seq).unwrap(), time_us, session.to_string(), data],
            )
            .unwrap();
            store::index(&tx, seq, &rec, &data).unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    #[test]
    fn a_restart_does_not_reset_a_slow_readers_count() {
        let now = 100 * DAY;
        // ann read 80 rows 40 days ago (outside the window) and 90 + 60 (30 repeated) within it; bob 50.
        let conn = store_with(&[
            ("ann", now - 40 * DAY, 1000..1080),
            ("ann", now - 20 * DAY, 0..90),
            ("ann", now - 2 * DAY, 60..120),
            ("bob", now - DAY, 0..50),
        ]);
        let rules = [bulk(150)];
        let k = HashKey([1; 32]);
        let ann = Reader { uid: 1001, user: "ann".into() };
        let bob = Reader { uid: 1002, user: "bob".into() };

        // Without the rebuild (the old behaviour) ann would need 151 new rows to fire.
        let fresh = Alerts::default();
        assert!(fresh.observe(&rules, k, &ann, &rec(), &set(200..231), now).is_empty());

        let a = Alerts::default();
        let done = a.rebuild(&conn, &rules, now, REBUILD_MAX_KEYS).unwrap();
        assert_eq!((done.records, done.windows, done.capped), (3, 2, false), "the 40-day-old read is out: {done:?}");
        // ann has 120 distinct rows in the window: 31 more cross 150.
        let fired = a.observe(&rules, k, &ann, &rec(), &set(200..231), now);
        assert_eq!(fired.len(), 1, "ann crosses with what she read before the restart");
        assert_eq!(fired[0].distinct, Some(151));
        assert!(a.observe(&rules, k, &bob, &rec(), &set(100..180), now).is_empty(), "bob: 50 + 80");

        // A window already over its threshold at the restart does not fire again.
        let b = Alerts::default();
        b.rebuild(&conn, &[bulk(100)], now, REBUILD_MAX_KEYS).unwrap();
        assert!(b.observe(&[bulk(100)], k, &ann, &rec(), &set(500..510), now).is_empty(), "crossed before");

        // Bounded: the newest reads are kept.
        let c = Alerts::default();
        let done = c.rebuild(&conn, &rules, now, 100).unwrap();
        assert!(done.capped && done.records == 2, "{done:?}");
    }

    #[test]
    fn a_hold_stands_until_approved_its_window_ends_or_its_rule_goes() {
        let rule = AlertRule {
            name: "vip".into(),
            table: "public.customers".into(),
            window: Duration::from_secs(3600),
            threshold: None,
            keys: vec!["42".into()],
            action: AlertAction::Hold,
        };
        let alert = |t: i64| AlertRecord {
            session: SessionId::new(),
            statement: 1,
            time_us: t,
            rule: "vip".into(),
            table: "public.customers".into(),
            uid: 1001,
            user: "ann".into(),
            distinct: None,
            threshold: None,
            window_s: 3600,
            listed_keys: vec!["42".into()],
            action: AlertAction::Hold,
        };
        let rules = [rule.clone()];
        let h = Holds::default();
        h.set("ann", "appdb", &alert(1_000), rule.window);
        let s = h.standing("ann", "appdb", &rules, 2_000).unwrap();
        assert!(s.reason.contains("alert `vip`") && s.reason.contains("42"), "{s:?}");
        assert!(h.standing("ann", "other", &rules, 2_000).is_none(), "per backend");
        assert!(h.standing("bob", "appdb", &rules, 2_000).is_none(), "per user");
        // A denial leaves it standing; an approval of an older firing does not lift a newer one.
        h.set("ann", "appdb", &alert(5_000), rule.window);
        h.lift("ann", "appdb", 1_000);
        assert!(h.standing("ann", "appdb", &rules, 6_000).is_some());
        h.lift("ann", "appdb", 5_000);
        assert!(h.standing("ann", "appdb", &rules, 6_000).is_none(), "approved: lifted");
        // It lapses at the end of the window, or when the rule no longer holds.
        h.set("ann", "appdb", &alert(0), rule.window);
        assert!(h.standing("ann", "appdb", &rules, 3_600_000_001).is_none());
        h.set("ann", "appdb", &alert(0), rule.window);
        let logged = [AlertRule { action: AlertAction::Log, ..rule.clone() }];
        assert!(h.standing("ann", "appdb", &logged, 1).is_none());
    }
}
