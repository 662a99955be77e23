//! Identities from the organisation's IdP: `gatehouse login` runs the OAuth
//! 2.0 device authorization grant (RFC 8628) as the user and hands the ID
//! token (and refresh token) to the agent over the control socket; the agent
//! verifies it itself and binds the identity to the caller's uid.
//!
//! What the agent checks, with the provider's own discovery document and
//! keys (fetched over TLS from the policy's issuer, `ca_file` if given):
//! the signature (asymmetric algorithms only: an `HS*` key is the client
//! secret, which every local user may hold), the issuer, the audience (our
//! client id, and no audience we do not know), the expiry, and the nonce:
//! the agent issues a fresh nonce per uid when a login starts
//! ([`Logins::start`]), the CLI sends it in the device authorization request,
//! and the ID token must carry it. A token obtained by another user (or
//! copied from anywhere) therefore binds nothing to this uid. Each nonce is
//! used once, even by a failed attempt.
//!
//! A binding lasts until the token expires, moved on by refreshes when the
//! IdP gave a refresh token (a refreshed ID token must name the same issuer
//! and subject), never past the policy's `max_binding` after the login.
//! Bindings live in the agent's memory only: a restarted agent forgets them
//! and users log in again. Persisting them would put refresh tokens (long
//! lived credentials for the IdP) on disk for a convenience.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreClient, CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, ClientId, ClientSecret, IdTokenVerifier, IssuerUrl, Nonce, OAuth2TokenResponse, RefreshToken,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::OidcIdentity;
use crate::policy::IdentityConfig;
use crate::secrets;
use crate::types::{GroupName, Uid};

/// How long a started login waits for its token.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// How long the provider's discovery document and keys are used before they are fetched again.
const PROVIDER_TTL: Duration = Duration::from_secs(300);
/// Keys are fetched again for a token signed with an unknown key, at most this often.
const REFETCH_MIN: Duration = Duration::from_secs(30);
/// Every request to the IdP must finish within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// An ID token may say it was issued at most this far in the future (clock skew).
const MAX_SKEW_S: i64 = 300;
/// Bounds on what a token may carry into a binding.
const MAX_GROUPS: usize = 512;
const MAX_CLAIM_LEN: usize = 512;
/// A refresh failure is retried after this long (while the binding lasts).
const REFRESH_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("this agent's policy has no [identity] table: nobody can log in")]
    NotConfigured,
    #[error("no login was started for this user, or it is older than 15 minutes: run `gatehouse login` again")]
    NoPending,
    #[error("the identity provider {issuer} cannot be used: {why}")]
    Provider { issuer: String, why: String },
    #[error("the ID token was refused: {0}")]
    Refused(String),
    #[error("[identity] {0}")]
    File(#[from] secrets::FileError),
}

/// What `gatehouse login` needs to run the device flow (`LoginStart`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginParams {
    pub issuer: String,
    pub client_id: String,
    /// Only when the policy names a `client_secret_file` (see [`IdentityConfig`]).
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// Send it as `nonce` in the device authorization request; the ID token must carry it.
    pub nonce: String,
    /// The CA certificates (PEM) the provider's certificate is checked against, from `ca_file`.
    pub ca_pem: Option<String>,
}

/// Every claim of the ID token beyond the standard ones (the groups claim is read from here).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims(pub serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for ExtraClaims {}

type IdToken =
    openidconnect::IdToken<ExtraClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Why a token was refused, and whether fetching the keys again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub why: String,
    pub unknown_key: bool,
}

/// A verified ID token: the identity and when the token expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub identity: OidcIdentity,
    pub token_expires: i64,
}

/// What the nonce of a token must be.
#[derive(Debug, Clone, Copy)]
pub enum NonceRule<'a> {
    /// The nonce this login was started with.
    Exactly(&'a str),
    /// A refreshed token: no nonce, or the original one.
    AbsentOr(&'a str),
}

fn algs() -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    vec![
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EdDsa,
    ]
}

fn chrono_at(t: jiff::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), 0).unwrap_or_default()
}

fn bounded(s: &str, what: &str) -> Result<String, Refusal> {
    if s.is_empty() || s.len() > MAX_CLAIM_LEN || s.chars().any(char::is_control) {
        return Err(Refusal {
            why: format!("its {what} is empty, longer than {MAX_CLAIM_LEN} bytes or has control characters"),
            unknown_key: false,
        });
    }
    Ok(s.to_owned())
}

/// Verifies an ID token against the provider's keys, the policy's issuer and
/// client id, `now` and the nonce rule; reads the identity from it. Pure: no
/// I/O, the time passed in.
pub fn verify(
    token: &str,
    cfg: &IdentityConfig,
    jwks: &CoreJsonWebKeySet,
    nonce: NonceRule<'_>,
    now: jiff::Timestamp,
) -> Result<Verified, Refusal> {
    let refused = |why: String| Refusal { why, unknown_key: false };
    let parsed = IdToken::from_str(token.trim()).map_err(|e| refused(format!("not a signed JWT ID token: {e}")))?;
    let issuer = IssuerUrl::new(cfg.issuer.clone()).map_err(|e| refused(format!("issuer: {e}")))?;
    let now_c = chrono_at(now);
    let verifier = IdTokenVerifier::new_public_client(ClientId::new(cfg.client_id.clone()), issuer, jwks.clone())
        .set_allowed_algs(algs())
        .set_time_fn(move || now_c)
        .set_issue_time_verifier_fn(move |iat| {
            if iat.timestamp() > now.as_second() + MAX_SKEW_S {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
    let result = match nonce {
        NonceRule::Exactly(n) => parsed.claims(&verifier, &Nonce::new(n.to_owned())),
        NonceRule::AbsentOr(n) => {
            let want = Nonce::new(n.to_owned());
            parsed.claims(&verifier, move |got: Option<&Nonce>| match got {
                None => Ok(()),
                Some(g) => openidconnect::NonceVerifier::verify(&want, Some(g)),
            })
        }
    };
    let claims = result.map_err(|e| {
        use openidconnect::ClaimsVerificationError as C;
        let unknown_key = matches!(&e, C::SignatureVerification(_));
        Refusal { why: e.to_string(), unknown_key }
    })?;
    let subject = bounded(claims.subject().as_str(), "subject")?;
    let email = claims.email().map(|e| bounded(e.as_str(), "email")).transpose()?;
    let groups = match claims.additional_claims().0.get(&cfg.groups_claim) {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::String(g)) => vec![GroupName::new(bounded(g, "group")?)],
        Some(serde_json::Value::Array(list)) => {
            if list.len() > MAX_GROUPS {
                return Err(refused(format!("its {} claim lists more than {MAX_GROUPS} groups", cfg.groups_claim)));
            }
            let mut out = Vec::with_capacity(list.len());
            for g in list {
                let serde_json::Value::String(g) = g else {
                    return Err(refused(format!("its {} claim holds something other than strings", cfg.groups_claim)));
                };
                out.push(GroupName::new(bounded(g, "group")?));
            }
            out
        }
        Some(_) => return Err(refused(format!("its {} claim is not a list of strings", cfg.groups_claim))),
    };
    let acr = claims.auth_context_ref().map(|a| bounded(a.as_str(), "acr")).transpose()?;
    let amr = claims
        .auth_method_refs()
        .map(|v| v.iter().take(16).map(|m| bounded(m.as_str(), "amr")).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let token_expires = claims.expiration().timestamp();
    let auth_time = claims.auth_time().unwrap_or_else(|| claims.issue_time()).timestamp();
    Ok(Verified {
        identity: OidcIdentity {
            issuer: cfg.issuer.clone(),
            subject,
            email,
            email_verified: claims.email_verified() == Some(true),
            groups,
            auth_time,
            acr,
            amr,
            expires: token_expires,
        },
        token_expires,
    })
}

/// A random nonce: 256 bits, hex.
fn new_nonce() -> std::io::Result<String> {
    let bytes = secrets::random32()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug)]
struct Pending {
    nonce: String,
    at: Instant,
}

#[derive(Debug)]
struct Binding {
    identity: OidcIdentity,
    client_id: String,
    /// The login's nonce: a refreshed token may repeat it.
    nonce: String,
    /// Never past this (seconds): the login time plus `max_binding`.
    hard_end: i64,
    refresh: Option<Zeroizing<String>>,
    task: Option<AbortHandle>,
    /// Distinguishes this binding from a later one of the same uid.
    generation: u64,
}

impl Drop for Binding {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<Uid, Pending>,
    bound: HashMap<Uid, Binding>,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Provider {
    http: reqwest::Client,
    metadata: CoreProviderMetadata,
    fetched: Instant,
    ca_file: Option<std::path::PathBuf>,
}

/// The agent's logins: pending nonces and bindings per uid.
#[derive(Debug, Default)]
pub struct Logins {
    state: Mutex<State>,
    providers: tokio::sync::Mutex<HashMap<String, Provider>>,
}

/// What `gatehouse whoami` shows of a binding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingView {
    pub identity: OidcIdentity,
    /// The agent refreshes it with a refresh token before it expires.
    pub refreshes: bool,
    /// It never lasts past this (seconds since the epoch).
    pub hard_end: i64,
}

impl Logins {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a login for `uid`: a fresh nonce (replacing any earlier one) and
    /// what the CLI needs to run the device flow.
    pub fn start(&self, uid: Uid, cfg: &IdentityConfig) -> Result<LoginParams, OidcError> {
        let client_secret = match &cfg.client_secret_file {
            Some(p) => {
                let s = secrets::read_secret(p, "client_secret_file")?.first_line();
                Some(String::from_utf8_lossy(s.expose()).into_owned())
            }
            None => None,
        };
        let ca_pem = match &cfg.ca_file {
            Some(p) => {
                let pem = secrets::read_checked(p, "ca_file", secrets::Kind::Trusted)?;
                Some(String::from_utf8_lossy(pem.expose()).into_owned())
            }
            None => None,
        };
        let nonce = new_nonce().map_err(|e| OidcError::Refused(format!("no randomness for a nonce: {e}")))?;
        let mut st = self.state();
        st.pending.retain(|_, p| p.at.elapsed() < PENDING_TTL);
        st.pending.insert(uid, Pending { nonce: nonce.clone(), at: Instant::now() });
        Ok(LoginParams {
            issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            client_secret,
            scopes: cfg.scopes.clone(),
            nonce,
            ca_pem,
        })
    }

    /// The identity bound to `uid` now, if any (under the current `[identity]`).
    pub fn current(&self, uid: Uid, cfg: Option<&IdentityConfig>, now: jiff::Timestamp) -> Option<OidcIdentity> {
        self.view(uid, cfg, now).map(|v| v.identity)
    }

    /// The binding of `uid`, as `whoami` shows it. An expired binding, or one
    /// made under another issuer or client, is removed.
    pub fn view(&self, uid: Uid, cfg: Option<&IdentityConfig>, now: jiff::Timestamp) -> Option<BindingView> {
        let mut st = self.state();
        let b = st.bound.get(&uid)?;
        let valid = cfg.is_some_and(|c| c.issuer == b.identity.issuer && c.client_id == b.client_id)
            && b.identity.expires > now.as_second();
        if !valid {
            st.bound.remove(&uid);
            return None;
        }
        Some(BindingView { identity: b.identity.clone(), refreshes: b.refresh.is_some(), hard_end: b.hard_end })
    }

    /// Ends the binding of `uid`; whether there was one.
    pub fn logout(&self, uid: Uid) -> bool {
        let mut st = self.state();
        st.pending.remove(&uid);
        st.bound.remove(&uid).is_some()
    }

    /// Verifies `id_token` for `uid` against the login it started and binds
    /// the identity; with a refresh token, keeps it fresh until `max_binding`.
    pub async fn login(
        self: &Arc<Self>,
        uid: Uid,
        cfg: &IdentityConfig,
        id_token: &str,
        refresh_token: Option<String>,
    ) -> Result<BindingView, OidcError> {
        // The nonce is used once: a failed attempt needs a new `gatehouse login`.
        let nonce = {
            let mut st = self.state();
            match st.pending.remove(&uid) {
                Some(p) if p.at.elapsed() < PENDING_TTL => p.nonce,
                _ => return Err(OidcError::NoPending),
            }
        };
        let rule = if cfg.require_nonce { NonceRule::Exactly(&nonce) } else { NonceRule::AbsentOr(&nonce) };
        let v = self.verify_fresh(cfg, id_token, rule).await?;
        let now = jiff::Timestamp::now().as_second();
        let hard_end = now.saturating_add(i64::try_from(cfg.max_binding.as_secs()).unwrap_or(i64::MAX));
        let mut identity = v.identity;
        identity.expires = v.token_expires.min(hard_end);
        let refresh = refresh_token.filter(|r| !r.is_empty()).map(Zeroizing::new);
        let view = BindingView { identity: identity.clone(), refreshes: refresh.is_some(), hard_end };
        let generation = {
            let mut st = self.state();
            st.generation += 1;
            let generation = st.generation;
            let task = refresh.is_some().then(|| {
                let logins = Arc::downgrade(self);
                let cfg = cfg.clone();
                tokio::spawn(async move { refresh_loop(logins, uid, cfg, generation).await }).abort_handle()
            });
            let binding =
                Binding { identity, client_id: cfg.client_id.clone(), nonce, hard_end, refresh, task, generation };
            st.bound.insert(uid, binding);
            generation
        };
        info!(
            uid = %uid,
            subject = %view.identity.subject,
            groups = view.identity.groups.len(),
            until = view.identity.expires,
            refreshes = view.refreshes,
            generation,
            "login: identity bound to uid"
        );
        Ok(view)
    }

    /// The provider's metadata and keys (cached), and an HTTP client for it.
    async fn provider(&self, cfg: &IdentityConfig, refetch: bool) -> Result<Provider, OidcError> {
        let mut providers = self.providers.lock().await;
        if let Some(p) = providers.get(&cfg.issuer)
            && p.ca_file == cfg.ca_file
            && p.fetched.elapsed() < PROVIDER_TTL
            && !(refetch && p.fetched.elapsed() >= REFETCH_MIN)
        {
            return Ok(p.clone());
        }
        let err = |why: String| OidcError::Provider { issuer: cfg.issuer.clone(), why };
        let http = http_client(cfg)?;
        let issuer = IssuerUrl::new(cfg.issuer.clone()).map_err(|e| err(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http).await.map_err(|e| err(chain(&e)))?;
        let p = Provider { http, metadata, fetched: Instant::now(), ca_file: cfg.ca_file.clone() };
        providers.insert(cfg.issuer.clone(), p.clone());
        Ok(p)
    }

    /// Verifies with the cached keys; a token signed with a key we do not
    /// know yet (the IdP rotated) gets one more try with keys fetched again.
    async fn verify_fresh(
        &self,
        cfg: &IdentityConfig,
        token: &str,
        nonce: NonceRule<'_>,
    ) -> Result<Verified, OidcError> {
        let p = self.provider(cfg, false).await?;
        match verify(token, cfg, p.metadata.jwks(), nonce, jiff::Timestamp::now()) {
            Ok(v) => Ok(v),
            Err(r) if r.unknown_key => {
                let p = self.provider(cfg, true).await?;
                verify(token, cfg, p.metadata.jwks(), nonce, jiff::Timestamp::now())
                    .map_err(|r| OidcError::Refused(r.why))
            }
            Err(r) => Err(OidcError::Refused(r.why)),
        }
    }

    /// One refresh of `uid`'s binding `generation`: a new ID token for the
    /// same issuer and subject moves its end on (never past `hard_end`).
    async fn refresh_once(&self, uid: Uid, cfg: &IdentityConfig, generation: u64) -> Result<(), OidcError> {
        let (token, nonce, subject) = {
            let st = self.state();
            let b = st.bound.get(&uid).filter(|b| b.generation == generation).ok_or(OidcError::NoPending)?;
            let Some(t) = &b.refresh else { return Err(OidcError::NoPending) };
            (t.clone(), b.nonce.clone(), b.identity.subject.clone())
        };
        let p = self.provider(cfg, false).await?;
        let secret = match &cfg.client_secret_file {
            Some(f) => {
                let s = secrets::read_secret(f, "client_secret_file")?.first_line();
                Some(ClientSecret::new(String::from_utf8_lossy(s.expose()).into_owned()))
            }
            None => None,
        };
        let err = |why: String| OidcError::Provider { issuer: cfg.issuer.clone(), why };
        let client =
            CoreClient::from_provider_metadata(p.metadata.clone(), ClientId::new(cfg.client_id.clone()), secret);
        let response = client
            .exchange_refresh_token(&RefreshToken::new(token.to_string()))
            .map_err(|e| err(e.to_string()))?
            .request_async(&p.http)
            .await
            .map_err(|e| err(chain(&e)))?;
        let Some(id_token) = response.id_token() else {
            return Err(err("the refresh answer has no ID token".into()));
        };
        let v = self.verify_fresh(cfg, &id_token.to_string(), NonceRule::AbsentOr(&nonce)).await?;
        if v.identity.subject != subject {
            return Err(OidcError::Refused(format!(
                "the refreshed token names subject {:?}, the login {subject:?}",
                v.identity.subject
            )));
        }
        let mut st = self.state();
        let Some(b) = st.bound.get_mut(&uid).filter(|b| b.generation == generation) else { return Ok(()) };
        let mut identity = v.identity;
        identity.expires = v.token_expires.min(b.hard_end);
        info!(uid = %uid, subject = %identity.subject, until = identity.expires, "login refreshed");
        b.identity = identity;
        if let Some(rt) = response.refresh_token() {
            b.refresh = Some(Zeroizing::new(rt.secret().clone()));
        }
        Ok(())
    }
}

/// Refreshes a binding when three quarters of its token's life are over,
/// until it can go no further (`max_binding`), is replaced or ended.
async fn refresh_loop(logins: std::sync::Weak<Logins>, uid: Uid, cfg: IdentityConfig, generation: u64) {
    loop {
        let Some(l) = logins.upgrade() else { return };
        let (expires, hard_end) = {
            let st = l.state();
            match st.bound.get(&uid).filter(|b| b.generation == generation) {
                Some(b) => (b.identity.expires, b.hard_end),
                None => return,
            }
        };
        drop(l);
        let now = jiff::Timestamp::now().as_second();
        if expires >= hard_end || expires <= now {
            return;
        }
        let wait = u64::try_from((expires - now) * 3 / 4).unwrap_or(0).max(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        loop {
            let Some(l) = logins.upgrade() else { return };
            match l.refresh_once(uid, &cfg, generation).await {
                Ok(()) => break,
                Err(OidcError::NoPending) => return,
                Err(e) => {
                    warn!(uid = %uid, error = %e, "login refresh failed; the binding ends when its token expires unless a retry succeeds");
                    let left = {
                        let st = l.state();
                        st.bound.get(&uid).filter(|b| b.generation == generation).map(|b| b.identity.expires)
                    };
                    let Some(left) = left else { return };
                    if left <= jiff::Timestamp::now().as_second() {
                        return;
                    }
                }
            }
            drop(l);
            tokio::time::sleep(REFRESH_RETRY).await;
        }
    }
}

/// An HTTP client for the IdP: no redirects (an IdP answer never needs one;
/// following them invites SSRF), https only, bounded time, `ca_file`'s CAs
/// instead of the system's when given.
pub fn http_client(cfg: &IdentityConfig) -> Result<reqwest::Client, OidcError> {
    let pem = match &cfg.ca_file {
        Some(p) => Some(secrets::read_checked(p, "ca_file", secrets::Kind::Trusted)?.expose().to_vec()),
        None => None,
    };
    client_with_ca(pem.as_deref()).map_err(|why| OidcError::Provider { issuer: cfg.issuer.clone(), why })
}

/// The same client built from PEM text (the CLI gets it from the agent).
pub fn client_with_ca(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?;
        if certs.is_empty() {
            return Err("ca_file holds no certificate".into());
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| chain(&e))
}

/// An error and its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
