//! What a chaos run reports: every count, and the few bounds it must keep.

use std::collections::BTreeMap;

use super::PROCESS_CONCURRENCY;

/// The counts of one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed of the fault schedule.
    pub seed: u64,
    /// Orders sent.
    pub sent: usize,
    /// Orders answered 202.
    pub accepted: usize,
    /// Orders answered with another status.
    pub refused: usize,
    /// The refused orders by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Orders with no answer.
    pub no_answer: usize,
    /// Of the refused or unanswered orders, how many were stored all the same.
    pub unconfirmed_stored: usize,
    /// Accepted orders not in the `orders` store (the first few ids in `lost_ids`).
    pub lost: usize,
    /// Up to ten lost orders, each with what the stores hold about it.
    pub lost_ids: Vec<String>,
    /// Effects beyond the first per order whose earlier delivery completed,
    /// or did not visibly fail: a second processing `idempotent` should have
    /// stopped.
    pub duplicated_effects: usize,
    /// Effects repeated because the earlier delivery never completed: it
    /// failed after them (its rollback is in the worker's log) or its worker
    /// was killed within a lease lock after them. At-least-once, allowed.
    pub repeated_effects: usize,
    /// Of `repeated_effects`, those only a worker kill explains.
    pub repeated_after_kill: usize,
    /// Workers killed: by the faults, or cut off after their shutdown grace
    /// (as the workers' and the control plane's logs say).
    pub worker_kills: usize,
    /// Up to ten orders with a duplicated effect, with their effect records.
    pub duplicated_ids: Vec<String>,
    /// Deliveries that reached the flow with a delivery count above 1.
    pub redelivered: usize,
    /// Accepted orders published a second time as another message.
    pub resent: usize,
    /// Deliveries `idempotent` stopped as duplicates (from the workers' logs).
    pub duplicates_caught: usize,
    /// Messages left in the dead-letter queue.
    pub dead_lettered: u64,
    /// Up to ten of them: the body, deliveries and last error of each.
    pub dead_letters: Vec<String>,
    /// The faults injected, in order.
    pub faults: Vec<String>,
    /// Plaintext found at rest (empty when none).
    pub at_rest_leaks: Vec<String>,
    /// What the at-rest check read (raw messages, items, bytes of files).
    pub at_rest_read: String,
}

impl Report {
    /// The counts on one line.
    pub fn counts(&self) -> String {
        format!(
            "accepted={} lost={} duplicated_effects={} redelivered={} faults={} \
             repeated_effects={} repeated_after_kill={} worker_kills={} resent={} duplicates_caught={} \
             dead_lettered={} sent={} refused={} {:?} no_answer={} unconfirmed_stored={}",
            self.accepted,
            self.lost,
            self.duplicated_effects,
            self.redelivered,
            self.faults.len(),
            self.repeated_effects,
            self.repeated_after_kill,
            self.worker_kills,
            self.resent,
            self.duplicates_caught,
            self.dead_lettered,
            self.sent,
            self.refused,
            self.statuses,
            self.no_answer,
            self.unconfirmed_stored
        )
    }

    /// Repeats blamed on kills beyond what the kills can explain; must be 0.
    ///
    /// A killed worker can leave at most one half-settled delivery per flow
    /// it was running, and it runs at most [`PROCESS_CONCURRENCY`] at once;
    /// a repeat beyond that is a duplicate the time window happened to cover.
    pub fn repeats_beyond_kills(&self) -> usize {
        self.repeated_after_kill
            .saturating_sub(self.worker_kills * PROCESS_CONCURRENCY)
    }
}
