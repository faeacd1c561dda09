//! `kill -9` during a stream of writes to objectstore-svc, then a restart: every
//! acknowledged write is there, and no write in flight shows up partial.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::config::ServiceConfig;
use common::token::Scope;
use fabric_tests::process::{Proc, Stream};
use fabric_tests::{Emulators, fabric_command, unique_name};
use nix::sys::signal::Signal;
use objectstore_svc::client::{Client, PutOptions};

const WAIT: Duration = Duration::from_secs(60);
const APP: &str = "orders";
const STORE: &str = "crash";
const WRITERS: usize = 8;

/// Starts `fabric serve objectstore-svc` and returns it with its base URL, once ready.
async fn start(data: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = fabric_command();
    cmd.args(["serve", "objectstore-svc"])
        .env("FABRIC_DATA_DIR", data)
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .env("FABRIC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut svc = Proc::spawn(cmd);
    let line = svc.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let base = format!("http://{}", event["addr"].as_str().expect("addr field"));
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    (svc, base)
}

/// The value writer `w` puts as its `i`-th write: every tenth is large enough
/// to be chunked in DynamoDB.
fn value(w: usize, i: usize) -> Vec<u8> {
    let mut v = format!("writer {w} write {i};").into_bytes();
    if i % 10 == 3 {
        v.extend(std::iter::repeat_n(b'0' + (i % 10) as u8, 700 * 1024));
    }
    v
}

async fn acknowledged_writes_survive_kill_9(env: &[(&str, &str)], acks_before_kill: usize) {
    let data = tempfile::tempdir().unwrap();
    // The process reads the secret this creates; the test issues tokens with it.
    let config: ServiceConfig = ServiceConfig {
        data_dir: data.path().to_path_buf(),
        ..ServiceConfig::default()
    };
    let tokens = common::secrets::token_key(&config).unwrap();
    let token = tokens.issue(APP, Scope::Worker, Duration::from_secs(3600));

    let (svc, base) = start(data.path(), env).await;
    let client = Client::new(&base, APP, &token).unwrap();
    // key -> value, once acknowledged; and each writer's write in flight.
    let acked = Arc::new(Mutex::new(HashMap::<String, Vec<u8>>::new()));
    let in_flight = Arc::new(Mutex::new(HashMap::<String, Vec<u8>>::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, acked, in_flight, enough) = (
                client.clone(),
                acked.clone(),
                in_flight.clone(),
                enough_tx.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("w{w}/{i:06}");
                    let v = value(w, i);
                    in_flight.lock().unwrap().insert(key.clone(), v.clone());
                    // The first refusal or dropped connection is the kill.
                    if client
                        .put(STORE, &key, v.clone(), &PutOptions::default())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let total = {
                        let mut acked = acked.lock().unwrap();
                        acked.insert(key, v);
                        acked.len()
                    };
                    if total >= acks_before_kill {
                        let _ = enough.try_send(());
                    }
                }
            })
        })
        .collect();
    drop(enough_tx);
    enough_rx.recv().await.expect("writers reached the count");
    svc.signal(Signal::SIGKILL);
    for w in writers {
        w.await.unwrap();
    }
    let mut svc = svc;
    assert!(!svc.wait_exit(WAIT).success());

    let (_again, base) = start(data.path(), env).await;
    let client = Client::new(&base, APP, &token).unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= acks_before_kill);
    for (key, v) in &acked {
        let got = client.get(STORE, key).await.unwrap();
        assert!(
            got.as_ref()
                .is_some_and(|g| g.value.as_ref() == v.as_slice()),
            "acknowledged write {key} lost or changed"
        );
    }
    // A write cut off by the kill is either absent or whole.
    let unacked: Vec<_> = in_flight
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| !acked.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, v) in unacked {
        if let Some(got) = client.get(STORE, &key).await.unwrap() {
            assert!(got.value.as_ref() == v.as_slice(), "{key} is partial");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_keeps_acknowledged_writes_across_kill_9() {
    acknowledged_writes_survive_kill_9(&[("FABRIC_BACKEND", "embedded")], 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_keeps_acknowledged_writes_across_kill_9() {
    Emulators::from_env();
    let table = unique_name("wf-objectstore-crash");
    acknowledged_writes_survive_kill_9(
        &[
            ("FABRIC_BACKEND", "dynamodb"),
            ("FABRIC_TABLE", &table),
            ("FABRIC_CREATE_RESOURCES", "true"),
        ],
        120,
    )
    .await;
}
