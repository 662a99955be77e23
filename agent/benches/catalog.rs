//! What catalog awareness costs per statement (`cargo xtask bench policy`).
//! A measurement, not a test. Builds a catalog the size of a large
//! application database (2,000 tables of 12 columns, 400 views, 600 user
//! functions) from rows shaped like the answer to the catalog query, then
//! times a statement-cache hit with and without resolving its names against
//! the catalog, and the catalog build itself (what a refresh costs the
//! loader task, off the data path).
#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "a benchmark harness over its own data")]

use std::hint::black_box;
use std::time::Instant;

use gatehouse::catalog::load::{Results, Row, build};
use gatehouse::catalog::{SessionNames, resolve};
use gatehouse::sql::{Classifier, ParseOptions, QueryLimits};

const TABLES: u32 = 2_000;
const VIEWS: u32 = 400;
const COLUMNS: u32 = 12;
const FUNCTIONS: u32 = 600;

fn row(values: &[&str]) -> Row {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

fn results() -> Results {
    let session = vec![row(&["gh_app", "\"$user\", public", "appdb"])];
    let functions = (0..FUNCTIONS).map(|i| row(&["public", &format!("app_fn_{i}"), "1"])).collect();
    let mut relations = Vec::new();
    let mut columns = Vec::new();
    let mut view_deps = Vec::new();
    let mut view_defs = Vec::new();
    for i in 0..TABLES + VIEWS {
        let oid = 20_000 + i;
        let (schema, kind) =
            if i < TABLES { (["public", "sales", "hr"][(i % 3) as usize], "r") } else { ("reporting", "v") };
        let name = if i == 0 {
            "orders".to_owned()
        } else if i == 1 {
            "customers".to_owned()
        } else {
            format!("t{i}")
        };
        relations.push(row(&[&oid.to_string(), schema, &name, kind]));
        let cols = if i == 0 {
            vec!["id", "customer_id"]
        } else if i == 1 {
            vec!["id", "email"]
        } else {
            vec![]
        };
        for c in 1..=COLUMNS {
            let col = cols.get((c - 1) as usize).map_or_else(|| format!("c{c}"), |s| (*s).to_owned());
            columns.push(row(&[&oid.to_string(), &c.to_string(), &col, "23"]));
        }
        if i >= TABLES {
            let base = 20_000 + (i - TABLES) * 3;
            view_deps.push(row(&[&oid.to_string(), &base.to_string()]));
            view_defs.push(row(&[&oid.to_string(), &format!(" SELECT c1 FROM public.t{};", base - 20_000)]));
        }
    }
    vec![session, vec![], functions, vec![], vec![], vec![], relations, columns, view_deps, view_defs]
}

fn time(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn main() {
    let rows = results();
    let started = Instant::now();
    let catalog = build(&rows).expect("the synthetic catalog builds");
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(catalog.relation_count(), (TABLES + VIEWS) as usize, "every relation is in the catalog");
    let build_ms = {
        let t = Instant::now();
        for _ in 0..5 {
            black_box(build(&rows).expect("builds"));
        }
        (t.elapsed().as_secs_f64() * 1e3 / 5.0).min(build_ms)
    };
    let session = SessionNames::default();
    let cache = Classifier::default();
    let limits = QueryLimits::default();
    let queries = [
        ("point_select", "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 42"),
        ("view_read", "SELECT c1 FROM reporting.t2100 WHERE c1 > 10 ORDER BY 1 LIMIT 50"),
        ("update", "UPDATE sales.t5 SET c2 = app_fn_7(c3) WHERE c1 = 9"),
    ];
    println!(
        "catalog_build      {:>8.2} ms for {} relations, {} columns",
        build_ms,
        TABLES + VIEWS,
        (TABLES + VIEWS) * COLUMNS
    );
    for (name, sql) in queries {
        cache.classify_blocking(sql, ParseOptions::default(), &limits).expect("parses");
        let hit = time(200_000, || {
            black_box(cache.classify_blocking(black_box(sql), ParseOptions::default(), &limits).expect("parses"));
        });
        let resolved = time(200_000, || {
            let mut v = cache.classify_blocking(black_box(sql), ParseOptions::default(), &limits).expect("parses");
            for s in &mut v {
                resolve(s, &catalog, &session);
            }
            black_box(v);
        });
        println!(
            "{name:<18} cache hit {hit:>7.0} ns   cache hit + catalog resolve {resolved:>7.0} ns   resolve adds {:>6.0} ns",
            resolved - hit
        );
        println!("ratio {name} hit_and_resolve/hit = {:.2}", resolved / hit);
    }
}
