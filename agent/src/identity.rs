//! Who opened a connection: the kernel's record (uid, gid, pid, comm,
//! cgroup) turned into a [`Principal`] (user name and groups through NSS),
//! with the identity `gatehouse login` bound to the uid, if any ([`oidc`]).

pub mod oidc;

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::Handoff;
use nix::unistd::{Gid, Group, User};
use serde::Serialize;

use crate::types::{GroupName, Uid, UserName};

/// What the kernel saw of the process that called connect().
#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    pub uid: Uid,
    pub gid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl From<&Handoff> for Peer {
    fn from(h: &Handoff) -> Self {
        let end = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
        let comm = h.comm.get(..end).unwrap_or_default();
        Self {
            uid: Uid(h.uid),
            gid: h.gid,
            pid: h.tgid,
            comm: String::from_utf8_lossy(comm).into_owned(),
            cgroup_id: h.cgroup_id,
        }
    }
}

/// An identity established by `gatehouse login`: the claims of an ID token
/// the agent verified itself, bound to the uid that handed it in.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// Whether the IdP says it verified the e-mail address; only a verified
    /// address matches a rule's `emails`.
    #[serde(default)]
    pub email_verified: bool,
    /// From the policy's `groups_claim`.
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// When the IdP authenticated the user (seconds since the epoch; the
    /// token's issue time when the IdP sends no `auth_time`).
    #[serde(default)]
    pub auth_time: i64,
    #[serde(default)]
    pub acr: Option<String>,
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the binding ends (seconds since the epoch): the token's expiry,
    /// moved on by refreshes, never past the policy's `max_binding`.
    #[serde(default)]
    pub expires: i64,
}

impl OidcIdentity {
    /// The e-mail address, if the IdP verified it.
    pub fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }
}

/// The subject of policy decisions.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Principal {
    pub uid: Uid,
    /// `None` when the uid has no passwd entry.
    pub user: Option<UserName>,
    /// The user's groups from NSS (primary and supplementary).
    pub groups: Vec<GroupName>,
    pub oidc: Option<OidcIdentity>,
}

impl Principal {
    /// A principal given by name, as policy test cases and `explain` write it.
    pub fn named(user: &str, groups: &[&str]) -> Self {
        Self {
            uid: Uid(u32::MAX),
            user: Some(UserName::new(user)),
            groups: groups.iter().map(|g| GroupName::new(*g)).collect(),
            oidc: None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{u}")?,
            None => write!(f, "uid:{}", self.uid)?,
        }
        match &self.oidc {
            Some(o) => write!(f, " (login {})", o.subject),
            None => Ok(()),
        }
    }
}

/// Resolves uids to principals through NSS, with a short cache so a burst of
/// connections does not hit NSS (possibly LDAP) each time, and holds the
/// logins bound to uids.
#[derive(Debug)]
pub struct Resolver {
    ttl: Duration,
    cache: Mutex<HashMap<Uid, (Instant, Principal)>>,
    /// Identities bound by `gatehouse login`; not cached, so a logout or an
    /// expiry counts from the next connection on.
    pub logins: Arc<oidc::Logins>,
}

impl Resolver {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache: Mutex::new(HashMap::new()), logins: Arc::new(oidc::Logins::default()) }
    }

    /// The principal with the identity bound to the uid under the policy's
    /// `[identity]` (none without one).
    pub async fn principal_for(&self, uid: Uid, identity: Option<&crate::policy::IdentityConfig>) -> Principal {
        let mut p = self.principal(uid).await;
        p.oidc = self.logins.current(uid, identity, jiff::Timestamp::now());
        p
    }

    pub async fn principal(&self, uid: Uid) -> Principal {
        let now = Instant::now();
        if let Some((at, p)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&uid)
            && now.duration_since(*at) < self.ttl
        {
            return p.clone();
        }
        // NSS may block (LDAP, sssd): keep it off the async workers.
        let p = tokio::task::spawn_blocking(move || lookup(uid)).await.unwrap_or_else(|_| Principal {
            uid,
            user: None,
            groups: vec![],
            oidc: None,
        });
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, (now, p.clone()));
        p
    }
}

/// Blocking NSS lookup of a uid's name and groups.
pub fn lookup(uid: Uid) -> Principal {
    let user = User::from_uid(nix::unistd::Uid::from_raw(uid.0)).ok().flatten();
    let Some(user) = user else {
        return Principal { uid, user: None, groups: vec![], oidc: None };
    };
    let mut gids = vec![user.gid];
    if let Ok(name) = CString::new(user.name.as_bytes())
        && let Ok(list) = nix::unistd::getgrouplist(&name, user.gid)
    {
        gids.extend(list);
    }
    gids.sort_by_key(|g| g.as_raw());
    gids.dedup();
    let groups = gids.into_iter().filter_map(group_name).collect();
    Principal { uid, user: Some(UserName::new(user.name)), groups, oidc: None }
}

fn group_name(gid: Gid) -> Option<GroupName> {
    Group::from_gid(gid).ok().flatten().map(|g| GroupName::new(g.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_group() {
        let p = lookup(Uid(0));
        assert_eq!(p.user, Some(UserName::new("root")));
        assert!(p.groups.contains(&GroupName::new("root")), "{:?}", p.groups);
    }

    #[test]
    fn unknown_uid_has_no_name() {
        let p = lookup(Uid(3_999_999_999));
        assert_eq!(p.user, None);
        assert_eq!(p.to_string(), "uid:3999999999");
    }

    #[test]
    fn comm_is_cut_at_nul() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"psql");
        let h = Handoff {
            cgroup_id: 1,
            cookie: 7,
            connect_ns: 1,
            established_ns: 2,
            orig: agent_common::SockKey { addr: [0; 4], port: 0, _pad: 0 },
            uid: 1000,
            gid: 1000,
            tgid: 42,
            comm,
        };
        assert_eq!(Peer::from(&h).comm, "psql");
    }
}
