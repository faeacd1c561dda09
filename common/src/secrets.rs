//! Where a component finds the master keyring and the fabric secret.
//!
//! In order: an explicit file from the config, then an environment variable
//! (`FABRIC_MASTER_KEY`, `FABRIC_SECRET`, base64), then a file in the data
//! directory, generated with mode 0600 on first use (a local fabric).

use crate::config::{ConfigError, ServiceConfig};
use crate::envelope::Keyring;
use crate::token::TokenKey;

/// The environment variable holding the master keyring's text form.
pub const MASTER_KEY_ENV: &str = "FABRIC_MASTER_KEY";
/// The environment variable holding the fabric secret (base64).
pub const SECRET_ENV: &str = "FABRIC_SECRET";
/// The keyring's file name in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The fabric secret's file name in the data directory.
pub const SECRET_FILE: &str = "fabric.secret";

/// A secret setting (an app token): read like a string, never shown by `Debug`,
/// so printing a configuration cannot leak it into a log.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Loads (or, in the data directory, creates) the master keyring.
pub fn keyring<S>(config: &ServiceConfig<S>) -> Result<Keyring, ConfigError> {
    let field = |e: crate::envelope::KeyError| ConfigError(e.to_string());
    if let Some(path) = &config.master_key_file {
        return Keyring::from_file(path).map_err(field);
    }
    if let Some(ring) = Keyring::from_env(MASTER_KEY_ENV).map_err(field)? {
        return Ok(ring);
    }
    Keyring::load_or_generate(&config.data_dir.join(MASTER_KEY_FILE)).map_err(field)
}

/// The exit code for a key service that cannot be reached or refuses (sysexits' `EX_UNAVAILABLE`).
pub const EXIT_KEYS_UNAVAILABLE: i32 = 69;

/// Why the master keyring could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The settings or the key file are wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KMS, or the wrapped keyring it unwraps, failed.
    #[cfg(feature = "kms")]
    #[error("master key: {0}")]
    Kms(#[from] crate::kms::KmsError),
}

impl KeyringError {
    /// Prints the error on one line to stderr and exits: 69 when KMS
    /// refused or could not be reached, 64 for anything else (a setting, a
    /// missing or malformed key file).
    pub fn exit(&self) -> ! {
        eprintln!("{self}");
        match self {
            #[cfg(feature = "kms")]
            KeyringError::Kms(
                crate::kms::KmsError::Kms { .. } | crate::kms::KmsError::Key { .. },
            ) => std::process::exit(EXIT_KEYS_UNAVAILABLE),
            _ => std::process::exit(crate::config::EXIT_INVALID_CONFIG),
        }
    }
}

/// Loads the master keyring: through KMS when `kms_key_id` is set (see
/// [`crate::kms`]; the wrapped keyring is `master_key_file` or
/// `<data_dir>/master.key.kms`, created only when `create_resources` is on),
/// else as [`keyring`] does.
pub async fn load_keyring<S>(config: &ServiceConfig<S>) -> Result<Keyring, KeyringError> {
    let Some(key) = &config.kms_key_id else {
        return Ok(keyring(config)?);
    };
    #[cfg(feature = "kms")]
    {
        let path = config
            .master_key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join(crate::kms::WRAPPED_FILE));
        let kms = crate::kms::Kms::new(key, &config.fabric_name).await;
        Ok(kms.load(&path, config.create_resources).await?)
    }
    #[cfg(not(feature = "kms"))]
    {
        Err(ConfigError::field(
            "kms_key_id",
            format!("{key}: this component is built without KMS support"),
        )
        .into())
    }
}

/// Loads (or, in the data directory, creates) the fabric secret for app tokens.
pub fn token_key<S>(config: &ServiceConfig<S>) -> Result<TokenKey, ConfigError> {
    let field = |e: crate::envelope::KeyError| ConfigError(e.to_string());
    if let Some(path) = &config.secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::field("secret_file", format!("{}: {e}", path.display())))?;
        return TokenKey::parse(&text, &path.display().to_string()).map_err(field);
    }
    if let Ok(text) = std::env::var(SECRET_ENV) {
        return TokenKey::parse(&text, SECRET_ENV).map_err(field);
    }
    TokenKey::load_or_generate(&config.data_dir.join(SECRET_FILE)).map_err(field)
}

/// Creates a secret file with mode 0600, durably; `AlreadyExists` if it is there.
pub fn create_secret_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    crate::secret_file::create_new(path, contents)
}
