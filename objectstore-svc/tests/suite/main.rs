//! One test suite, run against every backend: the embedded store, and DynamoDB
//! through the emulator (`AWS_ENDPOINT_URL_DYNAMODB`).
//!
//! Each case starts the real service on `127.0.0.1:0` and talks to it with the
//! crate's client, in a store of its own.
//!
//! One file per subject: [`objects`], [`leases`], [`listing`], [`refusals`],
//! [`at_rest`], [`writes`] and [`forget`]; [`harness`] starts the service for each case.

mod at_rest;
mod forget;
mod harness;
mod leases;
mod listing;
mod objects;
mod refusals;
mod writes;

use at_rest::values_are_ciphertext_at_rest;
use harness::Harness;
use leases::one_lease_holder_at_a_time_and_takeover_fences;
use listing::listing_pages_through_ten_thousand_keys;
use objects::{
    cas_increments_lose_no_update, expired_keys_vanish_at_once,
    large_values_are_whole_under_racing_overwrites, put_if_absent_has_one_winner,
    round_trip_etags_delete_and_stats,
};
use objectstore_svc::backend::BackendKind;
use refusals::{apps_are_isolated_by_token, bad_input_is_refused_and_changes_nothing};
use writes::{
    hostile_write_batches_are_refused_whole, shared_writes_are_answered_each_as_if_alone,
};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Harness::start(super::BackendKind::Embedded).await).await
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Harness::start(super::BackendKind::DynamoDb).await).await
                }
            )*
        }
    };
}

suite!(
    round_trip_etags_delete_and_stats,
    cas_increments_lose_no_update,
    put_if_absent_has_one_winner,
    expired_keys_vanish_at_once,
    large_values_are_whole_under_racing_overwrites,
    one_lease_holder_at_a_time_and_takeover_fences,
    listing_pages_through_ten_thousand_keys,
    apps_are_isolated_by_token,
    bad_input_is_refused_and_changes_nothing,
    values_are_ciphertext_at_rest,
    shared_writes_are_answered_each_as_if_alone,
    hostile_write_batches_are_refused_whole,
);

/// Forgetting an app, on each backend; each case on a table of its own.
mod forgetting {
    use super::{BackendKind, Harness, forget};

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            mod embedded {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let h = super::Harness::start(super::BackendKind::Embedded).await;
                        super::forget::$case(h).await
                    }
                )*
            }
            mod dynamodb {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let table = super::forget::own_table();
                        let h = super::Harness::start_on(super::BackendKind::DynamoDb, &table).await;
                        super::forget::$case(h).await
                    }
                )*
            }
        };
    }

    cases!(
        forgetting_an_app_refuses_its_tokens_and_purges_it_alone,
        a_purge_cut_short_is_finished_by_the_next_call,
    );
}
