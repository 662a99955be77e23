//! `cargo xtask fuzz --secs N`: every fuzz target for N seconds, each
//! started from its committed seeds (`fuzz/seeds/<target>/`) with its
//! dictionary (`fuzz/dict/<target>.dict`), growing a working corpus in
//! `fuzz/corpus/<target>/` (not committed). Installs the nightly toolchain
//! and cargo-fuzz when they are missing. Prints, per target, the runs, runs
//! per second, coverage and features after the seeds and at the end, the
//! corpus, peak RSS, and any crash with its reproducer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Only this target (repeatable); all by default.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Parallel libFuzzer jobs per target (each runs for --secs).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
}

/// What libFuzzer reported for one target.
#[derive(Debug, Default)]
struct Report {
    runs: u64,
    execs_per_sec: u64,
    seed_cov: Option<u64>,
    seed_ft: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: String,
    new_units: u64,
    peak_rss_mb: u64,
    crash: Option<String>,
}

pub fn fuzz(a: &FuzzArgs) -> Result<()> {
    let dir = workspace_root().join("fuzz");
    ensure_tools()?;
    let all = targets(&dir)?;
    let chosen: Vec<String> = if a.targets.is_empty() {
        all
    } else {
        for t in &a.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; targets: {}", all.join(", "));
            }
        }
        a.targets.clone()
    };
    // One build for every target, so each target's seconds are fuzzing.
    run(Command::new("cargo").current_dir(&dir).args(["+nightly", "fuzz", "build"]))?;
    let mut reports = BTreeMap::new();
    for t in &chosen {
        let r = fuzz_one(&dir, t, a.secs, a.jobs)?;
        reports.insert(t.clone(), r);
    }
    println!();
    println!(
        "{:<14} {:>12} {:>9} {:>17} {:>19} {:>16} {:>8} {:>8}  crash",
        "target", "runs", "exec/s", "cov seeds→end", "features seeds→end", "corpus", "new", "rss MB"
    );
    let mut crashed = Vec::new();
    for (t, r) in &reports {
        let pair = |a: Option<u64>, b: Option<u64>| {
            format!("{}→{}", a.map_or("?".into(), |v| v.to_string()), b.map_or("?".into(), |v| v.to_string()))
        };
        println!(
            "{t:<14} {:>12} {:>9} {:>17} {:>19} {:>16} {:>8} {:>8}  {}",
            r.runs,
            r.execs_per_sec,
            pair(r.seed_cov, r.cov),
            pair(r.seed_ft, r.ft),
            r.corpus,
            r.new_units,
            r.peak_rss_mb,
            r.crash.as_deref().unwrap_or("none")
        );
        if r.crash.is_some() {
            crashed.push(t.as_str());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (reproduce with `cargo +nightly fuzz run <target> <artifact>` in fuzz/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Nightly and cargo-fuzz, installed through rustup and cargo when missing.
fn ensure_tools() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if output(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_none() {
        eprintln!("cargo-fuzz is missing: installing it");
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn targets(dir: &Path) -> Result<Vec<String>> {
    let list = output(Command::new("cargo").current_dir(dir).args(["+nightly", "fuzz", "list"]))
        .context("`cargo fuzz list` failed")?;
    let targets: Vec<String> = list.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    if targets.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(targets)
}

fn fuzz_one(dir: &Path, target: &str, secs: u64, jobs: u32) -> Result<Report> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let dict = dir.join("dict").join(format!("{target}.dict"));
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    if !seeds.is_dir() {
        bail!("fuzz target {target} has no seeds in {}", seeds.display());
    }
    if !dict.is_file() {
        bail!("fuzz target {target} has no dictionary at {}", dict.display());
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).args(["+nightly", "fuzz", "run", target]).arg(&corpus).arg(&seeds).arg("--").args([
        format!("-max_total_time={secs}"),
        format!("-dict={}", dict.display()),
        "-print_final_stats=1".into(),
        "-rss_limit_mb=4096".into(),
        "-timeout=30".into(),
    ]);
    if jobs > 1 {
        cmd.args([format!("-jobs={jobs}"), format!("-workers={jobs}")]);
    }
    eprintln!("+ fuzzing {target} for {secs} s");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running the fuzzer for {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    std::fs::write(dir.join(format!("corpus/{target}.log")), log.as_bytes()).ok();
    let mut r = parse(&log);
    if !out.status.success() && r.crash.is_none() {
        r.crash = Some(format!("fuzzer exited with {} (log: fuzz/corpus/{target}.log)", out.status));
    }
    Ok(r)
}

/// Reads libFuzzer's status lines (`#N INITED cov: … ft: … corp: …`) and
/// final stats (`stat::number_of_executed_units: …`).
fn parse(log: &str) -> Report {
    let mut r = Report::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        rest.split_whitespace().next()?.trim_end_matches("Mb").parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') {
            if line.contains("INITED") {
                r.seed_cov = field(line, "cov: ");
                r.seed_ft = field(line, "ft: ");
            }
            if let Some(c) = field(line, "cov: ") {
                r.cov = Some(c);
            }
            if let Some(f) = field(line, "ft: ") {
                r.ft = Some(f);
            }
            if let Some(c) = line.split("corp: ").nth(1).and_then(|s| s.split_whitespace().next()) {
                r.corpus = c.to_owned();
            }
        }
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units: ") {
            r.runs = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::average_exec_per_sec: ") {
            r.execs_per_sec = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::new_units_added: ") {
            r.new_units = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::peak_rss_mb: ") {
            r.peak_rss_mb = v.trim().parse().unwrap_or(0);
        }
        if line.contains("Test unit written to ") {
            r.crash = line.split("Test unit written to ").nth(1).map(|p| p.trim().to_owned());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_and_final_stats() {
        let log = "INFO: Seed: 1\n\
                   #312\tINITED cov: 1502 ft: 4210 corp: 290/31Kb exec/s: 0 rss: 61Mb\n\
                   #65536\tpulse  cov: 1630 ft: 5012 corp: 402/52Kb lim: 4096 exec/s: 2184 rss: 140Mb\n\
                   #90210\tDONE   cov: 1651 ft: 5102 corp: 411/55Kb lim: 4096 exec/s: 1503 rss: 150Mb\n\
                   stat::number_of_executed_units: 90210\n\
                   stat::average_exec_per_sec:     1503\n\
                   stat::new_units_added:          121\n\
                   stat::peak_rss_mb:              150\n";
        let r = parse(log);
        assert_eq!((r.seed_cov, r.seed_ft, r.cov, r.ft), (Some(1502), Some(4210), Some(1651), Some(5102)));
        assert_eq!((r.runs, r.execs_per_sec, r.new_units, r.peak_rss_mb), (90210, 1503, 121, 150));
        assert_eq!(r.corpus, "411/55Kb");
        assert!(r.crash.is_none());
        let crash = parse("==1== ERROR: libFuzzer: deadly signal\nTest unit written to ./artifacts/x/crash-abc\n");
        assert_eq!(crash.crash.as_deref(), Some("./artifacts/x/crash-abc"));
    }
}
