//! AES-256-GCM envelope encryption: per-app data keys derived from a versioned master keyring.
//!
//! A sealed record is laid out as
//!
//! ```text
//! +--------+-------------------+-----------------+---------------------------+
//! | format | key version (u32) | nonce (96 bits) | ciphertext + 128-bit tag  |
//! | 1 byte | 4 bytes, BE       | 12 bytes        | len(plaintext) + 16 bytes |
//! +--------+-------------------+-----------------+---------------------------+
//! ```
//!
//! The data key for an app and key version is HKDF-SHA256 over that version's
//! master key, with the app name in the `info`. The AAD binds the header, the
//! app, the resource kind (queue, store or the control plane's registry), the
//! resource name and the record key, so a record copied to another app,
//! resource or key fails to open.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The format byte of records sealed by this module.
pub const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed record adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const HKDF_SALT: &[u8] = b"worker-fabric/envelope/v1";

/// What kind of resource a record belongs to; part of the AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A message of a persistent queue.
    Queue,
    /// A value of an object store.
    Store,
    /// A record of the control plane's registry (an app, a placement, a tenant).
    Registry,
}

impl ResourceKind {
    fn tag(self) -> u8 {
        match self {
            ResourceKind::Queue => b'q',
            ResourceKind::Store => b's',
            ResourceKind::Registry => b'r',
        }
    }
}

/// Where a record lives: everything the AAD binds besides the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    /// The app that owns the record (for the registry, a name no app can have).
    pub app: &'a str,
    /// Queue, store or registry.
    pub kind: ResourceKind,
    /// The queue or store name (for the registry, the record's kind).
    pub resource: &'a str,
    /// The message id or object key (for the registry, the record's id).
    pub key: &'a str,
}

impl Aad<'_> {
    /// Length-prefixed encoding, so that no two distinct locations encode alike.
    fn encode(&self, header: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            header.len() + 1 + 12 + self.app.len() + self.resource.len() + self.key.len(),
        );
        out.extend_from_slice(header);
        out.push(self.kind.tag());
        for part in [self.app, self.resource, self.key] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// Why a record could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag.
    #[error("sealed record truncated: {len} bytes, at least {OVERHEAD} expected")]
    Truncated {
        /// The record's length.
        len: usize,
    },
    /// The format byte is not one this build reads.
    #[error("sealed record has unknown format {0}")]
    UnknownFormat(u8),
    /// Sealed under a key version this keyring does not hold.
    #[error("sealed record needs key version {0}, which is not loaded")]
    UnknownKeyVersion(u32),
    /// The tag did not verify: the record was altered or belongs elsewhere.
    #[error(
        "sealed record failed authentication (tampered, or moved from another app, resource or key)"
    )]
    Rejected,
}

/// Why a keyring could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key material is not in the expected form.
    #[error("master key {origin}: {reason}")]
    Malformed {
        /// Where the key came from (a path or a variable name).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A 32-byte master key, wiped from memory on drop.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut *bytes);
        MasterKey(bytes)
    }

    fn derive(&self, app: &str, version: u32) -> Aes256Gcm {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &*self.0);
        let mut info = Vec::with_capacity(app.len() + 16);
        info.extend_from_slice(b"data-key\0");
        info.extend_from_slice(&version.to_be_bytes());
        info.extend_from_slice(app.as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(&info, &mut *okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Aes256Gcm::new((&*okm).into())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Several master key versions: seals with the newest, opens with any.
///
/// Cheap to clone; derived data keys are cached per app and version.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<KeyringInner>,
}

struct KeyringInner {
    keys: BTreeMap<u32, MasterKey>,
    newest: u32,
    cache: RwLock<HashMap<(String, u32), Arc<Aes256Gcm>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.inner.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring of one key, as version 1.
    pub fn single(key: MasterKey) -> Self {
        Self::new([(1, key)]).expect("one key is a valid keyring")
    }

    /// A keyring of the given versions; the highest seals.
    pub fn new(keys: impl IntoIterator<Item = (u32, MasterKey)>) -> Result<Self, KeyError> {
        let keys: BTreeMap<u32, MasterKey> = keys.into_iter().collect();
        let Some(&newest) = keys.keys().next_back() else {
            return Err(KeyError::Malformed {
                origin: "keyring".into(),
                reason: "no key given".into(),
            });
        };
        Ok(Keyring {
            inner: Arc::new(KeyringInner {
                keys,
                newest,
                cache: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// Parses the text form: entries separated by newlines or commas, each
    /// `VERSION:BASE64` or a bare `BASE64` (version 1); `#` starts a comment line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let malformed = |reason: String| KeyError::Malformed {
            origin: origin.to_string(),
            reason,
        };
        let mut keys = BTreeMap::new();
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (n, entry) in entries.enumerate() {
            let (version, b64) = match entry.split_once(':') {
                Some((v, k)) => {
                    let v: u32 = v.trim().parse().map_err(|_| {
                        malformed(format!("entry {}: version {v:?} is not a number", n + 1))
                    })?;
                    (v, k.trim())
                }
                None => (1, entry),
            };
            let raw = Zeroizing::new(
                B64.decode(b64)
                    .map_err(|e| malformed(format!("entry {}: not valid base64 ({e})", n + 1)))?,
            );
            let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                malformed(format!(
                    "entry {}: {} bytes, a master key is 32",
                    n + 1,
                    raw.len()
                ))
            })?;
            if keys.insert(version, MasterKey::from_bytes(bytes)).is_some() {
                return Err(malformed(format!("version {version} given twice")));
            }
        }
        Keyring::new(keys).map_err(|_| malformed("no key found".into()))
    }

    /// Reads a keyring file in the text form of [`Keyring::parse`].
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads the keyring from the environment variable `var`, if it is set.
    pub fn from_env(var: &str) -> Result<Option<Self>, KeyError> {
        match std::env::var(var) {
            Ok(text) => Self::parse(&Zeroizing::new(text), var).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Malformed {
                origin: var.to_string(),
                reason: "not valid UTF-8".into(),
            }),
        }
    }

    /// Loads the keyring file at `path`, creating it with one fresh key and
    /// mode 0600 when it does not exist (for a local fabric's data directory).
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key = MasterKey::generate();
        let text = Zeroizing::new(format!(
            "# Worker Fabric master keyring: VERSION:BASE64, newest seals.\n1:{}\n",
            B64.encode(*key.0)
        ));
        match crate::secret_file::create_new(path, text.as_bytes()) {
            Ok(()) => Ok(Keyring::single(key)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(io(e)),
        }
    }

    /// The version new records are sealed with.
    pub fn newest_version(&self) -> u32 {
        self.inner.newest
    }

    fn cipher(&self, app: &str, version: u32) -> Option<Arc<Aes256Gcm>> {
        let cache_key = (app.to_string(), version);
        if let Some(c) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
        {
            return Some(c.clone());
        }
        let cipher = Arc::new(self.inner.keys.get(&version)?.derive(app, version));
        self.inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, cipher.clone());
        Some(cipher)
    }

    /// Seals `plaintext` for the location `aad` with the newest key version.
    pub fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Vec<u8> {
        let version = self.inner.newest;
        let cipher = self
            .cipher(aad.app, version)
            .expect("the newest version is always loaded");
        let mut header = [0u8; HEADER_LEN];
        header[0] = FORMAT_V1;
        header[1..5].copy_from_slice(&version.to_be_bytes());
        crate::random::fill(&mut header[5..]);
        let nonce = Nonce::from_slice(&header[5..]);
        let ct = cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad.encode(&header),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a record sealed for the location `aad`.
    pub fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD {
            return Err(OpenError::Truncated { len: sealed.len() });
        }
        let (header, ct) = sealed.split_at(HEADER_LEN);
        if header[0] != FORMAT_V1 {
            return Err(OpenError::UnknownFormat(header[0]));
        }
        let version = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let cipher = self
            .cipher(aad.app, version)
            .ok_or(OpenError::UnknownKeyVersion(version))?;
        cipher
            .decrypt(
                Nonce::from_slice(&header[5..]),
                Payload {
                    msg: ct,
                    aad: &aad.encode(header),
                },
            )
            .map_err(|_| OpenError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad<'a>(key: &'a str) -> Aad<'a> {
        Aad {
            app: "orders",
            kind: ResourceKind::Queue,
            resource: "incoming",
            key,
        }
    }

    #[test]
    fn round_trips_and_hides_plaintext() {
        let ring = Keyring::single(MasterKey::generate());
        let sealed = ring.seal(&aad("m1"), b"order 42 for alice");
        assert_eq!(sealed.len(), b"order 42 for alice".len() + OVERHEAD);
        assert!(
            !sealed
                .windows(b"alice".len())
                .any(|w| w == b"alice".as_slice())
        );
        assert_eq!(
            ring.open(&aad("m1"), &sealed).unwrap(),
            b"order 42 for alice"
        );
    }

    #[test]
    fn two_seals_of_one_plaintext_differ() {
        let ring = Keyring::single(MasterKey::generate());
        assert_ne!(ring.seal(&aad("k"), b"same"), ring.seal(&aad("k"), b"same"));
    }

    #[test]
    fn misplaced_records_are_rejected() {
        let ring = Keyring::single(MasterKey::generate());
        let sealed = ring.seal(&aad("m1"), b"x");
        let elsewhere = [
            Aad {
                app: "billing",
                ..aad("m1")
            },
            Aad {
                kind: ResourceKind::Store,
                ..aad("m1")
            },
            Aad {
                resource: "outgoing",
                ..aad("m1")
            },
            aad("m2"),
        ];
        for place in elsewhere {
            assert_eq!(
                ring.open(&place, &sealed),
                Err(OpenError::Rejected),
                "{place:?}"
            );
        }
    }

    #[test]
    fn aad_fields_cannot_be_shifted_into_each_other() {
        let ring = Keyring::single(MasterKey::generate());
        let a = Aad {
            app: "ab",
            kind: ResourceKind::Queue,
            resource: "c",
            key: "",
        };
        let b = Aad {
            app: "a",
            kind: ResourceKind::Queue,
            resource: "bc",
            key: "",
        };
        let sealed = ring.seal(&a, b"x");
        // Different apps derive different keys, but the AAD alone must also differ.
        assert_ne!(a.encode(&[]), b.encode(&[]));
        assert_eq!(ring.open(&b, &sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn rotation_seals_with_newest_and_opens_any() {
        let (k1, k2) = (MasterKey::generate(), MasterKey::generate());
        let old = Keyring::single(k1.clone());
        let sealed_old = old.seal(&aad("m"), b"before rotation");
        let rotated = Keyring::new([(1, k1), (2, k2.clone())]).unwrap();
        assert_eq!(rotated.newest_version(), 2);
        assert_eq!(
            rotated.open(&aad("m"), &sealed_old).unwrap(),
            b"before rotation"
        );
        let sealed_new = rotated.seal(&aad("m"), b"after");
        assert_eq!(u32::from_be_bytes(sealed_new[1..5].try_into().unwrap()), 2);
        // A node that has not loaded version 2 says so rather than guessing.
        assert_eq!(
            old.open(&aad("m"), &sealed_new),
            Err(OpenError::UnknownKeyVersion(2))
        );
        // Version 2 alone still opens what version 2 sealed.
        let only2 = Keyring::new([(2, k2)]).unwrap();
        assert_eq!(only2.open(&aad("m"), &sealed_new).unwrap(), b"after");
    }

    #[test]
    fn truncated_and_unknown_format_are_typed_errors() {
        let ring = Keyring::single(MasterKey::generate());
        let mut sealed = ring.seal(&aad("m"), b"payload");
        for len in 0..OVERHEAD {
            assert_eq!(
                ring.open(&aad("m"), &sealed[..len]),
                Err(OpenError::Truncated { len })
            );
        }
        sealed[0] = 9;
        assert_eq!(
            ring.open(&aad("m"), &sealed),
            Err(OpenError::UnknownFormat(9))
        );
    }

    #[test]
    fn another_fabric_cannot_open() {
        let sealed = Keyring::single(MasterKey::generate()).seal(&aad("m"), b"secret");
        let other = Keyring::single(MasterKey::generate());
        assert_eq!(other.open(&aad("m"), &sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn parses_text_forms() {
        let k = B64.encode([7u8; 32]);
        let ring = Keyring::parse(&k, "test").unwrap();
        assert_eq!(ring.newest_version(), 1);
        let ring = Keyring::parse(&format!("# comment\n1:{k}\n3:{k}, 2:{k}\n"), "test").unwrap();
        assert_eq!(ring.newest_version(), 3);
        for bad in [
            "",
            "x:abc",
            "1:not-base64!",
            &B64.encode([1u8; 16]),
            &format!("1:{k},1:{k}"),
        ] {
            let err = Keyring::parse(bad, "FABRIC_MASTER_KEY")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("master key FABRIC_MASTER_KEY: "), "{err}");
            assert!(
                !err.contains(&k),
                "a key must never reach an error message: {err}"
            );
        }
    }

    #[test]
    fn generated_keyring_is_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let first = Keyring::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal(&aad("m"), b"kept across restarts");
        let second = Keyring::load_or_generate(&path).unwrap();
        assert_eq!(
            second.open(&aad("m"), &sealed).unwrap(),
            b"kept across restarts"
        );
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = MasterKey::from_bytes([0xAB; 32]);
        let ring = Keyring::single(key.clone());
        let shown = format!("{key:?} {ring:?}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains(&B64.encode([0xAB; 32])), "{shown}");
    }
}
