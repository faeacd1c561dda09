//! Tenants and API keys through the real `fabric` command line: a key
//! rotated without downtime, an expired key refused, a tenant deleted with
//! its apps, hostile names and ids refused; and the events webhook, filtered
//! to one tenant and signed.

use std::time::Duration;

use fabric_tests::fabric::{Fabric, HELLO, Run};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `fabric ARGS` as the holder of `key`.
fn as_key(f: &Fabric, key: &str, args: &[&str]) -> Run {
    f.cli_env(args, &[("FABRIC_TOKEN", key)])
}

fn ok(run: &Run) -> &Run {
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    run
}

/// A raw API call's status and body, for what the CLI checks before sending.
async fn api(
    f: &Fabric,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}{path}", f.url()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the control plane answers");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn key_ids(run: &Run) -> Vec<String> {
    run.json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|k| k["id"].as_str().expect("an id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_rotated_the_old_one_refused_and_the_tenant_deleted_with_its_apps() {
    let mut f = Fabric::start();
    // The admin makes a tenant; its key is printed once, alone on stdout.
    let made = ok(&f.cli(&["tenants", "create", "acme"]))
        .stdout
        .trim()
        .to_string();
    assert!(made.starts_with("wfk_"), "{made}");
    let old = made;

    // Acme makes a second key, then revokes the first with it.
    let run = as_key(
        &f,
        &old,
        &[
            "keys",
            "create",
            "--name",
            "ci deploy",
            "--expires",
            "90d",
            "-o",
            "json",
        ],
    );
    let created = ok(&run).json();
    let new = created["apiKey"].as_str().unwrap().to_string();
    assert_eq!(created["name"], "ci deploy");
    assert_eq!(created["prefix"], new[..8]);
    let listed = as_key(&f, &new, &["keys", "list", "--output", "json"]);
    assert!(
        !listed.stdout.contains(&new) && !listed.stdout.contains(&old[8..]),
        "a key is shown: {}",
        listed.stdout
    );
    let keys = ok(&listed).json();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    let old_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["prefix"] == old[..8])
        .expect("the first key is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let new_id = created["id"].as_str().unwrap().to_string();
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == new_id && k["current"] == true)
    );
    let expires = created["expiresMs"].as_u64().unwrap() - created["createdMs"].as_u64().unwrap();
    assert_eq!(expires, 90 * 86_400_000);

    ok(&as_key(&f, &new, &["keys", "revoke", &old_id]));
    let refused = as_key(&f, &old, &["apps", "list"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unknown API key"),
        "{}",
        refused.stderr
    );
    let (status, _) = api(&f, &old, reqwest::Method::GET, "/v1/apps", "").await;
    assert_eq!(status, 401);
    ok(&as_key(&f, &new, &["apps", "list"]));
    // Its last key, the one it is using, is not revoked.
    let last = as_key(&f, &new, &["keys", "revoke", &new_id]);
    assert_eq!(last.code, Some(1));
    assert!(last.stderr.contains("last"), "{}", last.stderr);

    // Hostile input: told clearly, nothing changed, nothing panics.
    for (args, code, says) in [
        (vec!["keys", "revoke", "not-an-id"], 4, "no such key"),
        (
            vec!["keys", "revoke", "../../v1/apps?x=1"],
            4,
            "no such key",
        ),
        (vec!["keys", "revoke", "0123456789abcdef"], 4, "no key"),
        (vec!["keys", "revoke", ""], 4, ""),
        (
            vec!["keys", "create", "--expires", "3y"],
            64,
            "1 day to 2 years",
        ),
        (
            vec!["keys", "create", "--expires", "1h"],
            64,
            "1 day to 2 years",
        ),
        (
            vec!["keys", "create", "--expires", "forever"],
            64,
            "1 day to 2 years",
        ),
        (vec!["keys", "create", "--name", "<script>"], 64, "key name"),
    ] {
        let run = as_key(&f, &new, &args);
        assert_eq!(run.code, Some(code), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let long = "k".repeat(65);
    for body in [
        r#"{"expires": "3y"}"#.to_string(),
        r#"{"expires": "23h"}"#.to_string(),
        format!(r#"{{"expires": "{}d"}}"#, "9".repeat(40)),
        format!(r#"{{"name": "{long}"}}"#),
        r#"{"name": "a\u0000b"}"#.to_string(),
        "not json".to_string(),
        r#"{"name": 5}"#.to_string(),
    ] {
        let (status, answer) = api(&f, &new, reqwest::Method::POST, "/v1/keys", &body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("VALIDATION")),
            "{body}: {answer}"
        );
    }
    let admin = f.admin_key();
    for name in ["Bad_Name", "", &"t".repeat(64), "admin", "x--y", "-lead"] {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, answer) = api(&f, &admin, reqwest::Method::POST, "/v1/tenants", &body).await;
        assert_eq!(status, 400, "{name:?}: {answer}");
    }
    assert_eq!(f.cli(&["tenants", "create", "Bad_Name"]).code, Some(64));
    assert_eq!(
        key_ids(ok(&as_key(&f, &new, &["keys", "list", "-o", "json"]))),
        std::slice::from_ref(&new_id),
        "no refused input left a key behind"
    );

    // Another tenant sees none of acme's keys and revokes none of them.
    let globex = ok(&f.cli(&["tenants", "create", "globex"]))
        .stdout
        .trim()
        .to_string();
    let theirs = key_ids(ok(&as_key(&f, &globex, &["keys", "list", "-o", "json"])));
    assert_eq!(theirs.len(), 1);
    assert!(!theirs.contains(&new_id));
    assert_eq!(
        as_key(&f, &globex, &["keys", "revoke", &new_id]).code,
        Some(4)
    );
    ok(&as_key(&f, &new, &["apps", "list"]));
    // Nor may it manage tenants.
    let run = as_key(&f, &globex, &["tenants", "list"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("admin"), "{}", run.stderr);
    assert_eq!(
        as_key(&f, &globex, &["tenants", "delete", "acme", "--force"]).code,
        Some(1)
    );

    // A key past its expiry is refused, saying so; a key that has none is
    // planted in the registry as the control plane keeps it (sealed), and
    // every key made above outlives the restart.
    f.stop();
    let expired = "wfk_expired-key-of-acme-for-this-test";
    {
        let ring = common::envelope::Keyring::from_file(&f.data.join("master.key")).unwrap();
        let file = control_plane::registry::Location::Embedded(f.data.join("registry.redb"));
        let registry = control_plane::registry::Registry::open(&file, ring)
            .await
            .unwrap();
        let day_ago = control_plane::access::now_ms() - 86_400_000;
        let record = control_plane::registry::KeyRecord {
            name: Some("old".into()),
            expires_ms: Some(day_ago + 1000),
            ..control_plane::registry::KeyRecord::new(expired, "acme")
        };
        registry.add_key(expired, record).await.unwrap();
        assert_eq!(registry.close(WAIT).await, 0);
    }
    let f = Fabric::start_in(&f.data.clone());
    let run = as_key(&f, expired, &["apps", "list"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("expired"), "{}", run.stderr);
    assert_eq!(
        as_key(&f, &old, &["apps", "list"]).code,
        Some(1),
        "a revoked key stays revoked"
    );
    let keys = ok(&as_key(&f, &new, &["keys", "list", "-o", "json"])).json();
    let kept = keys.as_array().unwrap();
    assert_eq!(kept.len(), 2, "{keys}");
    assert!(
        kept.iter()
            .any(|k| k["id"] == new_id && k["name"] == "ci deploy" && k["expired"] == false)
    );
    assert!(
        kept.iter()
            .any(|k| k["name"] == "old" && k["expired"] == true)
    );
    let table = ok(&as_key(&f, &new, &["keys", "list"])).stdout.clone();
    assert!(
        table.contains("(expired)") && table.contains("(this key)"),
        "{table}"
    );

    // A tenant that owns an app is not deleted unless forced; forced, its
    // app goes as `apps delete` takes it (data purged), then its keys.
    let deploy = as_key(
        &f,
        &new,
        &[
            "apps",
            "deploy",
            HELLO,
            "--workers",
            "1",
            "--size",
            "0.1",
            "-o",
            "json",
        ],
    );
    let app_id = format!(
        "hello--{}",
        ok(&deploy).json()["instance"].as_str().unwrap()
    );
    let logs = f.data.join("workers");
    let has_logs = || {
        std::fs::read_dir(&logs).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{app_id}-"))
            })
        })
    };
    assert!(has_logs());
    let refused = f.cli(&["tenants", "delete", "acme"]);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("hello") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    let admin_refused = f.cli(&["tenants", "delete", "admin", "--force"]);
    assert_eq!(admin_refused.code, Some(1));
    assert!(
        admin_refused.stderr.contains("cannot be deleted"),
        "{}",
        admin_refused.stderr
    );
    let listed = ok(&f.cli(&["tenants", "list", "-o", "json"])).json();
    let acme = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .cloned();
    assert_eq!(
        acme.as_ref()
            .map(|t| (t["apps"].clone(), t["keys"].clone())),
        Some((1.into(), 2.into())),
        "{listed}"
    );

    let gone = ok(&f.cli(&["tenants", "delete", "acme", "--force", "-o", "json"])).json();
    assert_eq!(gone["appsDeleted"], serde_json::json!(["hello"]), "{gone}");
    assert_eq!(gone["keysRevoked"], 2);
    assert!(!has_logs(), "the app's data is purged");
    assert_eq!(
        as_key(&f, &new, &["apps", "list"]).code,
        Some(1),
        "its keys are gone"
    );
    let apps = ok(&f.cli(&["apps", "list", "-o", "json"])).json();
    assert_eq!(apps, serde_json::json!([]));
    let listed = ok(&f.cli(&["tenants", "list", "-o", "json"])).json();
    assert!(!listed.to_string().contains("\"acme\""), "{listed}");
    assert_eq!(f.cli(&["tenants", "delete", "acme"]).code, Some(4));
    // Its name can be taken again, starting empty; asked again, the admin
    // is given another key for it, and both work.
    let first = ok(&f.cli(&["tenants", "create", "acme", "-o", "json"])).json();
    assert_eq!(first["created"], true, "{first}");
    let again = ok(&f.cli(&["tenants", "create", "acme", "-o", "json"])).json();
    assert_eq!(again["created"], false, "{again}");
    for key in [&first["apiKey"], &again["apiKey"]] {
        ok(&as_key(&f, key.as_str().unwrap(), &["apps", "list"]));
    }
}

/// Each webhook request as received: its headers and exact body.
type Received = tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, bytes::Bytes)>;

async fn receiver() -> (String, Received) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// The HMAC-SHA256 a receiver computes itself, from the documented recipe.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_gets_only_its_tenants_events_each_signed() {
    const SECRET: &str = "whsec-marker-5b1d0e";
    let (url, mut received) = receiver().await;
    let mut f = Fabric::start_env(&[
        ("FABRIC_EVENTS_WEBHOOK", url.as_str()),
        ("FABRIC_EVENTS_WEBHOOK_TENANTS", "acme"),
        ("FABRIC_EVENTS_WEBHOOK_SECRET", SECRET),
    ]);
    let acme = ok(&f.cli(&["tenants", "create", "acme"]))
        .stdout
        .trim()
        .to_string();
    let globex = ok(&f.cli(&["tenants", "create", "globex"]))
        .stdout
        .trim()
        .to_string();
    ok(&as_key(
        &f,
        &globex,
        &[
            "apps",
            "deploy",
            HELLO,
            "--name",
            "greet",
            "--workers",
            "1",
            "--size",
            "0.1",
        ],
    ));
    ok(&as_key(
        &f,
        &acme,
        &["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"],
    ));

    let mut events = Vec::new();
    let done = tokio::time::timeout(WAIT, async {
        while let Some((headers, body)) = received.recv().await {
            let event: Value = serde_json::from_slice(&body).expect("a JSON event");
            let last = event["kind"] == "deploy.done" && event["app"] == "hello";
            events.push((headers, body, event));
            if last {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "acme's deploy never reached the webhook: {:?}",
        events.iter().map(|e| &e.2).collect::<Vec<_>>()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        events[0].2["seq"].as_u64() > Some(1),
        "globex's deploy came first, and its events were left out"
    );
    for (headers, body, event) in &events {
        if !event["app"].is_null() {
            assert_eq!(event["app"], "hello", "only acme's app: {event}");
            assert_eq!(event["tenant"], "acme", "{event}");
        }
        let timestamp = headers["x-fabric-timestamp"].to_str().unwrap();
        let signature = headers["x-fabric-signature"].to_str().unwrap();
        assert_eq!(signature, expected_signature(SECRET, timestamp, body));
        assert!(control_plane::webhook::verify(
            SECRET.as_bytes(),
            timestamp,
            signature,
            body,
            now
        ));
        assert!(!control_plane::webhook::verify(
            b"another", timestamp, signature, body, now
        ));
        assert_eq!(headers["content-type"], "application/json");
    }
    assert!(
        !events
            .iter()
            .any(|e| String::from_utf8_lossy(&e.1).contains("greet"))
    );
    assert!(
        f.log_lines(SECRET).is_empty(),
        "the webhook secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_aws_backend_new_keys_and_revocations_outlive_a_restart() {
    fabric_tests::Emulators::from_env();
    // A prefix of its own (at most 16 characters), so this run's tables are its own.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let prefix = format!("k{}x{}-", std::process::id() % 100_000, nanos % 10_000);
    let env = [("FABRIC_UP_BACKEND", "aws"), ("FABRIC_AWS_PREFIX", &prefix)];
    let mut f = Fabric::start_env(&env);
    let old = ok(&f.cli(&["tenants", "create", "acme"]))
        .stdout
        .trim()
        .to_string();
    let created = ok(&as_key(
        &f,
        &old,
        &[
            "keys",
            "create",
            "--name",
            "next",
            "--expires",
            "1y",
            "-o",
            "json",
        ],
    ))
    .json();
    let new = created["apiKey"].as_str().unwrap().to_string();
    let old_id = key_ids(ok(&as_key(&f, &old, &["keys", "list", "-o", "json"])))
        .into_iter()
        .find(|id| *id != created["id"])
        .unwrap();
    ok(&as_key(&f, &new, &["keys", "revoke", &old_id]));
    f.stop();

    let f = Fabric::start_in_env(&f.data.clone(), &env);
    assert_eq!(as_key(&f, &old, &["apps", "list"]).code, Some(1));
    let keys = ok(&as_key(&f, &new, &["keys", "list", "-o", "json"])).json();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["name"], "next");
    assert_eq!(keys[0]["expiresMs"], created["expiresMs"]);
    assert_eq!(keys[0]["prefix"], new[..8]);
}
