//! Identity from the organisation's IdP in the policy: the `[identity]`
//! table (which provider `gatehouse login` talks to and how its tokens are
//! read), a rule's `require = { login, max_age, acr }`, and a test case's
//! `login = { … }`. Validated like the rest of the policy: unknown keys are
//! errors, each reported as file:line:col.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{Location, Source};
use crate::identity::{OidcIdentity, Principal};
use crate::settings::parse_duration;
use crate::types::GroupName;

/// How long a login binds an identity to a uid at most, unless the policy says otherwise.
pub const DEFAULT_MAX_BINDING: Duration = Duration::from_secs(12 * 3600);
/// The longest `max_binding` accepted.
const MAX_MAX_BINDING: Duration = Duration::from_secs(7 * 86_400);
/// Signature algorithms accepted for ID tokens. Never HMAC (`HS*`): its key
/// is the client secret, which every local user running `gatehouse login`
/// holds, so anyone could sign a token; never `none`.
pub const ID_TOKEN_ALGS: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// The IdP that `gatehouse login` uses, from the policy's `[identity]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The issuer URL (`https://…`), exactly as the provider's discovery document and tokens say it.
    pub issuer: String,
    pub client_id: String,
    /// A secret for IdPs that want one from device-flow clients. It is handed
    /// to every local user who runs `gatehouse login` (a device-flow client
    /// cannot keep a secret from its users), so it must belong to a client
    /// registered for the device flow only.
    pub client_secret_file: Option<PathBuf>,
    /// The ID-token claim that carries the user's groups (default `groups`).
    pub groups_claim: String,
    /// Scopes asked for (always including `openid`).
    pub scopes: Vec<String>,
    /// CA certificates (PEM) the provider's TLS certificate is checked against,
    /// instead of the system trust store.
    pub ca_file: Option<PathBuf>,
    /// A login binds its identity to the uid until the token expires,
    /// refreshed if the IdP gave a refresh token, never longer than this after the login.
    pub max_binding: Duration,
    /// The ID token must carry the nonce the agent issued for this login
    /// (default). IdPs that drop the nonce in the device flow need `false`:
    /// then a token without one is accepted (one with another is not), and a
    /// token copied from another user's login could be handed in.
    pub require_nonce: bool,
    pub at: Location,
}

/// `[identity]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentityRaw {
    issuer: Spanned<String>,
    client_id: Spanned<String>,
    client_secret_file: Option<Spanned<PathBuf>>,
    groups_claim: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    ca_file: Option<Spanned<PathBuf>>,
    max_binding: Option<Spanned<String>>,
    require_nonce: Option<bool>,
}

/// Checks `[identity]`; errors as (location, message).
pub(super) fn build_identity(
    raw: &IdentityRaw,
    src: &Source,
    at: Location,
) -> Result<IdentityConfig, Vec<(Location, String)>> {
    let mut errs = Vec::new();
    let issuer = raw.issuer.get_ref().trim().to_owned();
    if let Err(why) = check_issuer(&issuer) {
        errs.push((src.at(Some(raw.issuer.span())), why));
    }
    let client_id = raw.client_id.get_ref().trim().to_owned();
    if client_id.is_empty() || client_id.len() > 256 || client_id.chars().any(char::is_control) {
        errs.push((src.at(Some(raw.client_id.span())), "client_id must be 1-256 printable characters".into()));
    }
    let groups_claim = raw.groups_claim.as_ref().map_or_else(|| "groups".to_owned(), |g| g.get_ref().trim().to_owned());
    if groups_claim.is_empty() || !groups_claim.chars().all(|c| c.is_ascii_graphic()) {
        let span = raw.groups_claim.as_ref().map(Spanned::span);
        errs.push((src.at(span), "groups_claim must name a claim (printable ASCII, no spaces)".into()));
    }
    let mut scopes = vec!["openid".to_owned()];
    match &raw.scopes {
        None => scopes.extend(["email".to_owned(), "profile".to_owned()]),
        Some(list) => {
            for s in list.get_ref() {
                if s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') {
                    errs.push((src.at(Some(list.span())), format!("scope `{s}` is not a scope token")));
                } else if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
    }
    let max_binding = match &raw.max_binding {
        None => DEFAULT_MAX_BINDING,
        Some(m) => match parse_duration(m.get_ref()) {
            Ok(d) if d.is_zero() || d > MAX_MAX_BINDING => {
                errs.push((src.at(Some(m.span())), "max_binding must be more than 0 and at most 7d".into()));
                DEFAULT_MAX_BINDING
            }
            Ok(d) => d,
            Err(why) => {
                errs.push((src.at(Some(m.span())), format!("max_binding: {why}")));
                DEFAULT_MAX_BINDING
            }
        },
    };
    let absolute = |f: &Option<Spanned<PathBuf>>, field: &str, errs: &mut Vec<(Location, String)>| {
        if let Some(p) = f
            && !p.get_ref().is_absolute()
        {
            errs.push((src.at(Some(p.span())), format!("{field} must be an absolute path")));
        }
    };
    absolute(&raw.client_secret_file, "client_secret_file", &mut errs);
    absolute(&raw.ca_file, "ca_file", &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(IdentityConfig {
        issuer,
        client_id,
        client_secret_file: raw.client_secret_file.as_ref().map(|p| p.get_ref().clone()),
        groups_claim,
        scopes,
        ca_file: raw.ca_file.as_ref().map(|p| p.get_ref().clone()),
        max_binding,
        require_nonce: raw.require_nonce.unwrap_or(true),
        at,
    })
}

/// An issuer must be an `https` URL without query or fragment: tokens name it
/// exactly, and the provider's keys are fetched from it.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let rest = issuer.strip_prefix("https://").ok_or_else(|| {
        format!("issuer `{issuer}` must be an https:// URL (the provider's keys are fetched from it)")
    })?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', ' ']) || host.contains('@') {
        return Err(format!("issuer `{issuer}` must be https://host[:port][/path], without user, query or fragment"));
    }
    Ok(())
}

/// What a rule requires of the login behind a connection (`require = { … }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Require {
    /// An identity from `gatehouse login` must be bound to the uid.
    pub login: bool,
    /// The IdP authenticated the user at most this long ago (`auth_time`,
    /// or the token's issue time when the IdP sends no `auth_time`).
    pub max_age: Option<Duration>,
    /// The login's `acr` must be one of these.
    pub acr: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AcrRaw {
    One(String),
    Many(Vec<String>),
}

/// `require = { … }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequireRaw {
    login: Option<bool>,
    max_age: Option<String>,
    acr: Option<AcrRaw>,
}

/// Checks `require`; `Err` is the message.
pub(super) fn build_require(raw: &RequireRaw) -> Result<Require, String> {
    let max_age = match &raw.max_age {
        None => None,
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => return Err("require.max_age must be more than 0".into()),
            Ok(d) => Some(d),
            Err(why) => return Err(format!("require.max_age: {why}")),
        },
    };
    let acr = match &raw.acr {
        None => vec![],
        Some(AcrRaw::One(s)) => vec![s.clone()],
        Some(AcrRaw::Many(v)) => v.clone(),
    };
    if acr.iter().any(String::is_empty) || raw.acr.is_some() && acr.is_empty() {
        return Err("require.acr must name one or more acr values".into());
    }
    let implied = max_age.is_some() || !acr.is_empty();
    match raw.login {
        Some(false) if implied => Err("require.max_age and require.acr need a login: drop `login = false`".into()),
        Some(false) | None if !implied => Err("require says nothing: give login = true, max_age or acr".into()),
        _ => Ok(Require { login: true, max_age, acr }),
    }
}

impl Require {
    /// Whether `p` meets this requirement at `now` (no text built: the decision path).
    pub fn is_met(&self, p: &Principal, now: jiff::Timestamp) -> bool {
        let Some(o) = &p.oidc else { return false };
        let age = u64::try_from(now.as_second().saturating_sub(o.auth_time)).unwrap_or(0);
        self.max_age.is_none_or(|max| age <= max.as_secs())
            && (self.acr.is_empty() || o.acr.as_ref().is_some_and(|a| self.acr.contains(a)))
    }

    /// Why `p` does not meet this requirement at `now`, if it does not. Every
    /// reason ends by saying what to do, since it reaches the user as is.
    ///
    /// The binding's own end is not checked here: a connection gets an
    /// identity only from a live binding, and an open session keeps the one
    /// it started with (statements are held to `max_age` from the
    /// authentication, and the rule's `max_session`), so a refresh or a
    /// logout in between does not change a session midway.
    pub fn unmet(&self, p: &Principal, now: jiff::Timestamp) -> Option<String> {
        let Some(o) = &p.oidc else {
            return Some("it requires a login to the identity provider: run `gatehouse login`".into());
        };
        if let Some(max) = self.max_age {
            let age = now.as_second().saturating_sub(o.auth_time);
            if u64::try_from(age).unwrap_or(0) > max.as_secs() {
                return Some(format!(
                    "it requires an authentication at most {} old (max_age), the login's is {}: run `gatehouse login` again",
                    crate::settings::format_duration_s(max.as_secs()),
                    crate::settings::format_duration_s(u64::try_from(age).unwrap_or(0))
                ));
            }
        }
        if !self.acr.is_empty() && !o.acr.as_ref().is_some_and(|a| self.acr.contains(a)) {
            return Some(format!(
                "it requires an authentication of acr [{}], the login's is {}: run `gatehouse login` with a stronger method",
                self.acr.join(", "),
                o.acr.as_deref().unwrap_or("none")
            ));
        }
        None
    }

    /// For explanations: `login, max_age 8h, acr [mfa]`.
    pub fn describe(&self) -> String {
        let mut v = vec!["login".to_owned()];
        if let Some(m) = self.max_age {
            v.push(format!("max_age {}", crate::settings::format_duration_s(m.as_secs())));
        }
        if !self.acr.is_empty() {
            v.push(format!("acr [{}]", self.acr.join(", ")));
        }
        v.join(", ")
    }
}

/// A test case's `login = { subject, email, groups, acr, age }`: the
/// identity the case's user is taken to have logged in with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestLoginRaw {
    subject: String,
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    acr: Option<String>,
    /// How long ago the IdP authenticated the user (default: just now).
    age: Option<String>,
}

/// A test case's login, resolved at the case's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestLogin {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub acr: Option<String>,
    pub age: Duration,
}

pub(super) fn build_test_login(raw: &TestLoginRaw) -> Result<TestLogin, String> {
    if raw.subject.is_empty() {
        return Err("login.subject must not be empty".into());
    }
    let age = match &raw.age {
        None => Duration::ZERO,
        Some(a) => parse_duration(a).map_err(|why| format!("login.age: {why}"))?,
    };
    Ok(TestLogin {
        subject: raw.subject.clone(),
        email: raw.email.clone(),
        groups: raw.groups.clone(),
        acr: raw.acr.clone(),
        age,
    })
}

impl TestLogin {
    /// The identity as the agent would bind it, authenticated `age` before `now`.
    pub fn identity(&self, now: jiff::Timestamp) -> OidcIdentity {
        let auth = now.as_second().saturating_sub(i64::try_from(self.age.as_secs()).unwrap_or(i64::MAX));
        OidcIdentity {
            issuer: "(policy test)".into(),
            subject: self.subject.clone(),
            email: self.email.clone(),
            email_verified: self.email.is_some(),
            groups: self.groups.iter().map(|g| GroupName::new(g.clone())).collect(),
            auth_time: auth,
            acr: self.acr.clone(),
            amr: vec![],
            expires: now.as_second().saturating_add(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(login: Option<bool>, max_age: Option<&str>, acr: Option<&str>) -> Result<Require, String> {
        build_require(&RequireRaw {
            login,
            max_age: max_age.map(str::to_owned),
            acr: acr.map(|a| AcrRaw::One(a.to_owned())),
        })
    }

    #[test]
    fn require_implies_login_and_says_something() {
        assert_eq!(req(Some(true), None, None).map(|r| r.login), Ok(true));
        assert!(req(None, Some("8h"), None).is_ok_and(|r| r.login && r.max_age == Some(Duration::from_secs(28800))));
        assert!(req(Some(false), Some("8h"), None).is_err());
        assert!(req(None, None, None).is_err());
        assert!(req(Some(false), None, None).is_err());
        assert!(req(None, Some("0s"), None).is_err());
        assert!(req(None, Some("8 hours"), None).is_err());
    }

    #[test]
    fn unmet_says_what_to_do() {
        let now: jiff::Timestamp = "2026-12-01T10:00:00Z".parse().unwrap_or_default();
        let r = req(None, Some("1h"), Some("mfa")).unwrap_or_default();
        let mut p = Principal::named("ana", &[]);
        assert!(r.unmet(&p, now).is_some_and(|w| w.contains("run `gatehouse login`")));
        let login = TestLogin { subject: "s".into(), email: None, groups: vec![], acr: None, age: Duration::ZERO };
        p.oidc = Some(login.identity(now));
        assert!(r.unmet(&p, now).is_some_and(|w| w.contains("acr [mfa]")));
        let login = TestLogin { acr: Some("mfa".into()), age: Duration::from_secs(7200), ..login };
        p.oidc = Some(login.identity(now));
        assert!(r.unmet(&p, now).is_some_and(|w| w.contains("max_age")), "{:?}", r.unmet(&p, now));
        let login = TestLogin { age: Duration::from_secs(60), ..login };
        p.oidc = Some(login.identity(now));
        assert_eq!(r.unmet(&p, now), None);
        assert!(r.is_met(&p, now));
    }

    #[test]
    fn issuers_must_be_https() {
        assert!(check_issuer("https://idp.example.com").is_ok());
        assert!(check_issuer("https://127.10.0.1:8443/realms/x").is_ok());
        assert!(check_issuer("http://idp.example.com").is_err());
        assert!(check_issuer("https://user@idp").is_err());
        assert!(check_issuer("https://idp/?a=b").is_err());
        assert!(check_issuer("https:///x").is_err());
    }
}
