//! A control plane that restarts: what it takes back of the workers it
//! left running, through the `fabric` command line against a real fabric.

use fabric_tests::fabric::{Fabric, HELLO, greet, pid, ready};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_control_plane_takes_its_workers_back() {
    let mut fabric = Fabric::start();
    assert_eq!(
        fabric
            .cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"])
            .code,
        Some(0)
    );
    let before = fabric.workers("hello");
    fabric.crash();
    // The workers outlive the crash and keep serving.
    for w in &before {
        greet(w["address"].as_str().unwrap()).await;
    }
    let mut again = Fabric::start_in(&fabric.data);
    let after = again.wait_workers("hello", "adopted workers", |ws| ready(ws, 2));
    let pids = |ws: &[Value]| ws.iter().map(pid).collect::<Vec<_>>();
    assert_eq!(
        pids(&after),
        pids(&before),
        "the same processes, taken back"
    );
    let list = again.cli(&["apps", "list", "--output", "json"]).json();
    assert_eq!(list[0]["name"], "hello");
    assert!(again.stop());
    for p in pids(&after) {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err(),
            "worker {p} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_an_earlier_fabric_started_are_restarted_side_by_side() {
    use control_plane::registry::{Location, Registry};
    let mut fabric = Fabric::start();
    let deploy = ["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"];
    assert_eq!(fabric.cli(&deploy).code, Some(0));
    let before = fabric.workers("hello");
    fabric.crash();
    // Recorded as an earlier version recorded them: no process identity.
    {
        let keyring = common::envelope::Keyring::load_or_generate(
            &fabric.data.join(common::secrets::MASTER_KEY_FILE),
        )
        .unwrap();
        let file = fabric.data.join(control_plane::REGISTRY_FILE);
        let registry = Registry::open(&Location::Embedded(file), keyring)
            .await
            .unwrap();
        for mut p in registry.placements() {
            p.identity = None;
            registry.put_placement(&p);
        }
        registry.close(std::time::Duration::from_secs(5)).await;
    }
    let mut again = Fabric::start_in(&fabric.data);
    let old: Vec<i32> = before.iter().map(pid).collect();
    let after = again.wait_workers("hello", "workers replaced", |ws| {
        ready(ws, 2) && ws.iter().all(|w| !old.contains(&pid(w)))
    });
    for w in &after {
        greet(w["address"].as_str().unwrap()).await;
    }
    let shown = again
        .cli(&["apps", "show", "hello", "--output", "json"])
        .json();
    assert_eq!(
        shown[0]["version"], 2,
        "a restart is a new version: {shown}"
    );
    for p in old {
        let gone = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err();
        fabric_tests::until(
            "the earlier workers stop",
            std::time::Duration::from_secs(30),
            async || gone().then_some(()),
        )
        .await;
    }
    assert!(again.stop());
}
