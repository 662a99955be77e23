//! Policy files → validated [`Policy`]. Every file is parsed on its own and
//! every entry (`[[backend]]`, `[[rule]]`, `[[mask]]`, `[[approvers]]`,
//! `[identity]`, `[[test]]`) is deserialized on its own, so one load reports every error,
//! each as `file:line:col`, with a hint when a word is close to a known one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::{Diagnostic, Diagnostics, Location, Source, closest};
use super::login::{IdentityRaw, RequireRaw, TestLoginRaw, build_identity, build_require, build_test_login};
use super::{
    Action, Approval, AuthMethod, Backend, CatalogAccess, Credentials, Grant, KindSet, NamePattern, Policy, Protocol,
    Rule, TablePattern, Target, TestCase, TestExpect, TimeWindow, TlsMode, Who,
};
use crate::mask::{Detector, ProfileSpec, Style};
use crate::settings::{AgentRaw, parse_duration};
use crate::sql::Kind;
use crate::sql::budget::{QueryLimits, QueryLimitsRaw};
use crate::types::{BackendName, DbRole, RuleName};

/// The top-level keys a policy file may hold.
const TOP_LEVEL: &[&str] =
    &["agent", "backend", "rule", "mask", "approvers", "grant", "notify", "identity", "trail", "alert", "test"];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Rule names are in every decision and audit record.
const MAX_RULE_NAME: usize = 128;
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredRaw {
    user: Option<String>,
    password_file: Option<PathBuf>,
    dynamic: Option<DynamicRaw>,
    /// HTTP backends: `Authorization: Bearer` from this file.
    bearer_file: Option<PathBuf>,
    /// HTTP backends: an API-key header, its value from `value_file`.
    header: Option<String>,
    value_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamicRaw {
    admin_user: String,
    admin_password_file: PathBuf,
    admin_database: Option<String>,
    template_role: String,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendRaw {
    name: Spanned<String>,
    protocol: Spanned<String>,
    address: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    tls_server_name: Option<String>,
    require_auth: Option<Spanned<Vec<String>>>,
    credentials: Option<CredRaw>,
    roles: Option<BTreeMap<String, CredRaw>>,
    client_tls: Option<ClientTlsRaw>,
    /// HTTP backends with `tls = "terminate"`: the names clients may ask for (SNI).
    server_names: Option<Vec<String>>,
    /// SSH backends: login user, host key, user CA or held key.
    ssh: Option<super::ssh::SshBackendRaw>,
    /// MySQL backends: the server's RSA public key (PEM file), for caching_sha2_password without TLS.
    server_public_key: Option<Spanned<PathBuf>>,
    /// MySQL backends: may take the RSA public key the server sends.
    get_server_public_key: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientTlsRaw {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhoRaw {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    oidc_groups: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenRaw {
    days: Option<Vec<String>>,
    hours: Option<String>,
    tz: Option<String>,
    from: Option<String>,
    until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByRaw {
    Name(String),
    Who(WhoRaw),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalRaw {
    #[serde(rename = "for")]
    kinds: Vec<String>,
    by: ByRaw,
    timeout: Option<String>,
    count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRaw {
    name: Spanned<String>,
    who: Spanned<WhoRaw>,
    backend: Option<Spanned<OneOrMany>>,
    backends: Option<Spanned<OneOrMany>>,
    action: Option<Spanned<String>>,
    as_role: Option<Spanned<String>>,
    statements: Option<Spanned<Vec<String>>>,
    deny_statements: Option<Spanned<Vec<String>>>,
    tables: Option<Spanned<Vec<String>>>,
    deny_tables: Option<Spanned<Vec<String>>>,
    when: Option<Spanned<WhenRaw>>,
    mask: Option<Spanned<String>>,
    record_parameters: Option<bool>,
    record_literals: Option<bool>,
    approval: Option<Spanned<ApprovalRaw>>,
    require: Option<Spanned<RequireRaw>>,
    max_session: Option<Spanned<String>>,
    catalog: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    idle_in_transaction_timeout: Option<Spanned<String>>,
    query_limits: Option<Spanned<QueryLimitsRaw>>,
    /// HTTP backends: methods, path globs, query and header conditions, body cap.
    methods: Option<Spanned<Vec<String>>>,
    paths: Option<Spanned<Vec<String>>>,
    query: Option<Spanned<BTreeMap<String, String>>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    k8s: Option<Spanned<super::http::K8sRaw>>,
    max_body: Option<Spanned<String>>,
    pass_client_auth: Option<Spanned<bool>>,
    /// SSH backends: shell, exec globs/regexes, sftp access and paths, forwarding.
    shell: Option<Spanned<bool>>,
    exec: Option<Spanned<Vec<String>>>,
    exec_regex: Option<Spanned<Vec<String>>>,
    sftp: Option<Spanned<String>>,
    sftp_paths: Option<Spanned<Vec<String>>>,
    forward: Option<Spanned<Vec<String>>>,
    forward_to: Option<Spanned<Vec<String>>>,
    force_command: Option<Spanned<String>>,
}

/// A `[[notify]]`: who is told about requests, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyRaw {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    secret_file: Option<Spanned<PathBuf>>,
    command: Option<Spanned<Vec<String>>>,
    events: Option<Spanned<Vec<String>>>,
}

/// A `[[trail]]`: a table whose rows' readers are recorded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrailRaw {
    table: Spanned<String>,
    key: Option<Spanned<String>>,
}

/// An `[[alert]]` over the trail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRaw {
    name: Spanned<String>,
    table: Spanned<String>,
    window: Option<Spanned<String>>,
    threshold: Option<Spanned<u64>>,
    keys: Option<Spanned<Vec<String>>>,
    action: Option<Spanned<crate::trail::AlertAction>>,
}

/// A `[[grant]]`: what a rule allows, plus who may ask for it and for how long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRaw {
    name: Spanned<String>,
    who: Spanned<WhoRaw>,
    backend: Option<Spanned<OneOrMany>>,
    backends: Option<Spanned<OneOrMany>>,
    as_role: Option<Spanned<String>>,
    statements: Option<Spanned<Vec<String>>>,
    deny_statements: Option<Spanned<Vec<String>>>,
    tables: Option<Spanned<Vec<String>>>,
    deny_tables: Option<Spanned<Vec<String>>>,
    mask: Option<Spanned<String>>,
    record_parameters: Option<bool>,
    record_literals: Option<bool>,
    catalog: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    idle_in_transaction_timeout: Option<Spanned<String>>,
    /// The longest duration one may ask for.
    max: Spanned<String>,
    /// Who approves: an `[[approvers]]` name or a `who` table.
    by: Spanned<ByRaw>,
    count: Option<u32>,
    /// How long a request waits for approvers (default 10 minutes).
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnRaw {
    column: String,
    style: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexRaw {
    name: String,
    pattern: String,
    style: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskRaw {
    name: Spanned<String>,
    #[serde(default)]
    columns: Vec<Spanned<ColumnRaw>>,
    detectors: Option<Spanned<DetectorsRaw>>,
    #[serde(default)]
    regex: Vec<Spanned<RegexRaw>>,
    hash_key_file: Option<Spanned<PathBuf>>,
    /// `refuse` (default) or `allow` statements that filter, join, sort or group on a masked column.
    masked_predicates: Option<Spanned<String>>,
    /// JSON field rules for HTTP bodies: `"$.a.b"` (redacted) or `{ path, style }`.
    #[serde(default)]
    fields: Vec<Spanned<FieldRaw>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FieldRaw {
    Path(String),
    Styled { path: String, style: String },
}

/// `detectors = { card = "partial", … }`, or a list taking each detector's
/// default style (`detectors = ["card", "email"]`; never `hash`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DetectorsRaw {
    Styles(BTreeMap<String, String>),
    Defaults(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproversRaw {
    name: Spanned<String>,
    who: Spanned<WhoRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestWhoRaw {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRaw {
    name: Option<String>,
    who: TestWhoRaw,
    backend: Spanned<String>,
    sql: Option<String>,
    kind: Option<Spanned<String>>,
    /// SSH cases: one of these.
    exec: Option<String>,
    shell: Option<bool>,
    sftp_read: Option<String>,
    sftp_write: Option<String>,
    forward: Option<Spanned<String>>,
    at: Option<Spanned<String>>,
    login: Option<Spanned<TestLoginRaw>>,
    expect: Spanned<String>,
    rule: Option<Spanned<String>>,
}

/// What the loader needs from its caller.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Key for masking profiles' hash tokens when a profile names no
    /// `hash_key_file` (the agent's `mask.key`; by default a throwaway one).
    pub mask_key: crate::mask::MaskKey,
}

/// Reads the policy at `path`: one `.toml` file, or every `.toml` file of a
/// directory (not recursive), in name order.
pub fn read_sources(path: &Path) -> Result<Vec<Source>, Diagnostics> {
    let files = policy_files(path)?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push(Source { path: file, text }),
            Err(e) => errors.push(Diagnostic::file(&file, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() { Ok(sources) } else { Err(Diagnostics(errors)) }
}

/// The policy files under `path`, sorted.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostics> {
    let meta =
        std::fs::metadata(path).map_err(|e| Diagnostics(vec![Diagnostic::file(path, format!("cannot read: {e}"))]))?;
    let mut files: Vec<PathBuf> = if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Diagnostics(vec![Diagnostic::file(path, format!("cannot list: {e}"))]))?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect()
    } else {
        vec![path.to_owned()]
    };
    files.sort();
    if files.is_empty() {
        return Err(Diagnostics(vec![Diagnostic::file(path, "no .toml policy files here")]));
    }
    Ok(files)
}

/// Loads and validates a policy from a file or directory.
pub fn load_path(path: &Path) -> Result<Policy, Diagnostics> {
    load_path_with(path, &LoadOptions::default())
}

pub fn load_path_with(path: &Path, opts: &LoadOptions) -> Result<Policy, Diagnostics> {
    load_with(&read_sources(path)?, opts)
}

/// Validates a policy given as source texts.
pub fn load(sources: &[Source]) -> Result<Policy, Diagnostics> {
    load_with(sources, &LoadOptions::default())
}

pub fn load_with(sources: &[Source], opts: &LoadOptions) -> Result<Policy, Diagnostics> {
    let mut errors = Vec::new();
    let mut c = Collected::default();
    for src in sources {
        collect(src, &mut c, &mut errors);
    }
    let mut policy = build(c, opts, &mut errors);
    errors.sort_by(|a, b| (&a.at.file, a.at.line, a.at.col).cmp(&(&b.at.file, b.at.line, b.at.col)));
    errors.dedup();
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    policy.index = super::decide::Index::build(&policy);
    Ok(policy)
}

/// One parsed entry, still raw, with the file it came from.
struct Entry<'s, T> {
    src: &'s Source,
    span: Range<usize>,
    raw: T,
}

impl<T> Entry<'_, T> {
    fn at(&self) -> Location {
        self.src.at(Some(self.span.clone()))
    }

    fn at_span(&self, span: Range<usize>) -> Location {
        self.src.at(Some(span))
    }
}

#[derive(Default)]
struct Collected<'s> {
    agent: Option<Entry<'s, AgentRaw>>,
    backends: Vec<Entry<'s, BackendRaw>>,
    rules: Vec<Entry<'s, RuleRaw>>,
    masks: Vec<Entry<'s, MaskRaw>>,
    approvers: Vec<Entry<'s, ApproversRaw>>,
    grants: Vec<Entry<'s, GrantRaw>>,
    notify: Vec<Entry<'s, NotifyRaw>>,
    trails: Vec<Entry<'s, TrailRaw>>,
    alerts: Vec<Entry<'s, AlertRaw>>,
    identity: Option<Entry<'s, IdentityRaw>>,
    tests: Vec<Entry<'s, TestRaw>>,
}

fn collect<'s>(src: &'s Source, c: &mut Collected<'s>, errors: &mut Vec<Diagnostic>) {
    let (table, parse_errors) = DeTable::parse_recoverable(&src.text);
    if !parse_errors.is_empty() {
        // What follows a syntax error is guesswork: report the syntax only.
        errors.extend(parse_errors.iter().map(|e| toml_error(src, e)));
        return;
    }
    for (key, value) in table.into_inner() {
        let span = value.span();
        match key.get_ref().as_ref() {
            "agent" => {
                if let Some(raw) = entry::<AgentRaw>(src, value, errors) {
                    if let Some(first) = &c.agent {
                        errors.push(Diagnostic::new(
                            src.at(Some(span)),
                            format!("a second [agent] table; the first is at {}", first.at()),
                        ));
                    } else {
                        c.agent = Some(Entry { src, span, raw });
                    }
                }
            }
            "identity" => {
                if let Some(raw) = entry::<IdentityRaw>(src, value, errors) {
                    if let Some(first) = &c.identity {
                        errors.push(Diagnostic::new(
                            src.at(Some(span)),
                            format!("a second [identity] table; the first is at {}", first.at()),
                        ));
                    } else {
                        c.identity = Some(Entry { src, span, raw });
                    }
                }
            }
            "backend" => c.backends.extend(entries(src, value, "backend", errors)),
            "rule" => c.rules.extend(entries(src, value, "rule", errors)),
            "mask" => c.masks.extend(entries(src, value, "mask", errors)),
            "approvers" => c.approvers.extend(entries(src, value, "approvers", errors)),
            "grant" => c.grants.extend(entries(src, value, "grant", errors)),
            "notify" => c.notify.extend(entries(src, value, "notify", errors)),
            "trail" => c.trails.extend(entries(src, value, "trail", errors)),
            "alert" => c.alerts.extend(entries(src, value, "alert", errors)),
            "test" => c.tests.extend(entries(src, value, "test", errors)),
            other => {
                errors.push(
                    Diagnostic::new(
                        src.at(Some(key.span())),
                        format!(
                            "unknown section `{other}`; expected [agent], [[backend]], [[rule]], [[mask]], [[approvers]], [[grant]], [[notify]], [[trail]], [[alert]], [identity] or [[test]]"
                        ),
                    )
                    .hint(did_you_mean(other, TOP_LEVEL.iter().copied())),
                );
            }
        }
    }
}

fn entries<'s, T: DeserializeOwned>(
    src: &'s Source,
    value: Spanned<DeValue<'_>>,
    what: &str,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Entry<'s, T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        errors.push(Diagnostic::new(
            src.at(Some(span)),
            format!("`{what}` must be an array of tables: write [[{what}]]"),
        ));
        return vec![];
    };
    items
        .into_iter()
        .filter_map(|item| {
            let span = item.span();
            entry::<T>(src, item, errors).map(|raw| Entry { src, span, raw })
        })
        .collect()
}

fn entry<T: DeserializeOwned>(src: &Source, value: Spanned<DeValue<'_>>, errors: &mut Vec<Diagnostic>) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(toml_error(src, &e));
            None
        }
    }
}

/// Turns a toml/serde error into a diagnostic, with a typo hint for unknown
/// fields and variants ("unknown field `nmae`, expected one of `name`, …").
fn toml_error(src: &Source, e: &toml::de::Error) -> Diagnostic {
    let message = e.message().trim().to_owned();
    let hint = typo_hint(&message);
    Diagnostic::new(src.at(e.span()), message).hint(hint)
}

fn typo_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("unknown variant `"))?;
    let (word, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(word, candidates)
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Accumulates the errors of one build.
struct Errs<'e>(&'e mut Vec<Diagnostic>);

impl Errs<'_> {
    fn push(&mut self, at: Location, message: impl Into<String>) {
        self.0.push(Diagnostic::new(at, message));
    }

    fn hint(&mut self, at: Location, message: impl Into<String>, hint: Option<String>) {
        self.0.push(Diagnostic::new(at, message).hint(hint));
    }
}

fn build(c: Collected<'_>, opts: &LoadOptions, errors: &mut Vec<Diagnostic>) -> Policy {
    let mut e = Errs(errors);
    let mut policy = Policy { agent: c.agent.map(|e| e.raw).unwrap_or_default(), ..Policy::default() };
    if let Some(i) = c.identity {
        match build_identity(&i.raw, i.src, i.at()) {
            Ok(cfg) => policy.identity = Some(cfg),
            Err(list) => {
                for (at, msg) in list {
                    e.push(at, msg);
                }
            }
        }
    }
    build_backends(c.backends, &mut policy, &mut e);
    build_approvers(c.approvers, &mut policy, &mut e);
    build_masks(c.masks, opts, &mut policy, &mut e);
    build_rules(c.rules, &mut policy, &mut e);
    build_grants(c.grants, &mut policy, &mut e);
    build_notify(c.notify, &mut policy, &mut e);
    build_trail(c.trails, c.alerts, &mut policy, &mut e);
    build_tests(c.tests, &mut policy, &mut e);
    policy
}

fn build_backends(raw: Vec<Entry<'_, BackendRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    let mut names: HashMap<String, Location> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    let mut shared = Vec::new();
    for b in raw {
        let at = b.at();
        let r = &b.raw;
        let name = r.name.get_ref().clone();
        if let Err(m) = valid_name(&name) {
            e.push(b.at_span(r.name.span()), m);
            continue;
        }
        if let Some(first) = names.insert(name.clone(), at.clone()) {
            e.push(b.at_span(r.name.span()), format!("backend `{name}` is defined twice; the first is at {first}"));
            continue;
        }
        let protocol = match r.protocol.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "postgres" => Protocol::Postgres,
            "mysql" => Protocol::Mysql,
            "http" => Protocol::Http,
            "ssh" => Protocol::Ssh,
            other => {
                e.hint(
                    b.at_span(r.protocol.span()),
                    format!("unknown protocol `{other}`; supported: tcp, postgres, mysql, http, ssh"),
                    did_you_mean(other, ["tcp", "postgres", "mysql", "http", "ssh"]),
                );
                continue;
            }
        };
        let target = match (&r.address, &r.host) {
            (Some(a), None) => match parse_address(a.get_ref()) {
                Ok(addr) => {
                    match addrs.entry(addr) {
                        // Told apart by SNI, or refused below once every backend is built.
                        std::collections::hash_map::Entry::Occupied(_) => {
                            shared.push((addr, name.clone(), b.at_span(a.span())));
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(name.clone());
                        }
                    }
                    Target::Addr(addr)
                }
                Err(m) => {
                    e.push(b.at_span(a.span()), m);
                    continue;
                }
            },
            (None, Some(h)) => match parse_host(h.get_ref()) {
                Ok((host, port)) => Target::Host { host, port },
                Err(m) => {
                    e.push(b.at_span(h.span()), m);
                    continue;
                }
            },
            (Some(_), Some(h)) => {
                e.push(b.at_span(h.span()), "give either `address` (ip:port) or `host` (name:port), not both");
                continue;
            }
            (None, None) => {
                e.hint(
                    at,
                    format!("backend `{name}` has neither `address` nor `host`"),
                    Some("add address = \"ip:port\" or host = \"name:port\"".into()),
                );
                continue;
            }
        };
        if protocol != Protocol::Mysql
            && let Some(span) = r
                .server_public_key
                .as_ref()
                .map(Spanned::span)
                .or_else(|| r.get_server_public_key.as_ref().map(Spanned::span))
        {
            e.push(
                b.at_span(span),
                format!(
                    "backend `{name}`: server_public_key and get_server_public_key apply to mysql backends (caching_sha2_password), not {}",
                    protocol.name()
                ),
            );
            continue;
        }
        if protocol == Protocol::Ssh || r.ssh.is_some() {
            let built = match (&r.ssh, protocol) {
                (Some(raw), Protocol::Ssh) => super::ssh::build_backend(raw),
                (None, _) => {
                    Err("an ssh backend needs ssh = { user = \"…\", host_key_file = \"…\", user_ca_key_file = \"…\" }"
                        .into())
                }
                (Some(_), _) => Err("`ssh` applies to backends with protocol = \"ssh\"".into()),
            };
            let extra = r.tls.is_some()
                || r.credentials.is_some()
                || r.roles.is_some()
                || r.client_tls.is_some()
                || r.server_names.is_some()
                || r.require_auth.is_some()
                || r.ca_file.is_some();
            match built {
                Ok(_) if extra => e.push(at, format!("backend `{name}`: tls, credentials, roles and server_names do not apply to ssh backends (use ssh = {{ … }})")),
                Ok(ssh) => policy.backends.push(Backend {
                    name: BackendName::new(name),
                    protocol,
                    target,
                    tls: TlsMode::Off,
                    ca_file: None,
                    tls_server_name: None,
                    require_auth: None,
                    credentials: None,
                    roles: BTreeMap::new(),
                    client_tls: None,
                    http: None,
                    ssh: Some(ssh),
                    server_public_key: None,
                    get_server_public_key: false,
                    at,
                }),
                Err(m) => e.push(at, format!("backend `{name}`: {m}")),
            }
            continue;
        }
        if protocol == Protocol::Http {
            match http_backend(r) {
                Ok((tls, http)) => policy.backends.push(Backend {
                    name: BackendName::new(name),
                    protocol,
                    target,
                    tls,
                    ca_file: r.ca_file.as_ref().map(|c| c.get_ref().clone()),
                    tls_server_name: r.tls_server_name.clone(),
                    require_auth: None,
                    credentials: None,
                    roles: BTreeMap::new(),
                    client_tls: None,
                    http: Some(http),
                    ssh: None,
                    server_public_key: None,
                    get_server_public_key: false,
                    at,
                }),
                Err(m) => e.push(at, format!("backend `{name}`: {m}")),
            }
            continue;
        }
        if r.server_names.is_some() {
            e.push(at, format!("backend `{name}`: server_names applies to http backends"));
            continue;
        }
        // Safe by default: a backend that does not say otherwise is reached
        // over TLS with its certificate checked.
        let tls = match r.tls.as_ref().map(|t| t.get_ref().as_str()) {
            None if protocol == Protocol::Tcp => TlsMode::Off,
            None | Some("verify") => TlsMode::Verify,
            Some("off") => TlsMode::Off,
            Some("prefer") => TlsMode::Prefer,
            Some(other) => {
                let span = r.tls.as_ref().map(Spanned::span);
                e.hint(
                    b.src.at(span),
                    format!("tls must be off, prefer or verify, not `{other}`"),
                    did_you_mean(other, ["off", "prefer", "verify"]),
                );
                continue;
            }
        };
        if protocol == Protocol::Tcp
            && (r.tls.is_some() || r.credentials.is_some() || r.roles.is_some() || r.client_tls.is_some())
        {
            e.push(at, format!("backend `{name}`: tls, credentials and roles apply to postgres and mysql backends, not tcp (bytes are relayed as they are)"));
            continue;
        }
        // What the MySQL adapter does not do yet is refused here, not skipped at run time.
        if protocol == Protocol::Mysql {
            let problem = if r.require_auth.is_some() {
                Some("require_auth applies to postgres backends")
            } else if r.credentials.iter().chain(r.roles.iter().flat_map(|m| m.values())).any(|c| c.dynamic.is_some()) {
                Some("dynamic credentials are not supported for mysql backends yet")
            } else {
                None
            };
            if let Some(m) = problem {
                e.push(at, format!("backend `{name}`: {m}"));
                continue;
            }
        }
        if protocol.is_sql() && r.credentials.is_none() && r.roles.as_ref().is_none_or(BTreeMap::is_empty) {
            e.hint(
                at,
                format!("{} backend `{name}` has no credentials: Gatehouse logs in for its users", protocol.name()),
                Some("add credentials = { user = \"…\", password_file = \"/etc/gatehouse/secrets/…\" }".into()),
            );
            continue;
        }
        if let Some(ca) = &r.ca_file
            && tls != TlsMode::Verify
        {
            e.hint(
                b.at_span(ca.span()),
                format!("backend `{name}`: ca_file is used only with tls = \"verify\" (tls = \"prefer\" checks no certificate)"),
                Some("write tls = \"verify\" to have the server's certificate checked against this CA".into()),
            );
            continue;
        }
        let require_auth = match &r.require_auth {
            None => None,
            Some(list) => match list.get_ref().iter().map(|m| AuthMethod::parse(m)).collect::<Result<Vec<_>, _>>() {
                Ok(v) if !v.is_empty() => Some(v),
                Ok(_) => {
                    e.push(b.at_span(list.span()), "require_auth lists no method");
                    continue;
                }
                Err(bad) => {
                    e.hint(
                        b.at_span(list.span()),
                        format!("unknown authentication method `{bad}` in require_auth"),
                        did_you_mean(&bad, AuthMethod::NAMES.iter().copied())
                            .or_else(|| Some(format!("methods: {}", AuthMethod::NAMES.join(", ")))),
                    );
                    continue;
                }
            },
        };
        let mut cred_problem = None;
        let mut cred = |c: &CredRaw| match (&c.user, &c.dynamic) {
            _ if c.bearer_file.is_some() || c.header.is_some() || c.value_file.is_some() => {
                cred_problem = Some("bearer_file, header and value_file apply to http backends".into());
                Credentials::from_file(String::new(), None)
            }
            (Some(user), None) => Credentials::from_file(user.clone(), c.password_file.clone()),
            (None, Some(d)) if c.password_file.is_none() => {
                let ttl = match d.ttl.as_deref().map(parse_duration) {
                    None => Duration::from_secs(3600),
                    Some(Ok(t)) if !t.is_zero() => t,
                    Some(Ok(_)) => {
                        cred_problem = Some("dynamic.ttl must be longer than 0".to_owned());
                        Duration::from_secs(3600)
                    }
                    Some(Err(m)) => {
                        cred_problem = Some(format!("dynamic.ttl: {m}"));
                        Duration::from_secs(3600)
                    }
                };
                if let Err(m) = valid_role_name(&d.template_role).and(valid_role_name(&d.admin_user)) {
                    cred_problem = Some(m);
                }
                Credentials {
                    user: format!("dynamic:{}", d.template_role),
                    password_file: None,
                    dynamic: Some(super::Dynamic {
                        admin_user: d.admin_user.clone(),
                        admin_password_file: d.admin_password_file.clone(),
                        admin_database: d.admin_database.clone().unwrap_or_else(|| "postgres".into()),
                        template_role: d.template_role.clone(),
                        ttl,
                    }),
                    issued: None,
                }
            }
            _ => {
                cred_problem =
                    Some("credentials need either user (and password_file) or dynamic = { … }, not both".into());
                Credentials::from_file(String::new(), None)
            }
        };
        let credentials = r.credentials.as_ref().map(&mut cred);
        let roles: BTreeMap<String, Credentials> =
            r.roles.iter().flatten().map(|(k, v)| (k.clone(), cred(v))).collect();
        if let Some(m) = cred_problem {
            e.push(at.clone(), format!("backend `{name}`: {m}"));
            continue;
        }
        let b = Backend {
            name: BackendName::new(name),
            protocol,
            target,
            tls,
            ca_file: r.ca_file.as_ref().map(|c| c.get_ref().clone()),
            tls_server_name: r.tls_server_name.clone(),
            require_auth,
            credentials,
            roles,
            client_tls: r
                .client_tls
                .as_ref()
                .map(|c| super::ClientTls { cert_file: c.cert_file.clone(), key_file: c.key_file.clone() }),
            http: None,
            ssh: None,
            server_public_key: r.server_public_key.as_ref().map(|p| p.get_ref().clone()),
            get_server_public_key: r.get_server_public_key.as_ref().is_some_and(|g| *g.get_ref()),
            at,
        };
        policy.backends.push(b);
    }
    for (addr, name, at) in shared {
        let Some(b) = policy.backends.iter().find(|x| x.name.as_str() == name) else { continue };
        let clash = policy
            .backends
            .iter()
            .take_while(|x| x.name.as_str() != name)
            .filter(|x| x.target == Target::Addr(addr))
            .find_map(|a| super::http::may_share_address(a, b).err().map(|m| (a.name.to_string(), m)));
        if let Some((first, m)) = clash {
            e.push(at, format!("address {addr} is already backend `{first}`'s: {m}"));
            policy.backends.retain(|x| x.name.as_str() != name);
        }
    }
}

fn build_approvers(raw: Vec<Entry<'_, ApproversRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    for a in raw {
        let name = a.raw.name.get_ref().clone();
        if policy.approvers.contains_key(&name) {
            e.push(a.at_span(a.raw.name.span()), format!("approver group `{name}` is defined twice"));
            continue;
        }
        let who = who_from(a.raw.who.get_ref());
        if who.is_empty() || who.any {
            e.push(a.at_span(a.raw.who.span()), "approvers must name users or groups (not everyone)");
            continue;
        }
        policy.approvers.insert(name, who);
    }
}

/// The steps a `[[notify]]` may ask for.
const NOTIFY_EVENTS: &[&str] =
    &["requested", "approval", "approved", "denied", "timed_out", "withdrawn", "revoked", "expired", "trail_alert"];

fn build_notify(raw: Vec<Entry<'_, NotifyRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    for entry in raw {
        let n = &entry.raw;
        let name = n.name.get_ref().clone();
        let url = match &n.url {
            None => None,
            Some(u) => match crate::notify::Endpoint::parse(u.get_ref()) {
                Ok(ep) => Some(ep),
                Err(m) => {
                    e.push(entry.at_span(u.span()), m);
                    continue;
                }
            },
        };
        let command = n.command.as_ref().map(|c| c.get_ref().clone());
        if let Some(c) = &n.command
            && !c.get_ref().first().is_some_and(|p| p.starts_with('/'))
        {
            e.push(entry.at_span(c.span()), "command must be a list whose first item is an absolute path (no shell)");
            continue;
        }
        if url.is_none() && command.is_none() {
            e.push(entry.at(), format!("notify `{name}` has neither url nor command"));
            continue;
        }
        let events = n.events.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default();
        if let Some(bad) = events.iter().find(|x| !NOTIFY_EVENTS.contains(&x.as_str())) {
            let span = n.events.as_ref().map_or(entry.span.clone(), Spanned::span);
            e.hint(
                entry.at_span(span),
                format!("unknown event `{bad}`; events are {}", NOTIFY_EVENTS.join(", ")),
                did_you_mean(bad, NOTIFY_EVENTS.iter().copied()),
            );
            continue;
        }
        policy.notify.push(crate::notify::Target {
            at: entry.at(),
            name,
            url,
            secret_file: n.secret_file.as_ref().map(|p| p.get_ref().clone()),
            command,
            events,
        });
    }
}

/// `schema.name` (or `name`, in `public`) as a trail names a table.
fn trail_table(name: &str) -> Result<(String, String), String> {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    let ok = |s: &str| !s.is_empty() && !s.contains(['.', '"', ' ']);
    if ok(schema) && ok(table) {
        Ok((schema.to_owned(), table.to_owned()))
    } else {
        Err(format!("{name:?} is not a table name; write \"schema.table\" (unquoted, as the catalog spells it)"))
    }
}

/// `[[trail]]` and `[[alert]]` entries.
fn build_trail(
    trails: Vec<Entry<'_, TrailRaw>>,
    alerts: Vec<Entry<'_, AlertRaw>>,
    policy: &mut Policy,
    e: &mut Errs<'_>,
) {
    let mut cfg = crate::trail::Config::default();
    let mut seen: HashMap<String, Location> = HashMap::new();
    for entry in trails {
        let r = &entry.raw;
        let (schema, name) = match trail_table(r.table.get_ref()) {
            Ok(t) => t,
            Err(m) => {
                e.push(entry.at_span(r.table.span()), m);
                continue;
            }
        };
        let t = crate::trail::TrailTable { schema, name, key: r.key.as_ref().map(|k| k.get_ref().clone()) };
        if let Some(first) = seen.insert(t.qualified(), entry.at()) {
            e.push(
                entry.at_span(r.table.span()),
                format!("table {} is trailed twice; the first is at {first}", t.qualified()),
            );
            continue;
        }
        cfg.tables.push(t);
    }
    let mut names: HashMap<String, Location> = HashMap::new();
    for entry in alerts {
        let r = &entry.raw;
        let name = r.name.get_ref().clone();
        if let Err(m) = valid_name(&name) {
            e.push(entry.at_span(r.name.span()), m);
            continue;
        }
        if let Some(first) = names.insert(name.clone(), entry.at()) {
            e.push(entry.at_span(r.name.span()), format!("alert `{name}` is defined twice; the first is at {first}"));
            continue;
        }
        let table = match trail_table(r.table.get_ref()) {
            Ok((s, t)) => format!("{s}.{t}"),
            Err(m) => {
                e.push(entry.at_span(r.table.span()), m);
                continue;
            }
        };
        if !seen.contains_key(&table) {
            e.hint(
                entry.at_span(r.table.span()),
                format!("alert `{name}` watches {table}, which no [[trail]] records"),
                Some(format!("add [[trail]] table = \"{table}\"")),
            );
            continue;
        }
        let keys = r.keys.as_ref().map(|k| k.get_ref().clone()).unwrap_or_default();
        let threshold = r.threshold.as_ref().map(|t| *t.get_ref());
        if threshold.is_none() == keys.is_empty() {
            e.push(
                entry.at(),
                format!("alert `{name}` needs exactly one of threshold (distinct rows) and keys (a list)"),
            );
            continue;
        }
        let window = match &r.window {
            Some(w) => match parse_duration(w.get_ref()) {
                Ok(d) if d.as_secs() > 0 => d,
                Ok(_) => {
                    e.push(entry.at_span(w.span()), "the window must be at least a second");
                    continue;
                }
                Err(m) => {
                    e.push(entry.at_span(w.span()), m);
                    continue;
                }
            },
            None if threshold.is_some() => {
                e.push(entry.at(), format!("alert `{name}` has a threshold but no window (e.g. window = \"30d\")"));
                continue;
            }
            None => Duration::from_secs(3600),
        };
        // `hold`: the approvers are those of the rule that allows the held
        // statement (its `approval`); a rule without them refuses instead.
        let action = r.action.as_ref().map_or(crate::trail::AlertAction::Log, |a| *a.get_ref());
        cfg.alerts.push(crate::trail::AlertRule { name, table, window, threshold, keys, action });
    }
    policy.trail = Arc::new(cfg);
}

/// `[[grant]]` entries: the rule part is checked exactly as a `[[rule]]`.
fn build_grants(raw: Vec<Entry<'_, GrantRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    let mut names: HashMap<String, Location> = HashMap::new();
    for entry in raw {
        let at = entry.at();
        let src = entry.src;
        let g = entry.raw;
        let name = g.name.get_ref().trim().to_owned();
        if let Some(first) = names.insert(name.clone(), at.clone()) {
            e.push(src.at(Some(g.name.span())), format!("grant `{name}` is defined twice; the first is at {first}"));
            continue;
        }
        let max = match parse_duration(g.max.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e.push(src.at(Some(g.max.span())), "max must be longer than 0");
                continue;
            }
            Err(m) => {
                e.push(src.at(Some(g.max.span())), format!("max: {m}"));
                continue;
            }
        };
        let timeout = match &g.timeout {
            None => DEFAULT_APPROVAL_TIMEOUT,
            Some(t) => match parse_duration(t.get_ref()) {
                Ok(d) => d,
                Err(m) => {
                    e.push(src.at(Some(t.span())), format!("timeout: {m}"));
                    continue;
                }
            },
        };
        let (by, by_name) = match g.by.get_ref() {
            ByRaw::Name(n) => match policy.approvers.get(n) {
                Some(w) => (w.clone(), Some(n.clone())),
                None => {
                    e.hint(
                        src.at(Some(g.by.span())),
                        format!("no [[approvers]] group named `{n}`"),
                        did_you_mean(n, policy.approvers.keys().map(String::as_str)),
                    );
                    continue;
                }
            },
            ByRaw::Who(w) => {
                let who = who_from(w);
                if who.is_empty() || who.any {
                    e.push(src.at(Some(g.by.span())), "by must name users or groups (not everyone)");
                    continue;
                }
                (who, None)
            }
        };
        let count = g.count.unwrap_or(1);
        if count == 0 {
            e.push(at.clone(), "count must be at least 1");
            continue;
        }
        let who = who_from(g.who.get_ref());
        // The rule part: built by the same code as a [[rule]], on the side.
        let rule_raw = RuleRaw {
            name: g.name,
            who: g.who,
            backend: g.backend,
            backends: g.backends,
            action: None,
            as_role: g.as_role,
            statements: g.statements,
            deny_statements: g.deny_statements,
            tables: g.tables,
            deny_tables: g.deny_tables,
            when: None,
            mask: g.mask,
            record_parameters: g.record_parameters,
            record_literals: g.record_literals,
            approval: None,
            require: None,
            max_session: None,
            catalog: g.catalog,
            statement_timeout: g.statement_timeout,
            idle_in_transaction_timeout: g.idle_in_transaction_timeout,
            // A grant's sessions are held to the default query_limits.
            query_limits: None,
            methods: None,
            paths: None,
            query: None,
            headers: None,
            k8s: None,
            max_body: None,
            pass_client_auth: None,
            shell: None,
            exec: None,
            exec_regex: None,
            sftp: None,
            sftp_paths: None,
            forward: None,
            forward_to: None,
            force_command: None,
        };
        let mut scratch = Policy {
            backends: policy.backends.clone(),
            masks: policy.masks.clone(),
            approvers: policy.approvers.clone(),
            identity: policy.identity.clone(),
            ..Policy::default()
        };
        let before = e.0.len();
        build_rules(vec![Entry { src, span: entry.span, raw: rule_raw }], &mut scratch, e);
        let Some(template) = scratch.rules.pop().filter(|_| e.0.len() == before) else { continue };
        policy.grants.push(Grant {
            name,
            who,
            backends: template.backends.clone(),
            template,
            max,
            by,
            by_name,
            count,
            timeout,
            at,
        });
    }
}

/// A role name Gatehouse puts in SQL it writes itself: plain identifiers only.
fn valid_role_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok { Ok(()) } else { Err(format!("role name `{name}`: use letters, digits and _ (at most 63)")) }
}

fn parse_style(s: &str) -> Result<Style, String> {
    match s {
        "redact" => Ok(Style::Redact),
        "partial" => Ok(Style::Partial),
        "hash" => Ok(Style::Hash),
        "null" => Ok(Style::Null),
        other => Err(format!(
            "unknown style `{other}`; use redact, partial, hash or null{}",
            did_you_mean(other, ["redact", "partial", "hash", "null"]).map(|h| format!(" ({h})")).unwrap_or_default()
        )),
    }
}

const DETECTORS: &[(&str, Detector)] = &[
    ("card", Detector::Card),
    ("email", Detector::Email),
    ("phone", Detector::Phone),
    ("us_ssn", Detector::UsSsn),
    ("iban", Detector::Iban),
    ("jwt", Detector::Jwt),
    ("aws_key", Detector::AwsKey),
    ("github_token", Detector::GithubToken),
    ("slack_token", Detector::SlackToken),
];

fn build_masks(raw: Vec<Entry<'_, MaskRaw>>, opts: &LoadOptions, policy: &mut Policy, e: &mut Errs<'_>) {
    for m in raw {
        let r = &m.raw;
        let name = r.name.get_ref().clone();
        if policy.masks.contains_key(&name) {
            e.push(m.at_span(r.name.span()), format!("masking profile `{name}` is defined twice"));
            continue;
        }
        let mut spec = ProfileSpec {
            name: name.clone(),
            hash_key: opts.mask_key.clone(),
            refuse_predicates: true,
            ..ProfileSpec::default()
        };
        let mut ok = true;
        if let Some(mp) = &r.masked_predicates {
            match mp.get_ref().as_str() {
                "refuse" => spec.refuse_predicates = true,
                "allow" => spec.refuse_predicates = false,
                other => {
                    e.push(m.at_span(mp.span()), format!("masked_predicates is `refuse` or `allow`, not `{other}`"));
                    ok = false;
                }
            }
        }
        for col in &r.columns {
            match parse_style(&col.get_ref().style) {
                Ok(s) => spec.columns.push((col.get_ref().column.clone(), s)),
                Err(msg) => {
                    e.push(m.at_span(col.span()), msg);
                    ok = false;
                }
            }
        }
        let det_span = r.detectors.as_ref().map(Spanned::span).unwrap_or_else(|| m.span.clone());
        let detectors: Vec<(String, Option<String>)> = match r.detectors.as_ref().map(Spanned::get_ref) {
            None => vec![],
            Some(DetectorsRaw::Styles(map)) => map.iter().map(|(d, s)| (d.clone(), Some(s.clone()))).collect(),
            Some(DetectorsRaw::Defaults(list)) => list.iter().map(|d| (d.clone(), None)).collect(),
        };
        for (det, style) in &detectors {
            let Some((_, d)) = DETECTORS.iter().find(|(n, _)| n == det) else {
                e.hint(
                    m.at_span(det_span.clone()),
                    format!(
                        "unknown detector `{det}`; known: {}",
                        DETECTORS.iter().map(|d| d.0).collect::<Vec<_>>().join(", ")
                    ),
                    did_you_mean(det, DETECTORS.iter().map(|d| d.0)),
                );
                ok = false;
                continue;
            };
            match style.as_deref().map_or(Ok(d.default_style()), parse_style) {
                Ok(s) => spec.detectors.push((*d, s)),
                Err(msg) => {
                    e.push(m.at_span(det_span.clone()), msg);
                    ok = false;
                }
            }
        }
        for rx in &r.regex {
            match parse_style(&rx.get_ref().style) {
                Ok(s) => spec.custom.push((rx.get_ref().name.clone(), rx.get_ref().pattern.clone(), s)),
                Err(msg) => {
                    e.push(m.at_span(rx.span()), msg);
                    ok = false;
                }
            }
        }
        let mut fields = Vec::new();
        for f in &r.fields {
            let (path, style) = match f.get_ref() {
                FieldRaw::Path(p) => (p.clone(), Ok(Style::Redact)),
                FieldRaw::Styled { path, style } => (path.clone(), parse_style(style)),
            };
            match style.and_then(|s| crate::mask::json::FieldPattern::parse(&path).map(|_| s)) {
                Ok(s) => fields.push((path, s)),
                Err(msg) => {
                    e.push(m.at_span(f.span()), msg);
                    ok = false;
                }
            }
        }
        if spec.columns.is_empty() && spec.detectors.is_empty() && spec.custom.is_empty() && fields.is_empty() {
            e.push(m.at(), format!("masking profile `{name}` masks nothing: give columns, detectors, regex or fields"));
            continue;
        }
        if let Some(kf) = &r.hash_key_file {
            match crate::secrets::read_secret(kf.get_ref(), "hash_key_file") {
                Ok(bytes) if bytes.len() >= 16 => {
                    spec.hash_key =
                        crate::mask::MaskKey::new(blake3::derive_key("gatehouse mask hash key v1", bytes.expose()))
                }
                Ok(_) => {
                    e.push(m.at_span(kf.span()), "hash_key_file holds fewer than 16 bytes");
                    ok = false;
                }
                Err(err) => {
                    e.push(m.at_span(kf.span()), err.to_string());
                    ok = false;
                }
            }
        }
        if !ok {
            continue;
        }
        match crate::mask::Profile::compile(&spec) {
            Ok(p) => {
                if !fields.is_empty() {
                    match crate::mask::json::FieldRules::compile(&p, &fields) {
                        Ok(f) => {
                            policy.mask_fields.insert(name.clone(), Arc::new(f));
                        }
                        Err(msg) => {
                            e.push(m.at(), msg);
                            continue;
                        }
                    }
                }
                policy.masks.insert(name, Arc::new(p));
            }
            Err(err) => e.push(m.at(), err.to_string()),
        }
    }
}

fn parse_kinds(list: &Spanned<Vec<String>>, allow_star: bool, src: &Source, e: &mut Errs<'_>) -> Option<KindSet> {
    let mut set = KindSet::default();
    let mut ok = true;
    for k in list.get_ref() {
        let k = k.trim().to_ascii_lowercase();
        if k == "*" && allow_star {
            set.star = true;
        } else if let Some(kind) = Kind::parse(&k) {
            set.kinds.insert(kind);
        } else {
            e.hint(
                src.at(Some(list.span())),
                format!("unknown statement kind `{k}`"),
                did_you_mean(&k, Kind::all().iter().map(|k| k.name())).or_else(|| {
                    Some(format!("kinds: {}", Kind::all().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")))
                }),
            );
            ok = false;
        }
    }
    ok.then_some(set)
}

fn parse_tables(list: &Spanned<Vec<String>>, src: &Source, e: &mut Errs<'_>) -> Option<Vec<TablePattern>> {
    let mut out = Vec::new();
    for t in list.get_ref() {
        match TablePattern::parse(t) {
            Ok(p) => out.push(p),
            Err(m) => {
                e.push(src.at(Some(list.span())), m);
                return None;
            }
        }
    }
    Some(out)
}

fn parse_when(w: &Spanned<WhenRaw>, src: &Source, e: &mut Errs<'_>) -> Option<TimeWindow> {
    let at = src.at(Some(w.span()));
    let r = w.get_ref();
    let mut text = Vec::new();
    let days = match &r.days {
        None => None,
        Some(list) => {
            let mut days = [false; 7];
            for d in list {
                let d = d.trim().to_ascii_lowercase();
                let idx = |s: &str| DAYS.iter().position(|x| *x == s);
                match d.split_once('-') {
                    Some((a, b)) => match (idx(a), idx(b)) {
                        (Some(a), Some(b)) if a <= b => days.iter_mut().take(b + 1).skip(a).for_each(|x| *x = true),
                        _ => {
                            e.push(at, format!("`{d}` is not a day range like mon-fri"));
                            return None;
                        }
                    },
                    None => match idx(&d) {
                        Some(i) => {
                            if let Some(x) = days.get_mut(i) {
                                *x = true;
                            }
                        }
                        None => {
                            e.hint(at, format!("`{d}` is not a day"), did_you_mean(&d, DAYS));
                            return None;
                        }
                    },
                }
            }
            text.push(list.join(","));
            Some(days)
        }
    };
    let hours = match &r.hours {
        None => None,
        Some(h) => {
            let parsed = h.split_once('-').and_then(|(a, b)| Some((hhmm(a)?, hhmm(b)?)));
            match parsed {
                Some((a, b)) if a != b => {
                    text.push(h.clone());
                    Some((a, b))
                }
                _ => {
                    e.push(at, format!("hours `{h}` is not HH:MM-HH:MM"));
                    return None;
                }
            }
        }
    };
    let tz_name = r.tz.clone().unwrap_or_else(|| "UTC".into());
    let tz = match jiff::tz::TimeZone::get(&tz_name) {
        Ok(tz) => tz,
        Err(err) => {
            e.push(at, format!("time zone `{tz_name}`: {err}"));
            return None;
        }
    };
    let ts = |s: &Option<String>, e: &mut Errs<'_>| -> Result<Option<jiff::Timestamp>, ()> {
        match s {
            None => Ok(None),
            Some(s) => s.parse::<jiff::Timestamp>().map(Some).map_err(|err| {
                e.push(at.clone(), format!("`{s}` is not a timestamp like 2026-12-01T18:00:00Z: {err}"));
            }),
        }
    };
    let from = ts(&r.from, e).ok()?;
    let until = ts(&r.until, e).ok()?;
    if let (Some(f), Some(u)) = (from, until)
        && f >= u
    {
        e.push(at, "`from` must be before `until`");
        return None;
    }
    if let Some(f) = from {
        text.push(format!("from {f}"));
    }
    if let Some(u) = until {
        text.push(format!("until {u}"));
    }
    text.push(tz_name.clone());
    Some(TimeWindow { days, hours, tz, tz_name, from, until, text: text.join(" ") })
}

fn hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && (h < 24 || m == 0)).then_some(h * 60 + m)
}

fn build_rules(raw: Vec<Entry<'_, RuleRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    let backend_names: Vec<String> = policy.backends.iter().map(|b| b.name.as_str().to_owned()).collect();
    let mut rule_names: HashMap<String, Location> = HashMap::new();
    for entry in raw {
        let at = entry.at();
        let src = entry.src;
        let r = entry.raw;
        let name = r.name.get_ref().trim().to_owned();
        if name.is_empty() {
            e.push(src.at(Some(r.name.span())), "a rule needs a non-empty name");
            continue;
        }
        if name.chars().count() > MAX_RULE_NAME {
            e.push(src.at(Some(r.name.span())), format!("a rule name has at most {MAX_RULE_NAME} characters"));
            continue;
        }
        if let Some(first) = rule_names.insert(name.clone(), at.clone()) {
            e.push(
                src.at(Some(r.name.span())),
                format!("rule `{name}` is defined twice; the first is at {first}; rule names must be unique"),
            );
            continue;
        }
        let who = who_from(r.who.get_ref());
        if who.is_empty() {
            e.push(
                src.at(Some(r.who.span())),
                "`who` matches nobody: give users, uids, groups, oidc_groups, subjects or emails (users = [\"*\"] for everyone)",
            );
            continue;
        }
        let (patterns, bspan) = match (r.backend, r.backends) {
            (Some(b), None) | (None, Some(b)) => {
                let span = b.span();
                (b.into_inner().into_vec(), span)
            }
            (Some(_), Some(b)) => {
                e.push(src.at(Some(b.span())), "give `backend` or `backends`, not both");
                continue;
            }
            (None, None) => {
                e.push(at, format!("rule `{name}` names no backend"));
                continue;
            }
        };
        let mut backends = Vec::new();
        let mut ok = true;
        for p in patterns {
            let pattern = NamePattern::new(&p);
            if !backend_names.iter().any(|n| pattern.matches(n)) {
                e.hint(
                    src.at(Some(bspan.clone())),
                    format!("no backend matches `{p}`"),
                    did_you_mean(&p, backend_names.iter().map(String::as_str)),
                );
                ok = false;
            }
            backends.push(pattern);
        }
        let action = match r.action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some(other) => {
                e.hint(
                    src.at(r.action.as_ref().map(Spanned::span)),
                    format!("action must be \"allow\" or \"deny\", not `{other}`"),
                    did_you_mean(other, ["allow", "deny"]),
                );
                continue;
            }
        };
        if !ok {
            continue;
        }
        let matched: Vec<&Backend> =
            policy.backends.iter().filter(|b| backends.iter().any(|p| p.matches(b.name.as_str()))).collect();
        let sql = matched.iter().any(|b| b.protocol.is_sql());
        let http_backends = matched.iter().any(|b| b.protocol == Protocol::Http);
        let ssh_backends = matched.iter().any(|b| b.protocol == Protocol::Ssh);
        let passthrough =
            matched.iter().filter_map(|b| b.http.as_ref()).any(|h| h.tls == super::http::HttpTls::Passthrough);

        if action == Action::Deny {
            let meaningless = [
                ("as_role", r.as_role.as_ref().map(Spanned::span)),
                ("deny_statements", r.deny_statements.as_ref().map(Spanned::span)),
                ("deny_tables", r.deny_tables.as_ref().map(Spanned::span)),
                ("mask", r.mask.as_ref().map(Spanned::span)),
                ("approval", r.approval.as_ref().map(Spanned::span)),
                ("require", r.require.as_ref().map(Spanned::span)),
                ("max_session", r.max_session.as_ref().map(Spanned::span)),
                ("catalog", r.catalog.as_ref().map(Spanned::span)),
                ("statement_timeout", r.statement_timeout.as_ref().map(Spanned::span)),
                ("idle_in_transaction_timeout", r.idle_in_transaction_timeout.as_ref().map(Spanned::span)),
                ("query_limits", r.query_limits.as_ref().map(Spanned::span)),
            ];
            let mut bad = false;
            for (field, span) in meaningless {
                if let Some(span) = span {
                    e.hint(
                        src.at(Some(span)),
                        format!("`{field}` has no meaning on a deny rule"),
                        Some("a deny rule's `statements` and `tables` say what it denies".into()),
                    );
                    bad = true;
                }
            }
            if bad {
                continue;
            }
        }
        // From here on every field is checked even when an earlier one failed,
        // so one run of `policy check` reports all of a rule's errors.
        let mut bad = false;
        let statements = match &r.statements {
            Some(list) => need(&mut bad, parse_kinds(list, true, src, e)).unwrap_or_default(),
            None if action == Action::Allow => KindSet::all_ordinary(),
            None => KindSet::default(),
        };
        let deny_statements = r
            .deny_statements
            .as_ref()
            .and_then(|l| need(&mut bad, parse_kinds(l, false, src, e)))
            .map(|k| k.kinds)
            .unwrap_or_default();
        let tables = r.tables.as_ref().and_then(|l| need(&mut bad, parse_tables(l, src, e))).unwrap_or_default();
        let deny_tables =
            r.deny_tables.as_ref().and_then(|l| need(&mut bad, parse_tables(l, src, e))).unwrap_or_default();
        let when = r.when.as_ref().and_then(|w| need(&mut bad, parse_when(w, src, e)));
        let statement_scope = [
            ("statements", r.statements.as_ref().map(Spanned::span)),
            ("deny_statements", r.deny_statements.as_ref().map(Spanned::span)),
            ("tables", r.tables.as_ref().map(Spanned::span)),
            ("deny_tables", r.deny_tables.as_ref().map(Spanned::span)),
            ("mask", r.mask.as_ref().map(Spanned::span)),
            ("approval", r.approval.as_ref().map(Spanned::span)),
            ("as_role", r.as_role.as_ref().map(Spanned::span)),
            ("catalog", r.catalog.as_ref().map(Spanned::span)),
            ("statement_timeout", r.statement_timeout.as_ref().map(Spanned::span)),
            ("idle_in_transaction_timeout", r.idle_in_transaction_timeout.as_ref().map(Spanned::span)),
            ("query_limits", r.query_limits.as_ref().map(Spanned::span)),
        ];
        let http_only = http_backends && !sql;
        let ssh_only = ssh_backends && !sql && !http_backends;
        let statement_scope: Vec<_> = statement_scope
            .into_iter()
            .filter(|(f, _)| !(http_only && matches!(*f, "mask" | "approval")))
            .filter(|(f, _)| !(ssh_only && matches!(*f, "mask" | "approval" | "as_role")))
            .collect();
        if !sql && let Some((field, Some(span))) = statement_scope.iter().find(|(_, s)| s.is_some()) {
            e.push(
                src.at(Some(span.clone())),
                format!("`{field}` applies to postgres backends; rule `{name}` names only tcp backends"),
            );
            bad = true;
        }
        let as_role = r.as_role.as_ref().map(|a| DbRole::new(a.get_ref().clone()));
        if action == Action::Allow {
            let missing: Vec<&str> = matched
                .iter()
                .filter(|b| b.protocol.is_sql() && b.login(as_role.as_ref()).is_none())
                .map(|b| b.name.as_str())
                .collect();
            if !missing.is_empty() {
                let span = r.as_role.as_ref().map_or(bspan.clone(), Spanned::span);
                let what = match &as_role {
                    Some(role) => format!("no login for role `{role}` (add it under [backend.roles])"),
                    None => "no default `credentials` (name a role with as_role, or add credentials)".to_owned(),
                };
                e.push(src.at(Some(span)), format!("backend(s) {} have {what}", missing.join(", ")));
                bad = true;
            }
        }
        if let Some(m) = &r.mask
            && !policy.masks.contains_key(m.get_ref())
        {
            e.hint(
                src.at(Some(m.span())),
                format!("no masking profile named `{}`", m.get_ref()),
                did_you_mean(m.get_ref(), policy.masks.keys().map(String::as_str)),
            );
            bad = true;
        }
        let approval = match &r.approval {
            None => None,
            Some(a) => {
                let parsed = parse_approval(a, src, &policy.approvers, http_only, e);
                if parsed.is_none() {
                    bad = true;
                }
                if let Some(why) = parsed
                    .as_ref()
                    .and_then(|p| super::http::approval_unenforceable(p, sql, http_backends, passthrough))
                {
                    e.push(src.at(Some(a.span())), why);
                    bad = true;
                }
                if ssh_only && parsed.as_ref().is_some_and(|p| !p.kinds.is_empty()) {
                    e.push(
                        src.at(Some(a.span())),
                        "approval on ssh backends holds \"exec\", \"shell\" or \"connect\", not statement kinds",
                    );
                    bad = true;
                }
                if !ssh_backends && parsed.as_ref().is_some_and(|p| p.ssh_exec || p.ssh_shell) {
                    e.push(src.at(Some(a.span())), "approval for \"exec\"/\"shell\" applies to ssh backends");
                    bad = true;
                }
                parsed
            }
        };
        let mut duration = |field: &str, v: &Option<Spanned<String>>| match v {
            None => None,
            Some(m) => match parse_duration(m.get_ref()) {
                Ok(d) if d.is_zero() && field != "max_session" => {
                    e.push(
                        src.at(Some(m.span())),
                        format!("{field}: 0 would switch the timeout off; omit the key instead"),
                    );
                    bad = true;
                    None
                }
                Ok(d) => Some(d),
                Err(msg) => {
                    e.push(src.at(Some(m.span())), format!("{field}: {msg}"));
                    bad = true;
                    None
                }
            },
        };
        let max_session = duration("max_session", &r.max_session);
        let statement_timeout = duration("statement_timeout", &r.statement_timeout);
        let idle_in_transaction_timeout = duration("idle_in_transaction_timeout", &r.idle_in_transaction_timeout);
        let require = match &r.require {
            None => None,
            Some(q) => match build_require(q.get_ref()) {
                Ok(q) => Some(q),
                Err(msg) => {
                    e.push(src.at(Some(q.span())), msg);
                    bad = true;
                    None
                }
            },
        };
        let names_login = require.is_some() || who.oidc_groups.len() + who.subjects.len() + who.emails.len() > 0;
        if names_login && policy.identity.is_none() {
            let span = r.require.as_ref().map_or_else(|| r.who.span(), Spanned::span);
            e.hint(
                src.at(Some(span)),
                format!("rule `{name}` needs a login (OIDC groups, subjects, emails or `require`), but the policy has no [identity] table"),
                Some("add [identity] with the issuer and client_id `gatehouse login` uses".into()),
            );
            bad = true;
        }
        let catalog = match r.catalog.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("metadata") => CatalogAccess::Metadata,
            Some("none") => CatalogAccess::None,
            Some("all") => CatalogAccess::All,
            Some(other) => {
                e.hint(
                    src.at(r.catalog.as_ref().map(Spanned::span)),
                    format!("catalog must be \"none\", \"metadata\" or \"all\", not `{other}`"),
                    did_you_mean(other, ["none", "metadata", "all"]),
                );
                bad = true;
                CatalogAccess::Metadata
            }
        };
        let query_limits = match &r.query_limits {
            None => QueryLimits::default(),
            Some(q) => QueryLimits::from_raw(q.get_ref()).unwrap_or_else(|msg| {
                e.push(src.at(Some(q.span())), msg);
                bad = true;
                QueryLimits::default()
            }),
        };
        let http_raw = super::http::HttpRuleRaw {
            methods: r.methods.as_ref(),
            paths: r.paths.as_ref(),
            query: r.query.as_ref(),
            headers: r.headers.as_ref(),
            k8s: r.k8s.as_ref(),
            max_body: r.max_body.as_ref(),
            pass_client_auth: r.pass_client_auth.as_ref(),
        };
        if passthrough && let Some(m) = &r.mask {
            e.push(
                src.at(Some(m.span())),
                "`mask` cannot apply to a tls = \"passthrough\" backend: its bodies are opaque bytes (use tls = \"terminate\")",
            );
            continue;
        }
        let http = match super::http::build_scope(&http_raw, action, http_backends, passthrough) {
            Ok(h) => h,
            Err((span, msg)) => {
                e.push(src.at(span.or(Some(bspan.clone()))), msg);
                continue;
            }
        };
        let ssh_raw = super::ssh::SshRuleRaw {
            shell: r.shell.as_ref(),
            exec: r.exec.as_ref(),
            exec_regex: r.exec_regex.as_ref(),
            sftp: r.sftp.as_ref(),
            sftp_paths: r.sftp_paths.as_ref(),
            forward: r.forward.as_ref(),
            forward_to: r.forward_to.as_ref(),
            force_command: r.force_command.as_ref(),
        };
        let ssh = match super::ssh::build_scope(&ssh_raw, ssh_backends) {
            Ok(s) => s,
            Err((span, msg)) => {
                e.push(src.at(span.or(Some(bspan.clone()))), msg);
                continue;
            }
        };
        if bad {
            continue;
        }
        let index = policy.rules.len();
        policy.rules.push(Rule {
            name: RuleName::new(name),
            who,
            backends,
            action,
            as_role,
            statements,
            deny_statements,
            tables,
            deny_tables,
            when,
            mask: r.mask.map(|m| std::sync::Arc::from(m.into_inner())),
            record_parameters: r.record_parameters.unwrap_or(false),
            record_literals: r.record_literals.unwrap_or(false),
            approval,
            require,
            max_session,
            catalog,
            statement_timeout,
            idle_in_transaction_timeout,
            query_limits,
            http,
            ssh,
            at,
            index,
        });
    }
}

/// An HTTP backend's TLS mode and credentials.
fn http_backend(r: &BackendRaw) -> Result<(TlsMode, super::http::HttpBackend), String> {
    use super::http::{HttpBackend, HttpCredentials, HttpTls};
    let tls = match r.tls.as_ref().map(|t| t.get_ref().as_str()) {
        None => HttpTls::Off,
        Some(t) => HttpTls::parse(t)
            .ok_or_else(|| format!("tls of an http backend is {}, not `{t}`", HttpTls::NAMES.join(", ")))?,
    };
    if r.require_auth.is_some() || r.roles.is_some() || r.client_tls.is_some() {
        return Err("require_auth, roles and client_tls apply to postgres backends".into());
    }
    if r.ca_file.is_some() && !tls.upstream_tls() {
        return Err("ca_file is used only with tls = \"upstream\" or \"terminate\"".into());
    }
    if r.server_names.is_some() && tls == HttpTls::Passthrough {
        return Err("server_names does not apply to tls = \"passthrough\" (the requests are opaque)".into());
    }
    let credentials = match &r.credentials {
        None => None,
        Some(c) if c.dynamic.is_some() => return Err("dynamic credentials apply to postgres backends".into()),
        Some(c) => Some(match (&c.bearer_file, &c.user, &c.password_file, &c.header, &c.value_file) {
            (Some(f), None, None, None, None) => HttpCredentials::Bearer { token_file: f.clone() },
            (None, Some(u), Some(f), None, None) => {
                if u.contains(':') {
                    return Err("a basic-auth user name cannot hold `:`".into());
                }
                HttpCredentials::Basic { user: u.clone(), password_file: f.clone() }
            }
            (None, None, None, Some(h), Some(f)) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(format!("`{h}` is not a valid header name"));
                }
                HttpCredentials::Header { name: h.clone(), value_file: f.clone() }
            }
            _ => {
                return Err("http credentials are one of { bearer_file }, { user, password_file } (basic) or { header, value_file }".into());
            }
        }),
    };
    if tls == HttpTls::Passthrough && credentials.is_some() {
        return Err("credentials cannot be injected into tls = \"passthrough\" (the bytes are opaque)".into());
    }
    let mode = if tls.upstream_tls() { TlsMode::Verify } else { TlsMode::Off };
    Ok((mode, HttpBackend { tls, credentials, server_names: r.server_names.clone().unwrap_or_default() }))
}

/// Passes `v` through, noting a failure in `bad`.
fn need<T>(bad: &mut bool, v: Option<T>) -> Option<T> {
    if v.is_none() {
        *bad = true;
    }
    v
}

/// `http_only`: the rule names only http backends, so `for` names HTTP
/// methods (see `policy::http::approval_methods`), not statement kinds.
fn parse_approval(
    a: &Spanned<ApprovalRaw>,
    src: &Source,
    approvers: &BTreeMap<String, Who>,
    http_only: bool,
    e: &mut Errs<'_>,
) -> Option<Approval> {
    let aspan = src.at(Some(a.span()));
    let raw = a.get_ref();
    let connect = raw.kinds.iter().any(|k| k.eq_ignore_ascii_case("connect"));
    let ssh_exec = raw.kinds.iter().any(|k| k.eq_ignore_ascii_case("exec"));
    let ssh_shell = raw.kinds.iter().any(|k| k.eq_ignore_ascii_case("shell"));
    let plain = |k: &&String| !["connect", "exec", "shell"].iter().any(|w| k.eq_ignore_ascii_case(w));
    let rest: Vec<String> = raw.kinds.iter().filter(plain).cloned().collect();
    let (kinds, methods) = if http_only {
        match super::http::approval_methods(&rest) {
            Ok(m) => (Default::default(), m),
            Err(why) => {
                e.push(aspan, why);
                return None;
            }
        }
    } else {
        (parse_kinds(&Spanned::new(a.span(), rest), false, src, e)?.kinds, Default::default())
    };
    if kinds.is_empty() && methods.is_empty() && !connect && !ssh_exec && !ssh_shell {
        let what =
            if http_only { "HTTP methods (or \"*\", or \"connect\")" } else { "statement kinds (or \"connect\")" };
        e.push(aspan, format!("approval.for names no {what}"));
        return None;
    }
    let count = raw.count.unwrap_or(1);
    if count == 0 {
        e.push(aspan, "approval.count must be at least 1");
        return None;
    }
    let (by, by_name) = match &raw.by {
        ByRaw::Name(n) => match approvers.get(n) {
            Some(w) => (w.clone(), Some(n.clone())),
            None => {
                e.hint(
                    aspan,
                    format!("no [[approvers]] group named `{n}`"),
                    did_you_mean(n, approvers.keys().map(String::as_str)),
                );
                return None;
            }
        },
        ByRaw::Who(w) => {
            let who = who_from(w);
            if who.is_empty() || who.any {
                e.push(aspan, "approval.by must name users or groups (not everyone)");
                return None;
            }
            (who, None)
        }
    };
    let timeout = match &raw.timeout {
        None => DEFAULT_APPROVAL_TIMEOUT,
        Some(t) => match parse_duration(t) {
            Ok(d) => d,
            Err(m) => {
                e.push(aspan, format!("approval.timeout: {m}"));
                return None;
            }
        },
    };
    Some(Approval { kinds, by, by_name, timeout, count, connect, ssh_exec, ssh_shell, methods })
}

/// A test case's SSH request, if it gives one (at most one).
fn build_test_ssh(t: &TestRaw) -> Result<Option<super::TestSsh>, (Option<std::ops::Range<usize>>, String)> {
    use super::TestSsh;
    let mut found = Vec::new();
    if let Some(c) = &t.exec {
        found.push(TestSsh::Exec(c.clone()));
    }
    match t.shell {
        Some(true) => found.push(TestSsh::Shell),
        Some(false) => return Err((None, "shell = false asks nothing; give shell = true or leave it out".into())),
        None => {}
    }
    if let Some(p) = &t.sftp_read {
        found.push(TestSsh::Sftp { path: p.clone(), write: false });
    }
    if let Some(p) = &t.sftp_write {
        found.push(TestSsh::Sftp { path: p.clone(), write: true });
    }
    if let Some(f) = &t.forward {
        let kind = super::ssh::Forward::parse(f.get_ref()).ok_or_else(|| {
            (
                Some(f.span()),
                format!("unknown forwarding kind `{}`; kinds: {}", f.get_ref(), super::ssh::Forward::NAMES.join(", ")),
            )
        })?;
        found.push(TestSsh::Forward(kind));
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err((None, "a test case asks one ssh request: one of exec, shell, sftp_read, sftp_write, forward".into())),
    }
}

fn build_tests(raw: Vec<Entry<'_, TestRaw>>, policy: &mut Policy, e: &mut Errs<'_>) {
    let backend_names: Vec<&str> = policy.backends.iter().map(|b| b.name.as_str()).collect();
    let rule_names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    let mut tests = Vec::new();
    for entry in raw {
        let location = entry.at();
        let src = entry.src;
        let t = entry.raw;
        if !backend_names.contains(&t.backend.get_ref().as_str()) {
            e.hint(
                src.at(Some(t.backend.span())),
                format!("unknown backend `{}`", t.backend.get_ref()),
                did_you_mean(t.backend.get_ref(), backend_names.iter().copied()),
            );
            continue;
        }
        let expect = match t.expect.get_ref().as_str() {
            "allow" => TestExpect::Allow,
            "deny" => TestExpect::Deny,
            "approval" => TestExpect::Approval,
            other => {
                e.hint(
                    src.at(Some(t.expect.span())),
                    format!("expect must be \"allow\", \"deny\" or \"approval\", not `{other}`"),
                    did_you_mean(other, ["allow", "deny", "approval"]),
                );
                continue;
            }
        };
        if let Some(rule) = &t.rule
            && !rule_names.contains(&rule.get_ref().as_str())
        {
            e.hint(
                src.at(Some(rule.span())),
                format!("unknown rule `{}`", rule.get_ref()),
                did_you_mean(rule.get_ref(), rule_names.iter().copied()),
            );
            continue;
        }
        let kind = match &t.kind {
            None => None,
            Some(k) => match Kind::parse(k.get_ref()) {
                Some(k) => Some(k),
                None => {
                    e.hint(
                        src.at(Some(k.span())),
                        format!("unknown statement kind `{}`", k.get_ref()),
                        did_you_mean(k.get_ref(), Kind::all().iter().map(|k| k.name())),
                    );
                    continue;
                }
            },
        };
        let ssh = match build_test_ssh(&t) {
            Ok(s) => s,
            Err((span, msg)) => {
                e.push(span.map_or_else(|| location.clone(), |sp| src.at(Some(sp))), msg);
                continue;
            }
        };
        let given = usize::from(kind.is_some()) + usize::from(t.sql.is_some()) + usize::from(ssh.is_some());
        if given > 1 {
            e.push(
                location,
                "give one of `sql`, `kind` or an ssh request (`exec`, `shell`, `sftp_read`, `sftp_write`, `forward`)",
            );
            continue;
        }
        let is_ssh_backend = policy
            .backends
            .iter()
            .any(|b| b.name.as_str() == t.backend.get_ref() && b.protocol == super::Protocol::Ssh);
        if ssh.is_some() && !is_ssh_backend {
            e.push(src.at(Some(t.backend.span())), format!("backend `{}` is not an ssh backend", t.backend.get_ref()));
            continue;
        }
        let at = match &t.at {
            None => None,
            Some(a) => match a.get_ref().parse::<jiff::Timestamp>() {
                Ok(ts) => Some(ts),
                Err(err) => {
                    e.push(
                        src.at(Some(a.span())),
                        format!("`{}` is not a timestamp like 2026-12-01T18:00:00Z: {err}", a.get_ref()),
                    );
                    continue;
                }
            },
        };
        let login = match &t.login {
            None => None,
            Some(l) => match build_test_login(l.get_ref()) {
                Ok(l) => Some(l),
                Err(msg) => {
                    e.push(src.at(Some(l.span())), msg);
                    continue;
                }
            },
        };
        let what =
            t.sql.clone().or_else(|| kind.map(|k| k.name().to_owned())).or_else(|| ssh.as_ref().map(|s| s.describe()));
        tests.push(TestCase {
            name: t.name.unwrap_or_else(|| match &what {
                Some(w) => format!("{} → {}: {w}", t.who.user, t.backend.get_ref()),
                None => format!("{} → {}", t.who.user, t.backend.get_ref()),
            }),
            user: t.who.user,
            groups: t.who.groups,
            backend: BackendName::new(t.backend.into_inner()),
            sql: t.sql,
            kind,
            ssh,
            at,
            login,
            expect,
            rule: t.rule.map(|r| RuleName::new(r.into_inner())),
            location,
        });
    }
    policy.tests = tests;
}

fn who_from(raw: &WhoRaw) -> Who {
    Who {
        any: raw.users.iter().any(|u| u == "*"),
        users: raw.users.iter().filter(|u| *u != "*").cloned().collect(),
        uids: raw.uids.clone(),
        groups: raw.groups.clone(),
        oidc_groups: raw.oidc_groups.clone(),
        subjects: raw.subjects.clone(),
        emails: raw.emails.clone(),
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("backend name `{name}` must be 1-64 characters of letters, digits, '-', '_' or '.'"))
    }
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr =
        s.parse().map_err(|_| format!("`{s}` is not ip:port (IPv6 as [addr]:port); use `host` for names"))?;
    if addr.port() == 0 {
        return Err(format!("`{s}`: port 0 cannot be dialed"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("`{s}`: not a unicast address"));
    }
    Ok(addr)
}

fn parse_host(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("`{s}` is not name:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
    if port == 0 || host.is_empty() {
        return Err(format!("`{s}` is not name:port"));
    }
    Ok((host.to_owned(), port))
}
