//! The tokio-postgres client of the end-to-end driver matrix: a prepared
//! statement executed again and again without a new Describe (tokio-postgres
//! describes once, at prepare), and a pipeline of queries in flight at once.
//! Prints one line per row, `label|col|col…` (NULL as `NULL`), then `done`.
//!
//! Usage: `gatehouse-pgclient HOST PORT QUERY…` where each QUERY is
//! `label=repeat=sql` run as a prepared statement with `$1 = 1` when the
//! text has `$1`; the queries whose label starts with `p` run together as
//! one pipeline after the others.
#![expect(clippy::print_stdout, reason = "the test reads what this client received from its output")]

use futures_util::future::try_join_all;
use tokio_postgres::{Client, NoTls, Row};

fn cell(row: &Row, i: usize) -> String {
    if let Ok(v) = row.try_get::<_, Option<String>>(i) {
        return v.unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = row.try_get::<_, Option<i32>>(i) {
        return v.map_or_else(|| "NULL".into(), |v| v.to_string());
    }
    if let Ok(v) = row.try_get::<_, Option<i64>>(i) {
        return v.map_or_else(|| "NULL".into(), |v| v.to_string());
    }
    "?".into()
}

fn print(label: &str, rows: &[Row]) {
    for r in rows {
        let cols: Vec<String> = (0..r.len()).map(|i| cell(r, i)).collect();
        println!("{label}|{}", cols.join("|"));
    }
}

async fn run(client: &Client, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
    let stmt = client.prepare(sql).await?;
    if sql.contains("$1") { client.query(&stmt, &[&1i32]).await } else { client.query(&stmt, &[]).await }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(host), Some(port)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: gatehouse-pgclient HOST PORT label=repeat=sql…");
        std::process::exit(2);
    };
    let conf = format!("host={host} port={port} user=driver dbname=appdb");
    let (client, conn) = match tokio_postgres::connect(&conf, NoTls).await {
        Ok(c) => c,
        Err(e) => {
            println!("error|connect: {e}");
            std::process::exit(1);
        }
    };
    let driver = tokio::spawn(conn);
    let mut queries = Vec::new();
    for q in args.iter().skip(3) {
        let mut parts = q.splitn(3, '=');
        let (Some(label), Some(repeat), Some(sql)) = (parts.next(), parts.next(), parts.next()) else { continue };
        queries.push((label.to_owned(), repeat.parse::<usize>().unwrap_or(1), sql.to_owned()));
    }
    let result: Result<(), tokio_postgres::Error> = async {
        for (label, repeat, sql) in queries.iter().filter(|q| !q.0.starts_with('p')) {
            // Prepared once (Parse + Describe), executed `repeat` times (Bind + Execute only).
            let stmt = client.prepare(sql).await?;
            for _ in 0..*repeat {
                let rows = if sql.contains("$1") {
                    client.query(&stmt, &[&1i32]).await?
                } else {
                    client.query(&stmt, &[]).await?
                };
                print(label, &rows);
            }
        }
        let pipelined: Vec<&(String, usize, String)> = queries.iter().filter(|q| q.0.starts_with('p')).collect();
        let all = try_join_all(pipelined.iter().map(|(_, _, sql)| run(&client, sql))).await?;
        for ((label, _, _), rows) in pipelined.iter().zip(all) {
            print(label, &rows);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        println!("error|{e}");
        std::process::exit(1);
    }
    drop(client);
    let _ = driver.await;
    println!("done");
}
