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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resource_names() {
        assert!(validate_resource_name("queue", "incoming_v2.dlq-x").is_ok());
        for bad in ["", "a/b", "a b", "a\nb", &"q".repeat(65)] {
            let err = validate_resource_name("queue", bad).unwrap_err();
            assert_eq!(err.what, "queue");
        }
    }
}
