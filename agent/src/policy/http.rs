//! HTTP in the policy: what an HTTP backend holds (TLS mode, injected
//! credentials) and what a rule says about requests (methods, path globs,
//! query and header conditions, body size, whether the client's own
//! `Authorization`/`Cookie` pass). Matching is pure: [`HttpRequest`] is a
//! view of a request line and headers, already normalised by [`normalize_path`].
//!
//! Paths are matched after percent-decoding, and a path whose decoded form
//! is ambiguous (dot segments, `//`, encoded `/` or `\`, NUL, invalid UTF-8)
//! is refused before any rule is consulted: a backend could read it as
//! another path than the one the rule saw. Allow rules compare paths
//! case-sensitively and deny rules case-insensitively, so either way a
//! difference in case errs on the side of refusing.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::{glob, glob_exact};

pub mod k8s;

/// How the client and the backend speak TLS on an HTTP backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTls {
    /// Plain HTTP on both legs.
    Off,
    /// Clients speak plain HTTP to Gatehouse; Gatehouse speaks HTTPS to the
    /// backend, its certificate checked against `ca_file` or the system roots.
    Upstream,
    /// Clients speak HTTPS to Gatehouse, which presents a certificate from
    /// the agent's CA for the name they asked for (SNI), and HTTPS
    /// (verified) to the backend.
    Terminate,
    /// HTTPS relayed as opaque TCP: connection policy and byte counts only.
    Passthrough,
}

impl HttpTls {
    pub const NAMES: [&'static str; 4] = ["off", "upstream", "terminate", "passthrough"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Self::Off,
            "upstream" => Self::Upstream,
            "terminate" => Self::Terminate,
            "passthrough" => Self::Passthrough,
            _ => return None,
        })
    }

    /// Whether Gatehouse speaks TLS to the backend.
    pub fn upstream_tls(self) -> bool {
        matches!(self, Self::Upstream | Self::Terminate)
    }
}

/// A credential Gatehouse holds for an HTTP backend and injects into every
/// request; the secret stays in its root-only file until a request needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCredentials {
    /// `Authorization: Bearer <file contents>`.
    Bearer { token_file: PathBuf },
    /// `Authorization: Basic base64(user:<file contents>)`.
    Basic { user: String, password_file: PathBuf },
    /// `<name>: <file contents>` (an API-key header).
    Header { name: String, value_file: PathBuf },
}

impl HttpCredentials {
    /// The files the credential is read from (checked at policy load).
    pub fn files(&self) -> Vec<&PathBuf> {
        match self {
            Self::Bearer { token_file } => vec![token_file],
            Self::Basic { password_file, .. } => vec![password_file],
            Self::Header { value_file, .. } => vec![value_file],
        }
    }

    /// The header the credential is sent in (lower case).
    pub fn header_name(&self) -> String {
        match self {
            Self::Bearer { .. } | Self::Basic { .. } => "authorization".into(),
            Self::Header { name, .. } => name.to_ascii_lowercase(),
        }
    }
}

/// What an HTTP backend adds to the common backend fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBackend {
    pub tls: HttpTls,
    pub credentials: Option<HttpCredentials>,
    /// Names clients may use in `Host` (and ask for in SNI, `tls =
    /// "terminate"`, where the first is the default certificate's). Empty:
    /// the `host` name, or `tls_server_name`.
    pub server_names: Vec<String>,
}

/// Whether backends `a` and `b` may share an address: only HTTPS that
/// Gatehouse terminates, each listing its own `server_names`, so the name a
/// client asks for (SNI) picks one (`protocol::http::sni`).
pub fn may_share_address(a: &super::Backend, b: &super::Backend) -> Result<(), String> {
    fn names(x: &super::Backend) -> Option<&Vec<String>> {
        x.http.as_ref().filter(|h| h.tls == HttpTls::Terminate && !h.server_names.is_empty()).map(|h| &h.server_names)
    }
    let (Some(na), Some(nb)) = (names(a), names(b)) else {
        return Err(
            "backends share an address only as http backends with tls = \"terminate\" and their own server_names (the TLS server name picks one)"
                .into(),
        );
    };
    if let Some(n) = na.iter().find(|n| nb.iter().any(|m| m.eq_ignore_ascii_case(n))) {
        return Err(format!("both list server name {n:?}: SNI could not tell them apart"));
    }
    Ok(())
}

/// The backends sharing `b`'s address, SNI telling them apart (more than
/// one only for `tls = "terminate"` HTTP backends with their own
/// `server_names`, as policy load checks).
pub fn sharing<'p>(policy: &'p super::Policy, b: &super::Backend) -> Vec<&'p super::Backend> {
    let terminate = |b: &super::Backend| b.http.as_ref().is_some_and(|h| h.tls == HttpTls::Terminate);
    let super::Target::Addr(addr) = b.target else { return vec![] };
    if !terminate(b) {
        return vec![];
    }
    policy.backends.iter().filter(|o| o.target == super::Target::Addr(addr) && terminate(o)).collect()
}

/// A condition on a query parameter or a header: the name, and a glob its
/// value must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueCond {
    /// Lower case for headers, as written for query parameters.
    pub name: String,
    pub pattern: String,
}

/// What a rule says about HTTP requests. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpScope {
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Globs over the decoded path (`*` any run, `/` included).
    pub paths: Vec<String>,
    pub query: Vec<ValueCond>,
    pub headers: Vec<ValueCond>,
    /// Kubernetes API conditions (verb, resource, namespace from the path).
    pub k8s: Option<k8s::K8sScope>,
    /// Allow rules: the largest request body accepted.
    pub max_body: Option<u64>,
    /// Allow rules: forward the client's own `Authorization` and `Cookie`
    /// (by default they are stripped; held credentials are injected).
    pub pass_client_auth: bool,
}

/// Methods an allow rule without `methods` still does not cover: they turn
/// the connection into a tunnel or echo the request back.
const UNNAMED_ONLY: [&str; 2] = ["CONNECT", "TRACE"];

impl HttpScope {
    /// Whether the rule says nothing about which requests it covers.
    pub fn is_unscoped(&self) -> bool {
        self.methods.is_empty()
            && self.paths.is_empty()
            && self.query.is_empty()
            && self.headers.is_empty()
            && self.k8s.is_none()
    }

    /// Deny rules: whether this request is in what the rule denies (every
    /// condition given matches; paths and values compared case-insensitively).
    /// Query conditions count as met when a body may carry parameters (see
    /// [`has_parameter_body`]): Gatehouse does not read it, and the
    /// application may read the denied value from it.
    pub fn deny_matches(&self, r: &HttpRequest<'_>) -> bool {
        // Frameworks answer HEAD with their GET handler (Express, Flask,
        // Rails, Go's mux): it runs, only its body is not sent.
        let method = self.methods.is_empty()
            || self.methods.iter().any(|m| {
                m.eq_ignore_ascii_case(r.method)
                    || (m.eq_ignore_ascii_case("GET") && r.method.eq_ignore_ascii_case("HEAD"))
            });
        let path = self.paths.is_empty() || {
            let forms = deny_path_forms(r.path);
            self.paths.iter().any(|p| forms.iter().any(|f| glob(p.as_bytes(), f.as_bytes())))
        };
        let query = (!self.query.is_empty() && has_parameter_body(r))
            || self.query.iter().all(|c| r.query_values(&c.name).any(|v| deny_value_matches(&c.pattern, v)));
        let headers =
            self.headers.iter().all(|c| r.header_values(&c.name).any(|v| glob(c.pattern.as_bytes(), v.as_bytes())));
        let k8s = self.k8s.as_ref().is_none_or(|k| k.deny_matches(r.method, r.path, r.query));
        method && path && query && headers && k8s
    }

    /// Allow rules: why this rule does not allow the request, if it does not.
    /// A query or header condition needs the name present, and every value
    /// sent under it to match (a second `?status=` cannot slip past).
    pub fn refuses(&self, r: &HttpRequest<'_>) -> Option<String> {
        if self.methods.is_empty() {
            if let Some(m) = UNNAMED_ONLY.iter().find(|m| m.eq_ignore_ascii_case(r.method)) {
                return Some(format!("method {m} must be named in its methods"));
            }
        } else if !self.methods.iter().any(|m| m == r.method) {
            return Some(format!("method {} is not in its methods [{}]", r.method, self.methods.join(", ")));
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| glob_exact(p.as_bytes(), r.path.as_bytes())) {
            return Some(format!("path {} is not in its paths [{}]", r.path, self.paths.join(", ")));
        }
        if !self.query.is_empty() && has_parameter_body(r) {
            return Some(
                "its query conditions cannot see parameters sent in a form, multipart or JSON body, or a body without a Content-Type, which frameworks (Rails, Laravel, PHP's $_REQUEST) read over the query's (send the parameters in the query string)"
                    .into(),
            );
        }
        for c in &self.query {
            let mut values = r.query_values(&c.name).peekable();
            if values.peek().is_none() {
                return Some(format!("query parameter {} is missing (it must match {:?})", c.name, c.pattern));
            }
            if let Some(v) = values.find(|v| !glob_exact(c.pattern.as_bytes(), v.as_bytes())) {
                return Some(format!("query parameter {}={v:?} does not match {:?}", c.name, c.pattern));
            }
        }
        for c in &self.headers {
            let mut values = r.header_values(&c.name).peekable();
            if values.peek().is_none() {
                return Some(format!("header {} is missing (it must match {:?})", c.name, c.pattern));
            }
            if values.any(|v| !glob_exact(c.pattern.as_bytes(), v.as_bytes())) {
                return Some(format!("header {} does not match {:?}", c.name, c.pattern));
            }
        }
        if let Some(why) = self.k8s.as_ref().and_then(|k| k.refuses(r.method, r.path, r.query)) {
            return Some(why);
        }
        if let (Some(max), Some(len)) = (self.max_body, r.body_len)
            && len > max
        {
            return Some(format!("the body of {len} bytes is over its max_body of {max}"));
        }
        None
    }

    /// One line for explanations: `GET, HEAD /api/*`.
    pub fn describe(&self) -> String {
        let m = if self.methods.is_empty() { "any method".to_owned() } else { self.methods.join(", ") };
        let p = if self.paths.is_empty() { "any path".to_owned() } else { self.paths.join(", ") };
        match &self.k8s {
            Some(k) => format!("{m} on {p}, {}", k.describe()),
            None => format!("{m} on {p}"),
        }
    }
}

/// A rule's HTTP keys as written (borrowed from the rule's raw entry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpRuleRaw<'r> {
    pub methods: Option<&'r Spanned<Vec<String>>>,
    pub paths: Option<&'r Spanned<Vec<String>>>,
    pub query: Option<&'r Spanned<BTreeMap<String, String>>>,
    pub headers: Option<&'r Spanned<BTreeMap<String, String>>>,
    pub k8s: Option<&'r Spanned<K8sRaw>>,
    pub max_body: Option<&'r Spanned<String>>,
    pub pass_client_auth: Option<&'r Spanned<bool>>,
}

/// A rule's `k8s = { verbs, resources, namespaces }` as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sRaw {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Methods a rule may name.
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];

/// Validates a rule's HTTP keys: only on rules naming an HTTP backend;
/// `max_body` and `pass_client_auth` only on allow rules.
pub(crate) fn build_scope(
    r: &HttpRuleRaw<'_>,
    action: super::Action,
    http_backends: bool,
    passthrough: bool,
) -> Result<HttpScope, (Option<Range<usize>>, String)> {
    let given = [
        ("methods", r.methods.map(Spanned::span)),
        ("paths", r.paths.map(Spanned::span)),
        ("query", r.query.map(Spanned::span)),
        ("headers", r.headers.map(Spanned::span)),
        ("k8s", r.k8s.map(Spanned::span)),
        ("max_body", r.max_body.map(Spanned::span)),
        ("pass_client_auth", r.pass_client_auth.map(Spanned::span)),
    ];
    if !http_backends && let Some((field, span)) = given.iter().find(|(_, s)| s.is_some()) {
        return Err((span.clone(), format!("`{field}` applies to http backends; the rule names none")));
    }
    if passthrough && let Some((field, span)) = given.iter().find(|(_, s)| s.is_some()) {
        return Err((
            span.clone(),
            format!(
                "`{field}` cannot be enforced on a tls = \"passthrough\" backend: its requests are opaque bytes (use tls = \"terminate\")"
            ),
        ));
    }
    if action == super::Action::Deny
        && let Some((field, span)) = given.iter().skip(5).find(|(_, s)| s.is_some())
    {
        return Err((span.clone(), format!("`{field}` has no meaning on a deny rule")));
    }
    let mut scope = HttpScope::default();
    if let Some(m) = r.methods {
        for name in m.get_ref() {
            let up = name.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                return Err((Some(m.span()), format!("unknown method `{name}`; methods: {}", METHODS.join(", "))));
            }
            scope.methods.push(up);
        }
        if scope.methods.is_empty() {
            return Err((Some(m.span()), "methods lists no method (omit the key for any method)".into()));
        }
    }
    if let Some(p) = r.paths {
        for path in p.get_ref() {
            if !path.starts_with('/') && path != "*" {
                return Err((Some(p.span()), format!("path glob `{path}` must start with `/`")));
            }
            scope.paths.push(path.clone());
        }
    }
    let conds = |m: Option<&Spanned<BTreeMap<String, String>>>,
                 lower: bool|
     -> Result<Vec<ValueCond>, (Option<Range<usize>>, String)> {
        let Some(m) = m else { return Ok(vec![]) };
        m.get_ref()
            .iter()
            .map(|(k, v)| {
                if lower && http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err((Some(m.span()), format!("`{k}` is not a valid header name")));
                }
                Ok(ValueCond { name: if lower { k.to_ascii_lowercase() } else { k.clone() }, pattern: v.clone() })
            })
            .collect()
    };
    scope.query = conds(r.query, false)?;
    scope.headers = conds(r.headers, true)?;
    if let Some(mb) = r.max_body {
        scope.max_body = Some(parse_size(mb.get_ref()).map_err(|m| (Some(mb.span()), format!("max_body: {m}")))?);
    }
    if let Some(k) = r.k8s {
        let raw = k.get_ref();
        if let Some(v) = raw.verbs.iter().find(|v| !k8s::VERBS.contains(&v.as_str())) {
            return Err((Some(k.span()), format!("k8s: unknown verb `{v}`; verbs: {}", k8s::VERBS.join(", "))));
        }
        if raw.verbs.is_empty() && raw.resources.is_empty() && raw.namespaces.is_empty() {
            return Err((Some(k.span()), "k8s names no verbs, resources or namespaces (omit it)".into()));
        }
        scope.k8s = Some(k8s::K8sScope {
            verbs: raw.verbs.clone(),
            resources: raw.resources.clone(),
            namespaces: raw.namespaces.clone(),
        });
    }
    scope.pass_client_auth = r.pass_client_auth.is_some_and(|p| *p.get_ref());
    Ok(scope)
}

/// An http rule's `approval.for` (besides `"connect"`): HTTP methods whose
/// requests wait for an approver, or `"*"` for every request the rule
/// allows. Methods, not a rule-wide switch: the rule's `paths` already say
/// which requests it covers, and the method is what says a request changes
/// something, as a statement kind does for SQL (`for = ["DELETE"]` reads
/// like `for = ["drop"]`); holding only some paths is a second rule.
/// On Kubernetes API servers a resource with its subresource
/// (`"pods/exec"`, `"pods/attach"`) holds those requests, upgrades included.
pub fn approval_methods(list: &[String]) -> Result<std::collections::BTreeSet<String>, String> {
    list.iter()
        .map(|m| {
            let up = m.to_ascii_uppercase();
            let k8s_sub = m.split_once('/').is_some_and(|(r, s)| {
                !r.is_empty()
                    && !s.is_empty()
                    && !s.contains('/')
                    && m.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/.-".contains(&b))
            });
            if k8s_sub {
                Ok(m.clone())
            } else if up == "*" || METHODS.contains(&up.as_str()) {
                Ok(up)
            } else {
                Err(format!(
                    "approval.for on a rule for http backends names HTTP methods ({}), \"*\" for every request, Kubernetes subresources (\"pods/exec\"), or \"connect\"; `{m}` is none of them",
                    METHODS.join(", ")
                ))
            }
        })
        .collect()
}

/// Why a rule's approval could not hold what it names, if so: a rule for
/// both SQL and HTTP backends (its `for` would hold statements but not
/// requests), or held requests on opaque `tls = "passthrough"` HTTPS.
pub(crate) fn approval_unenforceable(
    a: &super::Approval,
    sql: bool,
    http_backends: bool,
    passthrough: bool,
) -> Option<String> {
    if sql && http_backends && !a.kinds.is_empty() {
        return Some(
            "approval.for on a rule naming both postgres and http backends would hold statements but not HTTP requests; write one rule per protocol".into(),
        );
    }
    if passthrough && !a.methods.is_empty() {
        return Some(
            "held requests cannot be enforced on a tls = \"passthrough\" backend: its requests are opaque bytes (use tls = \"terminate\")".into(),
        );
    }
    None
}

/// `"64KiB"`, `"10MB"`, `"1024"` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (like 1048576, 64KiB or 10MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (B, KiB, MiB, GiB, kB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// A request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Percent-decoded and checked by [`normalize_path`].
    pub path: &'a str,
    /// Decoded query parameters, in order.
    pub query: &'a [(String, String)],
    pub headers: &'a http::HeaderMap,
    /// The declared body size (`Content-Length`), if any; a chunked body is
    /// counted as it streams and cut at the rule's `max_body`.
    pub body_len: Option<u64>,
    /// The request has (or may have) a body: not ended with its headers.
    pub has_body: bool,
}

/// A deny rule's query pattern against a value as sent and, if it is
/// encoded again (`%2563ancel`), as an application that decodes its
/// parameters a second time reads it.
fn deny_value_matches(pattern: &str, v: &str) -> bool {
    glob(pattern.as_bytes(), v.as_bytes())
        || (v.contains('%') && glob(pattern.as_bytes(), &percent_decode_lenient(v.as_bytes())))
        || ascii_case_fold(v).is_some_and(|f| glob(pattern.as_bytes(), f.as_bytes()))
}

/// The paths a backend may route `path` as, for deny rules: with and
/// without a trailing `/` (Express, Rails and Spring 5 route `/admin/` as
/// `/admin`, and `/admin` is what a `/admin/*` rule means to keep out), and
/// without a format suffix on the last segment (Rails routes
/// `/orders/7.json` as `/orders/7`, as Spring's suffix matching did).
///
/// And each of those decoded once more, and with the letters outside ASCII that change case *into*
/// ASCII written as those ASCII letters ([`ascii_case_fold`]): a backend
/// that routes case-insensitively with Unicode case rules reads
/// `/adm%C4%B1n/users` (a dotless `ı`) as `/admin/users` — Python's `re`
/// with `IGNORECASE` (Django's `(?i)` patterns), Java's `equalsIgnoreCase`,
/// `upper()`/`casefold()` before a comparison.
fn deny_path_forms(path: &str) -> Vec<String> {
    // As sent, and decoded once more (`/%61dmin` is `/admin` to a server or
    // proxy that decodes again, as `normalize_path` already assumes for `..`).
    let mut spellings = vec![path.to_owned()];
    if path.contains('%') {
        spellings.extend(String::from_utf8(percent_decode_lenient(path.as_bytes())).ok().filter(|p| p != path));
    }
    let folded: Vec<String> = spellings.iter().filter_map(|p| ascii_case_fold(p)).collect();
    spellings.extend(folded);
    let mut forms = Vec::new();
    for path in &spellings {
        let base = path.trim_end_matches('/');
        forms.extend([path.to_owned(), base.to_owned(), format!("{base}/")]);
        let last = base.rsplit('/').next().unwrap_or("");
        if let Some(dot) = last.rfind('.').filter(|&d| d > 0) {
            let stem = base.get(..base.len() - last.len() + dot).unwrap_or(base);
            forms.push(stem.to_owned());
            forms.push(format!("{stem}/"));
        }
    }
    forms
}

/// `s` with every non-ASCII character whose upper or lower case is ASCII
/// replaced by that ASCII (`ı` U+0131 → `I`, `İ` U+0130 → `i`, `ſ` U+017F →
/// `S`, the Kelvin sign U+212A → `k`, `ß` → `SS`, the ligatures `ﬁ` → `FI`
/// and kin), for deny rules, which compare ASCII case-insensitively; `None`
/// when nothing changes.
fn ascii_case_fold(s: &str) -> Option<String> {
    if s.is_ascii() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        let upper: String = c.to_uppercase().collect();
        let lower: String = c.to_lowercase().collect();
        // `ẞ` (U+1E9E) lowers to `ß`, which uppers to `SS`.
        let upper_of_lower: String = lower.chars().flat_map(char::to_uppercase).collect();
        // `İ` lowers to `i` and a combining dot above (U+0307), which Java's
        // per-character `toLowerCase` and Python's `re` leave out.
        let dotless = lower.strip_suffix('\u{307}').unwrap_or(&lower);
        match [upper.as_str(), dotless, upper_of_lower.as_str()].into_iter().find(|f| f.is_ascii()) {
            Some(f) => {
                out.push_str(f);
                changed = true;
            }
            None => out.push(c),
        }
    }
    changed.then_some(out)
}

/// A query parameter's name as web frameworks read it: up to its first `[`
/// (PHP and Rails arrays, `status[]=`) or NUL (PHP reads names as C
/// strings: `action%00x` is `action`), leading spaces skipped and the other
/// `.` and spaces as `_` (PHP reads `+action` as `action` and `user.id` as
/// `user_id`), case ignored (ASP.NET), letters outside ASCII whose case
/// mapping is ASCII read as that letter (`ſtatus` is `status` to a
/// comparison by Unicode case rules; see [`ascii_case_fold`]).
pub(crate) fn param_key(name: &str) -> String {
    let base = name.split(['[', '\0']).next().unwrap_or(name).trim_start_matches(' ');
    let folded = ascii_case_fold(base);
    let base = folded.as_deref().unwrap_or(base);
    base.chars().map(|c| if matches!(c, '.' | ' ') { '_' } else { c.to_ascii_lowercase() }).collect()
}

/// Whether the request may carry a body some frameworks read as the
/// request's parameters, over the query's: a form (`application/x-www-form-urlencoded`,
/// `multipart/form-data`; Rails, PHP's `$_REQUEST`), any other multipart
/// (Rack parses `multipart/mixed` and `multipart/related` too), JSON
/// (`application/json`, `text/json`, `…+json`; Rails and Laravel merge its
/// top-level keys into the parameters), or a body with no `Content-Type`
/// at all (Rack reads a POST without one as a form). Every `Content-Type`
/// sent counts.
fn has_parameter_body(r: &HttpRequest<'_>) -> bool {
    let mut types = r.headers.get_all(http::header::CONTENT_TYPE).iter().peekable();
    if types.peek().is_none() {
        return r.has_body;
    }
    // A list (`text/plain, application/json`) counts by each of its types.
    types.any(|v| {
        String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase().split(',').any(|part| {
            let t = part.split(';').next().unwrap_or("").trim();
            t.is_empty()
                || t.starts_with("multipart/")
                || matches!(t, "application/x-www-form-urlencoded" | "application/json" | "text/json")
                || t.ends_with("+json")
        })
    })
}

impl<'a> HttpRequest<'a> {
    /// Every value sent under `name`, as an application may read names (see [`param_key`]).
    fn query_values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let key = param_key(name);
        self.query.iter().filter(move |(k, _)| param_key(k) == key).map(|(_, v)| v.as_str())
    }

    /// Every value sent under `name`, `_` and `-` alike (CGI, WSGI and PHP
    /// read `X_Tenant` as `X-Tenant`: both become `HTTP_X_TENANT`).
    fn header_values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let same = |a: &str| {
            a.len() == name.len()
                && a.bytes().zip(name.bytes()).all(|(x, y)| {
                    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
                    fold(x) == fold(y)
                })
        };
        // A value that is not visible ASCII matches no glob (and fails an allow's condition).
        self.headers.iter().filter(move |(k, _)| same(k.as_str())).map(|(_, v)| v.to_str().unwrap_or("\u{0}"))
    }

    /// `GET /path` for records and messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Why a request target cannot be decided on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path is not in origin form (it must start with `/`)")]
    NotOrigin,
    #[error("the request path has a malformed percent escape")]
    BadEscape,
    #[error("the request path is ambiguous ({0}): a backend could read it as another path")]
    Ambiguous(&'static str),
}

/// Decodes a request path and refuses the forms a backend could read
/// differently from the policy: dot segments, empty segments, encoded `/`
/// or `\`, NUL and control characters, invalid UTF-8.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOrigin);
    }
    let bytes = percent_decode(raw.as_bytes(), false).ok_or(PathError::BadEscape)?;
    // An encoded slash or backslash makes a segment boundary the policy cannot see.
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || raw.contains('\\') {
        return Err(PathError::Ambiguous("an encoded or backslash separator"));
    }
    let s = String::from_utf8(bytes).map_err(|_| PathError::Ambiguous("not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(PathError::Ambiguous("a control character"));
    }
    for seg in s.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err(PathError::Ambiguous("a dot segment"));
        }
    }
    if s.contains("//") {
        return Err(PathError::Ambiguous("an empty segment"));
    }
    if s.contains(';') {
        // Matrix parameters (`/admin;x=1`) are stripped by some servers before routing.
        return Err(PathError::Ambiguous("a `;` parameter"));
    }
    if decodes_again_to_another_path(&s) {
        return Err(PathError::Ambiguous("a double-encoded separator, dot segment or control character"));
    }
    Ok(s)
}

/// Whether a path, decoded once, would read as another path if a backend
/// (or a proxy in front of it) decoded it a second time: `%252e%252e` is
/// `%2e%2e` to the policy and `..` to a server that decodes twice.
fn decodes_again_to_another_path(once: &str) -> bool {
    let twice = percent_decode_lenient(once.as_bytes());
    if twice == once.as_bytes() {
        return false;
    }
    let t = String::from_utf8_lossy(&twice);
    t.matches('/').count() != once.matches('/').count()
        || t.contains(['\\', ';'])
        || t.chars().any(char::is_control)
        || t.split('/').any(|seg| seg == "." || seg == "..")
}

/// Why a query string cannot be decided on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query string does not decode (a malformed percent escape or not UTF-8)")]
    BadEscape,
    /// Rack 2, Python before 3.9.2 and Perl's CGI.pm also split at `;`:
    /// `?x=1;action=cancel` carries an `action` there, one `x` here.
    #[error(
        "the query string has a `;`, which some frameworks read as a separator between parameters and others as part of a value (send it as %3B)"
    )]
    Semicolon,
}

/// Decodes a query string into (name, value) pairs, form-style (`+` is a
/// space); one a backend could split otherwise (a raw `;`) is refused.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, QueryError> {
    if q.contains(';') {
        return Err(QueryError::Semicolon);
    }
    let text = |b: &str| {
        percent_decode(b.as_bytes(), true).and_then(|d| String::from_utf8(d).ok()).ok_or(QueryError::BadEscape)
    };
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((text(k)?, text(v)?));
    }
    Ok(out)
}

/// `%XX` decoding; `None` for a malformed escape.
pub fn percent_decode(s: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    decode(s, plus_is_space, true)
}

/// `%XX` decoding as a lenient server does it a second time: a malformed
/// escape is kept as it is (Python's `unquote`), the rest still decoded.
fn percent_decode_lenient(s: &[u8]) -> Vec<u8> {
    decode(s, false, false).unwrap_or_else(|| s.to_vec())
}

fn decode(s: &[u8], plus_is_space: bool, strict: bool) -> Option<Vec<u8>> {
    let hex = |at: usize| s.get(at).and_then(|c| char::from(*c).to_digit(16));
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).ok()?);
                    i += 3;
                }
                _ if strict => return None,
                _ => {
                    out.push(b);
                    i += 1;
                }
            },
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, q: &'a [(String, String)], h: &'a http::HeaderMap) -> HttpRequest<'a> {
        HttpRequest { method, path, query: q, headers: h, body_len: None, has_body: false }
    }

    #[test]
    fn paths_that_a_backend_could_read_otherwise_are_refused() {
        assert_eq!(normalize_path("/api/v1/orders/7").unwrap(), "/api/v1/orders/7");
        assert_eq!(normalize_path("/api/%761/x").unwrap(), "/api/v1/x");
        for bad in ["/api/../admin", "/api/%2e%2e/admin", "/api//admin", "/api%2fadmin", "/a\\b", "/a%00", "/admin;x"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
        for twice in [
            "/api/%252e%252e/admin",
            "/api/%252E./admin",
            "/a%252fb",
            "/a%255cb",
            "/a%253bx",
            "/a%2500",
            "/api/%25zz/%252e%252e/admin",
        ] {
            assert!(matches!(normalize_path(twice), Err(PathError::Ambiguous(_))), "{twice}");
        }
        assert_eq!(normalize_path("/files/100%2525").as_deref(), Ok("/files/100%25"), "a literal percent sign passes");
        assert_eq!(normalize_path("/a%2541b").as_deref(), Ok("/a%41b"));
        assert_eq!(normalize_path("*"), Err(PathError::NotOrigin));
        assert_eq!(normalize_path("/%zz"), Err(PathError::BadEscape));
    }

    #[test]
    fn allow_scope_methods_paths_and_conditions() {
        let s = HttpScope {
            methods: vec!["GET".into()],
            paths: vec!["/api/v1/orders/*".into()],
            query: vec![ValueCond { name: "status".into(), pattern: "open".into() }],
            ..HttpScope::default()
        };
        let h = http::HeaderMap::new();
        let q = parse_query("status=open").unwrap();
        assert_eq!(s.refuses(&req("GET", "/api/v1/orders/7", &q, &h)), None);
        assert!(s.refuses(&req("DELETE", "/api/v1/orders/7", &q, &h)).unwrap().contains("method DELETE"));
        assert!(s.refuses(&req("GET", "/API/v1/orders/7", &q, &h)).unwrap().contains("path"));
        let two = parse_query("status=open&status=closed").unwrap();
        assert!(s.refuses(&req("GET", "/api/v1/orders/7", &two, &h)).unwrap().contains("closed"));
        assert!(s.refuses(&req("GET", "/api/v1/orders/7", &[], &h)).unwrap().contains("missing"));
    }

    #[test]
    fn unscoped_allow_still_refuses_connect_and_trace() {
        let s = HttpScope::default();
        let h = http::HeaderMap::new();
        assert!(s.refuses(&req("TRACE", "/", &[], &h)).is_some());
        assert!(s.refuses(&req("PATCH", "/", &[], &h)).is_none());
    }

    #[test]
    fn deny_scope_is_case_insensitive() {
        let s = HttpScope { paths: vec!["/admin/*".into()], ..HttpScope::default() };
        let h = http::HeaderMap::new();
        assert!(s.deny_matches(&req("GET", "/ADMIN/users", &[], &h)));
        assert!(!s.deny_matches(&req("GET", "/api", &[], &h)));
    }

    #[test]
    fn header_conditions_need_every_value_to_match() {
        let s = HttpScope {
            headers: vec![ValueCond { name: "x-tenant".into(), pattern: "acme".into() }],
            ..HttpScope::default()
        };
        let mut h = http::HeaderMap::new();
        h.append("x-tenant", http::HeaderValue::from_static("acme"));
        assert!(s.refuses(&req("GET", "/", &[], &h)).is_none());
        h.append("x-tenant", http::HeaderValue::from_static("other"));
        assert!(s.refuses(&req("GET", "/", &[], &h)).is_some());
    }

    fn load(text: &str) -> Result<crate::policy::Policy, crate::policy::Diagnostics> {
        crate::policy::load::load(&[crate::policy::diag::Source { path: "t.toml".into(), text: text.into() }])
    }

    const HTTP: &str = r#"
[[backend]]
name = "api"
protocol = "http"
address = "127.10.0.9:8080"

[[approvers]]
name = "leads"
who = { users = ["lead"] }

[[rule]]
name = "read"
who = { users = ["ana"] }
backend = "api"
methods = ["GET"]
paths = ["/api/*"]

[[rule]]
name = "no admin"
who = { users = ["*"] }
backend = "api"
action = "deny"
paths = ["/api/admin/*"]
"#;

    #[test]
    fn requests_are_decided_by_rule_scope_deny_first() {
        let p = load(HTTP).unwrap();
        let ana = crate::identity::Principal::named("ana", &[]);
        let h = http::HeaderMap::new();
        let backend = crate::types::BackendName::new("api");
        let ask = |m: &str, path: &str| {
            let r = crate::policy::Request { backend: &backend, statement: None, now: jiff::Timestamp::now() };
            p.decide_http_with(&ana, &r, &req(m, path, &[], &h), &[])
        };
        assert!(ask("GET", "/api/orders").allowed());
        let d = ask("DELETE", "/api/orders");
        assert!(!d.allowed() && d.rule_label() == "read", "{d:?}");
        let d = ask("GET", "/api/admin/x");
        assert!(!d.allowed() && d.rule_label() == "no admin", "{d:?}");
        // The connection itself is allowed: the deny rule has a request scope.
        assert!(p.decide_connect(&ana, &backend, jiff::Timestamp::now()).allowed());
    }

    #[test]
    fn what_cannot_be_enforced_does_not_load() {
        let drop = HTTP
            .replace("paths = [\"/api/*\"]", "paths = [\"/api/*\"]\napproval = { for = [\"drop\"], by = \"leads\" }");
        assert!(load(&drop).unwrap_err().to_string().contains("names HTTP methods"));
        let connect = HTTP.replace(
            "paths = [\"/api/*\"]",
            "paths = [\"/api/*\"]\napproval = { for = [\"connect\"], by = \"leads\" }",
        );
        assert!(load(&connect).is_ok());
        let pass = HTTP.replace("address = \"127.10.0.9:8080\"", "address = \"127.10.0.9:443\"\ntls = \"passthrough\"");
        assert!(load(&pass).unwrap_err().to_string().contains("passthrough"));
        let sql_field = HTTP.replace("methods = [\"GET\"]", "statements = [\"select\"]");
        assert!(load(&sql_field).is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert!(parse_size("1 parsec").is_err());
    }

    #[test]
    fn approval_holds_the_methods_it_names() {
        let held = HTTP.replace(
            "methods = [\"GET\"]",
            "methods = [\"GET\", \"DELETE\"]\napproval = { for = [\"delete\"], by = \"leads\", timeout = \"1m\" }",
        );
        let p = load(&held).unwrap();
        let ana = crate::identity::Principal::named("ana", &[]);
        let h = http::HeaderMap::new();
        let backend = crate::types::BackendName::new("api");
        let ask = |m: &str, path: &str| {
            let r = crate::policy::Request { backend: &backend, statement: None, now: jiff::Timestamp::now() };
            p.decide_http_with(&ana, &r, &req(m, path, &[], &h), &[])
        };
        assert!(ask("GET", "/api/orders").allowed());
        let d = ask("DELETE", "/api/orders/7");
        assert_eq!(d.verdict, crate::policy::Verdict::NeedsApproval, "{d:?}");
        assert_eq!(d.approvers.as_deref(), Some("leads"));
        assert_eq!(d.approval_timeout, Some(std::time::Duration::from_secs(60)));
        // Deny rules and the rule's own scope still refuse first: nothing to approve.
        assert!(!ask("DELETE", "/api/admin/x").allowed());
        assert_eq!(ask("DELETE", "/api/admin/x").verdict, crate::policy::Verdict::Deny);
        assert_eq!(ask("DELETE", "/other").verdict, crate::policy::Verdict::Deny);
        // A connection is not held by a request approval.
        assert!(p.decide_connect(&ana, &backend, jiff::Timestamp::now()).allowed());
        // Kubernetes: rules read verb, resource and namespace; exec is held.
        let k8s = HTTP.replace(
            "methods = [\"GET\"]\npaths = [\"/api/*\"]",
            "k8s = { verbs = [\"get\", \"list\", \"create\"], resources = [\"pods\", \"pods/exec\"], namespaces = [\"prod\"] }\napproval = { for = [\"pods/exec\"], by = \"leads\" }",
        );
        let pk = load(&k8s).unwrap();
        let r = crate::policy::Request { backend: &backend, statement: None, now: jiff::Timestamp::now() };
        let ask = |m: &str, path: &str| pk.decide_http_with(&ana, &r, &req(m, path, &[], &h), &[]);
        assert!(ask("GET", "/api/v1/namespaces/prod/pods").allowed());
        assert!(ask("GET", "/apis").allowed(), "discovery");
        let d = ask("POST", "/api/v1/namespaces/prod/pods/web/exec");
        assert_eq!(d.verdict, crate::policy::Verdict::NeedsApproval, "{d:?}");
        assert!(d.reason().contains("pods/exec"), "{d:?}");
        let d = ask("GET", "/api/v1/namespaces/prod/pods/web/exec");
        assert_eq!(d.verdict, crate::policy::Verdict::NeedsApproval, "an exec upgrade over GET too: {d:?}");
        assert!(!ask("GET", "/api/v1/namespaces/dev/pods").allowed());
        assert!(!ask("DELETE", "/api/v1/namespaces/prod/pods/web").allowed());
        assert!(!ask("GET", "/api/v1/namespaces/prod/secrets").allowed());
        let bad = HTTP.replace("methods = [\"GET\"]", "k8s = { verbs = [\"frobnicate\"] }");
        assert!(load(&bad).unwrap_err().to_string().contains("unknown verb"));
        // A second rule as specific holds other requests: each request goes to the rule that admits it.
        let two = format!(
            "{held}\n[[rule]]\nname = \"slow puts\"\nwho = {{ users = [\"ana\"] }}\nbackend = \"api\"\nmethods = [\"PUT\"]\npaths = [\"/slow/*\"]\napproval = {{ for = [\"*\"], by = \"leads\" }}\n"
        );
        let p2 = load(&two).unwrap();
        let r = crate::policy::Request { backend: &backend, statement: None, now: jiff::Timestamp::now() };
        let d = p2.decide_http_with(&ana, &r, &req("PUT", "/slow/1", &[], &h), &[]);
        assert_eq!((d.verdict, d.rule_label()), (crate::policy::Verdict::NeedsApproval, "slow puts"), "{d:?}");
        let d = p2.decide_http_with(&ana, &r, &req("GET", "/api/x", &[], &h), &[]);
        assert_eq!((d.verdict, d.rule_label()), (crate::policy::Verdict::Allow, "read"), "{d:?}");
        let d = p2.decide_http_with(&ana, &r, &req("PUT", "/api/x", &[], &h), &[]);
        assert_eq!(
            (d.verdict, d.rule_label()),
            (crate::policy::Verdict::Deny, "read"),
            "the first rule names the refusal"
        );
        // "*": every request the rule allows waits.
        let every = held.replace("for = [\"delete\"]", "for = [\"*\"]");
        let p = load(&every).unwrap();
        let r = crate::policy::Request { backend: &backend, statement: None, now: jiff::Timestamp::now() };
        let d = p.decide_http_with(&ana, &r, &req("GET", "/api/x", &[], &h), &[]);
        assert_eq!(d.verdict, crate::policy::Verdict::NeedsApproval);
        // Passthrough HTTPS cannot hold requests.
        let pass = held.replace("address = \"127.10.0.9:8080\"", "address = \"127.10.0.9:443\"\ntls = \"passthrough\"");
        let pass = pass.replace("methods = [\"GET\", \"DELETE\"]\n", "").replace("paths = [\"/api/*\"]\n", "");
        let pass = pass.replace("action = \"deny\"\npaths = [\"/api/admin/*\"]", "action = \"deny\"");
        assert!(load(&pass).unwrap_err().to_string().contains("held requests cannot be enforced"), "{pass}");
    }

    #[test]
    fn backends_share_an_address_only_when_sni_tells_them_apart() {
        let two = |a: &str, b: &str| {
            format!(
                "[[backend]]\nname = \"orders\"\nprotocol = \"http\"\naddress = \"127.10.0.9:443\"\n{a}\n\n[[backend]]\nname = \"billing\"\nprotocol = \"http\"\naddress = \"127.10.0.9:443\"\n{b}\n"
            )
        };
        let ok = two(
            "tls = \"terminate\"\nserver_names = [\"orders.test\"]",
            "tls = \"terminate\"\nserver_names = [\"billing.test\", \"bills.test\"]",
        );
        let p = load(&ok).unwrap();
        let orders = p.backend(&crate::types::BackendName::new("orders")).unwrap();
        assert_eq!(sharing(&p, orders).len(), 2);
        let same = two(
            "tls = \"terminate\"\nserver_names = [\"orders.test\"]",
            "tls = \"terminate\"\nserver_names = [\"Orders.test\"]",
        );
        assert!(load(&same).unwrap_err().to_string().contains("SNI could not tell them apart"));
        let unnamed = two("tls = \"terminate\"\nserver_names = [\"orders.test\"]", "tls = \"terminate\"");
        assert!(load(&unnamed).unwrap_err().to_string().contains("already backend `orders`'s"));
        let plain = two("", "");
        assert!(load(&plain).unwrap_err().to_string().contains("already backend `orders`'s"));
    }

    /// Names as frameworks read them count under a condition's name (PHP's
    /// `user.id` is `user_id`, `status[]` is `status`, ASP.NET ignores case),
    /// and a form or JSON body (whose fields Rails reads over the query's) is
    /// refused by a rule with query conditions and meets a deny rule's.
    #[test]
    fn query_conditions_read_names_as_applications_do() {
        let s = HttpScope {
            query: vec![ValueCond { name: "user_id".into(), pattern: "42".into() }],
            ..HttpScope::default()
        };
        let h = http::HeaderMap::new();
        for q in [
            "user_id=42&user.id=7",
            "user_id=42&USER_ID=7",
            "user_id=42&user_id[]=7",
            "user_id=42&user%20id=7",
            "user_id=42&+user_id=7",
            "user_id=42&user_id%00=7",
        ] {
            let q = parse_query(q).unwrap();
            assert!(s.refuses(&req("GET", "/x", &q, &h)).is_some_and(|w| w.contains("does not match")), "{q:?}");
        }
        let ok = parse_query("user_id=42&other=7").unwrap();
        assert!(s.refuses(&req("GET", "/x", &ok, &h)).is_none());
        let mut form = http::HeaderMap::new();
        form.insert(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        assert!(s.refuses(&req("GET", "/x", &ok, &form)).is_some_and(|w| w.contains("form, multipart or JSON body")));
        // JSON too (Rails and Laravel merge its keys into the parameters), however it is spelled.
        for ct in ["application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json", "text/json"] {
            let mut json = http::HeaderMap::new();
            json.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            assert!(s.refuses(&req("POST", "/x", &ok, &json)).is_some_and(|w| w.contains("JSON body")), "{ct}");
            // A deny rule's query conditions count as met: the body may hold the denied value.
            let deny = HttpScope {
                query: vec![ValueCond { name: "action".into(), pattern: "delete".into() }],
                ..HttpScope::default()
            };
            assert!(deny.deny_matches(&req("POST", "/x", &ok, &json)), "{ct}");
            assert!(!deny.deny_matches(&req("POST", "/x", &ok, &h)), "no body: the query alone decides");
            // A body without a Content-Type (Rack reads a POST's as a form), any multipart, a list of types.
            let bodied = HttpRequest { has_body: true, ..req("POST", "/x", &ok, &h) };
            assert!(deny.deny_matches(&bodied) && s.refuses(&bodied).is_some());
            for ct in ["multipart/mixed; boundary=x", "text/plain, application/x-www-form-urlencoded", ""] {
                let mut other = http::HeaderMap::new();
                other.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
                assert!(deny.deny_matches(&req("POST", "/x", &ok, &other)), "{ct:?}");
            }
            let mut text = http::HeaderMap::new();
            text.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
            assert!(!deny.deny_matches(&HttpRequest { has_body: true, ..req("POST", "/x", &ok, &text) }));
        }
        let mut text = http::HeaderMap::new();
        text.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(s.refuses(&req("POST", "/x", &ok, &text)).is_none(), "a body no framework reads as parameters");
        // Header names: `_` and `-` alike, as CGI reads them.
        let hs = HttpScope {
            headers: vec![ValueCond { name: "x-tenant".into(), pattern: "acme".into() }],
            ..HttpScope::default()
        };
        let mut two = http::HeaderMap::new();
        two.insert("x-tenant", "acme".parse().unwrap());
        two.insert("x_tenant", "other".parse().unwrap());
        assert!(hs.refuses(&req("GET", "/x", &ok, &two)).is_some_and(|w| w.contains("does not match")));
        two.remove("x_tenant");
        assert!(hs.refuses(&req("GET", "/x", &ok, &two)).is_none());
        // A deny rule's condition sees them too.
        let deny = parse_query("USER.ID=42").unwrap();
        assert!(s.deny_matches(&req("GET", "/x", &deny, &h)));
        // PHP skips leading spaces and stops at a NUL.
        for q in ["+user_id=42", "%20%20user.id=42", "user_id%00junk=42", "user_id%00[x]=42"] {
            assert!(s.deny_matches(&req("GET", "/x", &parse_query(q).unwrap(), &h)), "{q}");
        }
        assert!(!s.deny_matches(&req("GET", "/x", &parse_query("x+user_id=42").unwrap(), &h)));
        // A value encoded twice, as an application that decodes again reads it.
        assert!(s.deny_matches(&req("GET", "/x", &parse_query("user_id=%2534%2532").unwrap(), &h)));
        assert!(!s.deny_matches(&req("GET", "/x", &parse_query("user_id=%2534%2533").unwrap(), &h)));
        assert!(s.deny_matches(&req("GET", "/x", &parse_query("user_id=%2534%2532&other=%25zz").unwrap(), &h)));
        let stray = HttpScope {
            query: vec![ValueCond { name: "action".into(), pattern: "cancel*".into() }],
            ..HttpScope::default()
        };
        assert!(stray.deny_matches(&req("GET", "/x", &parse_query("action=%2563ancel%25zz").unwrap(), &h)));
        // A name with such a letter is the ASCII name (`ſtatus`).
        assert_eq!(param_key("\u{17f}tatus"), "status");
        assert_eq!(param_key("to\u{212a}en"), "token");
        // A value with a letter outside ASCII that Unicode case rules read as ASCII (`ſ`, U+017F).
        let dis = HttpScope {
            query: vec![ValueCond { name: "mode".into(), pattern: "disable".into() }],
            ..HttpScope::default()
        };
        assert!(dis.deny_matches(&req("GET", "/x", &parse_query("mode=di%C5%BFable").unwrap(), &h)));
        assert!(!dis.deny_matches(&req("GET", "/x", &parse_query("mode=di%C3%A9able").unwrap(), &h)));
    }

    #[test]
    fn deny_paths_cover_the_forms_backends_route_alike() {
        let deny = HttpScope { paths: vec!["/admin/*".into(), "/api/v1/export".into()], ..HttpScope::default() };
        let h = http::HeaderMap::new();
        for p in [
            "/admin",
            "/admin/",
            "/ADMIN/users",
            "/admin.json",
            "/api/v1/export/",
            "/api/v1/export.csv",
            "/api/v1/Export.CSV/",
        ] {
            assert!(deny.deny_matches(&req("GET", p, &[], &h)), "{p}");
        }
        for p in ["/", "/administrators", "/api/v1/exports", "/api/v1/export2.csv", "/api/v1/.export", "/x/admin"] {
            assert!(!deny.deny_matches(&req("GET", p, &[], &h)), "{p}");
        }
        assert_eq!(deny_path_forms("/"), ["/", "", "/"]);
        // A path encoded twice (`/%2561dmin`, once decoded `/%61dmin`) is the
        // denied path to a server or proxy that decodes again.
        for p in ["/%61dmin/users", "/%41DMIN", "/adm%C4%B1n/x", "/api/v1/%65xport.csv"] {
            assert!(deny.deny_matches(&req("GET", p, &[], &h)), "{p}");
        }
        assert!(!deny.deny_matches(&req("GET", "/%61pi/x", &[], &h)));
        // Letters outside ASCII that a Unicode-aware case-insensitive router reads as ASCII.
        for p in [
            "/adm\u{131}n/users",
            "/adm\u{130}n",
            "/ADM\u{130}N/x",
            "/api/v1/export.c\u{17f}v",
            "/api/v1/\u{212a}xport",
        ] {
            let denied = deny.deny_matches(&req("GET", p, &[], &h));
            assert_eq!(denied, !p.contains('\u{212a}'), "{p}");
        }
        let keys =
            HttpScope { paths: vec!["/keys/*".into(), "/password".into(), "/files/*".into()], ..HttpScope::default() };
        for p in ["/\u{212a}eys/1", "/pa\u{df}word", "/\u{fb01}les/a", "/pa\u{1e9e}word"] {
            assert!(keys.deny_matches(&req("GET", p, &[], &h)), "{p}");
        }
        for p in ["/k\u{e9}ys/1", "/\u{212b}/x", "/caf\u{e9}"] {
            assert!(!keys.deny_matches(&req("GET", p, &[], &h)), "{p}");
            assert_eq!(ascii_case_fold(p), None, "{p}");
        }
        // A GET handler runs for HEAD too.
        let gets = HttpScope { methods: vec!["GET".into()], ..HttpScope::default() };
        assert!(gets.deny_matches(&req("HEAD", "/x", &[], &h)));
        assert!(!gets.deny_matches(&req("POST", "/x", &[], &h)));
        let heads = HttpScope { methods: vec!["HEAD".into()], ..HttpScope::default() };
        assert!(!heads.deny_matches(&req("GET", "/x", &[], &h)));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(parse_query("a=b+c&d=%41").unwrap(), vec![("a".into(), "b c".into()), ("d".into(), "A".into())]);
        assert_eq!(parse_query("a=%4"), Err(QueryError::BadEscape));
        assert_eq!(parse_query("a=%ff"), Err(QueryError::BadEscape));
        assert_eq!(parse_query("x=1;action=cancel"), Err(QueryError::Semicolon));
        assert_eq!(parse_query("x=%3B").unwrap(), vec![("x".into(), ";".into())]);
    }
}
