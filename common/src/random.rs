//! Random bytes for keys, nonces, tokens and instance ids.

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill(buf: &mut [u8]) {
    // The OS random source failing is not something a service can carry on from.
    getrandom::fill(buf).expect("the operating system's random source failed");
}
