//! The `ocsf` export format: records mapped to OCSF 1.1.0 events.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{Map, Value, json};

use super::OCSF_VERSION;
use crate::audit::chain::Record;
use crate::audit::{RecordKind, SessionClose, SessionOpen, StatementEnd, StatementStart, hex};
use crate::sql::{Kind, KindList, KindName};

/// Maps records to OCSF 1.1.0 events: session open/close → Authentication
/// (3002), statements → Datastore Activity (6005, one event per statement,
/// with its end record's outcome), agent start/stop → Application Lifecycle
/// (6002). Chunks, truncations and checkpoints have no OCSF event; they are
/// in `records.jsonl`.
#[derive(Debug, Default)]
pub(crate) struct OcsfMapper {
    /// Sessions open so far: who and where, for the events that follow.
    sessions: HashMap<String, SessionOpen>,
    /// Allowed statements waiting for their end record.
    pending: HashMap<(String, u64), Pending>,
    /// How each session's backend was logged in to (shown on its logoff).
    logins: HashMap<String, crate::audit::BackendLogin>,
}

#[derive(Debug)]
struct Pending {
    start: StatementStart,
    record_seq: u64,
    time_us: i64,
    hash: [u8; 32],
}

/// OCSF `time`: milliseconds since the epoch.
fn ms(us: i64) -> i64 {
    us.div_euclid(1000)
}

fn endpoint(addr: &str) -> Value {
    match addr.parse::<SocketAddr>() {
        Ok(a) => json!({ "ip": a.ip().to_string(), "port": a.port() }),
        Err(_) => json!({ "name": addr }),
    }
}

fn ocsf_user(o: Option<&SessionOpen>) -> Value {
    let mut u = Map::new();
    if let Some(name) = o.and_then(|o| o.user.clone()) {
        u.insert("name".into(), name.into());
    }
    if let Some(uid) = o.and_then(|o| o.uid) {
        u.insert("uid".into(), uid.to_string().into());
    }
    if u.is_empty() {
        u.insert("name".into(), "unknown".into());
    }
    Value::Object(u)
}

fn ocsf_actor(o: Option<&SessionOpen>, session: &str) -> Value {
    let mut a = Map::new();
    a.insert("user".into(), ocsf_user(o));
    if let Some(o) = o
        && (o.pid.is_some() || o.comm.is_some())
    {
        let mut p = Map::new();
        if let Some(pid) = o.pid {
            p.insert("pid".into(), pid.into());
        }
        if let Some(comm) = &o.comm {
            p.insert("name".into(), comm.clone().into());
        }
        a.insert("process".into(), Value::Object(p));
    }
    a.insert("session".into(), json!({ "uid": session }));
    Value::Object(a)
}

/// `status_id`, `status`: Some(true) Success, Some(false) Failure, None Unknown.
fn status(ok: Option<bool>) -> (u8, &'static str) {
    match ok {
        Some(true) => (1, "Success"),
        Some(false) => (2, "Failure"),
        None => (0, "Unknown"),
    }
}

/// The record an event comes from: `metadata.uid` is its hash.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    hash: &'a [u8; 32],
    logged_us: i64,
    session: Option<&'a str>,
}

impl<'a> From<&'a Record> for Source<'a> {
    fn from(r: &'a Record) -> Self {
        Self { hash: &r.hash, logged_us: r.time_us, session: r.session.as_deref() }
    }
}

/// How it went: `ok` (None: not known), and whether Gatehouse refused it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    ok: Option<bool>,
    refused: bool,
}

/// The OCSF category of the classes used here.
fn category(class_uid: u32) -> (u32, &'static str) {
    match class_uid {
        3000..=3999 => (3, "Identity & Access Management"),
        _ => (6, "Application Activity"),
    }
}

/// The fields every event has.
fn ocsf_base(
    (class_uid, class_name): (u32, &str),
    (activity_id, activity_name): (u32, &str),
    time_us: i64,
    src: Source<'_>,
    outcome: Outcome,
    message: String,
) -> Map<String, Value> {
    let (category_uid, category_name) = category(class_uid);
    let (status_id, status_name) = status(outcome.ok);
    let (severity_id, severity) = if outcome.refused { (3, "Medium") } else { (1, "Informational") };
    let mut e = Map::new();
    let mut put = |k: &str, v: Value| {
        e.insert(k.to_owned(), v);
    };
    put("class_uid", class_uid.into());
    put("class_name", class_name.into());
    put("category_uid", category_uid.into());
    put("category_name", category_name.into());
    put("activity_id", activity_id.into());
    put("activity_name", activity_name.into());
    put("type_uid", (u64::from(class_uid) * 100 + u64::from(activity_id)).into());
    put("type_name", format!("{class_name}: {activity_name}").into());
    put("time", ms(time_us).into());
    put("severity_id", severity_id.into());
    put("severity", severity.into());
    put("status_id", status_id.into());
    put("status", status_name.into());
    put("message", message.into());
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": { "name": "Gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") },
        "uid": hex(src.hash),
        "logged_time": ms(src.logged_us),
    });
    if let (Some(s), Some(m)) = (src.session, metadata.as_object_mut()) {
        m.insert("correlation_uid".into(), s.into());
    }
    put("metadata", metadata);
    e
}

/// The Datastore Activity (6005) activity of a statement, by its kinds:
/// the most consequential one wins.
fn datastore_activity(kinds: &KindList) -> (u32, &'static str) {
    let any = |these: &[Kind]| kinds.iter().filter_map(KindName::known).any(|k| these.contains(&k));
    if any(&[Kind::Delete, Kind::DeleteWithoutWhere, Kind::Truncate, Kind::Drop]) {
        (7, "Delete")
    } else if any(&[Kind::Update, Kind::UpdateWithoutWhere, Kind::Merge, Kind::Alter]) {
        (2, "Update")
    } else if any(&[Kind::Insert, Kind::Create]) {
        (6, "Create")
    } else if any(&[Kind::CopyFrom]) {
        (5, "Write")
    } else if any(&[Kind::CopyTo, Kind::Show]) {
        (1, "Read")
    } else if any(&[Kind::Select]) {
        (4, "Query")
    } else {
        (99, "Other")
    }
}

impl OcsfMapper {
    pub(crate) fn record(&mut self, r: &Record) -> Vec<Value> {
        // A statement with its end folded in: mapped as the two records it stands for.
        if let Some((start, end)) = crate::audit::fold::split(r) {
            let mut events = self.record(&start);
            events.extend(self.record(&end));
            return events;
        }
        let session = r.session.clone().unwrap_or_default();
        match r.record_kind() {
            Some(RecordKind::SessionOpen) => match serde_json::from_slice::<SessionOpen>(&r.body) {
                Ok(o) => {
                    let e = self.logon(r, &o);
                    self.sessions.insert(session, o);
                    vec![e]
                }
                Err(_) => vec![],
            },
            Some(RecordKind::SessionClose) => match serde_json::from_slice::<SessionClose>(&r.body) {
                Ok(c) => {
                    // Its allowed statements without an end record: outcome unknown.
                    let mut keys: Vec<(String, u64)> =
                        self.pending.keys().filter(|(s, _)| *s == session).cloned().collect();
                    keys.sort();
                    let open: Vec<Pending> = keys.iter().filter_map(|k| self.pending.remove(k)).collect();
                    let mut out: Vec<Value> = open.iter().map(|p| self.statement(&session, p, None)).collect();
                    out.push(self.logoff(r, &c));
                    self.sessions.remove(&session);
                    self.logins.remove(&session);
                    out
                }
                Err(_) => vec![],
            },
            Some(RecordKind::Statement) => match serde_json::from_slice::<StatementStart>(&r.body) {
                Ok(s) => {
                    let p = Pending { record_seq: r.seq, time_us: r.time_us, hash: r.hash, start: s };
                    if p.start.decision.allowed() {
                        self.pending.insert((session, p.start.seq), p);
                        vec![]
                    } else {
                        vec![self.statement(&session, &p, None)]
                    }
                }
                Err(_) => vec![],
            },
            Some(RecordKind::BackendLogin) => {
                if let Ok(l) = serde_json::from_slice::<crate::audit::BackendLogin>(&r.body) {
                    self.logins.insert(session, l);
                }
                vec![]
            }
            Some(RecordKind::StatementEnd) => match serde_json::from_slice::<StatementEnd>(&r.body) {
                Ok(end) => match self.pending.remove(&(session.clone(), end.seq)) {
                    Some(p) => vec![self.statement(&session, &p, Some((&end, r)))],
                    None => vec![],
                },
                Err(_) => vec![],
            },
            Some(RecordKind::Http) => match serde_json::from_slice::<crate::audit::HttpExchange>(&r.body) {
                Ok(h) => vec![self.http(r, &session, &h)],
                Err(_) => vec![],
            },
            Some(RecordKind::Trail) => match serde_json::from_slice::<crate::trail::TrailRecord>(&r.body) {
                Ok(t) => vec![self.trail(r, &session, &t)],
                Err(_) => vec![],
            },
            Some(RecordKind::TrailAlert) => match serde_json::from_slice::<crate::trail::AlertRecord>(&r.body) {
                Ok(a) => vec![self.trail_alert(r, &session, &a)],
                Err(_) => vec![],
            },
            Some(RecordKind::Agent) => {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let activity = match v.get("what").and_then(Value::as_str) {
                    Some("start") => (3, "Start"),
                    Some("stop") => (4, "Stop"),
                    _ => (99, "Other"),
                };
                let mut e = ocsf_base(
                    (6002, "Application Lifecycle"),
                    activity,
                    r.time_us,
                    r.into(),
                    Outcome { ok: Some(true), refused: false },
                    format!("the Gatehouse agent: {}", activity.1.to_lowercase()),
                );
                e.insert(
                    "app".into(),
                    json!({ "name": "Gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") }),
                );
                vec![Value::Object(e)]
            }
            _ => vec![],
        }
    }

    /// Allowed statements whose end is not in the export: outcome unknown.
    pub(super) fn finish(&mut self) -> Vec<Value> {
        let mut rest: Vec<((String, u64), Pending)> = self.pending.drain().collect();
        rest.sort_by_key(|(_, p)| p.record_seq);
        rest.iter().map(|((s, _), p)| self.statement(s, p, None)).collect()
    }

    /// A trail record: Datastore Activity (6005), Read, with the table, the
    /// key column and counts; the keys themselves are in the JSONL export's
    /// `data_hex` (see `crate::trail::keys` for the layout).
    fn trail(&self, r: &Record, session: &str, t: &crate::trail::TrailRecord) -> Value {
        let o = self.sessions.get(session);
        let who = o.and_then(|o| o.user.clone()).unwrap_or_else(|| "unknown".into());
        let message = match &t.key {
            Some(k) => format!("{who} was sent {} rows ({} distinct {k}) of {}", t.rows, t.keys, t.table),
            None => format!("{who} read {} rows of {} without its key (keyless read)", t.rows, t.table),
        };
        let mut e = ocsf_base(
            (6005, "Datastore Activity"),
            (1, "Read"),
            t.time_us,
            r.into(),
            Outcome { ok: Some(true), refused: false },
            message,
        );
        e.insert("user".into(), ocsf_user(o));
        e.insert("actor".into(), ocsf_actor(o, session));
        e.insert("table".into(), json!({ "name": t.table, "uid": t.table_oid.to_string() }));
        e.insert("unmapped".into(), json!({ "gatehouse_trail": t }));
        Value::Object(e)
    }

    /// A trail alert: Detection Finding (2004), Create.
    fn trail_alert(&self, r: &Record, session: &str, a: &crate::trail::AlertRecord) -> Value {
        let o = self.sessions.get(session);
        let mut e = ocsf_base(
            (2004, "Detection Finding"),
            (1, "Create"),
            a.time_us,
            r.into(),
            Outcome { ok: Some(true), refused: false },
            a.describe(),
        );
        e.insert("finding_info".into(), json!({ "title": format!("trail alert {}", a.rule), "uid": hex(&r.hash) }));
        e.insert("user".into(), ocsf_user(o));
        e.insert("actor".into(), ocsf_actor(o, session));
        e.insert("unmapped".into(), json!({ "gatehouse_trail_alert": a }));
        Value::Object(e)
    }

    fn logon(&self, r: &Record, o: &SessionOpen) -> Value {
        let allowed = o.decision.allowed();
        let who = o.user.clone().unwrap_or_else(|| o.uid.map_or_else(|| "unknown".into(), |u| format!("uid {u}")));
        let backend = o.backend.as_deref().unwrap_or("an unnamed backend");
        let message = if allowed {
            format!("{who} opened a session to {backend}")
        } else {
            format!("{who} was refused a session to {backend}: {}", o.reason)
        };
        let mut e = ocsf_base(
            (3002, "Authentication"),
            (1, "Logon"),
            o.started_us,
            r.into(),
            Outcome { ok: Some(allowed), refused: !allowed },
            message,
        );
        let session = r.session.as_deref().unwrap_or_default();
        e.insert("status_detail".into(), o.reason.clone().into());
        e.insert("user".into(), ocsf_user(Some(o)));
        e.insert("actor".into(), ocsf_actor(Some(o), session));
        e.insert("src_endpoint".into(), endpoint(&o.client));
        e.insert("dst_endpoint".into(), o.orig_dst.as_deref().map_or_else(|| json!({}), endpoint));
        if let Some(b) = &o.backend {
            e.insert("service".into(), json!({ "name": b }));
        }
        e.insert("session".into(), json!({ "uid": session, "created_time": ms(o.started_us) }));
        e.insert(
            "unmapped".into(),
            json!({
                "decision": o.decision,
                "rule": o.rule,
                "protocol": o.protocol,
                "gid": o.gid,
                "cgroup_id": o.cgroup_id,
                "backend": o.backend,
                "record_seq": r.seq,
            }),
        );
        Value::Object(e)
    }

    fn logoff(&self, r: &Record, c: &SessionClose) -> Value {
        let session = r.session.as_deref().unwrap_or_default();
        let o = self.sessions.get(session);
        let who = ocsf_user(o);
        let mut e = ocsf_base(
            (3002, "Authentication"),
            (2, "Logoff"),
            c.ended_us,
            r.into(),
            Outcome { ok: Some(true), refused: false },
            format!("session {session} ended: {}", c.end_reason),
        );
        e.insert("status_detail".into(), c.end_reason.clone().into());
        e.insert("user".into(), who);
        e.insert("actor".into(), ocsf_actor(o, session));
        if let Some(o) = o {
            e.insert("src_endpoint".into(), endpoint(&o.client));
            e.insert("dst_endpoint".into(), o.orig_dst.as_deref().map_or_else(|| json!({}), endpoint));
            if let Some(b) = &o.backend {
                e.insert("service".into(), json!({ "name": b }));
            }
            e.insert("start_time".into(), ms(o.started_us).into());
            e.insert("duration".into(), ms(c.ended_us.saturating_sub(o.started_us)).into());
        }
        e.insert("end_time".into(), ms(c.ended_us).into());
        e.insert("session".into(), json!({ "uid": session }));
        let login = self.logins.get(session);
        e.insert(
            "unmapped".into(),
            json!({
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "record_seq": r.seq,
                "backend_tls": login.map(crate::audit::BackendLogin::tls_summary),
                "backend_auth": login.map(|l| l.auth.clone()),
                "backend_certificate_sha256": login.and_then(|l| l.certificate_sha256.clone()),
            }),
        );
        Value::Object(e)
    }

    /// A statement, with its end when known.
    /// An HTTP exchange as OCSF HTTP Activity (4002), activity by method.
    fn http(&self, r: &Record, session: &str, h: &crate::audit::HttpExchange) -> Value {
        let o = self.sessions.get(session);
        let refused = !h.decision.allowed();
        let activity = match h.method.as_str() {
            "CONNECT" => (1, "Connect"),
            "DELETE" => (2, "Delete"),
            "GET" => (3, "Get"),
            "HEAD" => (4, "Head"),
            "OPTIONS" => (5, "Options"),
            "POST" => (6, "Post"),
            "PUT" => (7, "Put"),
            "TRACE" => (8, "Trace"),
            "PATCH" => (9, "Patch"),
            _ => (99, "Other"),
        };
        let ok = h.status.map(|s| s < 400 && h.error.is_none());
        let message = if refused {
            format!("HTTP request refused by Gatehouse: {}", h.reason.as_deref().unwrap_or("no reason recorded"))
        } else {
            format!("{} {} → {}", h.method, h.target, h.status.map_or_else(|| "no response".into(), |s| s.to_string()))
        };
        let mut e =
            ocsf_base((4002, "HTTP Activity"), activity, h.started_us, r.into(), Outcome { ok, refused }, message);
        if let Some(why) = h.reason.clone().or_else(|| h.error.clone()) {
            e.insert("status_detail".into(), why.into());
        }
        e.insert("actor".into(), ocsf_actor(o, session));
        e.insert("src_endpoint".into(), o.map_or_else(|| json!({}), |o| endpoint(&o.client)));
        if let Some(d) = o.and_then(|o| o.orig_dst.as_deref()) {
            e.insert("dst_endpoint".into(), endpoint(d));
        }
        let (path, query) = h.target.split_once('?').unwrap_or((h.target.as_str(), ""));
        let header = |k: &str| h.request_headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        e.insert(
            "http_request".into(),
            json!({
                "http_method": h.method,
                "version": h.version,
                "url": { "path": path, "query_string": query, "hostname": h.host },
                "user_agent": header("user-agent"),
                "length": h.request_bytes,
                "uid": format!("{session}/{}", h.seq),
            }),
        );
        if let Some(status) = h.status {
            e.insert("http_response".into(), json!({ "code": status, "length": h.response_bytes }));
        }
        e.insert("start_time".into(), ms(h.started_us).into());
        e.insert("duration".into(), (h.duration_us / 1000).into());
        e.insert(
            "unmapped".into(),
            json!({
                "decision": h.decision,
                "rule": h.rule,
                "reason": h.reason,
                "masked": h.masked,
                "credentials": h.credentials,
                "exchange_seq": h.seq,
                "record_seq": r.seq,
            }),
        );
        Value::Object(e)
    }

    fn statement(&self, session: &str, p: &Pending, end: Option<(&StatementEnd, &Record)>) -> Value {
        let s = &p.start;
        let o = self.sessions.get(session);
        let refused = !s.decision.allowed();
        let ok = if refused { Some(false) } else { end.map(|(e, _)| e.error.is_none()) };
        let (id, name) = datastore_activity(&s.kinds);
        let kinds = s.kinds.text();
        let activity_name = if id == 99 { &*kinds } else { name };
        let message = if refused {
            format!("statement refused by Gatehouse: {}", s.reason.as_deref().unwrap_or("no reason recorded"))
        } else {
            format!("statement {} ({})", s.seq, s.kinds)
        };
        // The metadata uid is the statement record's hash (not its end's).
        let src = Source { hash: &p.hash, logged_us: p.time_us, session: Some(session) };
        let mut e = ocsf_base(
            (6005, "Datastore Activity"),
            (id, activity_name),
            s.started_us,
            src,
            Outcome { ok, refused },
            message,
        );
        if refused {
            e.insert("status_detail".into(), s.reason.clone().into());
        } else if let Some(err) = end.and_then(|(e, _)| e.error.clone()) {
            e.insert("status_detail".into(), err.into());
        }
        e.insert("actor".into(), ocsf_actor(o, session));
        e.insert("src_endpoint".into(), o.map_or_else(|| json!({}), |o| endpoint(&o.client)));
        if let Some(d) = o.and_then(|o| o.orig_dst.as_deref()) {
            e.insert("dst_endpoint".into(), endpoint(d));
        }
        let db = o.and_then(|o| o.backend.clone()).unwrap_or_else(|| "unknown".into());
        e.insert("database".into(), json!({ "name": db, "type_id": 1, "type": "Relational" }));
        if let Some(t) = s.tables.names().next() {
            e.insert("table".into(), json!({ "name": t }));
        }
        e.insert(
            "query_info".into(),
            json!({ "query_string": s.text, "query_time": ms(s.started_us), "uid": format!("{session}/{}", s.seq) }),
        );
        e.insert("start_time".into(), ms(s.started_us).into());
        let mut unmapped = json!({
            "decision": s.decision,
            "rule": s.rule,
            "reason": s.reason,
            "kinds": s.kinds,
            "tables": s.tables,
            "statement_seq": s.seq,
            "record_seq": p.record_seq,
        });
        if let Some((end, end_rec)) = end {
            e.insert("end_time".into(), ms(end.ended_us).into());
            e.insert("duration".into(), (end.duration_us / 1000).into());
            if let Some(u) = unmapped.as_object_mut() {
                u.insert("rows".into(), end.rows.into());
                u.insert("error".into(), end.error.clone().into());
                u.insert(
                    "masked".into(),
                    end.masked.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(Value::Null),
                );
                u.insert("end_record_seq".into(), end_rec.seq.into());
                u.insert("end_record_hash".into(), hex(&end_rec.hash).into());
            }
        }
        e.insert("unmapped".into(), unmapped);
        Value::Object(e)
    }
}
