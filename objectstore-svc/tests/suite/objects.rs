//! Values: round trips and ETags, compare-and-swap, put-if-absent, expiry, and 10 MiB values under racing writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use objectstore_svc::api::MAX_VALUE_BYTES;
use objectstore_svc::client::{Precondition, PutOptions};

use crate::harness::{Harness, status, until_past};

pub async fn round_trip_etags_delete_and_stats(h: Harness) {
    let s = &h.store;
    let first = h
        .client
        .put(s, "a/1", b"one".to_vec(), &PutOptions::default())
        .await
        .unwrap();
    assert!(first.created);
    let got = h.client.get(s, "a/1").await.unwrap().expect("present");
    assert_eq!(got.value.as_ref(), b"one");
    assert_eq!(got.etag, first.etag);
    let second = h
        .client
        .put(s, "a/1", b"uno!".to_vec(), &PutOptions::default())
        .await
        .unwrap();
    assert!(!second.created);
    assert_ne!(second.etag, first.etag);
    // Keys may hold any UTF-8, slashes, spaces and percent signs included.
    let odd = "dir/sub dir/ü%2F?#&=x";
    h.put(odd, b"odd").await;
    assert_eq!(h.value(odd).await.as_deref(), Some(b"odd".as_slice()));
    let stats = h.client.stats(s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (2, 7));

    assert!(
        h.client
            .delete(s, "a/1", &Precondition::None)
            .await
            .unwrap()
    );
    assert_eq!(h.value("a/1").await, None);
    assert!(
        !h.client
            .delete(s, "a/1", &Precondition::None)
            .await
            .unwrap()
    );
    assert_eq!(h.client.stats(s).await.unwrap().keys, 1);
}

pub async fn cas_increments_lose_no_update(h: Harness) {
    const WRITERS: usize = 32;
    const ATTEMPTS: usize = 6;
    let s = h.store.clone();
    h.put("counter", b"0").await;
    let successes = Arc::new(AtomicUsize::new(0));
    let tasks = (0..WRITERS).map(|_| {
        let (client, s, successes) = (h.client.clone(), s.clone(), successes.clone());
        tokio::spawn(async move {
            for _ in 0..ATTEMPTS {
                let cur = client.get(&s, "counter").await.unwrap().expect("counter");
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                let options = PutOptions {
                    precondition: Precondition::IfMatch(cur.etag),
                    ..PutOptions::default()
                };
                match client
                    .put(&s, "counter", (n + 1).to_string(), &options)
                    .await
                {
                    Ok(_) => {
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.is_precondition_failed() => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    });
    futures::future::try_join_all(tasks).await.unwrap();
    let total = successes.load(Ordering::SeqCst);
    assert!(total >= 1, "at least the first CAS of a round succeeds");
    let end = h.value("counter").await.unwrap();
    assert_eq!(std::str::from_utf8(&end).unwrap(), total.to_string());
}

pub async fn put_if_absent_has_one_winner(h: Harness) {
    let tasks = (0..32).map(|i| {
        let (client, s) = (h.client.clone(), h.store.clone());
        tokio::spawn(async move {
            (
                i,
                client
                    .put_if_absent(&s, "once", format!("w{i}"))
                    .await
                    .unwrap(),
            )
        })
    });
    let results = futures::future::try_join_all(tasks).await.unwrap();
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(
        h.value("once").await.unwrap(),
        format!("w{}", winners[0]).into_bytes()
    );
}

pub async fn expired_keys_vanish_at_once(h: Harness) {
    let s = &h.store;
    let short = PutOptions {
        ttl: Some(Duration::from_millis(300)),
        ..PutOptions::default()
    };
    let written = h
        .client
        .put(s, "brief", b"soon gone".to_vec(), &short)
        .await
        .unwrap();
    let at = written.expires_at.expect("an expiry");
    h.put("lasting", b"stays").await;
    until_past(at).await;
    // One read each, no retry: the backend may not have deleted it yet, the service hides it.
    assert_eq!(h.value("brief").await, None);
    let page = h.client.list(s, "", None, None).await.unwrap();
    let keys: Vec<_> = page.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["lasting"]);
    assert_eq!(h.client.stats(s).await.unwrap().keys, 1);
    let stale = PutOptions {
        precondition: Precondition::IfMatch(written.etag),
        ..PutOptions::default()
    };
    assert!(
        h.client
            .put(s, "brief", b"x".to_vec(), &stale)
            .await
            .unwrap_err()
            .is_precondition_failed()
    );
    assert!(
        h.client
            .put_if_absent(s, "brief", b"again".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(h.value("brief").await.as_deref(), Some(b"again".as_slice()));

    for bad in [Duration::ZERO, Duration::from_secs(31 * 24 * 3600)] {
        let options = PutOptions {
            ttl: Some(bad),
            ..PutOptions::default()
        };
        assert_eq!(
            status(h.client.put(s, "lasting", b"no".to_vec(), &options).await),
            400
        );
    }
    assert_eq!(
        h.value("lasting").await.as_deref(),
        Some(b"stays".as_slice())
    );
}

/// A 10 MiB value whose every byte is `fill`.
fn big(fill: u8) -> Vec<u8> {
    vec![fill; MAX_VALUE_BYTES]
}

pub async fn large_values_are_whole_under_racing_overwrites(h: Harness) {
    const READERS: usize = 2;
    const ROUNDS: u8 = 3;
    let s = h.store.clone();
    h.put("big", &big(b'a')).await;
    assert!(h.value("big").await.unwrap() == big(b'a'));

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers = (0..READERS).map(|_| {
        let (client, s, writing) = (h.client.clone(), s.clone(), writing.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while writing.load(Ordering::SeqCst) || reads == 0 {
                let v = client
                    .get(&s, "big")
                    .await
                    .unwrap()
                    .expect("always present")
                    .value;
                assert_eq!(v.len(), MAX_VALUE_BYTES, "a partial value");
                assert!(v.iter().all(|&b| b == v[0]), "a mix of two versions");
                reads += 1;
            }
            reads
        })
    });
    let readers: Vec<_> = readers.collect();
    for round in 1..=ROUNDS {
        h.put("big", &big(b'a' + round)).await;
    }
    writing.store(false, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() >= 1);
    }
    assert!(h.value("big").await.unwrap() == big(b'a' + ROUNDS));

    // One byte over: refused whole, and the old value stays.
    let over = vec![b'z'; MAX_VALUE_BYTES + 1];
    assert_eq!(
        status(h.client.put(&s, "big", over, &PutOptions::default()).await),
        413
    );
    assert!(h.value("big").await.unwrap() == big(b'a' + ROUNDS));
    let stats = h.client.stats(&s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (1, MAX_VALUE_BYTES as u64));
}
