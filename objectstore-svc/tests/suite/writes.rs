//! Several puts in one call (`POST /v1/apps/{app}/writes`), through the
//! client's writer and raw: each write is answered as if it came alone, and
//! a hostile batch is refused whole with nothing written.

use std::time::Duration;

use common::token::Scope;
use objectstore_svc::api::{MAX_WRITES, MAX_WRITES_BYTES};
use objectstore_svc::client::{Precondition, PutOptions};
use serde_json::json;

use crate::harness::{APP, Harness};
use objectstore_svc::client::{ClientError, PutResult};

/// The status a put answered: 201 or 200 when it wrote, else the refusal's.
fn status(result: Result<PutResult, ClientError>) -> u16 {
    match result {
        Ok(w) if w.created => 201,
        Ok(_) => 200,
        Err(e) => e.status().unwrap_or_else(|| panic!("no status: {e}")),
    }
}

pub async fn shared_writes_are_answered_each_as_if_alone(h: Harness) {
    let s = &h.store;
    let writer = h.client.writer();
    let first = h.put("cas", b"0").await;
    // At once: 30 plain puts, 16 racing to create one key, and 4 compare-and-
    // sets of which one holds the right ETag.
    let plain = (0..30).map(|i| {
        let (w, s) = (writer.clone(), s.clone());
        tokio::spawn(async move {
            let put = w
                .put(
                    &s,
                    &format!("k{i}"),
                    format!("v{i}"),
                    &PutOptions::default(),
                )
                .await;
            status(put)
        })
    });
    let racing = (0..16).map(|i| {
        let (w, s) = (writer.clone(), s.clone());
        let once = PutOptions {
            precondition: Precondition::IfAbsent,
            ttl: Some(Duration::from_secs(60)),
        };
        tokio::spawn(async move { status(w.put(&s, "once", format!("w{i}"), &once).await) })
    });
    let cas = ["stale1", first.as_str(), "stale2", "stale3"].map(|etag| {
        let (w, s) = (writer.clone(), s.clone());
        let cas = PutOptions {
            precondition: Precondition::IfMatch(etag.to_string()),
            ttl: None,
        };
        tokio::spawn(async move { status(w.put(&s, "cas", "1", &cas).await) })
    });
    let plain = futures::future::try_join_all(plain).await.unwrap();
    let racing = futures::future::try_join_all(racing).await.unwrap();
    let cas = futures::future::try_join_all(cas).await.unwrap();
    assert!(plain.iter().all(|&s| s == 201), "{plain:?}");
    assert_eq!(
        racing.iter().filter(|&&s| s == 201).count(),
        1,
        "{racing:?}"
    );
    assert_eq!(
        racing.iter().filter(|&&s| s == 412).count(),
        15,
        "{racing:?}"
    );
    assert_eq!(cas, [412, 200, 412, 412]);
    for i in 0..30 {
        let v = h.value(&format!("k{i}")).await;
        assert_eq!(v, Some(format!("v{i}").into_bytes()));
    }
    assert_eq!(h.value("cas").await, Some(b"1".to_vec()));
    let once = h.client.get(s, "once").await.unwrap().expect("one winner");
    assert!(once.expires_at.is_some(), "the TTL went with the write");
    // A value the writer does not share (not UTF-8, or large) goes alone, the same.
    let binary = writer
        .put(s, "binary", vec![0xff, 0x00, 0xfe], &PutOptions::default())
        .await
        .unwrap();
    assert!(binary.created);
    assert_eq!(h.value("binary").await, Some(vec![0xff, 0x00, 0xfe]));
    // An ETag the batch answered is the value's own.
    let next = PutOptions {
        precondition: Precondition::IfMatch(binary.etag),
        ttl: None,
    };
    assert_eq!(status(h.client.put(s, "binary", "x", &next).await), 200);
    assert_eq!(h.client.stats(s).await.unwrap().keys, 33);
}

pub async fn hostile_write_batches_are_refused_whole(h: Harness) {
    let s = &h.store;
    let url = format!("{}/v1/apps/{APP}/writes", h.base);
    let token = h.tokens.issue(APP, Scope::Worker, Duration::from_secs(60));
    let http = reqwest::Client::new();
    let one = |key: &str| json!({"store": s, "key": key, "value": "v"});
    let many: Vec<_> = (0..=MAX_WRITES).map(|i| one(&format!("m{i}"))).collect();
    let huge = "x".repeat(MAX_WRITES_BYTES);
    let refused = [
        (json!({"writes": []}), 400),
        (json!({"writes": many}), 400),
        (json!({"writes": [one("a")], "extra": 1}), 400),
        (
            json!({"writes": [{"store": s, "key": "a", "value": "v", "colour": "red"}]}),
            400,
        ),
        (
            json!({"writes": [{"store": s, "key": "a", "value": 7}]}),
            400,
        ),
        (
            json!({"writes": [{"store": s, "key": "a", "value": "v", "ttl": "soon"}]}),
            400,
        ),
        (
            json!({"writes": [{"store": s, "key": "a", "value": huge}]}),
            413,
        ),
    ];
    let send = |body: serde_json::Value, token: Option<&str>| {
        let req = http.post(&url).json(&body);
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { req.send().await.unwrap() }
    };
    for (body, want) in refused {
        let r = send(body, Some(&token)).await;
        assert_eq!(r.status().as_u16(), want, "{}", r.text().await.unwrap());
    }
    // Another app's token, and a read-only one, write nothing.
    let other = h
        .tokens
        .issue("other-app", Scope::Worker, Duration::from_secs(60));
    let read = h.tokens.issue(APP, Scope::Read, Duration::from_secs(60));
    for t in [&other, &read] {
        let r = send(json!({"writes": [one("a")]}), Some(t)).await;
        assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    }
    let r = send(json!({"writes": [one("a")]}), None).await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(h.client.stats(s).await.unwrap().keys, 0, "nothing written");

    // A write refused on its own is answered so; the others are written.
    let body = json!({"writes": [
        one("good"),
        {"store": s, "key": "both", "value": "v", "ifAbsent": true, "ifMatch": "abc"},
        {"store": s, "key": "etag", "value": "v", "ifMatch": "\"a\", \"b\""},
        {"store": "bad store", "key": "k", "value": "v"},
        {"store": s, "key": "", "value": "v"},
        one("also-good"),
    ]});
    let r = send(body, Some(&token)).await;
    assert_eq!(r.status().as_u16(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let statuses: Vec<_> = answer["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 400, 400, 400, 400, 201]);
    let refusal = &answer["outcomes"][1]["error"];
    assert_eq!(refusal["error"], "VALIDATION", "{answer}");
    assert_eq!(h.value("good").await, Some(b"v".to_vec()));
    assert_eq!(h.value("also-good").await, Some(b"v".to_vec()));
    assert_eq!(h.client.stats(s).await.unwrap().keys, 2);
}
