use super::*;
use crate::catalog::tests::sample;

fn cfg() -> Config {
    Config {
        tables: vec![
            TrailTable { schema: "public".into(), name: "customers".into(), key: None },
            TrailTable { schema: "public".into(), name: "orders".into(), key: None },
        ],
        alerts: vec![],
    }
}

fn col(table_oid: u32, attnum: i16, type_oid: u32) -> ResultCol {
    ResultCol { table_oid, attnum, type_oid, binary: false, masked: false }
}

fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = i16::try_from(values.len()).unwrap().to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b
}

const K: HashKey = HashKey([3; 32]);

#[test]
fn keys_are_captured_by_table_oid_and_column_number() {
    let cat = sample();
    // email, id (customers), id (orders): the customers key is column 1, whatever it is called.
    let cols = [col(16401, 2, 25), col(16401, 1, 23), col(16400, 1, 23)];
    let mut cap = Capture::for_result(&cfg(), K, &cat, None, &[], &cols).unwrap();
    cap.row(&row(&[Some(b"a@x"), Some(b"42"), Some(b"7")]));
    cap.row(&row(&[Some(b"b@x"), Some(b"43"), None]));
    cap.row(&row(&[Some(b"c@x"), Some(b"42"), Some(b"7")]));
    let recs = cap.finish(crate::types::SessionId::new(), 3, 0);
    let (customers, set) = recs.iter().find(|(r, _)| r.table == "public.customers").unwrap();
    assert_eq!((customers.rows, customers.keys, customers.key.as_deref()), (3, 2, Some("id")));
    assert!(set.contains_int(42) && set.contains_int(43) && !set.contains_int(7));
    // orders has no primary key in the sample: a keyless read, with the reason.
    let (orders, _) = recs.iter().find(|(r, _)| r.table == "public.orders").unwrap();
    assert!(orders.key.is_none() && orders.keyless.as_deref().unwrap().contains("primary key"));
    assert_eq!(orders.rows, 3);
}

#[test]
fn a_renamed_or_computed_key_is_not_taken_for_the_key() {
    let cat = sample();
    // `SELECT id + 0 AS id FROM customers`: the server reports no table for it.
    let cols = [col(0, 0, 23)];
    let bound = crate::catalog::Bound {
        all: [Origin { relation: 16401, attnum: 1 }].into_iter().collect(),
        ..Default::default()
    };
    let mut cap = Capture::for_result(&cfg(), K, &cat, Some(&bound), &[], &cols).unwrap();
    cap.row(&row(&[Some(b"42")]));
    let recs = cap.finish(crate::types::SessionId::new(), 1, 0);
    assert_eq!(recs.len(), 1);
    assert!(recs[0].0.key.is_none(), "a keyless read: {:?}", recs[0].0);
    assert_eq!(recs[0].0.rows, 1);
    // A result that touches no trailed table has no capture.
    assert!(Capture::for_result(&cfg(), K, &cat, None, &[], &[col(16402, 1, 23)]).is_none());
}

#[test]
fn masked_and_binary_keys() {
    let cat = sample();
    let masked = [ResultCol { masked: true, ..col(16401, 1, 23) }];
    let mut cap = Capture::for_result(&cfg(), K, &cat, None, &[], &masked).unwrap();
    cap.row(&row(&[Some(b"42")]));
    let (rec, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(rec.hashed && rec.key_masked && set.ints.is_empty() && set.contains_hash(K.hash(b"42")));
    let binary = [ResultCol { binary: true, ..col(16401, 1, 20) }];
    let mut cap = Capture::for_result(&cfg(), K, &cat, None, &[], &binary).unwrap();
    cap.row(&row(&[Some(&42i64.to_be_bytes())]));
    cap.row(&row(&[Some(&[1, 2, 3])]));
    let (_, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(set.contains_int(42));
    assert_eq!(set.len(), 2, "a malformed binary value is kept as a hash, not dropped");
    let odd = [ResultCol { binary: true, ..col(16401, 1, 1700) }];
    let cap = Capture::for_result(&cfg(), K, &cat, None, &[], &odd).unwrap();
    let (rec, _) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(rec.keyless.unwrap().contains("binary"));
}

#[test]
fn copy_rows_of_a_table() {
    let cat = sample();
    let bound = crate::catalog::Bound {
        expanded: vec![
            [Origin { relation: 16401, attnum: 1 }].into_iter().collect(),
            [Origin { relation: 16401, attnum: 2 }].into_iter().collect(),
        ],
        ..Default::default()
    };
    let csv = crate::sql::lineage::CopyFormat {
        csv: true,
        binary: false,
        delimiter: b',',
        header: true,
        unusual: false,
        relation: true,
    };
    let mut cap = Capture::for_copy(&cfg(), K, &cat, &bound, &[16401], 2, &csv, &[false, false]).unwrap();
    cap.copy_row(b"id,email\n");
    cap.copy_row(b"\"42\",\"a,b\"\n");
    cap.copy_row(b"43,x\r\n");
    let (rec, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert_eq!((rec.rows, rec.keys), (2, 2));
    assert!(set.contains_int(42) && set.contains_int(43));
    let query = crate::sql::lineage::CopyFormat { relation: false, ..csv };
    let cap = Capture::for_copy(&cfg(), K, &cat, &bound, &[16401], 2, &query, &[false, false]).unwrap();
    let (rec, _) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(rec.key.is_none() && rec.keyless.unwrap().contains("query"));
}

fn load(text: &str) -> Result<crate::policy::Policy, String> {
    crate::policy::load::load(&[crate::policy::diag::Source { path: "t.toml".into(), text: text.into() }])
        .map_err(|d| d.to_string())
}

#[test]
fn policy_trail_and_alert_sections() {
    let ok = load(
        r#"
[[trail]]
table = "public.customers"

[[trail]]
table = "billing.invoices"
key = "number"

[[alert]]
name = "bulk"
table = "customers"
window = "30d"
threshold = 5000

[[alert]]
name = "vip"
table = "public.customers"
keys = ["42"]
action = "cut"
"#,
    )
    .unwrap();
    assert_eq!(ok.trail.tables.len(), 2);
    assert_eq!(ok.trail.tables[1].key.as_deref(), Some("number"));
    assert_eq!(ok.trail.alerts[0].window, Duration::from_secs(30 * 86_400));
    assert_eq!((ok.trail.alerts[1].action, ok.trail.alerts[1].table.as_str()), (AlertAction::Cut, "public.customers"));
    let held =
        load("[[trail]]\ntable = \"x\"\n[[alert]]\nname = \"a\"\ntable = \"x\"\nkeys = [\"1\"]\naction = \"hold\"\n")
            .unwrap();
    assert_eq!(held.trail.alerts[0].action, AlertAction::Hold, "hold loads (approvals exist)");
    for (text, says) in [
        ("[[alert]]\nname = \"a\"\ntable = \"x\"\nthreshold = 1\nwindow = \"1d\"\n", "no [[trail]]"),
        ("[[trail]]\ntable = \"x\"\n[[alert]]\nname = \"a\"\ntable = \"x\"\nthreshold = 1\n", "no window"),
        (
            "[[trail]]\ntable = \"x\"\n[[alert]]\nname = \"a\"\ntable = \"x\"\nthreshold = 1\nkeys = [\"1\"]\nwindow = \"1d\"\n",
            "exactly one",
        ),
        (
            "[[trail]]\ntable = \"x\"\n[[alert]]\nname = \"a\"\ntable = \"x\"\nkeys = [\"1\"]\naction = \"page\"\n",
            "unknown variant",
        ),
        ("[[trail]]\ntable = \"x\"\n[[trail]]\ntable = \"public.x\"\n", "trailed twice"),
        ("[[trail]]\ntable = \"a.b.c\"\n", "not a table name"),
        ("[[trail]]\ntable = \"x\"\nkeys = \"id\"\n", "unknown field"),
    ] {
        let e = load(text).unwrap_err();
        assert!(e.contains(says) && e.contains("t.toml:"), "{text}: {e}");
    }
}

#[test]
fn the_store_answers_and_prunes() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::audit::SCHEMA).unwrap();
    let key = store::hash_key(&conn).unwrap();
    assert_eq!(store::hash_key(&conn).unwrap(), key, "made once");
    let session = crate::types::SessionId::new();
    let cat = sample();
    let tx = conn.transaction().unwrap();
    for (seq, (lo, hi)) in [(1u64, (40u64, 45u64)), (2, (100_000, 100_010)), (3, (44, 50))] {
        let mut cap = Capture::for_result(&cfg(), key, &cat, None, &[], &[col(16401, 1, 23)]).unwrap();
        for k in lo..hi {
            cap.row(&row(&[Some(k.to_string().as_bytes())]));
        }
        let (rec, set) = cap.finish(session, seq, i64::try_from(seq).unwrap() * 1000).remove(0);
        let data = set.encode();
        tx.execute(
            "INSERT INTO events (seq, time_us, session, kind, content_hash, body, data, prev_hash, hash)
             VALUES (?1, 0, ?2, 'trail', x'', x'', ?3, x'', x'')",
            rusqlite::params![i64::try_from(seq).unwrap(), session.to_string(), data],
        )
        .unwrap();
        store::index(&tx, seq, &rec, &data).unwrap();
    }
    tx.commit().unwrap();
    let saw = |conn: &rusqlite::Connection, k: &str, since| {
        store::who_saw_in(conn, "customers", k, since).unwrap().rows.iter().map(|r| r.statement).collect::<Vec<_>>()
    };
    assert_eq!(saw(&conn, "44", None), vec![1, 3]);
    assert_eq!(saw(&conn, "100005", None), vec![2]);
    assert_eq!(saw(&conn, "45", None), vec![3]);
    assert_eq!(saw(&conn, "44", Some(2500)), vec![3], "--since");
    assert!(saw(&conn, "zoe", None).is_empty());
    let report = store::access_report_in(&conn, "public.customers", store::ReportBy::User, None).unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!((report[0].distinct_rows, report[0].statements), (5 + 10 + 6 - 1, 3));
    // Retention: records pruned at or below seq 2 leave the index too.
    let tx = conn.transaction().unwrap();
    store::prune(&tx, 2).unwrap();
    tx.commit().unwrap();
    assert_eq!(saw(&conn, "44", None), vec![3]);
    assert!(saw(&conn, "100005", None).is_empty());
}

#[test]
fn a_composite_primary_key_is_hashed_as_one_tuple() {
    let cat = sample();
    // hr.salaries: primary key (emp, amount).
    let cfg =
        Config { tables: vec![TrailTable { schema: "hr".into(), name: "salaries".into(), key: None }], alerts: vec![] };
    // Columns in another order than the key's: the tuple is still (emp, amount).
    let cols = [col(16402, 2, 23), col(16402, 1, 23)];
    let mut cap = Capture::for_result(&cfg, K, &cat, None, &[], &cols).unwrap();
    cap.row(&row(&[Some(b"100"), Some(b"7")]));
    cap.row(&row(&[Some(b"5"), Some(b"8")]));
    cap.row(&row(&[None, Some(b"9")]));
    cap.row(&row(&[Some(b"100"), Some(b"7")]));
    let (rec, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert_eq!((rec.key.as_deref(), rec.rows, rec.keys, rec.hashed), (Some("emp,amount"), 4, 2, true), "{rec:?}");
    assert!(set.ints.is_empty(), "a tuple is never an integer key");
    assert!(set.contains_hash(K.hash(b"7,100")) && set.contains_hash(K.hash(b"8,5")));
    assert!(!set.contains_hash(K.hash(b"9")), "a NULL column identifies no row");

    // Binary values are read as PostgreSQL prints them.
    let binary = [ResultCol { binary: true, ..col(16402, 1, 23) }, ResultCol { binary: true, ..col(16402, 2, 20) }];
    let mut cap = Capture::for_result(&cfg, K, &cat, None, &[], &binary).unwrap();
    cap.row(&row(&[Some(&7i32.to_be_bytes()), Some(&(-3i64).to_be_bytes())]));
    let (_, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(set.contains_hash(K.hash(b"7,-3")));

    // Part of the key only: a keyless read.
    let cap = Capture::for_result(&cfg, K, &cat, None, &[], &[col(16402, 1, 23)]).unwrap();
    let (rec, _) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert!(rec.key.is_none() && rec.keyless.unwrap().contains("every column of the key"));

    // COPY hr.salaries TO: the fields are the stored columns.
    let bound = crate::catalog::Bound {
        expanded: vec![
            [Origin { relation: 16402, attnum: 1 }].into_iter().collect(),
            [Origin { relation: 16402, attnum: 2 }].into_iter().collect(),
        ],
        ..Default::default()
    };
    let text = crate::sql::lineage::CopyFormat {
        csv: false,
        binary: false,
        delimiter: b'\t',
        header: false,
        unusual: false,
        relation: true,
    };
    let mut cap = Capture::for_copy(&cfg, K, &cat, &bound, &[16402], 2, &text, &[false, false]).unwrap();
    cap.copy_row(b"7\t100\n");
    cap.copy_row(b"8\t\\N\n");
    let (rec, set) = cap.finish(crate::types::SessionId::new(), 1, 0).remove(0);
    assert_eq!((rec.rows, rec.keys), (2, 1));
    assert!(set.contains_hash(K.hash(b"7,100")));

    // Separators inside a value are escaped, so two tuples never print alike.
    assert_eq!(tuple_text(&[&b"a,b"[..], &b"c"[..]]), b"a\\,b,c".to_vec());
    assert_ne!(tuple_text(&[&b"a,b"[..], &b"c"[..]]), tuple_text(&[&b"a"[..], &b"b,c"[..]]));
    assert_eq!(tuple_text(&[&b"x\\"[..], &b"y"[..]]), b"x\\\\,y".to_vec());
}

#[test]
fn a_partition_read_is_its_parents_read_with_the_key_by_name() {
    let cat = sample();
    // customers_p1 (16404) is a partition of customers: its id is column 2 there, 1 in customers.
    let cols = [col(16404, 1, 25), col(16404, 2, 23)];
    let mut cap = Capture::for_result(&cfg(), K, &cat, None, &[], &cols).unwrap();
    cap.row(&row(&[Some(b"a@x"), Some(b"42")]));
    let recs = cap.finish(crate::types::SessionId::new(), 1, 0);
    let (customers, set) = recs.iter().find(|(r, _)| r.table == "public.customers").unwrap();
    assert_eq!((customers.rows, customers.keys, customers.key.as_deref()), (1, 1, Some("id")));
    assert!(set.contains_int(42));
}
