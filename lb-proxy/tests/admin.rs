//! The admin port: the route table answers only the fabric's internal token;
//! the ops endpoints stay open.

mod support;

use std::time::Duration;

use common::token::{Scope, TokenKey};
use support::{get_text, one_worker, settings, table};

#[tokio::test]
async fn the_route_table_takes_only_the_fabrics_internal_token() {
    let (a, proxy) = one_worker(settings()).await;
    let hour = Duration::from_secs(3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let taken_over = table("orders", &[(0, support::dead_address().await, "ready")]);
    let client = reqwest::Client::new();
    let refused: [(&str, Option<String>, u16); 6] = [
        ("no token", None, 401),
        ("not a token", Some("Bearer nonsense".into()), 401),
        (
            "another fabric's internal token",
            Some(format!(
                "Bearer {}",
                TokenKey::generate().issue_internal(hour)
            )),
            401,
        ),
        (
            "an expired internal token",
            Some(format!(
                "Bearer {}",
                proxy.key.issue_at(
                    common::token::INTERNAL_SUBJECT,
                    Scope::Internal,
                    now - 20,
                    now - 10
                )
            )),
            401,
        ),
        (
            "the internal token under another scheme",
            Some(format!("Basic {}", proxy.internal_token())),
            401,
        ),
        (
            "an app's own token",
            Some(format!(
                "Bearer {}",
                proxy.key.issue("orders", Scope::Worker, hour)
            )),
            403,
        ),
    ];
    for (what, auth, status) in &refused {
        for put in [false, true] {
            let mut req = if put {
                client.put(proxy.admin_url("/routes")).json(&taken_over)
            } else {
                client.get(proxy.admin_url("/routes"))
            };
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), *status, "{what}, put {put}");
            assert_eq!(r.headers()["content-type"], "application/json");
            let body: serde_json::Value = r.json().await.unwrap();
            let kind = if *status == 401 {
                "UNAUTHORIZED"
            } else {
                "FORBIDDEN"
            };
            assert_eq!(body["error"], kind, "{what}: {body}");
        }
    }
    // Nothing refused changed the table: the app still reaches its worker.
    assert_eq!(
        get_text(&proxy, "orders.fabric.localhost", "/").await,
        "a GET /"
    );
    assert_eq!(
        proxy.routes().await["apps"]["orders"]["workers"][0]["address"],
        a.addr.to_string()
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = client.get(proxy.admin_url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    // The internal token opens it.
    proxy
        .put_routes(table("billing", &[(0, a.addr, "ready")]))
        .await;
    assert_eq!(
        get_text(&proxy, "billing.fabric.localhost", "/").await,
        "a GET /"
    );
}
