//! `gatehouse who-saw` and `gatehouse access-report`: the row-level trail
//! (`crate::trail`), asked of the running agent (root and the auditor group
//! only) or, as root, of the store directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::audit::ask_or_read;
use super::{fail, fmt_time, parse_time, print_table};
use crate::control::{Request, Response};
use crate::settings;
use crate::trail::store::{self, ReportBy};

#[derive(Debug, Args)]
pub struct WhoSawArgs {
    /// The trailed table: `schema.table`, or `table` in any schema.
    #[arg(long)]
    pub table: String,
    /// The row's key as PostgreSQL prints it (`42`, `zoe@example.com`).
    #[arg(long)]
    pub key: String,
    /// Only reads at or after this time (RFC 3339, or a duration ago: 90d).
    #[arg(long)]
    pub since: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read this audit database directly (root) instead of asking the running agent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum By {
    User,
    Day,
}

#[derive(Debug, Args)]
pub struct AccessReportArgs {
    /// The trailed table: `schema.table`, or `table` in any schema.
    #[arg(long)]
    pub table: String,
    /// Group by user (the whole period) or by user and day (UTC).
    #[arg(long, value_enum, default_value_t = By::User)]
    pub by: By,
    /// Only reads at or after this time (RFC 3339, or a duration ago: 30d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

pub(super) async fn who_saw(a: &WhoSawArgs) -> ExitCode {
    let since_us = match a.since.as_deref().map(parse_time).transpose() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (table, key) = (a.table.clone(), a.key.clone());
    let answer = ask_or_read(
        &a.control_socket,
        a.db.as_deref(),
        Request::WhoSaw { table: table.clone(), key: key.clone(), since_us },
        |r| match r {
            Response::WhoSaw(w) => Some(Ok(*w)),
            _ => None,
        },
        |db| store::who_saw(db, &table, &key, since_us),
    )
    .await;
    let w = match answer {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if a.json {
        for r in &w.rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        let rows: Vec<[String; 8]> = w
            .rows
            .iter()
            .map(|r| {
                let who = match (&r.user, &r.oidc_email.as_ref().or(r.oidc_subject.as_ref())) {
                    (Some(u), Some(id)) => format!("{u} ({id})"),
                    (Some(u), None) => u.clone(),
                    (None, _) => r.uid.map_or_else(|| "?".into(), |u| format!("#{u}")),
                };
                let text: String = r.text.as_deref().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
                let text = if text.chars().count() > 60 {
                    format!("{}…", text.chars().take(59).collect::<String>())
                } else {
                    text
                };
                [
                    fmt_time(r.time_us),
                    who,
                    format!(
                        "{} {}",
                        r.pid.map(|p| p.to_string()).unwrap_or_default(),
                        r.comm.clone().unwrap_or_default()
                    ),
                    r.session.chars().take(13).collect(),
                    r.statement.to_string(),
                    if r.masked { "masked".into() } else { "clear".into() },
                    r.table.clone(),
                    text,
                ]
            })
            .collect();
        print_table(&["TIME", "USER", "PROCESS", "SESSION", "STMT", "VALUES", "TABLE", "STATEMENT"], &rows);
    }
    if w.keyless_reads > 0 {
        eprintln!(
            "note: {} keyless read(s) of the table in the period (no key returned: aggregates, filters, expressions); \
             they may have shown this row; see `gatehouse access-report`",
            w.keyless_reads
        );
    }
    ExitCode::SUCCESS
}

pub(super) async fn access_report(a: &AccessReportArgs) -> ExitCode {
    let since_us = match a.since.as_deref().map(parse_time).transpose() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let by = match a.by {
        By::User => ReportBy::User,
        By::Day => ReportBy::Day,
    };
    let table = a.table.clone();
    let answer = ask_or_read(
        &a.control_socket,
        a.db.as_deref(),
        Request::AccessReport { table: table.clone(), by, since_us },
        |r| match r {
            Response::AccessReport { rows } => Some(Ok(rows)),
            _ => None,
        },
        |db| store::access_report(db, &table, by, since_us),
    )
    .await;
    let rows = match answer {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.table.clone(),
                r.user.clone(),
                r.day.clone().unwrap_or_else(|| "-".into()),
                r.distinct_rows.to_string(),
                r.statements.to_string(),
                r.sessions.to_string(),
                format!("{} ({} rows)", r.keyless_reads, r.keyless_rows),
                format!("{} … {}", fmt_time(r.first_us), fmt_time(r.last_us)),
            ]
        })
        .collect();
    print_table(
        &["TABLE", "USER", "DAY", "DISTINCT ROWS", "STATEMENTS", "SESSIONS", "KEYLESS READS", "PERIOD"],
        &cells,
    );
    ExitCode::SUCCESS
}
