//! API keys as the registry keeps them: by the SHA-256 hash of the key, with
//! their tenant, name, prefix and dates; added, looked up, revoked.

use serde::{Deserialize, Serialize};

use super::{RecordKind, Records, Registry, RegistryError, key_hash};

/// What the registry keeps of one API key (never the key itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// The tenant the key belongs to.
    pub tenant: String,
    /// A name its tenant gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its first characters (`wfk_AbCd`), so a person can tell keys apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// When it was made (Unix milliseconds); unknown for a key from before
    /// keys had records of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// When it stops being accepted (Unix milliseconds); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Registered again at every start from the data directory (the local
    /// admin key): revoking it would not last, so it cannot be revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// How many characters of a key are kept to tell it apart: `wfk_` and four
/// of its random characters (24 bits, nothing an attacker can use).
pub const PREFIX_LEN: usize = 8;

impl KeyRecord {
    /// Reads a stored value: the JSON of a record, or, as keys were kept
    /// before they had records of their own, the bare tenant name (a tenant
    /// name never starts with `{`).
    pub(super) fn parse(plaintext: &[u8]) -> Result<Self, String> {
        if plaintext.first() == Some(&b'{') {
            return serde_json::from_slice(plaintext).map_err(|e| e.to_string());
        }
        let tenant = std::str::from_utf8(plaintext).map_err(|e| e.to_string())?;
        Ok(KeyRecord {
            tenant: tenant.to_string(),
            ..KeyRecord::default()
        })
    }

    /// A key's record for `tenant`, made now, with its prefix.
    pub fn new(api_key: &str, tenant: &str) -> Self {
        KeyRecord {
            tenant: tenant.to_string(),
            prefix: Some(api_key.chars().take(PREFIX_LEN).collect()),
            created_ms: Some(crate::access::now_ms()),
            ..KeyRecord::default()
        }
    }

    /// Whether the key is past its expiry at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A key's public id: the first 16 hex digits of its hash. It names the key
/// in `keys list` and `keys revoke` and says nothing of the key itself.
pub fn key_id(hash: &str) -> String {
    hash.chars().take(16).collect()
}

/// What revoking a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The key is gone: it is refused from now on.
    Revoked(KeyRecord),
    /// The tenant holds no key of that id.
    NotFound,
    /// It is the key the request came with and the tenant's last one:
    /// revoking it would lock the tenant out.
    LastKeyInUse,
    /// It is re-registered at every start (the local admin key).
    Pinned,
}

impl Registry {
    /// Registers `api_key` with its record; only its hash is stored. Returns
    /// the key's id once persisted.
    pub async fn add_key(&self, api_key: &str, record: KeyRecord) -> Result<String, RegistryError> {
        let hash = key_hash(api_key);
        let change = self.shared.change(|r| {
            r.tenants.insert(hash.clone(), record);
            vec![(RecordKind::Tenant, hash.clone())]
        });
        self.shared.persisted(change).await?;
        Ok(key_id(&hash))
    }

    /// The id and record of an API key, if it is registered.
    pub fn key(&self, api_key: &str) -> Option<(String, KeyRecord)> {
        let hash = key_hash(api_key);
        self.shared
            .read(|r| r.tenants.get(&hash).map(|k| (key_id(&hash), k.clone())))
    }

    /// Every key's id and record, in id order.
    pub fn keys(&self) -> Vec<(String, KeyRecord)> {
        let mut keys: Vec<_> = self.shared.read(|r| {
            r.tenants
                .iter()
                .map(|(hash, k)| (key_id(hash), k.clone()))
                .collect()
        });
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    /// Revokes `tenant`'s key `id`, unless it is `in_use` (the key the
    /// request came with) and the tenant's last one. Decided and done in one
    /// change, so two revokes at once cannot leave the tenant with no key.
    /// Returns once persisted.
    pub async fn revoke_key(
        &self,
        tenant: &str,
        id: &str,
        in_use: &str,
    ) -> Result<Revoked, RegistryError> {
        let mut outcome = Revoked::NotFound;
        let change = self.shared.change(|r| {
            let Some(hash) = find(r, |hash, k| k.tenant == tenant && key_id(hash) == id) else {
                return Vec::new();
            };
            let others = r
                .tenants
                .iter()
                .filter(|(h, k)| k.tenant == tenant && **h != hash)
                .count();
            if r.tenants[&hash].pinned {
                outcome = Revoked::Pinned;
                return Vec::new();
            }
            if id == in_use && others == 0 {
                outcome = Revoked::LastKeyInUse;
                return Vec::new();
            }
            if let Some(k) = r.tenants.remove(&hash) {
                outcome = Revoked::Revoked(k);
            }
            vec![(RecordKind::Tenant, hash)]
        });
        self.shared.persisted(change).await?;
        Ok(outcome)
    }

    /// Revokes every key of `tenant`; returns how many, once persisted.
    pub async fn remove_tenant_keys(&self, tenant: &str) -> Result<usize, RegistryError> {
        let mut count = 0;
        let change = self.shared.change(|r| {
            let gone: Vec<String> = r
                .tenants
                .iter()
                .filter(|(_, k)| k.tenant == tenant)
                .map(|(h, _)| h.clone())
                .collect();
            count = gone.len();
            gone.into_iter()
                .map(|h| {
                    r.tenants.remove(&h);
                    (RecordKind::Tenant, h)
                })
                .collect()
        });
        self.shared.persisted(change).await?;
        Ok(count)
    }
}

fn find(r: &Records, f: impl Fn(&str, &KeyRecord) -> bool) -> Option<String> {
    r.tenants
        .iter()
        .find(|(hash, k)| f(hash, k))
        .map(|(hash, _)| hash.clone())
}
