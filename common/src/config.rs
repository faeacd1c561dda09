//! Typed configuration from a TOML file with `FABRIC_*` environment overrides.
//!
//! Precedence, lowest first: the struct's defaults, the TOML file, then the
//! environment (`FABRIC_LISTEN`, `FABRIC_DATA_DIR`, nested fields with `__`).
//! Only variables naming a field of the struct are read, so a shell that sets
//! `FABRIC_URL` for the CLI does not trip a service; unknown keys in the file
//! are errors, so a typo is caught rather than ignored.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The exit code for an invalid configuration (`EX_CONFIG` is 78; sysexits'
/// `EX_USAGE`, 64, is what the design asks for).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// An invalid configuration: one line saying what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An error about one field, from whichever source set it.
    pub fn field(field: &str, reason: impl std::fmt::Display) -> Self {
        ConfigError(format!("{field}: {reason}"))
    }

    /// Prints the error on one line to stderr and exits with code 64.
    pub fn exit(&self) -> ! {
        eprintln!("{self}");
        std::process::exit(EXIT_INVALID_CONFIG)
    }
}

/// Loads `T` from its defaults, the optional TOML `file` and `FABRIC_*` variables.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let env = Env::prefixed("FABRIC_");
    let defaults = Serialized::defaults(T::default());
    let known: BTreeSet<String> = defaults
        .data()
        .ok()
        .and_then(|mut profiles| profiles.remove(&figment::Profile::Default))
        .map(|dict| dict.into_keys().collect())
        .unwrap_or_default();
    let mut figment = Figment::from(defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "config file {} not found",
                path.display()
            )));
        }
        let file = Toml::file_exact(path);
        // Serde cannot deny unknown fields of a struct with a flattened part,
        // so unknown top-level keys of the file are caught here.
        if let Ok(mut profiles) = file.data()
            && let Some(dict) = profiles.remove(&figment::Profile::Default)
            && let Some(unknown) = dict.keys().find(|k| !known.contains(*k))
        {
            return Err(ConfigError(format!(
                "{unknown}: unknown field, expected one of {} (in {})",
                known.iter().cloned().collect::<Vec<_>>().join(", "),
                path.display()
            )));
        }
        figment = figment.merge(file);
    }
    let names = known.clone();
    let env = env
        .filter(move |key| {
            let top = key.as_str().split("__").next().unwrap_or_default();
            names.contains(&top.to_ascii_lowercase())
        })
        .split("__");
    let figment = figment.merge(env);
    figment
        .extract()
        .map_err(|e| ConfigError(culprit::<T>(&figment, &known).unwrap_or_else(|| one_line(&e))))
}

/// Finds the one value, given in the file or the environment, that the struct
/// refuses on its own. Serde reads a flattened part (a component's settings)
/// through a buffer that loses where a value came from, so the whole
/// extraction only says "in defaults"; trying each given value alone against
/// the defaults names the field and its source.
fn culprit<T>(figment: &Figment, known: &BTreeSet<String>) -> Option<String>
where
    T: Serialize + DeserializeOwned + Default,
{
    known.iter().find_map(|key| {
        let md = figment.find_metadata(key)?;
        let place = match &md.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if md.name.contains("environment") => format!("FABRIC_{}", key.to_ascii_uppercase()),
            _ => return None,
        };
        let value = figment.find_value(key).ok()?;
        let alone = Figment::from(Serialized::defaults(T::default()))
            .merge(Serialized::default(key, value));
        let err = alone.extract::<T>().err()?;
        let what = err.kind.to_string().replace('\n', " ");
        Some(format!("{key}: {what} (in {place})"))
    })
}

fn one_line(err: &figment::Error) -> String {
    let count = err.clone().count();
    let first = err
        .clone()
        .into_iter()
        .next()
        .unwrap_or_else(|| err.clone());
    let key = first.path.join(".").to_ascii_lowercase();
    let place = match &first.metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if md.name.contains("environment") && !key.is_empty() => {
                format!("FABRIC_{}", first.path.join("__").to_ascii_uppercase())
            }
            _ => md.name.to_string(),
        },
        None => "defaults".to_string(),
    };
    let what = first.kind.to_string().replace('\n', " ");
    let mut line = if key.is_empty() {
        format!("{what} (in {place})")
    } else {
        format!("{key}: {what} (in {place})")
    };
    if count > 1 {
        line.push_str(&format!(" (and {} more)", count - 1));
    }
    line
}

/// The default data directory: `$XDG_DATA_HOME/worker-fabric`, else `~/.local/share/worker-fabric`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("worker-fabric");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/worker-fabric"),
        None => PathBuf::from(".worker-fabric"),
    }
}

/// Settings of a component that has none beyond [`ServiceConfig`]'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NoSettings {}

/// What every service needs (where to listen, where its data lives, how long
/// to drain, where its keys are), plus the component's own `settings`, whose
/// fields sit beside these at the top level of the file and environment.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServiceConfig<S = NoSettings> {
    /// Address the service's HTTP API listens on (`FABRIC_LISTEN`).
    pub listen: SocketAddr,
    /// Directory for the service's files: keys, embedded stores (`FABRIC_DATA_DIR`).
    pub data_dir: PathBuf,
    /// How long in-flight work may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The master keyring file; when unset, `FABRIC_MASTER_KEY` or `<data_dir>/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// The fabric secret file for app tokens; when unset, `FABRIC_SECRET` or `<data_dir>/fabric.secret`.
    pub secret_file: Option<PathBuf>,
    /// The KMS key (id, ARN or alias) that wraps the master key versions
    /// (`FABRIC_KMS_KEY_ID`; the stack's `KeyArn` output). Set, the keyring
    /// is `master_key_file` or `<data_dir>/master.key.kms` in wrapped form,
    /// unwrapped through KMS at start; unset, it is a plain key file.
    pub kms_key_id: Option<String>,
    /// This fabric's name in the KMS encryption context of its master key
    /// versions (`FABRIC_FABRIC_NAME`; the stack's `Prefix`), so a version
    /// wrapped for another fabric does not unwrap here.
    pub fabric_name: String,
    /// Whether the component creates what it needs and is missing (tables,
    /// the first wrapped master key version) or fails naming it
    /// (`FABRIC_CREATE_RESOURCES`). Off for a component started alone, which
    /// runs on a stack it did not create (`infra/aws`); `fabric up` turns it on.
    pub create_resources: bool,
    /// The component's own settings.
    #[serde(flatten)]
    pub settings: S,
}

impl<S: Default> Default for ServiceConfig<S> {
    fn default() -> Self {
        ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: default_data_dir(),
            shutdown_grace: Duration::from_secs(10),
            master_key_file: None,
            secret_file: None,
            kms_key_id: None,
            fabric_name: "fabric-".to_string(),
            create_resources: false,
            settings: S::default(),
        }
    }
}

impl<S> ServiceConfig<S> {
    /// The same common fields with other settings (for `fabric up`, which
    /// configures every component from one set of common fields).
    pub fn with_settings<T>(&self, settings: T) -> ServiceConfig<T> {
        ServiceConfig {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            shutdown_grace: self.shutdown_grace,
            master_key_file: self.master_key_file.clone(),
            secret_file: self.secret_file.clone(),
            kms_key_id: self.kms_key_id.clone(),
            fabric_name: self.fabric_name.clone(),
            create_resources: self.create_resources,
            settings,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    // `Jail` serialises environment changes across tests and runs each in a
    // temporary directory; its error type is figment's, large but not ours.

    #[test]
    fn defaults_then_file_then_environment() {
        Jail::expect_with(|jail| {
            let c: ServiceConfig = load(None).unwrap();
            assert_eq!(c.listen, ServiceConfig::<NoSettings>::default().listen);
            jail.create_file(
                "svc.toml",
                "listen = \"127.0.0.1:7001\"\nshutdown_grace = \"3s\"\n",
            )?;
            let c: ServiceConfig = load(Some(Path::new("svc.toml"))).unwrap();
            assert_eq!(c.listen.port(), 7001);
            assert_eq!(c.shutdown_grace, Duration::from_secs(3));
            jail.set_env("FABRIC_LISTEN", "127.0.0.1:7002");
            jail.set_env("FABRIC_DATA_DIR", "/srv/fabric");
            // Variables meant for other programs are not this struct's business.
            jail.set_env("FABRIC_URL", "http://elsewhere");
            jail.set_env("FABRIC_TOKEN", "x");
            let c: ServiceConfig = load(Some(Path::new("svc.toml"))).unwrap();
            assert_eq!(c.listen.port(), 7002);
            assert_eq!(c.data_dir, PathBuf::from("/srv/fabric"));
            Ok(())
        });
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Extra {
        /// A component's own field.
        backend: String,
        /// A nested section.
        limits: Limits,
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Limits {
        max_body: u64,
    }

    #[test]
    fn component_settings_sit_beside_the_common_fields() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "q.toml",
                "listen = \"127.0.0.1:7003\"\nbackend = \"sqs\"\n[limits]\nmax_body = 5\n",
            )?;
            jail.set_env("FABRIC_LIMITS__MAX_BODY", "7");
            let c: ServiceConfig<Extra> = load(Some(Path::new("q.toml"))).unwrap();
            assert_eq!(c.listen.port(), 7003);
            assert_eq!(c.settings.backend, "sqs");
            assert_eq!(c.settings.limits.max_body, 7);
            jail.create_file("bad.toml", "backend = \"sqs\"\nbakend = 1\n")?;
            let text = load::<ServiceConfig<Extra>>(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("bakend") && text.contains("backend"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn errors_are_one_line_and_say_where() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listen = \"not an address\"\n")?;
            let text = load::<ServiceConfig>(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.starts_with("invalid configuration: "), "{text}");
            assert!(
                text.contains("listen") && text.contains("bad.toml"),
                "{text}"
            );

            jail.create_file("typo.toml", "lisen = \"127.0.0.1:1\"\n")?;
            let text = load::<ServiceConfig>(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("lisen") && text.contains("typo.toml"),
                "{text}"
            );

            jail.set_env("FABRIC_SHUTDOWN_GRACE", "soon");
            let text = load::<ServiceConfig>(None).unwrap_err().to_string();
            assert!(
                text.contains("shutdown_grace") && text.contains("FABRIC_SHUTDOWN_GRACE"),
                "{text}"
            );

            let text = load::<ServiceConfig>(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(text.contains("missing.toml"), "{text}");
            Ok(())
        });
    }
}
