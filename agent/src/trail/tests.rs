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
