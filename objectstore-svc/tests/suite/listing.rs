//! Listing: paging through 10,000 keys with none missed or repeated.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use objectstore_svc::client::PutOptions;

use crate::harness::Harness;

pub async fn listing_pages_through_ten_thousand_keys(h: Harness) {
    const KEYS: usize = 10_000;
    let s = h.store.clone();
    let client = h.client.clone();
    futures::stream::iter(0..KEYS)
        .map(|i| {
            let (client, s) = (client.clone(), s.clone());
            async move {
                client
                    .put(
                        &s,
                        &format!("k/{i:05}"),
                        i.to_string(),
                        &PutOptions::default(),
                    )
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    for other in ["j", "k", "l/1", "kz"] {
        h.put(other, b"x").await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = h
            .client
            .list(&s, "k/", cursor.as_deref(), None)
            .await
            .unwrap();
        seen.extend(page.keys.into_iter().map(|k| k.key));
        pages += 1;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages <= KEYS, "listing does not end");
    }
    let expected: Vec<_> = (0..KEYS).map(|i| format!("k/{i:05}")).collect();
    assert_eq!(seen.len(), KEYS, "missed or repeated keys");
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), KEYS);

    // Small pages with a prefix that is itself a key.
    let mut small = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .client
            .list(&s, "k", cursor.as_deref(), Some(3))
            .await
            .unwrap();
        assert!(page.keys.len() <= 3);
        small.extend(page.keys.into_iter().map(|k| k.key));
        cursor = page.cursor;
        if cursor.is_none() || small.len() > 6 {
            break;
        }
    }
    assert_eq!(&small[..3], ["k", "k/00000", "k/00001"]);
    assert_eq!(h.client.stats(&s).await.unwrap().keys, KEYS as u64 + 4);
}
