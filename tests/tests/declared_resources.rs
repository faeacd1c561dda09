//! A component started alone runs on resources it did not create: a missing table stops it at once, named, and is not made.

use std::time::Duration;

use fabric_tests::process::{Proc, Stream};
use fabric_tests::{Emulators, fabric_command, unique_name};

/// Runs `fabric serve component` with `env` until it exits (a minute at
/// most: one that keeps serving fails the test); its exit code and last
/// stderr line.
fn serve_alone(component: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = fabric_command();
    cmd.args(["serve", component])
        .env("FABRIC_DATA_DIR", dir.path())
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    let mut proc = Proc::spawn(cmd);
    let status = proc.wait_exit(Duration::from_secs(60));
    let stderr = proc.lines_of(Stream::Stderr);
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
    let last = stderr.last().copied().unwrap_or_default().to_string();
    (status.code(), last)
}

async fn table_exists(table: &str) -> bool {
    let sdk = common::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    match ddb.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => panic!("describe table {table}: {e:?}"),
    }
}

#[tokio::test]
async fn objectstore_svc_alone_names_a_missing_table_and_does_not_create_it() {
    Emulators::from_env();
    let table = unique_name("wf-undeclared-store");
    let (code, last) = serve_alone(
        "objectstore-svc",
        &[("FABRIC_BACKEND", "dynamodb"), ("FABRIC_TABLE", &table)],
    );
    assert_ne!(code, Some(0), "{last}");
    assert!(
        last.contains(&table) && last.contains("create_resources"),
        "{last}"
    );
    assert!(!table_exists(&table).await, "{table} was created");
}

#[tokio::test]
async fn the_control_plane_alone_names_a_missing_registry_table_and_does_not_create_it() {
    Emulators::from_env();
    let table = unique_name("wf-undeclared-registry");
    let (code, last) = serve_alone("control-plane", &[("FABRIC_REGISTRY_TABLE", &table)]);
    assert_ne!(code, Some(0), "{last}");
    assert!(
        last.contains(&table) && last.contains("create_resources"),
        "{last}"
    );
    assert!(!table_exists(&table).await, "{table} was created");
}

#[tokio::test]
async fn a_table_with_another_key_schema_is_refused_by_name() {
    Emulators::from_env();
    let table = unique_name("wf-wrong-keys");
    let sdk = common::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    // The registry's schema where the object store's is expected.
    common::aws::ensure_table(&ddb, &table, "kind", "id", true)
        .await
        .unwrap();
    let (code, last) = serve_alone(
        "objectstore-svc",
        &[("FABRIC_BACKEND", "dynamodb"), ("FABRIC_TABLE", &table)],
    );
    assert_ne!(code, Some(0), "{last}");
    assert!(
        last.contains(&table) && last.contains("key schema"),
        "{last}"
    );
    let _ = ddb.delete_table().table_name(&table).send().await;
}
