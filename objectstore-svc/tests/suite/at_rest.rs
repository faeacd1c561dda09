//! At rest: values (and chunks) are ciphertext, while keys stay readable.

use crate::harness::{Harness, contains};

pub async fn values_are_ciphertext_at_rest(h: Harness) {
    let secret = b"alice@example.com ordered 42 widgets";
    h.put("customer/alice", secret).await;
    // A value large enough to be chunked in DynamoDB.
    let mut large = b"CHUNKED-PLAINTEXT-MARKER ".repeat(40_000);
    large.extend_from_slice(secret);
    h.put("customer/bulk", &large).await;
    assert_eq!(h.value("customer/bulk").await.unwrap(), large);
    let raw = h.raw_bytes().await;
    assert!(
        contains(&raw, b"customer/alice"),
        "keys stay readable for listing"
    );
    assert!(
        !contains(&raw, b"alice@example.com"),
        "plaintext value at rest"
    );
    assert!(
        !contains(&raw, b"CHUNKED-PLAINTEXT-MARKER"),
        "plaintext chunk at rest"
    );
}
