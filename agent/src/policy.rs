//! The operators' policy: protected backends, who may reach them, which
//! statements they may run, with what masking and under which approvals.
//!
//! Loading ([`load`]) turns TOML files into a validated [`Policy`]; deciding
//! ([`decide`]) is a pure function of the policy, the principal, the request
//! and the time passed in.
//!
//! Semantics (also in `gatehouse policy --help` and the README):
//! - default deny: nothing is reachable unless an allow rule says so;
//! - any matching deny rule beats any allow rule;
//! - among matching allow rules the most specific wins (a rule naming the
//!   user beats one naming a group, which beats `users = ["*"]`; a backend
//!   named exactly beats a glob); ties go to the rule written first;
//! - every decision names the rule that made it and, when refused, the
//!   closest rule that did not match and why.

pub mod decide;
pub mod diag;
pub mod files;
pub mod http;
pub mod load;
pub mod login;
pub mod ssh;
pub mod testcases;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::identity::Principal;
use crate::settings::AgentRaw;
use crate::sql::Kind;
use crate::types::{BackendName, DbRole, RuleName};
pub use decide::{Decision, Request, Trace, TraceEntry, Verdict};
pub use diag::{Diagnostic, Diagnostics, Location};
pub use login::{IdentityConfig, Require, TestLogin};
pub use testcases::TestOutcome;

/// A validated policy.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    pub agent: AgentRaw,
    pub backends: Vec<Backend>,
    pub rules: Vec<Rule>,
    pub masks: BTreeMap<String, Arc<crate::mask::Profile>>,
    /// JSON field rules of masking profiles that have `fields` (HTTP bodies).
    pub mask_fields: BTreeMap<String, Arc<crate::mask::json::FieldRules>>,
    pub approvers: BTreeMap<String, Who>,
    /// Access that may be requested for a while (`[[grant]]`).
    pub grants: Vec<Grant>,
    /// Who is told about requests (`[[notify]]`).
    pub notify: Vec<crate::notify::Target>,
    /// `[identity]`: the IdP `gatehouse login` uses; without it nobody can log in.
    pub identity: Option<IdentityConfig>,
    /// `[[trail]]` and `[[alert]]`: the row-level access trail (`crate::trail`).
    pub trail: Arc<crate::trail::Config>,
    pub tests: Vec<TestCase>,
    pub(crate) index: decide::Index,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Postgres,
    /// MySQL and MariaDB, decided per statement (`protocol::mysql`, `sql::mysql`).
    Mysql,
    /// HTTP/1.1 and HTTP/2, decided per request (`policy::http`, `protocol::http`).
    Http,
    /// SSH, terminated and decided per channel (`policy::ssh`, `protocol::ssh`).
    Ssh,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Http => "http",
            Self::Ssh => "ssh",
        }
    }

    /// Whether statements are parsed (and `statements`/`tables` apply).
    pub fn is_sql(self) -> bool {
        matches!(self, Self::Postgres | Self::Mysql)
    }
}

/// Where a backend lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    /// A name re-resolved periodically; every address it resolves to is protected.
    Host {
        host: String,
        port: u16,
    },
}

/// TLS from Gatehouse to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Off,
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS required, certificate checked against `ca_file` (or the system roots) and the host name.
    Verify,
}

/// How the backend may make Gatehouse authenticate (`require_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuthMethod {
    /// SCRAM with channel binding to the TLS connection (tls-server-end-point).
    #[serde(rename = "scram-sha-256-plus")]
    ScramPlus,
    #[serde(rename = "scram-sha-256")]
    Scram,
    /// md5: the server learns a hash that logs in as the role (replayable).
    #[serde(rename = "md5")]
    Md5,
    /// Cleartext: the server learns the password.
    #[serde(rename = "password")]
    Password,
    /// No authentication asked (trust): the server asks for nothing.
    #[serde(rename = "none")]
    None,
}

impl AuthMethod {
    pub const NAMES: [&'static str; 5] = ["scram-sha-256-plus", "scram-sha-256", "md5", "password", "none"];

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scram-sha-256-plus" => Ok(Self::ScramPlus),
            "scram-sha-256" => Ok(Self::Scram),
            "md5" => Ok(Self::Md5),
            "password" => Ok(Self::Password),
            "none" => Ok(Self::None),
            _ => Err(s.to_owned()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ScramPlus => "SCRAM-SHA-256-PLUS",
            Self::Scram => "SCRAM-SHA-256",
            Self::Md5 => "md5",
            Self::Password => "password",
            Self::None => "none",
        }
    }

    /// Methods that hand the server the password or a replayable equivalent.
    pub fn reveals_secret(self) -> bool {
        matches!(self, Self::Md5 | Self::Password)
    }
}

/// A login Gatehouse holds for a backend. The secret stays in its file
/// (root-only) and is read when a session needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password_file: Option<PathBuf>,
    /// Instead of one shared login: a login role made per session.
    pub dynamic: Option<Dynamic>,
    /// The password of a role Gatehouse made for one session (never from a file).
    pub issued: Option<Issued>,
}

/// `credentials = { dynamic = { … } }`: Gatehouse logs in as `admin`,
/// creates a login role per session (`CREATE ROLE … LOGIN PASSWORD …
/// VALID UNTIL … IN ROLE template`, a random password it never shows,
/// sent to the server as a SCRAM verifier), uses it, and drops it when the
/// session ends or its time is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub admin_user: String,
    pub admin_password_file: PathBuf,
    /// The database the admin login connects to (default `postgres`).
    pub admin_database: String,
    /// The role whose privileges the made roles get (membership).
    pub template_role: String,
    /// How long a made role lives at most (its VALID UNTIL; the session is cut then).
    pub ttl: Duration,
}

/// A password Gatehouse generated and holds in memory only.
#[derive(Clone)]
pub struct Issued(pub Arc<crate::secrets::Secret>);

impl PartialEq for Issued {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Issued {}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued([held in memory])")
    }
}

impl Credentials {
    /// What sessions sharing this login's privileges are cached under (the
    /// template role for per-session roles).
    pub fn cache_key(&self) -> String {
        match &self.dynamic {
            Some(d) => format!("dynamic:{}", d.template_role),
            None => self.user.clone(),
        }
    }

    /// A login from a password file.
    pub fn from_file(user: impl Into<String>, password_file: Option<PathBuf>) -> Self {
        Self { user: user.into(), password_file, dynamic: None, issued: None }
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: BackendName,
    pub protocol: Protocol,
    pub target: Target,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry (`tls = "verify"`):
    /// by default the `host` name, or the IP address of `address`.
    pub tls_server_name: Option<String>,
    /// Authentication methods the backend may ask for; `None`: SCRAM only
    /// (and no authentication at all only when no password is held), plus
    /// md5 and cleartext when the certificate is verified.
    pub require_auth: Option<Vec<AuthMethod>>,
    /// The default login (rules without `as_role`).
    pub credentials: Option<Credentials>,
    /// Logins by role name, for rules with `as_role`.
    pub roles: BTreeMap<String, Credentials>,
    /// Certificate and key to offer clients that ask for TLS (sslmode=require);
    /// without it, Gatehouse answers SSLRequest with 'N' (the client leg is loopback).
    pub client_tls: Option<ClientTls>,
    /// `protocol = "http"`: TLS mode, injected credentials, SNI names.
    pub http: Option<http::HttpBackend>,
    /// SSH backends: the login user, host key and upstream credentials.
    pub ssh: Option<ssh::SshBackend>,
    /// MySQL backends: the server's RSA public key (PEM), pinned for
    /// caching_sha2_password's full path without TLS.
    pub server_public_key: Option<PathBuf>,
    /// MySQL backends: take the RSA public key the server sends when none is
    /// pinned (an impostor can send its own).
    pub get_server_public_key: bool,
    pub at: Location,
}

/// A certificate (chain) and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Backend {
    /// Whether the backend may ask for `method`, given whether the TLS
    /// connection was verified and whether a password is held.
    pub fn allows_auth(&self, method: AuthMethod, verified: bool, has_password: bool) -> bool {
        match &self.require_auth {
            Some(list) => list.contains(&method),
            None => match method {
                AuthMethod::ScramPlus | AuthMethod::Scram => true,
                AuthMethod::Md5 | AuthMethod::Password => verified,
                AuthMethod::None => !has_password || verified,
            },
        }
    }

    /// The login for a rule's `as_role` (or the default one).
    pub fn login(&self, role: Option<&DbRole>) -> Option<&Credentials> {
        match role {
            Some(r) => self.roles.get(r.as_str()),
            None => self.credentials.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Whom a rule applies to. A principal matches if any listed item matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// `users = ["*"]`: everyone.
    pub any: bool,
    pub users: Vec<String>,
    pub uids: Vec<u32>,
    /// Unix groups (NSS). Never the IdP's groups: a group name in the IdP
    /// (where users may be able to create groups) grants no Unix group's rules.
    pub groups: Vec<String>,
    /// The IdP's groups (the policy's `groups_claim`), after `gatehouse login`.
    pub oidc_groups: Vec<String>,
    /// OIDC subjects (after `gatehouse login`).
    pub subjects: Vec<String>,
    /// OIDC e-mail addresses the IdP verified (after `gatehouse login`).
    pub emails: Vec<String>,
}

/// How specifically a rule's `who` names a principal: higher is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum WhoMatch {
    Everyone = 1,
    Group = 2,
    Person = 3,
}

impl Who {
    pub fn is_empty(&self) -> bool {
        !self.any
            && self.users.is_empty()
            && self.uids.is_empty()
            && self.groups.is_empty()
            && self.oidc_groups.is_empty()
            && self.subjects.is_empty()
            && self.emails.is_empty()
    }

    /// How `p` is matched, if at all (the most specific way).
    pub fn matches(&self, p: &Principal) -> Option<WhoMatch> {
        let user = p.user.as_ref().is_some_and(|u| self.users.iter().any(|x| x == u.as_str()));
        let oidc = p.oidc.as_ref().is_some_and(|o| {
            self.subjects.contains(&o.subject) || o.verified_email().is_some_and(|e| self.emails.iter().any(|x| x == e))
        });
        if user || oidc || self.uids.contains(&p.uid.0) {
            return Some(WhoMatch::Person);
        }
        let unix = p.groups.iter().any(|g| self.groups.iter().any(|x| x == g.as_str()));
        let idp = p.oidc.iter().flat_map(|o| o.groups.iter()).any(|g| self.oidc_groups.iter().any(|x| x == g.as_str()));
        if unix || idp {
            return Some(WhoMatch::Group);
        }
        self.any.then_some(WhoMatch::Everyone)
    }

    /// Whether only an identity from `gatehouse login` can match (OIDC
    /// groups, subjects, e-mails and nothing else).
    pub fn needs_login(&self) -> bool {
        !self.any
            && self.users.is_empty()
            && self.uids.is_empty()
            && self.groups.is_empty()
            && !(self.oidc_groups.is_empty() && self.subjects.is_empty() && self.emails.is_empty())
    }

    /// A short description, for explanations: `users [ana] or groups [dba]`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.any {
            parts.push("everyone".to_owned());
        }
        let mut list = |label: &str, v: &[String]| {
            if !v.is_empty() {
                parts.push(format!("{label} [{}]", v.join(", ")));
            }
        };
        list("users", &self.users);
        list("groups", &self.groups);
        list("oidc_groups", &self.oidc_groups);
        list("subjects", &self.subjects);
        list("emails", &self.emails);
        if !self.uids.is_empty() {
            let uids: Vec<String> = self.uids.iter().map(u32::to_string).collect();
            parts.push(format!("uids [{}]", uids.join(", ")));
        }
        parts.join(" or ")
    }
}

/// A glob over names (`*` any run, `?` one character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn new(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Case-insensitive ASCII glob with one backtrack point: linear enough for names.
pub(crate) fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let c = s.get(si).map(u8::to_ascii_lowercase);
        match p.get(pi).map(u8::to_ascii_lowercase) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(pc) if pc == b'?' || Some(pc) == c => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Case-sensitive glob (`*`, `?`) for names PostgreSQL compares exactly.
pub(crate) fn glob_exact(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&pc) if pc == b'?' || Some(&pc) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// A table pattern: `orders`, `public.orders`, `reporting.*`, `*.secrets`.
///
/// A pattern without a schema matches the table name in any schema. A table
/// written without a schema in SQL is taken to be in `public` when checked
/// against an allow list, and to be in any schema when checked against a deny
/// list, so both err on the side of refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: Option<NamePattern>,
    pub name: NamePattern,
}

impl TablePattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let ok =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '*' | '?' | '$'));
        match s.split_once('.') {
            Some((schema, name)) if ok(schema) && ok(name) => {
                Ok(Self { schema: Some(NamePattern::new(schema)), name: NamePattern::new(name) })
            }
            None if ok(s) => Ok(Self { schema: None, name: NamePattern::new(s) }),
            _ => Err(format!("`{s}` is not a table pattern (table, schema.table, globs with * and ?)")),
        }
    }

    /// Whether the pattern covers `t`, for an allow list (`deny = false`) or a deny list.
    ///
    /// Names compare case-sensitively, as PostgreSQL stores them: unquoted
    /// names are folded to lower case, so `"PUBLIC".orders` (a quoted,
    /// different schema) is not `public.orders`.
    pub fn matches(&self, t: &crate::sql::TableRef, deny: bool) -> bool {
        // Every relation of a schema (`TableRef::WHOLE`): any name a deny pattern has is among them.
        let whole = t.name == crate::sql::TableRef::WHOLE;
        if whole && t.schema.is_none() {
            // Of every schema: every deny pattern; only `*.*` or `*` allows it.
            return deny || (self.name.as_str() == "*" && self.schema.as_ref().is_none_or(|s| s.as_str() == "*"));
        }
        let named = (whole && deny) || glob_exact(self.name.as_str().as_bytes(), t.name.as_bytes());
        if !named {
            return false;
        }
        match (&self.schema, &t.schema) {
            (None, _) => true,
            (Some(p), Some(s)) => glob_exact(p.as_str().as_bytes(), s.as_bytes()),
            (Some(p), None) => deny || glob_exact(p.as_str().as_bytes(), b"public"),
        }
    }
}

impl std::fmt::Display for TablePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{}.{}", s.as_str(), self.name.as_str()),
            None => f.write_str(self.name.as_str()),
        }
    }
}

/// Weekdays, hours and a validity period, in a time zone.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Monday first.
    pub days: Option<[bool; 7]>,
    /// Minutes since midnight, [start, end); an end before the start spans midnight.
    pub hours: Option<(u16, u16)>,
    pub tz: jiff::tz::TimeZone,
    pub tz_name: String,
    pub from: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
    /// As written, for explanations.
    pub text: String,
}

impl TimeWindow {
    /// Whether `now` is inside the window; if not, why.
    pub fn check(&self, now: jiff::Timestamp) -> Result<(), String> {
        if let Some(from) = self.from
            && now < from
        {
            return Err(format!("not valid before {from}"));
        }
        if let Some(until) = self.until
            && now >= until
        {
            return Err(format!("expired at {until}"));
        }
        let local = now.to_zoned_datetime(self.tz.clone());
        if let Some(days) = &self.days {
            let idx = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0);
            if !days.get(idx).copied().unwrap_or(false) {
                return Err(format!("{} is not one of its days ({})", local.strftime("%A"), self.text));
            }
        }
        if let Some((start, end)) = self.hours {
            let m = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
            let inside = if start <= end { m >= start && m < end } else { m >= start || m < end };
            if !inside {
                return Err(format!("{} is outside its hours ({})", local.strftime("%H:%M %Z"), self.text));
            }
        }
        Ok(())
    }
}

/// Statements that need a human approval before they run.
#[derive(Debug, Clone)]
pub struct Approval {
    pub kinds: BTreeSet<Kind>,
    /// Who may approve.
    pub by: Who,
    /// The named approver group, when given by name.
    pub by_name: Option<String>,
    pub timeout: Duration,
    /// How many different approvers must approve (default 1).
    pub count: u32,
    /// `for = ["connect", …]`: the login itself waits for an approval.
    pub connect: bool,
    /// SSH backends, `for = ["exec"]` / `["shell"]`: a command, or the start
    /// of a shell, waits for an approval.
    pub ssh_exec: bool,
    pub ssh_shell: bool,
    /// HTTP rules: the methods whose requests wait (upper case; `*` any).
    pub methods: std::collections::BTreeSet<String>,
}

/// The statement kinds a rule covers: `["*"]` is every kind except the
/// opaque ones, which a rule must name (see [`Kind::is_opaque`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindSet {
    pub star: bool,
    pub kinds: BTreeSet<Kind>,
}

impl KindSet {
    pub fn all_ordinary() -> Self {
        Self { star: true, kinds: BTreeSet::new() }
    }

    pub fn contains(&self, k: Kind) -> bool {
        self.kinds.contains(&k) || (self.star && !k.is_opaque())
    }

    pub fn describe(&self) -> String {
        let mut v: Vec<&str> = Vec::new();
        if self.star {
            v.push("*");
        }
        v.extend(self.kinds.iter().map(|k| k.name()));
        format!("[{}]", v.join(", "))
    }
}

/// Which catalog relations (`pg_catalog`, `information_schema`) a rule reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogAccess {
    /// None: only the rule's own tables.
    None,
    /// Names, types and definitions: what psql's `\d`, drivers and GUI
    /// clients read to work. Not statistics, activity, user mappings, role
    /// secrets or configuration files.
    #[default]
    Metadata,
    /// Every catalog relation the backend login may read.
    All,
}

impl CatalogAccess {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Metadata => "metadata",
            Self::All => "all",
        }
    }
}

/// Server-side guard rails Gatehouse sets at the backend login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Guard {
    /// `default_transaction_read_only = on`: the rule's kinds cannot write.
    pub read_only: bool,
    pub statement_timeout: Option<Duration>,
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl Guard {
    /// The settings to send at startup, as (name, value).
    pub fn startup_settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.read_only {
            out.push(("default_transaction_read_only", "on".to_owned()));
        }
        if let Some(t) = self.statement_timeout {
            out.push(("statement_timeout", t.as_millis().to_string()));
        }
        if let Some(t) = self.idle_in_transaction_timeout {
            out.push(("idle_in_transaction_session_timeout", t.as_millis().to_string()));
        }
        out
    }

    /// Whether a session may change `setting` (lower case) itself.
    pub fn protects(&self, setting: &str) -> bool {
        match setting {
            "default_transaction_read_only" | "transaction_read_only" => self.read_only,
            "statement_timeout" => self.statement_timeout.is_some(),
            "idle_in_transaction_session_timeout" => self.idle_in_transaction_timeout.is_some(),
            _ => false,
        }
    }
}

/// Kinds that never write data: a rule allowing only these (and the
/// implicit housekeeping) gets a read-only backend session.
pub fn is_read_only_kind(k: Kind) -> bool {
    matches!(
        k,
        Kind::Select
            | Kind::CopyTo
            | Kind::Show
            | Kind::Explain
            | Kind::Set
            | Kind::Transaction
            | Kind::Prepare
            | Kind::Execute
            | Kind::Deallocate
            | Kind::Discard
            | Kind::Listen
            | Kind::Lock
    )
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: RuleName,
    pub who: Who,
    pub backends: Vec<NamePattern>,
    pub action: Action,
    pub as_role: Option<DbRole>,
    /// Allow rules: the kinds allowed. Deny rules: the kinds denied (empty: the whole connection).
    pub statements: KindSet,
    /// Allow rules: kinds refused even though `statements` covers them.
    pub deny_statements: BTreeSet<Kind>,
    /// Allow rules: the tables statements may touch (empty: any). Deny rules: the tables denied.
    pub tables: Vec<TablePattern>,
    pub deny_tables: Vec<TablePattern>,
    pub when: Option<TimeWindow>,
    pub mask: Option<std::sync::Arc<str>>,
    /// Record Bind parameters, function-call arguments and COPY FROM data
    /// (through `mask`, if any); by default they are not recorded.
    pub record_parameters: bool,
    /// Record statement literals as written even though `mask` is set (by
    /// default a masked rule's statements are recorded with placeholders).
    pub record_literals: bool,
    pub approval: Option<Approval>,
    /// What the login behind the connection must be (`gatehouse login`).
    pub require: Option<Require>,
    pub max_session: Option<Duration>,
    /// Which catalog relations statements may read.
    pub catalog: CatalogAccess,
    pub statement_timeout: Option<Duration>,
    pub idle_in_transaction_timeout: Option<Duration>,
    /// What one Query or Parse message may cost to classify (`query_limits`).
    pub query_limits: crate::sql::QueryLimits,
    /// HTTP backends: which requests the rule covers (allow) or denies (deny).
    pub http: http::HttpScope,
    /// SSH backends: which channels the rule allows (allow) or denies (deny).
    pub ssh: ssh::SshScope,
    pub at: Location,
    /// Position in file order.
    pub index: usize,
}

impl Rule {
    /// The guard rails this rule's sessions get at login.
    pub fn guard(&self) -> Guard {
        Guard {
            read_only: self.action == Action::Allow
                && !self.statements.star
                && self.statements.kinds.iter().all(|k| is_read_only_kind(*k)),
            statement_timeout: self.statement_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
        }
    }

    /// A deny rule that refuses whole connections (no statement or table scope).
    pub fn denies_connection(&self) -> bool {
        self.action == Action::Deny
            && self.statements == KindSet::default()
            && self.tables.is_empty()
            && self.http.is_unscoped()
            && self.ssh.is_unscoped()
    }
}

/// A just-in-time grant that may be requested (`[[grant]]`): what it
/// allows (a rule template), who may ask, for how long at most, and who
/// must approve it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    /// Who may request it.
    pub who: Who,
    pub backends: Vec<NamePattern>,
    /// What it allows once approved (its `who` and `backends` are replaced
    /// by the requester and the backend asked for).
    pub template: Rule,
    /// The longest duration one may ask for.
    pub max: Duration,
    pub by: Who,
    pub by_name: Option<String>,
    /// How many different approvers must approve.
    pub count: u32,
    /// How long a request waits for its approvers.
    pub timeout: Duration,
    pub at: Location,
}

impl Grant {
    /// The rule an approved request of this grant acts as, until `until`.
    pub fn rule_for(&self, id: u64, requester_uid: u32, backend: &str, until: jiff::Timestamp) -> Rule {
        let mut r = self.template.clone();
        r.name = RuleName::new(format!("grant {id} ({})", self.name));
        r.who = Who { uids: vec![requester_uid], ..Who::default() };
        r.backends = vec![NamePattern::new(backend)];
        r.action = Action::Allow;
        r.when = Some(TimeWindow {
            days: None,
            hours: None,
            tz: jiff::tz::TimeZone::UTC,
            tz_name: "UTC".into(),
            from: None,
            until: Some(until),
            text: format!("until {until}"),
        });
        r.index = usize::MAX;
        r
    }
}

/// What a `[[test]]` case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestExpect {
    Allow,
    Deny,
    Approval,
}

/// A `[[test]]` case written beside the rules.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub user: String,
    pub groups: Vec<String>,
    pub backend: BackendName,
    /// SQL to classify and decide, or a single statement kind.
    pub sql: Option<String>,
    pub kind: Option<Kind>,
    /// Or an SSH channel request.
    pub ssh: Option<TestSsh>,
    pub at: Option<jiff::Timestamp>,
    /// The identity the user is taken to have logged in with, if any.
    pub login: Option<TestLogin>,
    pub expect: TestExpect,
    /// The rule expected to make the decision, if given.
    pub rule: Option<RuleName>,
    pub location: Location,
}

/// An SSH request in a `[[test]]` case (`exec`, `shell`, `sftp_read`,
/// `sftp_write`, `forward`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSsh {
    Shell,
    Exec(String),
    Sftp { path: String, write: bool },
    Forward(ssh::Forward),
}

impl TestSsh {
    pub fn request(&self) -> ssh::SshRequest<'_> {
        match self {
            Self::Shell => ssh::SshRequest::Shell,
            Self::Exec(c) => ssh::SshRequest::Exec(c),
            Self::Sftp { path, write } => ssh::SshRequest::Sftp { path, write: *write },
            Self::Forward(f) => ssh::SshRequest::Forward(*f),
        }
    }

    pub fn describe(&self) -> String {
        self.request().describe()
    }
}

impl Policy {
    /// How the sessions a rule allows are recorded (see `sql::redact`).
    pub fn record_options(&self, rule: Option<&RuleName>) -> crate::sql::redact::RecordOptions {
        let r = rule.and_then(|n| self.rules.iter().find(|r| &r.name == n));
        crate::sql::redact::RecordOptions {
            normalize: r.is_some_and(|r| r.mask.is_some() && !r.record_literals),
            parameters: r.is_some_and(|r| r.record_parameters),
        }
    }

    pub fn backend(&self, name: &BackendName) -> Option<&Backend> {
        self.backends.iter().find(|b| &b.name == name)
    }

    pub fn mask(&self, name: &str) -> Option<&Arc<crate::mask::Profile>> {
        self.masks.get(name)
    }
}

#[cfg(test)]
mod tests;
