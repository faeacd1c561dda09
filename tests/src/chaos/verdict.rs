//! The verdict: the clients' history against what was stored, and each
//! order's effects judged duplicate or allowed repeat from the `kind` of the
//! workers' log events (never their wording).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::telemetry::EventKind;
use serde_json::Value;

use super::LEASE_LOCK;
use super::harness::Fabric;
use super::load::{Answer, Sent, order_id};
use super::report::Report;

/// How many lost or duplicated orders a report explains in full.
const EXPLAINED: usize = 10;

/// One delivery: its message id and delivery count.
type Delivery = (String, u32);

/// Fills the history's counts: what the clients saw against the `orders` store.
pub(super) async fn check_history(fabric: &Fabric, run: &str, sent: &Sent, report: &mut Report) {
    let stored: BTreeSet<String> = fabric.keys("orders").await.into_iter().collect();
    let lost = tally(&sent.answers, &stored, run, report);
    report.resent = sent.resent;
    report.lost = lost.len();
    for order in lost.iter().take(EXPLAINED) {
        report.lost_ids.push(fabric.explain(order).await);
    }
}

/// Counts the answers into `report`; returns the accepted orders not stored.
fn tally(
    answers: &[(usize, Answer)],
    stored: &BTreeSet<String>,
    run: &str,
    report: &mut Report,
) -> Vec<String> {
    let mut lost = Vec::new();
    report.sent = answers.len();
    for (n, answer) in answers {
        let order = order_id(run, *n);
        let is_stored = stored.contains(&order);
        match answer {
            Answer::Accepted => {
                report.accepted += 1;
                if !is_stored {
                    lost.push(order);
                }
            }
            Answer::Status(status) => {
                report.refused += 1;
                *report.statuses.entry(*status).or_default() += 1;
            }
            Answer::NoAnswer => report.no_answer += 1,
        }
        if *answer != Answer::Accepted && is_stored {
            report.unconfirmed_stored += 1;
        }
    }
    lost
}

/// Fills the effect counts: effects judged against the logs and the kills
/// (`worker_kills`, Unix seconds, one per worker the faults killed),
/// deliveries redelivered, duplicates `idempotent` caught.
pub(super) async fn check_effects(fabric: &Fabric, worker_kills: &[f64], report: &mut Report) {
    let mut logs = fabric.worker_logs();
    logs.push(fabric.control.log.clone());
    let logged = Logged::read(&logs);
    // A worker whose drain outlived its grace period exits (or is killed by
    // the control plane) with deliveries half-way through: a kill.
    let kills: Vec<f64> = worker_kills
        .iter()
        .chain(&logged.cut_off)
        .copied()
        .collect();
    let effects = effects(fabric).await;
    let judged = judge_effects(&effects, &logged, &kills);
    report.worker_kills = kills.len();
    report.duplicated_effects = judged.duplicated.len();
    report.repeated_effects = judged.repeated_after_failure + judged.repeated_after_kill;
    report.repeated_after_kill = judged.repeated_after_kill;
    for order in judged.duplicated.iter().take(EXPLAINED) {
        report.duplicated_ids.push(fabric.explain(order).await);
    }
    report.redelivered = fabric
        .keys("deliveries")
        .await
        .iter()
        .filter_map(|k| split_record(k))
        .filter(|(_, _, count)| *count > 1)
        .count();
    report.duplicates_caught = logged.duplicates_stopped;
}

/// One record of the `effects` store: a delivery that went through
/// `idempotent` and stored the order.
#[derive(Debug, Clone, PartialEq)]
struct Effect {
    count: u32,
    message: String,
    /// When it was written (Unix seconds), for an order with more than one.
    at: Option<f64>,
}

/// Every order's effect records, with the time of each when there are several.
async fn effects(fabric: &Fabric) -> BTreeMap<String, Vec<Effect>> {
    let mut effects: BTreeMap<String, Vec<Effect>> = BTreeMap::new();
    for key in fabric.keys("effects").await {
        if let Some((order, message, count)) = split_record(&key) {
            effects.entry(order.to_string()).or_default().push(Effect {
                count,
                message: message.to_string(),
                at: None,
            });
        }
    }
    let stores = fabric.stores();
    for (order, records) in effects.iter_mut().filter(|(_, r)| r.len() > 1) {
        for record in records {
            let key = format!("{order}/{}/{}", record.message, record.count);
            record.at = stores
                .get("effects", &key)
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Value>(&v.value).ok())
                .and_then(|v| v["at"].as_f64());
        }
    }
    effects
}

/// How the effects beyond each order's first were judged.
#[derive(Debug, Default, PartialEq)]
struct EffectVerdict {
    /// The order of each duplicated effect (an order once per duplicate).
    duplicated: Vec<String>,
    /// Repeats after a delivery that visibly failed.
    repeated_after_failure: usize,
    /// Repeats after a delivery whose worker was killed within a lease lock.
    repeated_after_kill: usize,
}

/// For an order with more than one effect, each earlier record decides:
/// - its delivery completed (only its ack failed): the next is a *duplicate*
///   `idempotent` should have stopped, whatever else happened;
/// - it visibly failed after its effects (rolled back, dead-lettered): the
///   next is a *repeat*, at-least-once for a delivery that never completed,
///   which `idempotent` rightly lets through;
/// - a worker was killed within a lease lock after its effect (and before
///   the next): it may have died before settling its claim, a *repeat*;
/// - nothing explains it: a *duplicate*.
fn judge_effects(
    effects: &BTreeMap<String, Vec<Effect>>,
    logged: &Logged,
    kills: &[f64],
) -> EffectVerdict {
    let mut verdict = EffectVerdict::default();
    for (order, records) in effects {
        let mut records = records.clone();
        records.sort_by(|a, b| (a.count, &a.message).cmp(&(b.count, &b.message)));
        for pair in records.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            let delivery = (earlier.message.clone(), earlier.count);
            if logged.completed.contains(&delivery) {
                verdict.duplicated.push(order.clone());
            } else if logged.failed.contains(&delivery) {
                verdict.repeated_after_failure += 1;
            } else if killed_between(earlier.at, later.at, kills) {
                verdict.repeated_after_kill += 1;
            } else {
                verdict.duplicated.push(order.clone());
            }
        }
    }
    verdict
}

/// True when a kill fell between `from` and `to`, within a lease lock of `from`.
fn killed_between(from: Option<f64>, to: Option<f64>, kills: &[f64]) -> bool {
    let (Some(from), Some(to)) = (from, to) else {
        return false;
    };
    kills
        .iter()
        .any(|t| *t >= from && *t <= to && *t <= from + LEASE_LOCK.as_secs_f64())
}

/// What the logs say, read by each JSON event's `kind` field.
#[derive(Debug, Default)]
struct Logged {
    /// Deliveries whose flow completed and only their ack failed.
    completed: BTreeSet<Delivery>,
    /// Deliveries whose flow failed: rolled back or dead-lettered.
    failed: BTreeSet<Delivery>,
    /// When (Unix seconds) a process was cut off after its shutdown grace.
    cut_off: Vec<f64>,
    /// Events `idempotent` stopped as duplicates.
    duplicates_stopped: usize,
}

impl Logged {
    /// Reads the JSON log lines of `files` (a file that cannot be read adds nothing).
    fn read(files: &[PathBuf]) -> Self {
        let texts: Vec<String> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        Self::parse(texts.iter().flat_map(|text| text.lines()))
    }

    /// Reads JSON log lines; a line that is not JSON or has no known `kind` adds nothing.
    fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut logged = Logged::default();
        for line in lines {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(kind) = event["kind"]
                .as_str()
                .and_then(|k| k.parse::<EventKind>().ok())
            else {
                continue;
            };
            match kind {
                EventKind::DeliveryAckFailed => logged.completed.extend(delivery(&event)),
                EventKind::DeliveryRolledBack | EventKind::DeliveryDeadLettered => {
                    logged.failed.extend(delivery(&event));
                }
                EventKind::EffectDuplicate => logged.duplicates_stopped += 1,
                EventKind::GraceExpired | EventKind::WorkerKilled => {
                    logged.cut_off.extend(unix_time(&event));
                }
            }
        }
        logged
    }
}

/// The delivery a queue event names (`message_id`, `deliveries`).
fn delivery(event: &Value) -> Option<Delivery> {
    let id = event["message_id"].as_str()?;
    let count = u32::try_from(event["deliveries"].as_u64()?).ok()?;
    Some((id.to_string(), count))
}

/// When an event was logged, in Unix seconds.
fn unix_time(event: &Value) -> Option<f64> {
    let at = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str()?).ok()?;
    Some(at.timestamp_micros() as f64 / 1e6)
}

/// Parses a record key, `{orderId}/{messageId}/{deliveryCount}`.
fn split_record(key: &str) -> Option<(&str, &str, u32)> {
    let mut parts = key.rsplitn(3, '/');
    let count = parts.next()?.parse().ok()?;
    let message = parts.next()?;
    let order = parts.next()?;
    Some((order, message, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::{MANIFEST, PROCESS_CONCURRENCY};

    /// A worker's JSON log line, as `FABRIC_LOG_FORMAT=json` writes it.
    fn line(kind: Option<EventKind>, message: &str, id: &str, deliveries: u32, at: &str) -> String {
        let mut event = serde_json::json!({
            "timestamp": at,
            "level": "INFO",
            "message": message,
            "queue": "incoming",
            "message_id": id,
            "deliveries": deliveries,
            "target": "workers::source::queue",
        });
        if let Some(kind) = kind {
            event["kind"] = kind.as_str().into();
        }
        event.to_string()
    }

    const T0: &str = "1970-01-01T00:01:40Z";

    /// One order, `o`, with two effects: delivery 1 at 100 s and 2 at 102 s.
    fn two_effects() -> BTreeMap<String, Vec<Effect>> {
        let effect = |count, at| Effect {
            count,
            message: "m1".into(),
            at: Some(at),
        };
        BTreeMap::from([("o".to_string(), vec![effect(2, 102.0), effect(1, 100.0)])])
    }

    fn judge(lines: &[String], kills: &[f64]) -> EffectVerdict {
        let logged = Logged::parse(lines.iter().map(String::as_str));
        judge_effects(&two_effects(), &logged, kills)
    }

    #[test]
    fn a_reworded_duplicate_line_is_still_counted_by_its_kind() {
        let logged = Logged::parse([
            line(
                Some(EventKind::EffectDuplicate),
                "seen before; skipped",
                "m1",
                2,
                T0,
            )
            .as_str(),
            // The old wording without the kind is not an event the verdict counts.
            line(None, "duplicate; stopped", "m2", 2, T0).as_str(),
            "duplicate; stopped (not JSON)",
        ]);
        assert_eq!(logged.duplicates_stopped, 1);
    }

    #[test]
    fn a_completed_delivery_makes_the_next_effect_a_duplicate_however_its_line_reads() {
        // Worded like a rollback, and a kill right after the effect: the
        // kind says the flow completed, so the second effect is a duplicate.
        let lines = [line(
            Some(EventKind::DeliveryAckFailed),
            "rolled back",
            "m1",
            1,
            T0,
        )];
        let verdict = judge(&lines, &[100.5]);
        assert_eq!(verdict.duplicated, ["o"]);
        assert_eq!(
            verdict.repeated_after_failure + verdict.repeated_after_kill,
            0
        );
    }

    #[test]
    fn a_failure_worded_right_but_without_its_kind_explains_nothing() {
        let lines = [
            line(None, "rolled back", "m1", 1, T0),
            line(None, "dead-lettered", "m1", 1, T0),
        ];
        assert_eq!(judge(&lines, &[]).duplicated, ["o"]);
    }

    #[test]
    fn a_rolled_back_delivery_makes_the_next_effect_a_repeat_whatever_its_wording() {
        for kind in [
            EventKind::DeliveryRolledBack,
            EventKind::DeliveryDeadLettered,
        ] {
            let lines = [line(Some(kind), "released to try again", "m1", 1, T0)];
            let verdict = judge(&lines, &[]);
            assert_eq!(verdict.repeated_after_failure, 1, "{kind:?}");
            assert!(verdict.duplicated.is_empty(), "{kind:?}");
        }
        // Another delivery's rollback explains nothing here.
        let lines = [line(Some(EventKind::DeliveryRolledBack), "x", "m1", 2, T0)];
        assert_eq!(judge(&lines, &[]).duplicated, ["o"]);
    }

    #[test]
    fn only_a_kill_within_a_lease_lock_after_the_effect_explains_a_repeat() {
        assert_eq!(judge(&[], &[100.5]).repeated_after_kill, 1);
        // Before the first effect, or past its lease lock: a duplicate.
        assert_eq!(judge(&[], &[99.0]).duplicated, ["o"]);
        let late = 100.0 + LEASE_LOCK.as_secs_f64() + 0.5;
        let mut effects = two_effects();
        effects.get_mut("o").expect("o")[0].at = Some(late + 1.0);
        let verdict = judge_effects(&effects, &Logged::default(), &[late]);
        assert_eq!(verdict.duplicated, ["o"]);
    }

    #[test]
    fn a_grace_cut_off_is_a_kill_at_the_time_it_was_logged() {
        let logged = Logged::parse([
            line(
                Some(EventKind::GraceExpired),
                "reworded",
                "",
                0,
                "1970-01-01T00:01:40.5Z",
            )
            .as_str(),
            line(
                Some(EventKind::WorkerKilled),
                "reworded",
                "",
                0,
                "1970-01-01T00:01:41Z",
            )
            .as_str(),
        ]);
        assert_eq!(logged.cut_off, [100.5, 101.0]);
    }

    #[test]
    fn repeats_blamed_on_kills_are_bounded_by_what_the_kills_ran() {
        let within = Report {
            repeated_after_kill: 2 * PROCESS_CONCURRENCY,
            worker_kills: 2,
            ..Report::default()
        };
        assert_eq!(within.repeats_beyond_kills(), 0);
        let beyond = Report {
            repeated_after_kill: 2 * PROCESS_CONCURRENCY + 1,
            ..within
        };
        assert_eq!(beyond.repeats_beyond_kills(), 1);
        assert_eq!(
            Report {
                repeated_after_kill: 1,
                ..Report::default()
            }
            .repeats_beyond_kills(),
            1,
            "no kill, no repeat a kill explains"
        );
    }

    #[test]
    fn the_manifest_runs_as_many_deliveries_at_once_as_the_bound_assumes() {
        assert!(MANIFEST.contains(&format!("concurrency: {PROCESS_CONCURRENCY},")));
    }

    #[test]
    fn the_history_counts_lost_and_unconfirmed_orders() {
        let answers = [
            (0, Answer::Accepted),
            (1, Answer::Accepted),
            (2, Answer::Status(502)),
            (3, Answer::NoAnswer),
        ];
        let stored = BTreeSet::from([order_id("r", 0), order_id("r", 2)]);
        let mut report = Report::default();
        let lost = tally(&answers, &stored, "r", &mut report);
        assert_eq!(lost, [order_id("r", 1)]);
        assert_eq!(
            (
                report.sent,
                report.accepted,
                report.refused,
                report.no_answer
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(report.unconfirmed_stored, 1);
        assert_eq!(report.statuses, BTreeMap::from([(502, 1)]));
    }

    #[test]
    fn record_keys_split_from_the_right() {
        assert_eq!(split_record("c-r-1/m-9/3"), Some(("c-r-1", "m-9", 3)));
        assert_eq!(split_record("c-r-1/m-9"), None);
    }
}
