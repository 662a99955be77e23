//! Short-lived backend logins (`credentials = { dynamic = { … } }`): per
//! session, Gatehouse logs in as the backend's admin login and creates a
//! role `gh_dyn_<host>_<user>_<session>` that can log in, is a member of the
//! template role, and is valid until the session's time is up. Its random
//! password never leaves Gatehouse: the server gets a SCRAM verifier
//! computed here. The backend's own logs and `pg_stat_activity` then name a
//! role traceable to one person and one session, and nothing long-lived is
//! shared. The role is dropped when the session ends; a reaper drops this
//! host's leftovers (a crash, a restart) and expired roles.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::catalog::simple_query;
use super::{login_to, wire};
use crate::policy::{Backend, Credentials, Dynamic, Issued};
use crate::protocol::postgres::Services;

/// The roles this agent made and that sessions still use.
#[derive(Debug, Default)]
pub struct MadeRoles {
    live: Mutex<HashSet<String>>,
}

impl MadeRoles {
    fn add(&self, role: &str) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(role.to_owned());
    }

    fn remove(&self, role: &str) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(role);
    }

    fn contains(&self, role: &str) -> bool {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).contains(role)
    }
}

/// This host's prefix for the roles it makes (from its signing key), so
/// that bastions sharing a backend never drop each other's roles.
pub fn prefix(svc: &Services) -> String {
    let key = svc.audit.public_key_hex();
    format!("gh_dyn_{}_", key.get(..6).unwrap_or("000000"))
}

/// A role made for one session.
#[derive(Debug, Clone)]
pub struct Made {
    pub role: String,
    /// The login to use: the made role with its in-memory password.
    pub login: Credentials,
    pub ttl: Duration,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Runs `sql` as the backend's admin login.
async fn as_admin(svc: &Services, backend: &Backend, addr: SocketAddr, d: &Dynamic, sql: &str) -> Result<(), String> {
    let admin = Credentials::from_file(d.admin_user.clone(), Some(d.admin_password_file.clone()));
    let params = vec![
        ("database".to_owned(), d.admin_database.clone()),
        ("application_name".to_owned(), "gatehouse-roles".to_owned()),
        ("client_encoding".to_owned(), "UTF8".to_owned()),
    ];
    let (mut stream, rest, _) = login_to(svc, backend, addr, &admin, params).await.map_err(|e| e.to_string())?;
    let out = simple_query(&mut stream, rest, sql).await;
    let _ = stream.write_all(&wire::terminate()).await;
    out.map(|_| ())
}

/// Makes the role a session logs in as.
pub async fn make(
    svc: &Services,
    backend: &Backend,
    addr: SocketAddr,
    d: &Dynamic,
    user: &str,
    session: &str,
) -> Result<Made, String> {
    let who: String =
        user.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).take(16).collect();
    let sid: String = session.chars().filter(char::is_ascii_hexdigit).rev().take(8).collect();
    let role = format!("{}{}_{sid}", prefix(svc), if who.is_empty() { "uid" } else { &who });
    let secret = crate::secrets::random32().map_err(|e| format!("random password: {e}"))?;
    let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // The server stores this verifier; the password itself is never sent to
    // it. Its keys are remembered, so the session's login derives none.
    let pw = zeroize::Zeroizing::new(password.clone().into_bytes());
    let verifier = tokio::task::spawn_blocking(move || super::scram::verifier(&pw))
        .await
        .map_err(|e| format!("the SCRAM verifier: {e}"))?
        .map_err(|e| format!("the SCRAM verifier: {e}"))?;
    let until =
        jiff::Timestamp::now() + jiff::SignedDuration::try_from(d.ttl).unwrap_or(jiff::SignedDuration::from_hours(1));
    // The admin login is made a member so that it may end the role's
    // sessions and hand its objects back when the role is dropped.
    let sql = format!(
        "CREATE ROLE {r} LOGIN PASSWORD '{verifier}' VALID UNTIL '{until}' IN ROLE {t}; GRANT {r} TO {a}",
        r = quote_ident(&role),
        t = quote_ident(&d.template_role),
        a = quote_ident(&d.admin_user),
    );
    as_admin(svc, backend, addr, d, &sql)
        .await
        .map_err(|e| format!("creating a login role as {}: {e}", d.admin_user))?;
    svc.made_roles.add(&role);
    info!(role = %role, template = %d.template_role, ttl = ?d.ttl, "made a login role for this session");
    let login = Credentials {
        user: role.clone(),
        password_file: None,
        dynamic: Some(d.clone()),
        issued: Some(Issued(Arc::new(crate::secrets::Secret::new(password.into_bytes())))),
    };
    Ok(Made { role, login, ttl: d.ttl })
}

/// Drops a role (its objects go to the template role first).
async fn drop_role(svc: &Services, backend: &Backend, addr: SocketAddr, d: &Dynamic, role: &str) -> Result<(), String> {
    let r = quote_ident(role);
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}';
         REASSIGN OWNED BY {r} TO {t}; DROP OWNED BY {r}; DROP ROLE IF EXISTS {r};",
        role.replace('\'', "''"),
        t = quote_ident(&d.template_role)
    );
    as_admin(svc, backend, addr, d, &sql).await
}

/// The session that used `made` is over: drop its role.
pub async fn retire(svc: &Services, backend: &Backend, addr: SocketAddr, made: &Made) {
    let Some(d) = &made.login.dynamic else { return };
    match drop_role(svc, backend, addr, d, &made.role).await {
        Ok(()) => {
            svc.made_roles.remove(&made.role);
            info!(role = %made.role, "dropped the session's login role");
        }
        Err(e) => {
            warn!(role = %made.role, error = %e, "could not drop the session's login role; the reaper will retry")
        }
    }
}

/// Drops this host's roles that no session uses (left by a crash or a
/// restart) or whose time is up, on every backend with dynamic logins.
pub async fn reap(svc: &Services) {
    let snapshot = svc.snapshot.load_full();
    let prefix = prefix(svc);
    for b in &snapshot.policy.backends {
        let dynamics: Vec<&Dynamic> =
            b.credentials.iter().chain(b.roles.values()).filter_map(|c| c.dynamic.as_ref()).collect();
        let Some(d) = dynamics.first() else { continue };
        let Some(addr) = snapshot.routes.iter().find(|(_, n)| **n == b.name).map(|(a, _)| *a) else { continue };
        let list = async {
            let admin = Credentials::from_file(d.admin_user.clone(), Some(d.admin_password_file.clone()));
            let params = vec![("database".to_owned(), d.admin_database.clone())];
            let (mut stream, rest, _) = login_to(svc, b, addr, &admin, params).await.map_err(|e| e.to_string())?;
            let sql = format!(
                "SELECT rolname, coalesce(rolvaliduntil < now(), false) FROM pg_roles WHERE starts_with(rolname, '{prefix}')"
            );
            let out = simple_query(&mut stream, rest, &sql).await;
            let _ = stream.write_all(&wire::terminate()).await;
            out
        };
        let rows = match list.await {
            Ok(mut r) => r.pop().unwrap_or_default(),
            Err(e) => {
                warn!(backend = %b.name, error = %e, "cannot list this host's dynamic login roles");
                continue;
            }
        };
        for row in rows {
            let (Some(Some(role)), expired) = (row.first(), row.get(1).and_then(|v| v.as_deref()) == Some("t")) else {
                continue;
            };
            if svc.made_roles.contains(role) && !expired {
                continue;
            }
            match drop_role(svc, b, addr, d, role).await {
                Ok(()) => {
                    svc.made_roles.remove(role);
                    info!(backend = %b.name, role = %role, expired, "reaped a dynamic login role");
                }
                Err(e) => warn!(backend = %b.name, role = %role, error = %e, "cannot drop a dynamic login role"),
            }
        }
    }
}
