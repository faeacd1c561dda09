//! Names of apps and of their queues and stores, validated where they enter the fabric.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is invalid: {reason}")]
pub struct NameError {
    /// What kind of name.
    pub what: &'static str,
    /// The name as given (control characters escaped by `Debug`).
    pub name: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

/// The longest app name: `{app}-{n}` must stay within a 63-byte DNS label.
pub const MAX_APP_NAME: usize = 40;
/// The longest queue or store name.
pub const MAX_RESOURCE_NAME: usize = 64;

/// Checks an app name: a DNS label of lowercase letters, digits and inner
/// hyphens, starting with a letter, at most [`MAX_APP_NAME`] bytes.
pub fn validate_app_name(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what: "app name",
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_APP_NAME {
        return Err(err("must be 1 to 40 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("only lowercase letters, digits and '-' are allowed"));
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return Err(err("must start with a letter"));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(err("no trailing or doubled '-'"));
    }
    Ok(())
}

/// How many characters an app instance's id has.
pub const INSTANCE_LEN: usize = 10;

/// A fresh instance id for an app's first deploy: [`INSTANCE_LEN`]
/// characters of `a-z0-9`, about 51 random bits.
pub fn new_instance() -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; INSTANCE_LEN];
    crate::random::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The id an app instance has at the queue and object store services, in
/// its tokens and in its data keys: `{name}--{instance}`. App names hold no
/// `--`, so no name, and no other instance, has the same id. An app
/// deployed before instances existed has an empty instance, and its name
/// is its id.
pub fn app_id(name: &str, instance: &str) -> String {
    if instance.is_empty() {
        name.to_string()
    } else {
        format!("{name}--{instance}")
    }
}

/// Checks an app id as [`app_id`] makes them: an app name, optionally
/// followed by `--` and an instance of 1 to 16 lowercase letters and digits.
pub fn validate_app_id(id: &str) -> Result<(), NameError> {
    let Some((name, instance)) = id.split_once("--") else {
        return validate_app_name(id);
    };
    validate_app_name(name)?;
    if instance.is_empty()
        || instance.len() > 16
        || !instance
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NameError {
            what: "app id",
            name: id.to_string(),
            reason: "the instance after '--' must be 1 to 16 lowercase letters or digits",
        });
    }
    Ok(())
}

/// Whether apps named `a` and `b` would answer at one host: worker n of an
/// app answers at `{app}-{n}.{domain}`, so `shop-1` shadows worker 1 of
/// `shop` (either way round).
pub fn shadows(a: &str, b: &str) -> bool {
    let worker_of = |host: &str, app: &str| {
        host.strip_prefix(app)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    a == b || worker_of(a, b) || worker_of(b, a)
}

/// Checks a queue or store name: letters, digits, `-`, `_` and `.`, at most
/// [`MAX_RESOURCE_NAME`] bytes (short enough for an SQS queue name with a prefix).
pub fn validate_resource_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_RESOURCE_NAME {
        return Err(err("must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(err("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// An app's properties as a worker is handed them (`FABRIC_PROPERTIES`):
/// their JSON, base64url, so that no value's characters are read as
/// anything but text on the way.
pub fn encode_properties(properties: &std::collections::BTreeMap<String, String>) -> String {
    use base64::Engine as _;
    let json = serde_json::to_vec(properties).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The properties [`encode_properties`] made.
pub fn decode_properties(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    use base64::Engine as _;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|e| format!("properties: not base64url: {e}"))?;
    serde_json::from_slice(&json)
        .map_err(|e| format!("properties: not a JSON object of strings: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_their_encoding_whatever_they_hold() {
        let mut p = std::collections::BTreeMap::new();
        p.insert(
            "db.url".to_string(),
            "postgres://u:p@h/db?x=1&y=\"2\"".to_string(),
        );
        p.insert("greeting".to_string(), "héllo = {1}\n[2]".to_string());
        p.insert("n".to_string(), "123".to_string());
        let text = encode_properties(&p);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_properties(&text).unwrap(), p);
        assert!(decode_properties("not base64!").is_err());
        assert!(
            decode_properties(&encode_properties(&Default::default()))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn app_names() {
        for ok in ["orders", "a", "orders-eu-1", &"a".repeat(40)] {
            assert!(validate_app_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Orders",
            "1orders",
            "orders-",
            "or--ders",
            "or.ders",
            "ör",
            &"a".repeat(41),
        ] {
            assert!(validate_app_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn app_ids_are_names_or_names_with_an_instance_and_never_collide() {
        let instance = new_instance();
        assert_eq!(instance.len(), INSTANCE_LEN);
        assert_ne!(instance, new_instance());
        let id = app_id("shop", &instance);
        assert!(validate_app_id(&id).is_ok(), "{id}");
        assert!(validate_app_name(&id).is_err(), "an id is never a name");
        assert_eq!(app_id("shop", ""), "shop");
        assert!(validate_app_id("shop").is_ok());
        for bad in ["shop--", "shop--A1", "shop--a-b", "--abc", "shop--abc--def"] {
            assert!(validate_app_id(bad).is_err(), "{bad}");
        }
        assert!(validate_app_id(&format!("shop--{}", "a".repeat(17))).is_err());
    }

    #[test]
    fn names_that_would_answer_at_another_apps_worker_host_shadow_it() {
        assert!(shadows("shop-1", "shop"));
        assert!(shadows("shop", "shop-12"));
        assert!(shadows("shop", "shop"));
        assert!(!shadows("shop-eu", "shop"));
        assert!(!shadows("shop1", "shop"));
        assert!(!shadows("shop-1", "shop-2"));
        assert!(!shadows("shopping", "shop"));
    }

    #[test]
    fn resource_names() {
        assert!(validate_resource_name("queue", "incoming_v2.dlq-x").is_ok());
        for bad in ["", "a/b", "a b", "a\nb", &"q".repeat(65)] {
            let err = validate_resource_name("queue", bad).unwrap_err();
            assert_eq!(err.what, "queue");
        }
    }
}
