//! Property tests of envelope encryption: round trips, and no altered record or place ever opens.

use common::envelope::{Aad, Keyring, MasterKey, OVERHEAD, OpenError, ResourceKind};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = ResourceKind> {
    prop_oneof![
        Just(ResourceKind::Queue),
        Just(ResourceKind::Store),
        Just(ResourceKind::Registry)
    ]
}

#[derive(Debug, Clone)]
struct Place {
    app: String,
    kind: ResourceKind,
    resource: String,
    key: String,
}

impl Place {
    fn aad(&self) -> Aad<'_> {
        Aad {
            app: &self.app,
            kind: self.kind,
            resource: &self.resource,
            key: &self.key,
        }
    }
}

fn place() -> impl Strategy<Value = Place> {
    ("[a-z][a-z0-9-]{0,12}", kind(), "\\PC{0,16}", "\\PC{0,32}").prop_map(
        |(app, kind, resource, key)| Place {
            app,
            kind,
            resource,
            key,
        },
    )
}

fn ring() -> Keyring {
    // One keyring for all cases: key derivation is not what is under test here.
    static RING: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    RING.get_or_init(|| Keyring::single(MasterKey::generate()))
        .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..4096), at in place()) {
        let sealed = ring().seal(&at.aad(), &payload);
        prop_assert_eq!(sealed.len(), payload.len() + OVERHEAD);
        prop_assert_eq!(ring().open(&at.aad(), &sealed).unwrap(), payload);
    }

    #[test]
    fn any_single_bit_flip_fails_to_open(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        at in place(),
        bit in any::<proptest::sample::Index>(),
    ) {
        let mut sealed = ring().seal(&at.aad(), &payload);
        let bit = bit.index(sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        let result = ring().open(&at.aad(), &sealed);
        prop_assert!(result.is_err(), "bit {} flipped and the record still opened", bit);
        if bit >= 8 * 5 {
            // Past the format byte and key version, only authentication can catch it.
            prop_assert_eq!(result, Err(OpenError::Rejected));
        }
    }

    #[test]
    fn any_change_of_place_fails_to_open(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        at in place(),
        other in place(),
    ) {
        prop_assume!(at.app != other.app || at.kind != other.kind
            || at.resource != other.resource || at.key != other.key);
        let sealed = ring().seal(&at.aad(), &payload);
        prop_assert_eq!(ring().open(&other.aad(), &sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), at in place()) {
        prop_assert!(ring().open(&at.aad(), &bytes).is_err());
    }

    #[test]
    fn truncation_fails_to_open(payload in proptest::collection::vec(any::<u8>(), 1..256), at in place(), cut in any::<proptest::sample::Index>()) {
        let sealed = ring().seal(&at.aad(), &payload);
        let len = cut.index(sealed.len());
        prop_assert!(ring().open(&at.aad(), &sealed[..len]).is_err());
    }
}
