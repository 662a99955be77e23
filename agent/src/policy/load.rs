//! Policy files → validated [`Policy`]. Every file is parsed on its own and
//! every `[[backend]]`, `[[rule]]` and `[[test]]` entry is deserialized on its
//! own, so one load reports every error, each as `file:line:col`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::{Diagnostic, Diagnostics, Source, closest};
use super::{Action, Backend, NamePattern, Policy, Protocol, Rule, Target, TestCase, TestExpect, Who};
use crate::settings::AgentRaw;
use crate::types::{BackendName, RuleName};

/// The top-level keys a policy file may hold.
const TOP_LEVEL: &[&str] = &["agent", "backend", "rule", "test"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendRaw {
    name: Spanned<String>,
    protocol: Spanned<String>,
    address: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRaw {
    name: Spanned<String>,
    who: Spanned<WhoRaw>,
    backend: Option<Spanned<OneOrMany>>,
    backends: Option<Spanned<OneOrMany>>,
    action: Option<Spanned<String>>,
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
    expect: Spanned<String>,
    rule: Option<Spanned<String>>,
}

/// Reads the policy at `path`: one `.toml` file, or every `.toml` file of a
/// directory (not recursive), in name order.
pub fn read_sources(path: &Path) -> Result<Vec<Source>, Diagnostics> {
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

/// Loads and validates a policy from a file or directory.
pub fn load_path(path: &Path) -> Result<Policy, Diagnostics> {
    load(&read_sources(path)?)
}

/// One parsed entry, still raw, with the file it came from.
struct Entry<'s, T> {
    src: &'s Source,
    span: Range<usize>,
    raw: T,
}

#[derive(Default)]
struct Collected<'s> {
    agent: Option<Entry<'s, AgentRaw>>,
    backends: Vec<Entry<'s, BackendRaw>>,
    rules: Vec<Entry<'s, RuleRaw>>,
    tests: Vec<Entry<'s, TestRaw>>,
}

/// Validates a policy given as source texts.
pub fn load(sources: &[Source]) -> Result<Policy, Diagnostics> {
    let mut errors = Vec::new();
    let mut c = Collected::default();
    for src in sources {
        collect(src, &mut c, &mut errors);
    }
    let policy = build(c, &mut errors);
    errors.sort_by(|a, b| (&a.at.file, a.at.line, a.at.col).cmp(&(&b.at.file, b.at.line, b.at.col)));
    if errors.is_empty() { Ok(policy) } else { Err(Diagnostics(errors)) }
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
                        let at = first.src.at(Some(first.span.clone()));
                        errors.push(Diagnostic::new(
                            src.at(Some(span)),
                            format!("a second [agent] table; the first is at {at}"),
                        ));
                    } else {
                        c.agent = Some(Entry { src, span, raw });
                    }
                }
            }
            "backend" => c.backends.extend(entries(src, value, "backend", errors)),
            "rule" => c.rules.extend(entries(src, value, "rule", errors)),
            "test" => c.tests.extend(entries(src, value, "test", errors)),
            other => {
                let hint = closest(other, TOP_LEVEL.iter().copied()).map(|k| format!("did you mean `{k}`?"));
                errors.push(
                    Diagnostic::new(
                        src.at(Some(key.span())),
                        format!("unknown section `{other}`; expected one of: [agent], [[backend]], [[rule]], [[test]]"),
                    )
                    .hint(hint),
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
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

fn build(c: Collected<'_>, errors: &mut Vec<Diagnostic>) -> Policy {
    let mut policy = Policy { agent: c.agent.map(|e| e.raw).unwrap_or_default(), ..Policy::default() };

    let mut names: HashMap<String, String> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    for e in c.backends {
        let at = e.src.at(Some(e.span.clone()));
        let name = e.raw.name.get_ref().clone();
        if let Err(m) = valid_name(&name) {
            errors.push(Diagnostic::new(e.src.at(Some(e.raw.name.span())), m));
            continue;
        }
        if let Some(first) = names.insert(name.clone(), at.to_string()) {
            errors.push(Diagnostic::new(
                e.src.at(Some(e.raw.name.span())),
                format!("backend `{name}` is defined twice; the first is at {first}"),
            ));
            continue;
        }
        let protocol = match e.raw.protocol.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            other => {
                let hint = closest(other, ["tcp"]).map(|k| format!("did you mean `{k}`?"));
                errors.push(
                    Diagnostic::new(
                        e.src.at(Some(e.raw.protocol.span())),
                        format!("unknown protocol `{other}`; supported: tcp"),
                    )
                    .hint(hint),
                );
                continue;
            }
        };
        let target = match (&e.raw.address, &e.raw.host) {
            (Some(a), None) => match parse_address(a.get_ref()) {
                Ok(addr) => {
                    if let Some(other) = addrs.insert(addr, name.clone()) {
                        errors.push(Diagnostic::new(
                            e.src.at(Some(a.span())),
                            format!("address {addr} is already backend `{other}`'s"),
                        ));
                        continue;
                    }
                    Target::Addr(addr)
                }
                Err(m) => {
                    errors.push(Diagnostic::new(e.src.at(Some(a.span())), m));
                    continue;
                }
            },
            (None, Some(h)) => match parse_host(h.get_ref()) {
                Ok((host, port)) => Target::Host { host, port },
                Err(m) => {
                    errors.push(Diagnostic::new(e.src.at(Some(h.span())), m));
                    continue;
                }
            },
            (Some(_), Some(h)) => {
                errors.push(Diagnostic::new(
                    e.src.at(Some(h.span())),
                    "give either `address` (ip:port) or `host` (name:port), not both",
                ));
                continue;
            }
            (None, None) => {
                errors.push(
                    Diagnostic::new(at, format!("backend `{name}` has neither `address` nor `host`"))
                        .hint(Some("add address = \"ip:port\" or host = \"name:port\"".into())),
                );
                continue;
            }
        };
        policy.backends.push(Backend { name: BackendName::new(name), protocol, target, at });
    }

    let backend_names: Vec<String> = policy.backends.iter().map(|b| b.name.as_str().to_owned()).collect();
    let mut rule_names: HashMap<String, String> = HashMap::new();
    for e in c.rules {
        let at = e.src.at(Some(e.span.clone()));
        let r = e.raw;
        let name = r.name.get_ref().trim().to_owned();
        if name.is_empty() {
            errors.push(Diagnostic::new(e.src.at(Some(r.name.span())), "a rule needs a non-empty name"));
            continue;
        }
        if let Some(first) = rule_names.insert(name.clone(), at.to_string()) {
            errors.push(Diagnostic::new(
                e.src.at(Some(r.name.span())),
                format!("rule `{name}` is defined twice; the first is at {first}; rule names must be unique"),
            ));
            continue;
        }
        let who_span = r.who.span();
        let who = who_from(r.who.into_inner());
        if who.is_empty() {
            errors.push(Diagnostic::new(
                e.src.at(Some(who_span)),
                "`who` matches nobody: give users, uids or groups (\"*\" in users for everyone)",
            ));
            continue;
        }
        let (patterns, span) = match (r.backend, r.backends) {
            (Some(b), None) | (None, Some(b)) => {
                let span = b.span();
                (b.into_inner().into_vec(), span)
            }
            (Some(_), Some(b)) => {
                errors.push(Diagnostic::new(e.src.at(Some(b.span())), "give `backend` or `backends`, not both"));
                continue;
            }
            (None, None) => {
                errors.push(Diagnostic::new(at, format!("rule `{name}` names no backend")));
                continue;
            }
        };
        let mut backends = Vec::new();
        let mut bad = false;
        for p in patterns {
            let pattern = NamePattern::new(&p);
            if !backend_names.iter().any(|n| pattern.matches(n)) {
                let hint =
                    closest(&p, backend_names.iter().map(String::as_str)).map(|k| format!("did you mean `{k}`?"));
                errors.push(
                    Diagnostic::new(e.src.at(Some(span.clone())), format!("no backend matches `{p}`")).hint(hint),
                );
                bad = true;
            }
            backends.push(pattern);
        }
        if bad {
            continue;
        }
        let action = match r.action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some(other) => {
                let span = r.action.as_ref().map(Spanned::span);
                let hint = closest(other, ["allow", "deny"]).map(|k| format!("did you mean `{k}`?"));
                errors.push(
                    Diagnostic::new(e.src.at(span), format!("action must be \"allow\" or \"deny\", not `{other}`"))
                        .hint(hint),
                );
                continue;
            }
        };
        let index = policy.rules.len();
        policy.rules.push(Rule { name: RuleName::new(name), who, backends, action, at, index });
    }

    let rule_set: HashSet<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    let mut tests = Vec::new();
    for e in c.tests {
        let at = e.src.at(Some(e.span.clone()));
        let t = e.raw;
        if !backend_names.contains(t.backend.get_ref()) {
            let hint = closest(t.backend.get_ref(), backend_names.iter().map(String::as_str))
                .map(|k| format!("did you mean `{k}`?"));
            errors.push(
                Diagnostic::new(e.src.at(Some(t.backend.span())), format!("unknown backend `{}`", t.backend.get_ref()))
                    .hint(hint),
            );
            continue;
        }
        let expect = match t.expect.get_ref().as_str() {
            "allow" => TestExpect::Allow,
            "deny" => TestExpect::Deny,
            other => {
                errors.push(Diagnostic::new(
                    e.src.at(Some(t.expect.span())),
                    format!("expect must be \"allow\" or \"deny\", not `{other}`"),
                ));
                continue;
            }
        };
        if let Some(rule) = &t.rule
            && !rule_set.contains(rule.get_ref().as_str())
        {
            let hint = closest(rule.get_ref(), rule_set.iter().copied()).map(|k| format!("did you mean `{k}`?"));
            errors.push(
                Diagnostic::new(e.src.at(Some(rule.span())), format!("unknown rule `{}`", rule.get_ref())).hint(hint),
            );
            continue;
        }
        tests.push(TestCase {
            name: t.name.unwrap_or_else(|| format!("{} → {}", t.who.user, t.backend.get_ref())),
            user: t.who.user,
            groups: t.who.groups,
            backend: BackendName::new(t.backend.into_inner()),
            expect,
            rule: t.rule.map(|r| RuleName::new(r.into_inner())),
            at,
        });
    }
    policy.tests = tests;
    policy
}

fn who_from(raw: WhoRaw) -> Who {
    let any = raw.users.iter().any(|u| u == "*");
    Who { any, users: raw.users.into_iter().filter(|u| u != "*").collect(), uids: raw.uids, groups: raw.groups }
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
