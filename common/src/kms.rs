//! The master keyring held by KMS: versions made with `GenerateDataKey`, kept only wrapped, unwrapped with `Decrypt` at start.
//!
//! The wrapped keyring is a text file of `VERSION:BASE64` lines, each the
//! KMS ciphertext of one 32-byte master key version. It is not a secret:
//! only `kms:Decrypt` on the fabric's key, under the encryption context
//! `{"fabric": NAME, "key-version": VERSION}`, opens a line, so a line
//! copied to another fabric or to another version number does not open.
//! The unwrapped keys live in memory only (wiped on drop); sealing and
//! opening never call KMS, so a KMS outage while running changes nothing.
//!
//! Adding a version (rotation) appends a line; records sealed under older
//! versions stay readable, as the keyring keeps every version.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::error::DisplayErrorContext;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::envelope::{Keyring, MasterKey};

/// The wrapped keyring's file name in the data directory.
pub const WRAPPED_FILE: &str = "master.key.kms";
/// The encryption context entry naming the fabric.
pub const CONTEXT_FABRIC: &str = "fabric";
/// The encryption context entry naming the key version.
pub const CONTEXT_VERSION: &str = "key-version";

/// The largest wrapped keyring file read (a version's line is under 9 KiB).
const MAX_FILE: u64 = 1 << 20;
/// The most versions a keyring holds; each is one `Decrypt` at start.
const MAX_VERSIONS: usize = 256;
/// The longest KMS ciphertext (`CiphertextBlob` is at most 6144 bytes).
const MAX_BLOB: usize = 6144;
/// The longest one attempt of a KMS call may take (unless the SDK configuration sets one).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one KMS call may take, retries included (unless the SDK configuration sets one).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the KMS-wrapped keyring could not be loaded or extended.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The wrapped keyring file could not be read or written.
    #[error("wrapped master keyring {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The wrapped keyring is not in the expected form.
    #[error("wrapped master keyring {origin}: {reason}")]
    Malformed {
        /// Where it came from.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no wrapped keyring, and this component may not create one.
    #[error(
        "wrapped master keyring {path} not found: add the first version with `fabric master-key add` (this component does not create resources: create_resources is off)"
    )]
    Missing {
        /// The file.
        path: String,
    },
    /// KMS refused or failed a call about the key itself (finding or making it).
    #[error("KMS {op} of key {key}: {message}")]
    Key {
        /// The operation.
        op: &'static str,
        /// The KMS key.
        key: String,
        /// The SDK's account of the failure.
        message: String,
    },
    /// KMS refused or failed a call about a master key version.
    #[error("KMS {op} of master key version {version} under key {key}: {message}")]
    Kms {
        /// The operation.
        op: &'static str,
        /// The key version concerned.
        version: u32,
        /// The KMS key.
        key: String,
        /// The SDK's account of the failure (never key material).
        message: String,
    },
}

/// Master key versions as KMS ciphertexts, by version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wrapped(BTreeMap<u32, Vec<u8>>);

impl Wrapped {
    /// Parses the text form: `VERSION:BASE64` lines; `#` starts a comment line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KmsError> {
        let malformed = |reason: String| KmsError::Malformed {
            origin: origin.to_string(),
            reason,
        };
        let mut out = BTreeMap::new();
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for (n, line) in lines.enumerate() {
            if out.len() == MAX_VERSIONS {
                return Err(malformed(format!("more than {MAX_VERSIONS} versions")));
            }
            let Some((version, b64)) = line.split_once(':') else {
                return Err(malformed(format!("line {}: not VERSION:BASE64", n + 1)));
            };
            let version: u32 = version
                .trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    malformed(format!(
                        "line {}: version {version:?} is not a positive number",
                        n + 1
                    ))
                })?;
            let blob = B64
                .decode(b64.trim())
                .map_err(|e| malformed(format!("line {}: not valid base64 ({e})", n + 1)))?;
            if blob.is_empty() || blob.len() > MAX_BLOB {
                return Err(malformed(format!(
                    "line {}: {} bytes, a KMS ciphertext is 1 to {MAX_BLOB}",
                    n + 1,
                    blob.len()
                )));
            }
            if out.insert(version, blob).is_some() {
                return Err(malformed(format!("version {version} given twice")));
            }
        }
        if out.is_empty() {
            return Err(malformed("no version found".into()));
        }
        Ok(Wrapped(out))
    }

    /// The text form [`Wrapped::parse`] reads.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# Worker Fabric master keyring, wrapped by KMS: VERSION:BASE64 of each version's KMS\n\
             # ciphertext; the newest seals. Only KMS Decrypt under this fabric's context opens it.\n",
        );
        for (version, blob) in &self.0 {
            text.push_str(&format!("{version}:{}\n", B64.encode(blob)));
        }
        text
    }

    /// The versions held, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.keys().copied()
    }

    /// Reads a wrapped keyring file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, KmsError> {
        let io = |source| KmsError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        use std::io::Read as _;
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE {
            return Err(KmsError::Malformed {
                origin: path.display().to_string(),
                reason: format!("larger than {MAX_FILE} bytes"),
            });
        }
        Self::parse(&text, &path.display().to_string()).map(Some)
    }
}

/// A fabric's KMS key: makes and unwraps its master key versions.
#[derive(Clone)]
pub struct Kms {
    client: Client,
    key: String,
    fabric: String,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("key", &self.key)
            .field("fabric", &self.fabric)
            .finish()
    }
}

impl Kms {
    /// The key `key` (id, ARN or alias) of the fabric `fabric`, through
    /// aws-config's default chain (`AWS_ENDPOINT_URL_KMS` for an emulator).
    /// Each call is bounded, so an unreachable KMS fails a start, not hangs it.
    pub async fn new(key: &str, fabric: &str) -> Self {
        Self::with_config(&crate::aws::sdk_config().await, key, fabric)
    }

    /// As [`Kms::new`], with the given SDK configuration.
    pub fn with_config(sdk: &aws_config::SdkConfig, key: &str, fabric: &str) -> Self {
        let timeouts = crate::aws::bounded_timeouts(sdk, ATTEMPT_TIMEOUT, CALL_TIMEOUT);
        let config = aws_sdk_kms::config::Builder::from(sdk).timeout_config(timeouts);
        Kms {
            client: Client::from_conf(config.build()),
            key: key.to_string(),
            fabric: fabric.to_string(),
        }
    }

    fn kms_error(&self, op: &'static str, version: u32, message: String) -> KmsError {
        KmsError::Kms {
            op,
            version,
            key: self.key.clone(),
            message,
        }
    }

    /// The key, made when `key` is an alias that names none yet (for
    /// `fabric up --backend aws`, which creates what it needs): a symmetric
    /// key with yearly rotation, and the alias. Returns the key's ARN.
    pub async fn ensure_key(&self) -> Result<String, KmsError> {
        let fail = |op, message: String| KmsError::Key {
            op,
            key: self.key.clone(),
            message,
        };
        match self.client.describe_key().key_id(&self.key).send().await {
            Ok(out) => {
                return out
                    .key_metadata
                    .and_then(|m| m.arn)
                    .ok_or_else(|| fail("DescribeKey", "answered no key ARN".into()));
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_not_found_exception())
                    && self.key.starts_with("alias/") => {}
            Err(e) => return Err(fail("DescribeKey", DisplayErrorContext(&e).to_string())),
        }
        let created = self
            .client
            .create_key()
            .description(format!(
                "Worker Fabric {}: master key versions",
                self.fabric
            ))
            .send()
            .await
            .map_err(|e| fail("CreateKey", DisplayErrorContext(&e).to_string()))?;
        let meta = created
            .key_metadata
            .ok_or_else(|| fail("CreateKey", "answered no key".into()))?;
        let arn = meta.arn.unwrap_or_else(|| meta.key_id.clone());
        self.client
            .enable_key_rotation()
            .key_id(&meta.key_id)
            .send()
            .await
            .map_err(|e| fail("EnableKeyRotation", DisplayErrorContext(&e).to_string()))?;
        match self
            .client
            .create_alias()
            .alias_name(&self.key)
            .target_key_id(&meta.key_id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(key = %arn, alias = %self.key, "created the fabric's KMS key");
                Ok(arn)
            }
            // Another instance made the alias first: use its key (ours stays
            // unused; scheduling its deletion needs a right we do not ask for).
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_already_exists_exception()) =>
            {
                self.client
                    .describe_key()
                    .key_id(&self.key)
                    .send()
                    .await
                    .map_err(|e| fail("DescribeKey", DisplayErrorContext(&e).to_string()))?
                    .key_metadata
                    .and_then(|m| m.arn)
                    .ok_or_else(|| fail("DescribeKey", "answered no key ARN".into()))
            }
            Err(e) => Err(fail("CreateAlias", DisplayErrorContext(&e).to_string())),
        }
    }

    /// Unwraps every version: the keyring, in memory only.
    pub async fn unwrap(&self, wrapped: &Wrapped) -> Result<Keyring, KmsError> {
        let mut keys = Vec::with_capacity(wrapped.0.len());
        for (&version, blob) in &wrapped.0 {
            let out = self
                .client
                .decrypt()
                .key_id(&self.key)
                .ciphertext_blob(Blob::new(blob.clone()))
                .encryption_context(CONTEXT_FABRIC, &self.fabric)
                .encryption_context(CONTEXT_VERSION, version.to_string())
                .send()
                .await
                .map_err(|e| {
                    self.kms_error("Decrypt", version, DisplayErrorContext(&e).to_string())
                })?;
            let plain = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
            keys.push((version, self.master_key("Decrypt", version, &plain)?));
        }
        Keyring::new(keys).map_err(|e| KmsError::Malformed {
            origin: "wrapped master keyring".into(),
            reason: e.to_string(),
        })
    }

    /// A KMS answer as a master key: exactly 32 bytes, or an error that does not show them.
    fn master_key(
        &self,
        op: &'static str,
        version: u32,
        plain: &[u8],
    ) -> Result<MasterKey, KmsError> {
        let bytes: [u8; 32] = plain.try_into().map_err(|_| {
            self.kms_error(
                op,
                version,
                format!("answered a {}-byte key, not 32", plain.len()),
            )
        })?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// Makes a new master key version (the next number) with `GenerateDataKey`
    /// and adds its ciphertext to `wrapped`; returns the version.
    pub async fn add_version(&self, wrapped: &mut Wrapped) -> Result<u32, KmsError> {
        let version = wrapped
            .0
            .keys()
            .next_back()
            .map_or(Some(1), |v| v.checked_add(1));
        let version = version.ok_or_else(|| KmsError::Malformed {
            origin: "wrapped master keyring".into(),
            reason: "no version number left".into(),
        })?;
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(CONTEXT_FABRIC, &self.fabric)
            .encryption_context(CONTEXT_VERSION, version.to_string())
            .send()
            .await
            .map_err(|e| {
                self.kms_error(
                    "GenerateDataKey",
                    version,
                    DisplayErrorContext(&e).to_string(),
                )
            })?;
        // The plaintext is checked, then dropped (wiped): what is kept is the ciphertext.
        let plain = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        self.master_key("GenerateDataKey", version, &plain)?;
        let blob = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .unwrap_or_default();
        if blob.is_empty() || blob.len() > MAX_BLOB {
            return Err(self.kms_error(
                "GenerateDataKey",
                version,
                format!("answered a {}-byte ciphertext", blob.len()),
            ));
        }
        wrapped.0.insert(version, blob);
        Ok(version)
    }

    /// Loads the keyring from the wrapped keyring at `path`. When there is
    /// none, `create` makes version 1 and writes it (the first writer wins
    /// a race; the others read its file); otherwise it is an error naming
    /// the file.
    pub async fn load(&self, path: &Path, create: bool) -> Result<Keyring, KmsError> {
        if let Some(wrapped) = Wrapped::read(path)? {
            return self.unwrap(&wrapped).await;
        }
        if !create {
            return Err(KmsError::Missing {
                path: path.display().to_string(),
            });
        }
        let mut wrapped = Wrapped::default();
        self.add_version(&mut wrapped).await?;
        let io = |source| KmsError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        match crate::secret_file::create_new(path, wrapped.to_text().as_bytes()) {
            Ok(()) => {
                tracing::info!(file = %path.display(), key = %self.key, "created the KMS-wrapped master keyring");
                self.unwrap(&wrapped).await
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let theirs = Wrapped::read(path)?.ok_or_else(|| KmsError::Missing {
                    path: path.display().to_string(),
                })?;
                self.unwrap(&theirs).await
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Adds a master key version to the wrapped keyring at `path` (creating
    /// it when missing) and returns it: a rotation. Records sealed under older
    /// versions stay readable; components seal with the new version once
    /// restarted. The file is replaced whole, never left half-written.
    pub async fn add_to_file(&self, path: &Path) -> Result<u32, KmsError> {
        let mut wrapped = Wrapped::read(path)?.unwrap_or_default();
        // Every version already there must open under this key and fabric:
        // a rotation never hides a broken keyring behind a new version.
        if wrapped.0.is_empty() {
            tracing::info!(file = %path.display(), "creating the KMS-wrapped master keyring");
        } else {
            self.unwrap(&wrapped).await?;
        }
        let version = self.add_version(&mut wrapped).await?;
        let io = |source| KmsError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut nonce = [0u8; 8];
        crate::random::fill(&mut nonce);
        let tmp = dir.join(format!(
            ".{WRAPPED_FILE}.{:016x}.new",
            u64::from_ne_bytes(nonce)
        ));
        crate::secret_file::create_new(&tmp, wrapped.to_text().as_bytes()).map_err(io)?;
        let renamed =
            std::fs::rename(&tmp, path).and_then(|()| std::fs::File::open(dir)?.sync_all());
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed.map_err(io)?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_round_trips_and_refuses_what_is_not_a_wrapped_keyring() {
        let wrapped = Wrapped([(1, vec![1u8; 184]), (3, vec![3u8; 184])].into());
        let text = wrapped.to_text();
        assert_eq!(Wrapped::parse(&text, "t").unwrap(), wrapped);
        let b = B64.encode([7u8; 10]);
        let too_long = B64.encode(vec![0u8; MAX_BLOB + 1]);
        for bad in [
            "".to_string(),
            "# only a comment\n".to_string(),
            b.clone(),
            format!("0:{b}"),
            format!("-1:{b}"),
            format!("x:{b}"),
            "1:not base64!".to_string(),
            "1:".to_string(),
            format!("1:{too_long}"),
            format!("1:{b}\n1:{b}"),
        ] {
            let err = Wrapped::parse(&bad, "FILE").unwrap_err().to_string();
            assert!(err.starts_with("wrapped master keyring FILE: "), "{err}");
        }
        let many: String = (1..=MAX_VERSIONS as u32 + 1)
            .map(|v| format!("{v}:{b}\n"))
            .collect();
        assert!(Wrapped::parse(&many, "FILE").is_err());
    }

    #[test]
    fn a_missing_file_is_none_and_an_oversized_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Wrapped::read(&dir.path().join("none")).unwrap(), None);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_FILE as usize + 10]).unwrap();
        assert!(
            Wrapped::read(&big)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }
}
