//! `gatehouse ca`: the agent's own certificate authorities. `init` makes
//! the CA that issues certificates for HTTP backends with `tls =
//! "terminate"` (`ca.key` 0600 and `ca.crt` beside the host key);
//! `export` prints its certificate for the bastion's trust store.
//! `ssh-host` makes (once) the SSH host CA that signs the host certificates
//! Gatehouse presents for SSH backends, and prints the `@cert-authority`
//! line for the bastion's `/etc/ssh/ssh_known_hosts`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::protocol::http::tls;
use crate::settings;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make the agent CA for `tls = "terminate"` (refuses to replace one unless --force).
    Init {
        /// The audit store whose directory holds the host key (and so the CA).
        #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
        db: PathBuf,
        /// Replace an existing CA (clients must then trust the new certificate).
        #[arg(long)]
        force: bool,
    },
    /// Print the agent CA's certificate (PEM), to add to the bastion's trust store.
    Export {
        #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
        db: PathBuf,
    },
    /// Make the SSH host CA if there is none, and print the known_hosts line that trusts it.
    SshHost {
        #[arg(long, default_value = settings::DEFAULT_AUDIT_DB)]
        db: PathBuf,
        /// Replace an existing SSH host CA (clients must then trust the new line).
        #[arg(long)]
        force: bool,
        /// Host patterns of the known_hosts line (default `*`: narrow it to the backends' names).
        #[arg(long, default_value = "*")]
        hosts: String,
    },
}

pub fn ca(c: CaCommand) -> ExitCode {
    match c {
        CaCommand::Init { db, force } => init(&db, force),
        CaCommand::SshHost { db, force, hosts } => ssh_host(&db, force, &hosts),
        CaCommand::Export { db } => {
            let (_, cert) = tls::ca_paths(&db);
            match std::fs::read_to_string(&cert) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: {}: {e} (run `gatehouse ca init` first)", cert.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init(db: &std::path::Path, force: bool) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("gatehouse: `gatehouse ca init` writes a root-only key: it needs root");
        return ExitCode::FAILURE;
    }
    let (key_path, cert_path) = tls::ca_paths(db);
    if key_path.exists() && !force {
        eprintln!("gatehouse: {} exists; --force replaces it (clients must then trust the new CA)", key_path.display());
        return ExitCode::FAILURE;
    }
    if let Some(dir) = key_path.parent()
        && let Err(e) = crate::secrets::state_dir(dir)
    {
        eprintln!("gatehouse: {e}");
        return ExitCode::FAILURE;
    }
    let (key, cert) = match tls::new_ca() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut key = zeroize::Zeroizing::new(key.into_bytes());
    if let Err(e) = crate::secrets::write_atomic(&key_path, &key, 0o600)
        .and_then(|()| crate::secrets::write_atomic(&cert_path, cert.as_bytes(), 0o644))
    {
        eprintln!("gatehouse: writing the CA: {e}");
        return ExitCode::FAILURE;
    }
    zeroize::Zeroize::zeroize(&mut *key);
    println!("agent CA written: {} (key, 0600) and {}", key_path.display(), cert_path.display());
    println!("trust it on this host:");
    println!("  gatehouse ca export > /usr/local/share/ca-certificates/gatehouse-agent.crt && update-ca-certificates");
    ExitCode::SUCCESS
}

fn ssh_host(db: &std::path::Path, force: bool, hosts: &str) -> ExitCode {
    use crate::protocol::ssh::keys;
    let (key_path, pub_path) = keys::host_ca_paths(db);
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("gatehouse: {e}");
        ExitCode::FAILURE
    };
    if !key_path.exists() || force {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("gatehouse: `gatehouse ca ssh-host` writes a root-only key: it needs root");
            return ExitCode::FAILURE;
        }
        if let Some(dir) = key_path.parent()
            && let Err(e) = crate::secrets::state_dir(dir)
        {
            return fail(&e);
        }
        let made = keys::new_ed25519("gatehouse-ssh-host-ca").and_then(|k| {
            let private = keys::to_openssh(&k)?;
            let public = keys::public_line(k.public_key())?;
            Ok((private, public))
        });
        let (private, public) = match made {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        if let Err(e) = crate::secrets::write_atomic(&key_path, private.as_bytes(), 0o600)
            .and_then(|()| crate::secrets::write_atomic(&pub_path, format!("{public}\n").as_bytes(), 0o644))
        {
            return fail(&format!("writing the SSH host CA: {e}"));
        }
        eprintln!("SSH host CA written: {} (key, 0600) and {}", key_path.display(), pub_path.display());
    }
    let public = match keys::read_private(&key_path, "SSH host CA key").and_then(|k| keys::public_line(k.public_key()))
    {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    eprintln!("add this line to /etc/ssh/ssh_known_hosts on the bastion:");
    println!("@cert-authority {hosts} {public}");
    ExitCode::SUCCESS
}
