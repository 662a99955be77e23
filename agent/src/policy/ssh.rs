//! SSH in the policy: what an SSH backend holds (the login user, the
//! backend's host key, the user CA or held key Gatehouse logs in with) and
//! what a rule says about channels: shell (pty), exec command lines by glob
//! or regex, sftp read-only or read-write with path globs, and forwarding
//! (`direct-tcpip`, agent, X11), refused unless a rule names it.
//!
//! Matching is pure: [`SshRequest`] is one channel request.
//!
//! Exec command lines are run by the host's shell, so `ls *` must not allow
//! `ls; rm -rf /`: a command holding a shell metacharacter (`; & | $ \` < > ( ) { } \ ` or
//! a line break) is allowed only by a glob without `*`/`?` that equals it,
//! or by a regex. Deny patterns are matched against the whole line, each of
//! its pieces between those characters, and each piece as the shell reads
//! it (see [`shell_forms`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use regex_automata::meta;
use toml::Spanned;

use super::glob_exact;

pub mod dest;
pub use dest::Dest;

/// Shell metacharacters that join or substitute commands.
const META: &[u8] = b";&|$`<>(){}\\\n\r";

/// How Gatehouse logs in to an SSH backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshAuth {
    /// A short-lived certificate per session, signed with this user CA
    /// (the host's sshd trusts it with `TrustedUserCAKeys`).
    UserCa { key_file: PathBuf },
    /// A held private key (the host's `authorized_keys` lists it).
    Key { key_file: PathBuf },
}

/// What an SSH backend holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshBackend {
    /// The account Gatehouse logs in as (a rule's `as_role` overrides it).
    pub user: String,
    /// The names clients dial the backend by: the principals of the host
    /// certificate Gatehouse presents.
    pub host_names: Vec<String>,
    /// The backend's own host public key (OpenSSH format), checked on
    /// every upstream connection.
    pub host_key_file: PathBuf,
    /// How Gatehouse logs in when `keys` holds no key for the account.
    pub auth: Option<SshAuth>,
    /// Held private keys by login account (`keys = { root = "/…" }`): the
    /// rule that allowed the session picks the account (`as_role`), and so the key.
    pub keys: BTreeMap<String, PathBuf>,
    /// How long a per-session user certificate is valid.
    pub cert_validity: Duration,
    /// `force-command` for the backend's user certificates, unless the rule gives one.
    pub force_command: Option<String>,
}

impl SshBackend {
    /// How Gatehouse logs in as `login`: its own held key, else the backend's way.
    pub fn auth_for(&self, login: &str) -> Option<SshAuth> {
        match self.keys.get(login) {
            Some(k) => Some(SshAuth::Key { key_file: k.clone() }),
            None => self.auth.clone(),
        }
    }

    /// Every key file the backend names, with what it is.
    pub fn key_files(&self) -> impl Iterator<Item = (&PathBuf, &'static str)> {
        let main = self.auth.as_ref().map(|a| match a {
            SshAuth::UserCa { key_file } => (key_file, "ssh user_ca_key_file"),
            SshAuth::Key { key_file } => (key_file, "ssh key_file"),
        });
        main.into_iter().chain(self.keys.values().map(|k| (k, "ssh keys")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    DirectTcpip,
    Agent,
    X11,
}

impl Forward {
    pub const NAMES: [&'static str; 3] = ["direct-tcpip", "agent", "x11"];

    pub fn name(self) -> &'static str {
        match self {
            Self::DirectTcpip => "direct-tcpip",
            Self::Agent => "agent",
            Self::X11 => "x11",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct-tcpip" => Self::DirectTcpip,
            "agent" => Self::Agent,
            "x11" => Self::X11,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SftpAccess {
    ReadOnly,
    ReadWrite,
}

/// One SSH channel request, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub enum SshRequest<'a> {
    /// A shell (with or without a pty).
    Shell,
    /// `exec` with this command line.
    Exec(&'a str),
    /// One sftp (or scp) operation on `path`.
    Sftp {
        path: &'a str,
        write: bool,
    },
    /// A subsystem other than sftp.
    Subsystem(&'a str),
    Forward(Forward),
    /// A `direct-tcpip` channel (`ssh -L`, `-W`) to `host:port`, read as the
    /// host's resolver reads the client's host (see [`dest`]).
    ForwardTo {
        host: &'a Dest,
        port: u32,
    },
}

impl SshRequest<'_> {
    /// For refusals and records: `exec "ls -l"`.
    pub fn describe(&self) -> String {
        match self {
            Self::Shell => "a shell".into(),
            Self::Exec(c) => format!("exec {c:?}"),
            Self::Sftp { path, write: true } => format!("sftp write of {path:?}"),
            Self::Sftp { path, write: false } => format!("sftp read of {path:?}"),
            Self::Subsystem(s) => format!("subsystem {s:?}"),
            Self::Forward(f) => format!("{} forwarding", f.name()),
            Self::ForwardTo { host, port } => format!("direct-tcpip forwarding to {}", host.with_port(*port)),
        }
    }
}

/// A rule's SSH keys.
#[derive(Debug, Clone, Default)]
pub struct SshScope {
    pub shell: Option<bool>,
    pub exec: Vec<String>,
    pub exec_regex: Vec<(String, meta::Regex)>,
    pub sftp: Option<SftpAccess>,
    pub sftp_paths: Vec<String>,
    pub forward: BTreeSet<Forward>,
    /// `forward_to`: globs over `host:port`, the destination of a
    /// `direct-tcpip` channel spelled one way (see [`dest`]); empty: any destination.
    pub forward_to: Vec<String>,
    /// `force_command`: the only command the host runs for these sessions.
    pub force_command: Option<String>,
}

fn has_meta(s: &str) -> bool {
    s.bytes().any(|b| META.contains(&b))
}

fn is_pattern(p: &str) -> bool {
    p.contains(['*', '?'])
}

/// The pieces of a command line between metacharacters, trimmed.
fn pieces(cmd: &str) -> impl Iterator<Item = &str> {
    cmd.split(|c: char| c.is_ascii() && META.contains(&(c as u8))).map(str::trim).filter(|p| !p.is_empty())
}

/// Commands that run the command their arguments name (`env reboot`,
/// `nice -n 5 reboot`, `sudo -u root reboot`).
const WRAPPERS: &[&str] = &[
    "env", "command", "exec", "builtin", "nohup", "nice", "ionice", "sudo", "doas", "time", "timeout", "stdbuf",
    "setsid", "chrt", "taskset", "xargs", "watch", "unbuffer", "busybox", "chroot", "runuser", "flock",
];

/// How many words of a piece past a wrapper are tried as its command.
const MAX_CANDIDATES: usize = 16;

/// How many shell readings of one command line are made at most.
const MAX_FORMS: usize = 256;

/// Shells whose `-c` argument is a command line of its own.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "su", "fish", "tcsh", "csh"];

/// A word of a command piece as the shell reads it: quotes removed, and
/// whether an unquoted `*`, `?` or `[` makes it a file-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    glob: bool,
}

/// Splits a piece (no metacharacters in it) into words as `sh` does: white
/// space outside quotes separates, `'…'` and `"…"` group and are removed. An
/// unclosed quote runs to the end.
fn shell_words(piece: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut cur: Option<Word> = None;
    let mut quote: Option<char> = None;
    for c in piece.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_with(|| Word { text: String::new(), glob: false }).text.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_with(|| Word { text: String::new(), glob: false });
            }
            (None, c) if c.is_whitespace() => words.extend(cur.take()),
            (None, c) => {
                let w = cur.get_or_insert_with(|| Word { text: String::new(), glob: false });
                w.glob |= matches!(c, '*' | '?' | '[');
                w.text.push(c);
            }
        }
    }
    words.extend(cur);
    words
}

/// A file-name pattern with each bracket expression (`[o]`, `[!a-z]`) as
/// `?`, which `glob_exact` reads (an unclosed `[` as `*`).
fn bracketless(pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find('[') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + 1..).unwrap_or_default();
        // A `]` right after `[` (or `[!`) is part of the set.
        let skip = usize::from(after.starts_with('!') || after.starts_with('^'));
        match after.get(skip + 1..).and_then(|t| t.find(']')).map(|j| j + skip + 1) {
            Some(j) => {
                out.push('?');
                rest = after.get(j + 1..).unwrap_or_default();
            }
            None => {
                out.push('*');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `NAME=value`: an assignment before the command.
fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(n, _)| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// What the host may run for one piece of a command line, as deny patterns
/// read it: the words with quotes removed and the command's directory
/// dropped (`/usr/sbin/'reboot' -f` is `reboot -f`), after leading
/// assignments; past a wrapper (`env`, `nice -n 5`, `sudo -u root`), every
/// later word may be the command; a shell's `-c` argument is read as a
/// command line of its own. `wild`: command names that are file-name
/// patterns (`/sbin/r?boot`: the host's shell expands them), as patterns;
/// `*` for a line not read to its end (too many candidates, shells nested
/// too deep).
#[derive(Debug, Default)]
struct ShellForms {
    forms: Vec<String>,
    wild: Vec<String>,
}

/// Reads a whole command line as the shell will (see [`shell_forms`]): it
/// splits into commands at the metacharacters outside quotes; a backslash
/// outside single quotes escapes the next character (`r\eboot` is `reboot`,
/// a backslash-newline joins lines); an expansion outside single quotes
/// (`$X`, `$(…)`, `` `…` ``, `$'\x72…'`) may yield any command, so the line
/// counts as unknown (`*`).
fn read_line(line: &str, depth: usize, out: &mut ShellForms) {
    let mut pieces = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => {
                quote = None;
                cur.push(c);
            }
            (Some('\''), _) => cur.push(c),
            (_, '\\') => {
                if let Some(next) = chars.next().filter(|n| *n != '\n') {
                    cur.push(next);
                }
            }
            (_, '$' | '`') => out.wild.push("*".into()),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, c) if c.is_ascii() && META.contains(&(c as u8)) => pieces.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    pieces.push(cur);
    for p in pieces.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        shell_forms(p, depth, out);
    }
}

fn shell_forms(piece: &str, depth: usize, out: &mut ShellForms) {
    let words = shell_words(piece);
    let mut start = words.iter().take_while(|w| !w.glob && is_assignment(&w.text)).count();
    let mut wrapped = false;
    // Whether this word is where a command is expected: the first, and the
    // first word after a wrapper and its options (a file-name pattern
    // elsewhere is an argument, not a command to expand).
    let mut expected = true;
    let mut tried = 0;
    while let Some(first) = words.get(start) {
        // Bounded cost: past this many candidate commands (or shells within
        // shells), the line is not read further and counts as unknown.
        tried += 1;
        if tried > MAX_CANDIDATES || out.forms.len() >= MAX_FORMS {
            out.wild.push("*".into());
            return;
        }
        let name = first.text.rsplit('/').next().unwrap_or(&first.text);
        if first.glob && expected {
            out.wild.push(bracketless(name));
        }
        let mut form = vec![name.to_owned()];
        form.extend(words.iter().skip(start + 1).map(|w| w.text.clone()));
        out.forms.push(form.join(" "));
        if SHELLS.contains(&name)
            && let Some(i) = words.iter().skip(start + 1).position(|w| w.text == "-c")
            && let Some(line) = words.get(start + 2 + i)
        {
            if depth >= 4 {
                out.wild.push("*".into());
                return;
            }
            read_line(&line.text, depth + 1, out);
        }
        if WRAPPERS.contains(&name) {
            wrapped = true;
            expected = true;
        } else if !wrapped {
            break;
        } else if !first.text.starts_with('-') {
            expected = false;
        }
        start += 1;
    }
}

impl SshScope {
    /// No SSH key given: a deny rule without them denies the connection.
    pub fn is_unscoped(&self) -> bool {
        self.shell.is_none()
            && self.exec.is_empty()
            && self.exec_regex.is_empty()
            && self.sftp.is_none()
            && self.sftp_paths.is_empty()
            && self.forward.is_empty()
            && self.forward_to.is_empty()
            && self.force_command.is_none()
    }

    /// The `force-command` a session this rule allows gets in its upstream
    /// certificate: the rule's `force_command`, or, when the rule allows
    /// exactly one command line (one `exec` without wildcards, no regex,
    /// no shell, no sftp, no forwarding), that command.
    pub fn forced_command(&self) -> Option<&str> {
        if let Some(c) = &self.force_command {
            return Some(c);
        }
        match self.exec.as_slice() {
            [only]
                if !is_pattern(only)
                    && self.exec_regex.is_empty()
                    && self.shell != Some(true)
                    && self.sftp.is_none()
                    && self.forward.is_empty() =>
            {
                Some(only)
            }
            _ => None,
        }
    }

    fn exec_given(&self) -> bool {
        self.shell.is_some() || !self.exec.is_empty() || !self.exec_regex.is_empty()
    }

    fn exec_allows(&self, cmd: &str) -> bool {
        if !self.exec_given() {
            return true;
        }
        let meta = has_meta(cmd);
        self.exec
            .iter()
            .any(|p| if meta { !is_pattern(p) && p == cmd } else { glob_exact(p.as_bytes(), cmd.as_bytes()) })
            || self.exec_regex.iter().any(|(_, r)| r.is_match(cmd))
    }

    /// With `sftp_paths`, only absolute paths without `.`/`..` segments
    /// match: `/srv/share/../../etc/shadow` is not under `/srv/share/`.
    fn path_allowed(&self, path: &str) -> bool {
        self.sftp_paths.is_empty()
            || (path.starts_with('/')
                && !path.split('/').skip(1).any(|seg| seg == ".." || seg == "." || seg.is_empty())
                && self.sftp_paths.iter().any(|p| glob_exact(p.as_bytes(), path.as_bytes())))
    }

    /// Why this allow rule refuses `r`, if it does.
    pub fn refuses(&self, r: &SshRequest<'_>) -> Option<String> {
        match r {
            SshRequest::Shell => {
                let shell = self.shell.unwrap_or(!self.exec_given());
                (!shell).then(|| "it does not allow a shell (shell = true)".into())
            }
            // A host that cuts the line at a NUL (a C string) would run less
            // than was matched: `tar * --dry-run` matching `tar -xf a\0 --dry-run`.
            SshRequest::Exec(cmd) if cmd.contains('\0') => Some("the command line holds a NUL byte".into()),
            SshRequest::Exec(cmd) => (!self.exec_allows(cmd)).then(|| {
                let hint = if has_meta(cmd) {
                    " (the command holds shell metacharacters: only a pattern equal to it, or a regex, allows it)"
                } else {
                    ""
                };
                format!("the command is not in its exec {:?}{hint}", self.exec)
            }),
            SshRequest::Sftp { path, write } => match self.sftp {
                None => Some("it does not allow sftp/scp (sftp = \"read-only\" or \"read-write\")".into()),
                Some(SftpAccess::ReadOnly) if *write => Some("its sftp access is read-only".into()),
                Some(_) if !self.path_allowed(path) => {
                    Some(format!("{path:?} is not in its sftp_paths {:?}", self.sftp_paths))
                }
                Some(_) => None,
            },
            SshRequest::Subsystem("sftp") if self.sftp.is_some() => None,
            SshRequest::Subsystem("sftp") => {
                Some("it does not allow sftp/scp (sftp = \"read-only\" or \"read-write\")".into())
            }
            SshRequest::Subsystem(s) => Some(format!("subsystem {s:?} is not supported (only sftp)")),
            SshRequest::Forward(f) => (!self.forward.contains(f))
                .then(|| format!("{} forwarding is refused unless its forward lists it", f.name())),
            SshRequest::ForwardTo { host, port } => {
                if !self.forward.contains(&Forward::DirectTcpip) {
                    Some("direct-tcpip forwarding is refused unless its forward lists it".into())
                } else if let Dest::Unreadable(why) = host {
                    Some(format!("the destination is not one host the policy can name: {why}"))
                } else if !(1..=65535).contains(port) {
                    // glibc reads port 65558 as 22: never pass one a pattern did not see.
                    Some(format!("{port} is not a TCP port"))
                } else if !self.forward_to.is_empty() && !self.forward_to_matches(host, *port) {
                    Some(format!("{} is not in its forward_to {:?}", host.with_port(*port), self.forward_to))
                } else {
                    None
                }
            }
        }
    }

    /// Whether `host:port` is one of the `forward_to` globs.
    fn forward_to_matches(&self, host: &Dest, port: u32) -> bool {
        self.forward_to.iter().any(|p| dest::matches(p, host, port))
    }

    /// Whether this deny rule's SSH scope covers `r`.
    pub fn deny_matches(&self, r: &SshRequest<'_>) -> bool {
        match r {
            SshRequest::Shell => self.shell == Some(true),
            SshRequest::Exec(cmd) => {
                let hit = |s: &str| {
                    self.exec.iter().any(|p| glob_exact(p.as_bytes(), s.as_bytes()))
                        || self.exec_regex.iter().any(|(_, r)| r.is_match(s))
                };
                if hit(cmd) || pieces(cmd).any(hit) {
                    return true;
                }
                if self.exec.is_empty() && self.exec_regex.is_empty() {
                    return false;
                }
                let mut read = ShellForms::default();
                read_line(cmd, 0, &mut read);
                // A command name the host's shell expands (`r?boot`) is denied
                // when it could be a command a pattern names (a regex: always).
                let named = |w: &String| {
                    !self.exec_regex.is_empty()
                        || self.exec.iter().any(|p| {
                            let first = p.split_whitespace().next().unwrap_or(p);
                            let literal: String = first.chars().filter(|c| !matches!(c, '*' | '?')).collect();
                            let name = literal.rsplit('/').next().unwrap_or(&literal);
                            glob_exact(w.as_bytes(), name.as_bytes())
                        })
                };
                read.wild.iter().any(named) || read.forms.iter().any(|f| hit(f))
            }
            SshRequest::Sftp { path, write } => {
                let access = match self.sftp {
                    None => !self.sftp_paths.is_empty(),
                    Some(SftpAccess::ReadWrite) => true,
                    Some(SftpAccess::ReadOnly) => !write,
                };
                access && self.path_allowed(path)
            }
            SshRequest::Subsystem(s) => *s == "sftp" && self.sftp.is_some() && self.sftp_paths.is_empty(),
            SshRequest::Forward(f) => self.forward.contains(f),
            SshRequest::ForwardTo { host, port } => {
                if self.forward_to.is_empty() {
                    self.forward.contains(&Forward::DirectTcpip)
                } else {
                    // A destination no pattern can name is denied by every rule that names some.
                    matches!(host, Dest::Unreadable(_))
                        || !(1..=65535).contains(port)
                        || self.forward_to_matches(host, *port)
                }
            }
        }
    }
}

/// `ssh = { … }` on a backend, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshBackendRaw {
    user: String,
    host_names: Option<Vec<String>>,
    host_key_file: PathBuf,
    user_ca_key_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    keys: Option<BTreeMap<String, PathBuf>>,
    cert_validity: Option<String>,
    force_command: Option<String>,
}

/// A login name sshd would take.
fn login_name(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// Validates an SSH backend's `ssh` table.
pub(crate) fn build_backend(r: &SshBackendRaw) -> Result<SshBackend, String> {
    if !login_name(&r.user) {
        return Err(format!("ssh.user `{}` is not a login name", r.user));
    }
    let keys = r.keys.clone().unwrap_or_default();
    if let Some(k) = keys.keys().find(|k| !login_name(k)) {
        return Err(format!("ssh.keys: `{k}` is not a login name"));
    }
    let auth = match (&r.user_ca_key_file, &r.key_file) {
        (Some(f), None) => Some(SshAuth::UserCa { key_file: f.clone() }),
        (None, Some(f)) => Some(SshAuth::Key { key_file: f.clone() }),
        (None, None) if !keys.is_empty() => None,
        _ => {
            return Err(
                "ssh needs one of user_ca_key_file (a per-session certificate, preferred) or key_file (a held key), \
                 or keys (held keys by account)"
                    .into(),
            );
        }
    };
    if r.force_command.is_some() && !matches!(auth, Some(SshAuth::UserCa { .. })) {
        return Err("ssh.force_command applies with user_ca_key_file (it is a certificate option)".into());
    }
    if r.force_command.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err("ssh.force_command is empty".into());
    }
    let cert_validity = match r.cert_validity.as_deref().map(crate::settings::parse_duration) {
        None => Duration::from_secs(300),
        Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(24 * 3600) => d,
        Some(Ok(_)) => return Err("ssh.cert_validity must be between 1s and 24h".into()),
        Some(Err(m)) => return Err(format!("ssh.cert_validity: {m}")),
    };
    if r.cert_validity.is_some() && !matches!(auth, Some(SshAuth::UserCa { .. })) {
        return Err("ssh.cert_validity applies with user_ca_key_file".into());
    }
    let host_names = r.host_names.clone().unwrap_or_default();
    if let Some(h) = host_names.iter().find(|h| h.is_empty() || h.contains([' ', ',', '*', '?'])) {
        return Err(format!("ssh.host_names: `{h}` is not a host name"));
    }
    Ok(SshBackend {
        user: r.user.clone(),
        host_names,
        host_key_file: r.host_key_file.clone(),
        auth,
        keys,
        cert_validity,
        force_command: r.force_command.clone(),
    })
}

/// A rule's SSH keys as written.
#[derive(Default)]
pub(crate) struct SshRuleRaw<'r> {
    pub shell: Option<&'r Spanned<bool>>,
    pub exec: Option<&'r Spanned<Vec<String>>>,
    pub exec_regex: Option<&'r Spanned<Vec<String>>>,
    pub sftp: Option<&'r Spanned<String>>,
    pub sftp_paths: Option<&'r Spanned<Vec<String>>>,
    pub forward: Option<&'r Spanned<Vec<String>>>,
    pub forward_to: Option<&'r Spanned<Vec<String>>>,
    pub force_command: Option<&'r Spanned<String>>,
}

type Bad = (Option<Range<usize>>, String);

/// Validates a rule's SSH keys: only on rules naming an SSH backend.
pub(crate) fn build_scope(r: &SshRuleRaw<'_>, ssh_backends: bool) -> Result<SshScope, Bad> {
    let given = [
        ("shell", r.shell.map(Spanned::span)),
        ("exec", r.exec.map(Spanned::span)),
        ("exec_regex", r.exec_regex.map(Spanned::span)),
        ("sftp", r.sftp.map(Spanned::span)),
        ("sftp_paths", r.sftp_paths.map(Spanned::span)),
        ("forward", r.forward.map(Spanned::span)),
        ("forward_to", r.forward_to.map(Spanned::span)),
        ("force_command", r.force_command.map(Spanned::span)),
    ];
    if !ssh_backends && let Some((field, span)) = given.iter().find(|(_, s)| s.is_some()) {
        return Err((span.clone(), format!("`{field}` applies to ssh backends; this rule names none")));
    }
    let mut s = SshScope { shell: r.shell.map(|b| *b.get_ref()), ..SshScope::default() };
    if let Some(c) = r.force_command {
        if c.get_ref().trim().is_empty() || c.get_ref().contains(['\n', '\r', '\0']) {
            return Err((Some(c.span()), "force_command must be one non-empty command line".into()));
        }
        s.force_command = Some(c.get_ref().clone());
    }
    if let Some(list) = r.exec {
        if list.get_ref().iter().any(String::is_empty) {
            return Err((Some(list.span()), "exec lists an empty pattern".into()));
        }
        s.exec = list.get_ref().clone();
    }
    if let Some(list) = r.exec_regex {
        for p in list.get_ref() {
            // Whole command lines: anchored at both ends.
            let re = meta::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| (Some(list.span()), format!("exec_regex {p:?}: {e}")))?;
            s.exec_regex.push((p.clone(), re));
        }
    }
    if let Some(a) = r.sftp {
        s.sftp = Some(match a.get_ref().as_str() {
            "read-only" => SftpAccess::ReadOnly,
            "read-write" => SftpAccess::ReadWrite,
            other => {
                return Err((Some(a.span()), format!("sftp must be \"read-only\" or \"read-write\", not `{other}`")));
            }
        });
    }
    if let Some(list) = r.sftp_paths {
        if let Some(p) = list.get_ref().iter().find(|p| !p.starts_with('/')) {
            return Err((Some(list.span()), format!("sftp_paths are absolute path globs, not `{p}`")));
        }
        s.sftp_paths = list.get_ref().clone();
    }
    if let Some(list) = r.forward {
        for f in list.get_ref() {
            let Some(k) = Forward::parse(f) else {
                return Err((
                    Some(list.span()),
                    format!("unknown forwarding kind `{f}`; kinds: {}", Forward::NAMES.join(", ")),
                ));
            };
            if k != Forward::DirectTcpip {
                return Err((
                    Some(list.span()),
                    format!("forwarding `{f}` is not relayed by Gatehouse (only direct-tcpip can be allowed)"),
                ));
            }
            s.forward.insert(k);
        }
    }
    if let Some(list) = r.forward_to {
        s.forward_to = list
            .get_ref()
            .iter()
            .map(|p| dest::normalize(p))
            .collect::<Result<_, _>>()
            .map_err(|e| (Some(list.span()), e))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(exec: &[&str]) -> SshScope {
        SshScope { exec: exec.iter().map(|s| (*s).to_owned()).collect(), ..SshScope::default() }
    }

    #[test]
    fn exec_globs_do_not_stretch_over_shell_metacharacters() {
        let s = scope(&["ls *", "uptime"]);
        assert!(s.refuses(&SshRequest::Exec("ls -l /srv")).is_none());
        assert!(s.refuses(&SshRequest::Exec("uptime")).is_none());
        for evil in ["ls ; rm -rf /", "ls $(rm -rf /)", "ls `id`", "ls && reboot", "ls | sh", "ls\nreboot"] {
            assert!(s.refuses(&SshRequest::Exec(evil)).is_some(), "{evil:?} must be refused");
        }
        // Only exec given: no shell.
        assert!(s.refuses(&SshRequest::Shell).is_some());
        // Nothing given: shell and any command.
        let open = SshScope::default();
        assert!(open.refuses(&SshRequest::Shell).is_none());
        assert!(open.refuses(&SshRequest::Exec("ls; id")).is_none());
        assert!(open.refuses(&SshRequest::Forward(Forward::DirectTcpip)).is_some());
    }

    #[test]
    fn deny_patterns_see_every_piece_of_a_command_line() {
        let d = scope(&["rm *", "reboot"]);
        assert!(d.deny_matches(&SshRequest::Exec("rm -rf /")));
        assert!(d.deny_matches(&SshRequest::Exec("ls; rm -rf /")));
        assert!(d.deny_matches(&SshRequest::Exec("true && reboot")));
        assert!(d.deny_matches(&SshRequest::Exec("echo $(reboot)")));
        assert!(!d.deny_matches(&SshRequest::Exec("ls -l")));
    }

    /// The host's shell removes quotes, finds a command by its path, runs
    /// what `env`, `sudo`, `nice`… and `sh -c` are given, and expands
    /// file-name patterns: a deny pattern reads the line as it will.
    #[test]
    fn deny_patterns_read_the_line_as_the_shell_will() {
        let d = scope(&["reboot*", "id -g*", "rm -rf *"]);
        for evil in [
            "'reboot'",
            "re''boot",
            "\"reboot\" now",
            "/usr/sbin/reboot",
            "/sbin/'re'boot -f",
            "id '-g'",
            "id -\"\"g",
            "id \"-g\" -n",
            "rm '-rf' /srv",
            "rm -r\"f\" /srv",
            "LANG=C reboot",
            "env reboot",
            "env -i PATH=/sbin reboot",
            "nice -n 5 reboot",
            "sudo -u root /sbin/reboot",
            "timeout 5 reboot",
            "sh -c 'reboot'",
            "bash -lc 'true; reboot'",
            "env sh -c \"sudo 'reboot'\"",
            "/sbin/r?boot",
            "/sbin/reb[o]ot",
            "*boot",
            "sudo -E /sbin/r?boot",
            "r\\eboot",
            "\\reboot -f",
            "re\\\nboot",
            "X=reboot; $X",
            "`echo reboot`",
            "$'\\x72eboot'",
            "sh -c 're\\boot'",
        ] {
            assert!(d.deny_matches(&SshRequest::Exec(evil)), "{evil:?} must be denied");
        }
        for fine in [
            "ls -l",
            "id -u",
            "echo reboot",
            "grep reboot /var/log/syslog",
            "id 'name with space'",
            "ls *.log",
            "nice -n 5 tar czf /tmp/b.tgz /data/*",
            "sudo ls /var/log/*.gz",
            "awk '{print $1}' /var/log/syslog",
            "echo 'a\\b'",
        ] {
            assert!(!d.deny_matches(&SshRequest::Exec(fine)), "{fine:?} is not denied");
        }
        assert_eq!(
            shell_words("a 'b c' \"d\"e f*"),
            [("a", false), ("b c", false), ("de", false), ("f*", true)]
                .map(|(t, g)| Word { text: t.into(), glob: g })
                .to_vec()
        );
        // A NUL would let a host run a prefix of what was matched.
        let a = scope(&["tar * --dry-run"]);
        assert!(a.refuses(&SshRequest::Exec("tar -xf a.tar --dry-run")).is_none());
        assert!(a.refuses(&SshRequest::Exec("tar -xf a.tar\0 --dry-run")).is_some());
        assert!(SshScope::default().refuses(&SshRequest::Exec("ls\0")).is_some());
        assert_eq!(bracketless("reb[o]ot"), "reb?ot");
        assert_eq!(bracketless("[!a-z]x[]]y[z"), "?x?y*");
        // Bounded: a long line of wrapped words, or shells nested past four,
        // is not read further and is denied by a rule that names commands.
        let long = format!("env {}", "a ".repeat(100_000));
        let mut read = ShellForms::default();
        shell_forms(&long, 0, &mut read);
        assert_eq!(read.forms.len(), MAX_CANDIDATES, "candidates tried");
        assert!(!read.wild.is_empty());
        assert!(d.deny_matches(&SshRequest::Exec(&long)));
        let mut read = ShellForms::default();
        shell_forms("bash -c 'bash -c \"bash -c x\"'", 3, &mut read);
        assert!(!read.wild.is_empty(), "a shell past four levels is not read: {read:?}");
        let nested = "sh -c \"sh -c 'sh -c sh'\"";
        assert!(!d.deny_matches(&SshRequest::Exec(nested)), "three levels are read: {nested}");
        assert!(!d.deny_matches(&SshRequest::Exec("env -i LANG=C ls -l")));
        // A deny rule without exec patterns matches no command this way.
        assert!(!SshScope::default().deny_matches(&SshRequest::Exec("'reboot'")));
    }

    /// `forward_to` limits where direct-tcpip channels go (a forwarded
    /// connection starts on the host, where the bastion's redirect does not
    /// see it); a deny rule's `forward_to` denies those destinations.
    #[test]
    fn forward_to_limits_direct_tcpip_destinations() {
        let allow = SshScope {
            forward: BTreeSet::from([Forward::DirectTcpip]),
            forward_to: vec!["metrics.internal:9100".into(), "10.9.0.*:443".into()],
            ..SshScope::default()
        };
        let refuses =
            |scope: &SshScope, h: &str, port| scope.refuses(&SshRequest::ForwardTo { host: &Dest::read(h), port });
        let denies =
            |scope: &SshScope, h: &str, port| scope.deny_matches(&SshRequest::ForwardTo { host: &Dest::read(h), port });
        assert!(refuses(&allow, "metrics.internal", 9100).is_none());
        assert!(refuses(&allow, "METRICS.internal.", 9100).is_none());
        assert!(refuses(&allow, "10.9.0.7", 443).is_none());
        assert!(refuses(&allow, "10.9.7", 443).is_none(), "10.9.7 is 10.9.0.7 to the host's resolver");
        for (h, p) in [
            ("db.internal", 5432),
            ("metrics.internal", 22),
            ("10.9.0.7", 5432),
            ("127.0.0.1", 9100),
            // A name under an address glob resolves wherever its DNS says.
            ("10.9.0.7.attacker.example", 443),
        ] {
            assert!(refuses(&allow, h, p).is_some_and(|w| w.contains("forward_to")), "{h}:{p}");
        }
        assert!(refuses(&allow, "10.9.0.7.", 443).is_some_and(|w| w.contains("not one host")));
        let any = SshScope { forward: BTreeSet::from([Forward::DirectTcpip]), ..SshScope::default() };
        assert!(refuses(&any, "db.internal", 5432).is_none(), "no forward_to: any destination");
        assert!(refuses(&SshScope::default(), "metrics.internal", 9100).is_some());
        let deny = SshScope { forward_to: vec!["db.internal:*".into(), "10.1.2.3:*".into()], ..SshScope::default() };
        assert!(denies(&deny, "db.internal", 5432));
        assert!(denies(&deny, "DB.Internal.", 5432));
        // Every spelling of the denied address is the denied address.
        for h in ["10.1.2.3", "167838211", "0xa010203", "012.1.2.3", "10.1.515", "::ffff:10.1.2.3"] {
            assert!(denies(&deny, h, 22), "{h}");
        }
        assert!(denies(&deny, "db internal", 22), "what no pattern can name is denied");
        // The host's resolver reads port 65558 as 22 (glibc keeps the low 16 bits).
        assert!(denies(&deny, "metrics.internal", 65558) && denies(&deny, "metrics.internal", 0));
        assert!(refuses(&any, "db.internal", 65558).is_some_and(|w| w.contains("not a TCP port")));
        assert!(!denies(&deny, "metrics.internal", 9100));
        assert!(!deny.is_unscoped());
        let list = Spanned::new(0..1, vec!["db.internal".to_owned()]);
        let raw = SshRuleRaw { forward_to: Some(&list), ..SshRuleRaw::default() };
        assert!(build_scope(&raw, true).is_err_and(|(_, e)| e.contains("host:port")));
    }

    fn load(text: &str) -> Result<crate::policy::Policy, String> {
        let src = crate::policy::diag::Source { path: "t.toml".into(), text: text.into() };
        crate::policy::load::load(&[src]).map_err(|d| d.to_string())
    }

    const BACKEND: &str = r#"
[[backend]]
name = "host"
protocol = "ssh"
address = "127.10.0.9:22"
ssh = { user = "deploy", host_key_file = "/k.pub", user_ca_key_file = "/ca" }

[[approvers]]
name = "leads"
who = { users = ["lea"] }
"#;

    #[test]
    fn the_loader_checks_ssh_backends_and_rules() {
        use crate::identity::Principal;
        use crate::policy::decide::{Request, Verdict};
        let p = load(&format!(
            "{BACKEND}\n[[rule]]\nname = \"ops\"\nwho = {{ users = [\"ana\"] }}\nbackend = \"host\"\n\
             exec = [\"ls *\"]\napproval = {{ for = [\"exec\"], by = \"leads\" }}\nas_role = \"root\"\n"
        ))
        .expect("loads");
        let ana = Principal::named("ana", &[]);
        let name = crate::types::BackendName::new("host");
        let req = Request { backend: &name, statement: None, now: jiff::Timestamp::now() };
        let d = p.decide_ssh_with(&ana, &req, &SshRequest::Exec("ls -l"), &[]);
        assert_eq!(d.verdict, Verdict::NeedsApproval, "{d:?}");
        assert_eq!(d.as_role.as_ref().map(ToString::to_string).as_deref(), Some("root"));
        let d = p.decide_ssh_with(&ana, &req, &SshRequest::Shell, &[]);
        assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
        let d = p.decide_ssh_with(&ana, &req, &SshRequest::Forward(Forward::DirectTcpip), &[]);
        assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
        let bad = [
            ("ssh = { user = \"d\", host_key_file = \"/k\" }", "needs one of user_ca_key_file"),
            (
                "ssh = { user = \"d\", host_key_file = \"/k\", key_file = \"/a\", cert_validity = \"1m\" }",
                "cert_validity applies",
            ),
            (
                "ssh = { user = \"d\", host_key_file = \"/k\", user_ca_key_file = \"/a\", cert_validity = \"2d\" }",
                "between 1s and 24h",
            ),
        ];
        for (table, want) in bad {
            let e =
                load(&format!("[[backend]]\nname = \"h\"\nprotocol = \"ssh\"\naddress = \"127.10.0.9:22\"\n{table}\n"))
                    .expect_err(table);
            assert!(e.contains(want), "{table}: {e}");
        }
        for (rule, want) in [
            ("forward = [\"agent\"]", "not relayed"),
            ("sftp = \"rw\"", "read-only"),
            ("exec_regex = [\"(\"]", "exec_regex"),
            ("sftp_paths = [\"srv/*\"]", "absolute"),
            ("statements = [\"select\"]", "applies to postgres"),
        ] {
            let e = load(&format!(
                "{BACKEND}\n[[rule]]\nname = \"r\"\nwho = {{ users = [\"ana\"] }}\nbackend = \"host\"\n{rule}\n"
            ))
            .expect_err(rule);
            assert!(e.contains(want), "{rule}: {e}");
        }
    }

    #[test]
    fn force_command_keys_by_account_and_ssh_test_cases() {
        let p = load(
            r#"
[[backend]]
name = "host"
protocol = "ssh"
address = "127.10.0.9:22"
ssh = { user = "deploy", host_key_file = "/k.pub", user_ca_key_file = "/ca", keys = { backup = "/keys/backup" } }

[[rule]]
name = "backups"
who = { users = ["ana"] }
backend = "host"
as_role = "backup"
exec = ["/usr/local/bin/backup"]

[[rule]]
name = "menu"
who = { users = ["bob"] }
backend = "host"
force_command = "/usr/local/bin/menu"

[[rule]]
name = "lists"
who = { users = ["lea"] }
backend = "host"
exec = ["ls *"]

[[test]]
who = { user = "ana" }
backend = "host"
exec = "/usr/local/bin/backup"
expect = "allow"
rule = "backups"

[[test]]
who = { user = "ana" }
backend = "host"
exec = "/usr/local/bin/backup; rm -rf /"
expect = "deny"

[[test]]
who = { user = "ana" }
backend = "host"
shell = true
expect = "deny"

[[test]]
who = { user = "bob" }
backend = "host"
shell = true
expect = "allow"

[[test]]
who = { user = "bob" }
backend = "host"
forward = "direct-tcpip"
expect = "deny"

[[test]]
who = { user = "lea" }
backend = "host"
sftp_read = "/etc/passwd"
expect = "deny"
"#,
        )
        .expect("loads");
        let out = p.run_tests(jiff::Timestamp::now());
        assert_eq!(out.len(), 6);
        for o in &out {
            assert!(o.passed, "{o:?}");
        }
        let ssh = p.backends[0].ssh.as_ref().expect("ssh");
        assert_eq!(ssh.auth_for("backup"), Some(SshAuth::Key { key_file: "/keys/backup".into() }));
        assert_eq!(ssh.auth_for("deploy"), Some(SshAuth::UserCa { key_file: "/ca".into() }));
        let forced: Vec<Option<&str>> = p.rules.iter().map(|r| r.ssh.forced_command()).collect();
        assert_eq!(forced, [Some("/usr/local/bin/backup"), Some("/usr/local/bin/menu"), None]);

        // A test case that fails says so; bad ssh test cases and keys are load errors.
        let failing = load(&format!(
            "{BACKEND}\n[[rule]]\nname = \"r\"\nwho = {{ users = [\"ana\"] }}\nbackend = \"host\"\nexec = [\"ls *\"]\n\
             [[test]]\nwho = {{ user = \"ana\" }}\nbackend = \"host\"\nexec = \"reboot\"\nexpect = \"allow\"\n"
        ))
        .expect("loads");
        assert!(!failing.run_tests(jiff::Timestamp::now())[0].passed);
        for (extra, want) in [
            (
                "[[test]]\nwho = { user = \"ana\" }\nbackend = \"host\"\nforward = \"agentx\"\nexpect = \"deny\"\n",
                "unknown forwarding kind",
            ),
            (
                "[[test]]\nwho = { user = \"ana\" }\nbackend = \"host\"\nexec = \"ls\"\nshell = true\nexpect = \"deny\"\n",
                "one ssh request",
            ),
            (
                "[[rule]]\nname = \"f\"\nwho = { users = [\"ana\"] }\nbackend = \"host\"\nforce_command = \"\"\n",
                "force_command",
            ),
        ] {
            let e = load(&format!("{BACKEND}\n{extra}")).expect_err(extra);
            assert!(e.contains(want), "{extra}: {e}");
        }
        for (table, want) in [
            (
                "ssh = { user = \"d\", host_key_file = \"/k\", key_file = \"/a\", force_command = \"x\" }",
                "force_command applies",
            ),
            ("ssh = { user = \"d\", host_key_file = \"/k\", keys = { \"a b\" = \"/k2\" } }", "not a login name"),
        ] {
            let e =
                load(&format!("[[backend]]\nname = \"h\"\nprotocol = \"ssh\"\naddress = \"127.10.0.9:22\"\n{table}\n"))
                    .expect_err(table);
            assert!(e.contains(want), "{table}: {e}");
        }
        // Keys only: accounts without a key cannot log in.
        let p = load("[[backend]]\nname = \"h\"\nprotocol = \"ssh\"\naddress = \"127.10.0.9:22\"\nssh = { user = \"d\", host_key_file = \"/k\", keys = { d = \"/kd\" } }\n")
            .expect("keys only");
        let ssh = p.backends[0].ssh.as_ref().expect("ssh");
        assert!(ssh.auth_for("d").is_some() && ssh.auth_for("root").is_none());
    }

    #[test]
    fn sftp_access_and_paths() {
        let s = SshScope {
            sftp: Some(SftpAccess::ReadOnly),
            sftp_paths: vec!["/srv/share/*".into()],
            ..SshScope::default()
        };
        assert!(s.refuses(&SshRequest::Sftp { path: "/srv/share/a.txt", write: false }).is_none());
        assert!(s.refuses(&SshRequest::Sftp { path: "/srv/share/a.txt", write: true }).is_some());
        assert!(s.refuses(&SshRequest::Sftp { path: "/etc/shadow", write: false }).is_some());
        for sneaky in ["/srv/share/../../etc/shadow", "srv/share/a", "/srv/share/./a", "/srv/share//a"] {
            assert!(s.refuses(&SshRequest::Sftp { path: sneaky, write: false }).is_some(), "{sneaky}");
        }
        assert!(SshScope::default().refuses(&SshRequest::Sftp { path: "/x", write: false }).is_some());
    }
}
