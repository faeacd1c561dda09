//! The SQS names of a queue, its DLQ and an app's tombstone, and the hashes that shorten them.

use super::Sqs;
use crate::backend::{Part, QueueId};

pub(super) const SQS_NAME_MAX: usize = 80;
/// What follows the prefix in a tombstone's queue name.
const TOMB: &str = "_tomb_";
/// The room after `{prefix}{app}_` that the readable form needs at least:
/// `_`, an 8-digit hash and `_dlq`.
const READABLE_ROOM: usize = 1 + 8 + 4;

/// FNV-1a: a stable, dependency-free hash for shortened queue names.
pub(super) fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// FNV-1a in 64 bits, for the compact names.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first `len` base-62 digits of `n` (letters of both cases, as SQS
/// names are case-sensitive).
fn base62(mut n: u64, len: usize) -> String {
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..len)
        .map(|_| {
            let d = DIGITS[(n % 62) as usize] as char;
            n /= 62;
            d
        })
        .collect()
}

/// How every SQS queue name of `app` begins.
pub(super) fn app_prefix(prefix: &str, app: &str) -> String {
    format!("{prefix}{app}_")
}

/// The SQS name of a queue's part.
///
/// Readable, when `{prefix}{app}_` leaves room (every app name, and app ids
/// up to 66 characters with the prefix): `{queue, shortened}_{hash}`, and
/// `_dlq` for the DLQ. Else (the longest app ids with the longest prefixes:
/// at least 5 characters are left, as a prefix has at most 16 and an app id
/// 58): `m` or `d` for the part, and a base-62 hash of the queue's name in
/// the room left, 23.8 bits or more. The queue's real name is a tag, checked
/// on use, so two queues of one app whose hashes collide are told apart.
pub(super) fn sqs_name(prefix: &str, q: &QueueId, part: Part) -> String {
    let app_prefix = app_prefix(prefix, &q.app);
    let room = SQS_NAME_MAX.saturating_sub(app_prefix.len());
    if room < READABLE_ROOM {
        let marker = match part {
            Part::Main => 'm',
            Part::Dead => 'd',
        };
        let hash = base62(fnv1a64(&q.queue), room.saturating_sub(1));
        return format!("{app_prefix}{marker}{hash}");
    }
    let short: String = q
        .queue
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .take(room - READABLE_ROOM)
        .collect();
    let base = format!("{app_prefix}{short}_{:08x}", fnv1a(&q.queue));
    match part {
        Part::Main => base,
        Part::Dead => format!("{base}_dlq"),
    }
}

/// The SQS name of `app`'s tombstone.
pub(super) fn tomb_name(prefix: &str, app: &str) -> String {
    format!("{prefix}{TOMB}{app}")
}

/// The queue name at the end of a queue URL.
pub(super) fn name_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

impl Sqs {
    /// The SQS queue name of a part.
    pub(super) fn sqs_name(&self, q: &QueueId, part: Part) -> String {
        sqs_name(&self.prefix, q, part)
    }
}
