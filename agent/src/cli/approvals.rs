//! `gatehouse requests|approve|deny|request|revoke`: the people's side of
//! requests that wait for a human (held statements and logins, grants).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::fail;
use crate::approval::{Request as Req, State, Subject};
use crate::control::{self, Request, Response};
use crate::settings;

#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Only your own requests.
    #[arg(long)]
    pub mine: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The request's number (as `gatehouse requests` shows it).
    pub id: u64,
    /// Why (recorded, shown to the requester).
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The approved grant's request number.
    pub id: u64,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct GrantRequestArgs {
    /// The backend to reach.
    #[arg(long)]
    pub backend: String,
    /// The `[[grant]]` of the policy to ask for.
    #[arg(long)]
    pub grant: String,
    /// For how long (e.g. 30m, 2h), at most the grant's `max`.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why: an incident or ticket, for the approvers and the audit trail.
    #[arg(long)]
    pub reason: String,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

async fn ask(socket: &std::path::Path, req: Request) -> Result<Response, String> {
    match control::request(socket, &req).await {
        Ok(Response::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map_or_else(|_| us.to_string(), |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
}

/// Recorded or requested text as a terminal may show it: a statement held
/// for approval cannot use `\r` or escape sequences to show its approver
/// another statement than the one they approve.
fn shown(s: &str) -> String {
    crate::audit::replay::escape_all(s)
}

fn describe(r: &Req) -> String {
    let state = match &r.state {
        State::Pending => {
            format!("pending until {} ({} of {} approvals)", time(r.deadline_us), r.approvals.len(), r.needed)
        }
        State::Approved { at_us } => match (&r.subject, r.until_us) {
            (Subject::Grant { .. }, Some(u)) => format!("approved {} — in force until {}", time(*at_us), time(u)),
            _ => format!("approved {}", time(*at_us)),
        },
        State::Denied { by, reason, at_us } => format!(
            "denied {} by {}{}",
            time(*at_us),
            shown(&by.label()),
            reason.as_deref().map(|r| format!(": {}", shown(r))).unwrap_or_default()
        ),
        other => other.name().replace('_', " "),
    };
    let mut out = format!(
        "#{}  {}  by {}  ({})\n    {}\n    approvers: {}",
        r.id,
        time(r.created_us),
        shown(&r.requester.label()),
        state,
        shown(&r.subject.describe()),
        shown(&r.approvers.to_string())
    );
    if let Some(reason) = &r.reason {
        out.push_str(&format!("\n    reason: {}", shown(reason)));
    }
    if !r.approvals.is_empty() {
        let who: Vec<String> = r.approvals.iter().map(|p| shown(&p.label())).collect();
        out.push_str(&format!("\n    approved by: {}", who.join(", ")));
    }
    out
}

pub async fn list(a: &RequestsArgs) -> ExitCode {
    match ask(&a.control_socket, Request::Requests { mine: a.mine }).await {
        Ok(Response::Requests { requests, context }) => {
            if a.json {
                for r in &requests {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            } else if requests.is_empty() {
                println!("no requests");
            } else {
                for r in &requests {
                    println!("{}", describe(r));
                    if let Some((_, before)) = context.iter().find(|(id, c)| *id == r.id && !c.is_empty()) {
                        println!("    the session's latest statements:");
                        for line in before {
                            println!("      {}", shown(line));
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok(_) => fail("unexpected answer from the agent"),
        Err(e) => fail(e),
    }
}

async fn decided(socket: &std::path::Path, req: Request) -> ExitCode {
    match ask(socket, req).await {
        Ok(Response::Request { request, event }) => {
            println!("{event}: {}", describe(&request));
            ExitCode::SUCCESS
        }
        Ok(_) => fail("unexpected answer from the agent"),
        Err(e) => fail(e),
    }
}

pub async fn approve(a: &DecideArgs) -> ExitCode {
    decided(&a.control_socket, Request::Decide { id: a.id, approve: true, reason: a.reason.clone() }).await
}

pub async fn deny(a: &DecideArgs) -> ExitCode {
    decided(&a.control_socket, Request::Decide { id: a.id, approve: false, reason: a.reason.clone() }).await
}

pub async fn revoke(a: &RevokeArgs) -> ExitCode {
    decided(&a.control_socket, Request::Revoke { id: a.id }).await
}

pub async fn request_grant(a: &GrantRequestArgs) -> ExitCode {
    let duration = match settings::parse_duration(&a.duration) {
        Ok(d) => d,
        Err(e) => return fail(format!("--for: {e}")),
    };
    let req = Request::RequestGrant {
        grant: a.grant.clone(),
        backend: a.backend.clone(),
        duration_s: duration.as_secs(),
        reason: a.reason.clone(),
    };
    decided(&a.control_socket, req).await
}
