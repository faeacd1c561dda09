//! queue-svc's own settings are checked as they are read: a bad one exits 64 with one line.

use fabric_tests::fabric_command;

fn refused(var: &str, value: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = fabric_command();
    let out = cmd
        .args(["serve", "queue-svc"])
        .env("FABRIC_DATA_DIR", data.path())
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .env(var, value)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn bad_queue_settings_exit_64_saying_why() {
    for (var, value, why) in [
        ("FABRIC_BACKEND", "s3", "s3"),
        ("FABRIC_RETENTION", "15d", "14 days"),
        ("FABRIC_MAX_DELIVERIES", "0", "1 and 1000"),
        ("FABRIC_SQS_PREFIX", "has space", "letters, digits"),
    ] {
        let line = refused(var, value);
        assert!(line.contains(why), "{var}={value}: {line}");
    }
}
