//! Helpers for the end-to-end tests: finding the emulators and cleaning up processes.
#![forbid(unsafe_code)]

/// The emulator endpoints the tests talk to, from the env file `scripts/test` loads.
#[derive(Debug, Clone)]
pub struct Emulators {
    /// The SQS endpoint (LocalStack).
    pub sqs: String,
    /// The DynamoDB endpoint (moto).
    pub dynamodb: String,
    /// The KMS endpoint (moto, which also serves CloudFormation and IAM).
    pub kms: String,
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
            kms: get("AWS_ENDPOINT_URL_KMS"),
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
pub mod browser;
pub mod chaos;
pub mod fabric;
pub mod process;
pub mod stack;

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

/// What one poll of [`until`] or [`until_sync`] gives: the value waited
/// for, or not yet. `None` is not yet; `Err(why)` is not yet too, and the
/// last `why` is in the panic when the wait runs out, so a test that times
/// out says what it saw.
pub trait Polled {
    /// The value waited for.
    type Value;
    /// Why not yet, when the poll says.
    type Why: std::fmt::Debug;
    /// The value, or why not yet (if the poll says).
    fn ready(self) -> Result<Self::Value, Option<Self::Why>>;
}

impl<T> Polled for Option<T> {
    type Value = T;
    type Why = std::convert::Infallible;
    fn ready(self) -> Result<T, Option<Self::Why>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Debug> Polled for Result<T, E> {
    type Value = T;
    type Why = E;
    fn ready(self) -> Result<T, Option<E>> {
        self.map_err(Some)
    }
}

/// How long a wait sleeps between two polls.
const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

fn give_up(what: &str, why: Option<impl std::fmt::Debug>) -> ! {
    match why {
        Some(why) => panic!("never saw {what}: {why:#?}"),
        None => panic!("never saw {what}"),
    }
}

/// Polls `f` until it gives a value, for at most `within`; panics naming
/// `what` (and the last poll's reason, if it gave one) when it never does.
pub async fn until<P: Polled>(
    what: &str,
    within: std::time::Duration,
    mut f: impl AsyncFnMut() -> P,
) -> P::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        match f().await.ready() {
            Ok(v) => return v,
            Err(why) if std::time::Instant::now() >= deadline => give_up(what, why),
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// [`until`] for code off the async runtime (a test's load threads, the
/// `fabric` command line): sleeps the thread between polls.
pub fn until_sync<P: Polled>(
    what: &str,
    within: std::time::Duration,
    mut f: impl FnMut() -> P,
) -> P::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        match f().ready() {
            Ok(v) => return v,
            Err(why) if std::time::Instant::now() >= deadline => give_up(what, why),
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    }
}
