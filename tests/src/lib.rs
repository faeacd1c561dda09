//! Helpers for the end-to-end tests: finding the emulators and cleaning up processes.
#![forbid(unsafe_code)]

/// The emulator endpoints the tests talk to, from the env file `scripts/test` loads.
#[derive(Debug, Clone)]
pub struct Emulators {
    /// The SQS endpoint (LocalStack).
    pub sqs: String,
    /// The DynamoDB endpoint (moto).
    pub dynamodb: String,
}

impl Emulators {
    /// Reads the endpoints from `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB`.
    ///
    /// Panics with a clear instruction when they are unset: these tests exist to
    /// run against the emulators, and silently skipping them would hide that.
    pub fn from_env() -> Self {
        let get = |var: &str| {
            std::env::var(var).unwrap_or_else(|_| {
                panic!(
                    "{var} is not set: run the suite with scripts/test, or start the emulators with \
                     infra/localstack/up and load the env file it prints"
                )
            })
        };
        Emulators {
            sqs: get("AWS_ENDPOINT_URL_SQS"),
            dynamodb: get("AWS_ENDPOINT_URL_DYNAMODB"),
        }
    }
}

/// A unique, valid resource name for one test run: `{prefix}-{pid}-{nanos}`.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// True when `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub mod backing;
pub mod chaos;
pub mod fabric;
pub mod process;

/// A command for `bin` that inherits no `FABRIC_*` variable from the test's
/// environment, so only what the test sets reaches the component.
pub fn clean_command(bin: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("FABRIC_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// [`clean_command`] for the `fabric` binary of this build.
pub fn fabric_command() -> std::process::Command {
    clean_command(&fabric_bin())
}

/// The `fabric` binary of this build (`target/<profile>/fabric`), for tests
/// that run components as real processes (to `kill -9` them, say).
///
/// Testing the workspace builds it; when it is missing, says how to build it.
pub fn fabric_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/fabric
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("fabric");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p fabric` (the workspace test run does)",
        bin.display()
    );
    bin
}

/// Polls `f` until it gives a value, for at most `within`; panics naming
/// `what` when it never does.
pub async fn until<T>(
    what: &str,
    within: std::time::Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
