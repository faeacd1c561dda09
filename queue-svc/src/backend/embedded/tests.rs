//! Forgetting an app: its rows go page by page, and no other app loses one.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};

use super::purge::purge_page;
use super::{BODIES, Embedded, MESSAGES, QUEUES, SCHEDULE};

#[test]
fn an_app_is_purged_page_by_page_and_no_other_app_loses_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("q.redb"), Duration::from_secs(60)).unwrap();
    let apps = ["shop", "shop--x1", "shop-1", "sho"];
    let txn = store.db.begin_write().unwrap();
    {
        let mut queues = txn.open_table(QUEUES).unwrap();
        let mut messages = txn.open_table(MESSAGES).unwrap();
        let mut bodies = txn.open_table(BODIES).unwrap();
        let mut schedule = txn.open_table(SCHEDULE).unwrap();
        for app in apps {
            for part in ["orders", "orders/dlq", "z"] {
                let pk = format!("{app}/{part}");
                if !part.ends_with("/dlq") {
                    queues.insert(pk.as_str(), "{}").unwrap();
                }
                for id in 0..4u128 {
                    messages.insert((pk.as_str(), id), "{}").unwrap();
                    bodies.insert((pk.as_str(), id), b"b".as_slice()).unwrap();
                    schedule.insert((pk.as_str(), 7, id), ()).unwrap();
                }
            }
        }
    }
    txn.commit().unwrap();

    let mut pages = Vec::new();
    loop {
        let txn = store.db.begin_write().unwrap();
        let removed = purge_page(&txn, "shop/", 10).unwrap();
        txn.commit().unwrap();
        if removed == 0 {
            break;
        }
        pages.push(removed);
    }
    // Three parts of four messages, each in three tables; two queues.
    assert_eq!(pages, [10, 10, 10, 8]);
    let txn = store.db.begin_read().unwrap();
    let mut left = std::collections::BTreeMap::<String, usize>::new();
    let mut count = |pk: &str| {
        let app = pk.split_once('/').map_or(pk, |(app, _)| app);
        *left.entry(app.to_string()).or_default() += 1;
    };
    for e in txn.open_table(QUEUES).unwrap().iter().unwrap() {
        count(e.unwrap().0.value());
    }
    for e in txn.open_table(MESSAGES).unwrap().iter().unwrap() {
        count(e.unwrap().0.value().0);
    }
    for e in txn.open_table(BODIES).unwrap().iter().unwrap() {
        count(e.unwrap().0.value().0);
    }
    for e in txn.open_table(SCHEDULE).unwrap().iter().unwrap() {
        count(e.unwrap().0.value().0);
    }
    let others: std::collections::BTreeMap<String, usize> = ["sho", "shop--x1", "shop-1"]
        .map(|a| (a.to_string(), 38))
        .into();
    assert_eq!(left, others);
}
