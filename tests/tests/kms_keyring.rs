//! The master keyring held by KMS (moto's): wrapped at rest, reopened after a restart, bound to its fabric, rotated without re-sealing.

use std::time::{Duration, Instant};

use common::envelope::{Aad, Keyring, OpenError, ResourceKind};
use common::kms::{Kms, KmsError, WRAPPED_FILE, Wrapped};
use fabric_tests::process::{Proc, Stream};
use fabric_tests::{Emulators, fabric_command, unique_name};

fn aad(key: &str) -> Aad<'_> {
    Aad {
        app: "orders--a1",
        kind: ResourceKind::Store,
        resource: "orders",
        key,
    }
}

/// A fresh KMS key for one test, made through its alias, and the fabric's name.
async fn key(test: &str) -> (String, String) {
    Emulators::from_env();
    let name = unique_name(test);
    let kms = Kms::new(&format!("alias/{name}"), &name).await;
    (
        kms.ensure_key().await.expect("a KMS key"),
        format!("{name}-"),
    )
}

#[tokio::test]
async fn values_sealed_under_a_kms_wrapped_key_open_after_a_restart() {
    let (arn, fabric) = key("kms-restart").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WRAPPED_FILE);

    let first = Kms::new(&arn, &fabric)
        .await
        .load(&path, true)
        .await
        .expect("version 1 made and unwrapped");
    let sealed = first.seal(&aad("42"), b"order 42 for alice");

    // At rest: only the KMS ciphertext of each version, no plain key file.
    let wrapped = Wrapped::read(&path).unwrap().expect("the wrapped keyring");
    assert_eq!(wrapped.versions().collect::<Vec<_>>(), [1]);
    assert!(!dir.path().join(common::secrets::MASTER_KEY_FILE).exists());
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.starts_with("1:")).unwrap();
    let blob = base64_len(&line[2..]);
    assert!(blob > 32, "a {blob}-byte line is not a KMS ciphertext");

    // A restart: a new client, nothing created.
    drop(first);
    let again = Kms::new(&arn, &fabric)
        .await
        .load(&path, false)
        .await
        .expect("the wrapped keyring unwraps again");
    assert_eq!(
        again.open(&aad("42"), &sealed).unwrap(),
        b"order 42 for alice"
    );
}

fn base64_len(b64: &str) -> usize {
    b64.trim().len() / 4 * 3
}

#[tokio::test]
async fn a_value_sealed_under_another_fabrics_key_does_not_open() {
    let (arn, fabric) = key("kms-other").await;
    let dir = tempfile::tempdir().unwrap();
    let ours = Kms::new(&arn, &fabric).await;
    let theirs = Kms::new(&arn, &format!("{fabric}other-")).await;
    let ring_ours = ours.load(&dir.path().join("ours"), true).await.unwrap();
    let ring_theirs = theirs.load(&dir.path().join("theirs"), true).await.unwrap();
    let sealed = ring_theirs.seal(&aad("7"), b"their secret");
    assert_eq!(ring_ours.open(&aad("7"), &sealed), Err(OpenError::Rejected));

    // Their wrapped keyring, copied here, does not unwrap as ours: the
    // encryption context names the fabric.
    std::fs::copy(dir.path().join("theirs"), dir.path().join("copied")).unwrap();
    let err = ours
        .load(&dir.path().join("copied"), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KmsError::Kms {
                op: "Decrypt",
                version: 1,
                ..
            }
        ),
        "{err}"
    );

    // Nor does a version presented under another number: the context names it too.
    let text = std::fs::read_to_string(dir.path().join("ours")).unwrap();
    let renumbered = text.replace("\n1:", "\n2:");
    let err = ours
        .unwrap(&Wrapped::parse(&renumbered, "renumbered").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Kms { version: 2, .. }), "{err}");
}

#[tokio::test]
async fn a_rotation_adds_a_version_and_old_values_stay_readable() {
    let (arn, fabric) = key("kms-rotate").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WRAPPED_FILE);
    let kms = Kms::new(&arn, &fabric).await;
    let v1 = kms.load(&path, true).await.unwrap();
    let old = v1.seal(&aad("1"), b"sealed before the rotation");

    assert_eq!(kms.add_to_file(&path).await.unwrap(), 2);
    let v2: Keyring = kms.load(&path, false).await.unwrap();
    assert_eq!(v2.newest_version(), 2);
    assert_eq!(
        v2.open(&aad("1"), &old).unwrap(),
        b"sealed before the rotation"
    );
    let new = v2.seal(&aad("2"), b"sealed after");
    assert_eq!(u32::from_be_bytes(new[1..5].try_into().unwrap()), 2);
    // The old version's line is unchanged: nothing was re-sealed.
    let before = Wrapped::read(&path).unwrap().unwrap();
    assert_eq!(before.versions().collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn an_unreachable_kms_fails_the_load_in_bounded_time_and_names_the_key() {
    let (arn, fabric) = key("kms-down").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WRAPPED_FILE);
    Kms::new(&arn, &fabric)
        .await
        .load(&path, true)
        .await
        .unwrap();

    let down = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .load()
        .await;
    let started = Instant::now();
    let err = Kms::with_config(&down, &arn, &fabric)
        .load(&path, false)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("Decrypt") && text.contains(&arn), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn a_component_without_its_keyring_or_kms_exits_with_one_line_naming_it() {
    Emulators::from_env();
    let dir = tempfile::tempdir().unwrap();
    let run = |key: &str| {
        let mut cmd = fabric_command();
        cmd.args(["serve", "queue-svc"])
            .env("FABRIC_DATA_DIR", dir.path())
            .env("FABRIC_LISTEN", "127.0.0.1:0")
            .env("FABRIC_KMS_KEY_ID", key)
            .env("FABRIC_FABRIC_NAME", "exits-");
        // A component that keeps serving fails the test rather than hangs it.
        let mut proc = Proc::spawn(cmd);
        let status = proc.wait_exit(Duration::from_secs(60));
        // The reason is the last line (logs may come before it).
        let stderr = proc.lines_of(Stream::Stderr);
        assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
        let last = stderr.last().copied().unwrap_or_default().to_string();
        (status.code(), last)
    };
    // No wrapped keyring, and a component alone creates nothing.
    let (code, stderr) = run("alias/none");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(WRAPPED_FILE) && stderr.contains("fabric master-key add"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A wrapped keyring KMS cannot open (no such key): exit 69, one line.
    std::fs::write(
        dir.path().join(WRAPPED_FILE),
        "1:AAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let (code, stderr) = run("alias/no-such-key");
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.starts_with("master key: KMS Decrypt"), "{stderr}");
    assert!(stderr.contains("alias/no-such-key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
