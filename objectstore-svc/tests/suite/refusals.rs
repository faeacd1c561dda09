//! Refusals: apps isolated by their tokens, and bad input refused with nothing changed.

use std::time::Duration;

use common::token::{Scope, TokenKey};
use objectstore_svc::api::MAX_KEY_BYTES;
use objectstore_svc::client::PutOptions;

use crate::harness::{APP, Harness, status};

pub async fn apps_are_isolated_by_token(h: Harness) {
    let s = &h.store;
    h.put("secret", b"orders only").await;
    let url = format!("{}/v1/apps/{APP}/stores/{s}/keys/secret", h.base);
    let http = reqwest::Client::new();
    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "UNAUTHORIZED");
    assert!(body["correlationId"].is_string(), "{body}");
    let forged = http
        .get(&url)
        .bearer_auth("wft1.b3JkZXJz.1.9999999999.worker.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let other_fabric = TokenKey::generate().issue(APP, Scope::Worker, Duration::from_secs(60));
    assert_eq!(
        http.get(&url)
            .bearer_auth(other_fabric)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Billing's token on orders' path: 403, whatever the operation.
    let billing_token = h
        .tokens
        .issue("billing", Scope::Worker, Duration::from_secs(60));
    for req in [http.get(&url), http.put(&url).body("x"), http.delete(&url)] {
        let r = req.bearer_auth(&billing_token).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    let list = format!("{}/v1/apps/{APP}/stores/{s}/keys", h.base);
    assert_eq!(
        http.get(&list)
            .bearer_auth(&billing_token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let lease = format!("{}/v1/apps/{APP}/leases/primary", h.base);
    let r = http
        .post(&lease)
        .bearer_auth(&billing_token)
        .json(&serde_json::json!({"holder": "x", "ttl": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A read-scoped token reads but does not write.
    let reader = h.client_for(APP, Scope::Read);
    assert!(reader.get(s, "secret").await.unwrap().is_some());
    assert_eq!(
        status(
            reader
                .put(s, "secret", b"no".to_vec(), &PutOptions::default())
                .await
        ),
        403
    );

    // Billing's own store of the same name is another partition.
    let billing = h.client_for("billing", Scope::Worker);
    assert!(billing.get(s, "secret").await.unwrap().is_none());
    assert_eq!(
        h.value("secret").await.as_deref(),
        Some(b"orders only".as_slice())
    );
}

pub async fn bad_input_is_refused_and_changes_nothing(h: Harness) {
    let s = &h.store;
    h.put("k", b"v").await;
    let base = format!("{}/v1/apps/{APP}/stores/{s}/keys", h.base);
    let token = h.tokens.issue(APP, Scope::Worker, Duration::from_secs(60));
    let http = reqwest::Client::new();
    let long_key = "x".repeat(MAX_KEY_BYTES + 1);
    let cases = [
        http.put(format!("{base}/")).body("v"),
        http.put(format!("{base}/{long_key}")).body("v"),
        http.put(format!("{base}/k"))
            .header("if-match", "\"a\", \"b\"")
            .body("v"),
        http.put(format!("{base}/k"))
            .header("if-none-match", "\"abc\"")
            .body("v"),
        http.put(format!("{base}/k"))
            .header("if-match", "\"a\"")
            .header("if-none-match", "*")
            .body("v"),
        http.put(format!("{base}/k?ttl=soon")).body("v"),
        http.put(format!("{base}/k?ttl=-1s")).body("v"),
        http.put(format!("{base}/k?colour=red")).body("v"),
        http.get(format!("{base}?limit=0")),
        http.get(format!("{base}?limit=many")),
        http.put(format!(
            "{}/v1/apps/{APP}/stores/bad%20store/keys/k",
            h.base
        ))
        .body("v"),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .body("{not json"),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "", "ttl": "1s"})),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "h", "ttl": "0s"})),
        http.put(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "h", "ttl": "1s"})),
    ];
    for req in cases {
        let r = req.bearer_auth(&token).send().await.unwrap();
        let status = r.status().as_u16();
        let url = r.url().to_string();
        let body: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"));
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"], "VALIDATION", "{url}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(h.value("k").await.as_deref(), Some(b"v".as_slice()));
    let stats = h.client.stats(s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (1, 1));
}
