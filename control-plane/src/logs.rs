//! An app's logs: its workers' structured log lines, read from the files the
//! local scheduler writes (`<data_dir>/workers/{app id}-{n}-v{version}.log`,
//! JSON lines), filtered, merged in time order and paged with a cursor; and
//! their retention (age and size per app).
//!
//! Only an app's own files are read (its instance's id names them), so a
//! tenant never sees another's lines, nor an earlier app's of the same name.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How much of each log file a query reads, from its end.
const READ_BYTES: u64 = 8 * 1024 * 1024;
/// The most lines one answer holds.
pub const MAX_LIMIT: usize = 1000;

/// One log line of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// When (RFC 3339, as the worker wrote it).
    pub at: String,
    /// The worker, `{app}-{n}`.
    pub worker: String,
    /// The app version it ran.
    pub version: u64,
    /// `TRACE` to `ERROR`.
    pub level: String,
    /// The message.
    pub message: String,
    /// The line's other fields (`correlation_id`, `kind`, …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Where it is: pass it as `after` to read on from here.
    pub cursor: String,
}

/// What to read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogQuery {
    /// Only this worker's lines (`{app}-{n}`).
    pub worker: Option<String>,
    /// Only lines this recent (`10m`, `2h`).
    pub since: Option<String>,
    /// Only lines at this level or above (`debug`, `info`, `warn`, `error`).
    pub level: Option<String>,
    /// Only lines whose message holds this text.
    pub grep: Option<String>,
    /// Only lines after this cursor (a line's `cursor`).
    pub after: Option<String>,
    /// At most this many lines (the newest ones, unless `after` is given:
    /// then the first ones after it); 100 by default, at most [`MAX_LIMIT`].
    pub limit: Option<usize>,
}

fn rank(level: &str) -> u8 {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => 0,
        "DEBUG" => 1,
        "INFO" => 2,
        "WARN" | "WARNING" => 3,
        "ERROR" => 4,
        _ => 2,
    }
}

/// The log files of app instance `app_id`: `(worker index, version, path)`.
fn files(dir: &Path, app_id: &str) -> Vec<(u32, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{app_id}-");
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // `{app id}-{n}-v{version}.log`: an app id never ends in `-{digits}`
            // followed by `-v`, so the split is exact.
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
            let (n, v) = rest.split_once("-v")?;
            Some((n.parse().ok()?, v.parse().ok()?, e.path()))
        })
        .collect()
}

/// The cursor of a line: time, then file, then offset, so that cursors sort
/// as the lines do.
fn cursor(at: &str, index: u32, version: u64, offset: u64) -> String {
    format!("{at}~{index:04}~{version:012}~{offset:014}")
}

/// Reads app `name`'s (instance `app_id`) lines under `dir` by `query`.
pub fn read(
    dir: &Path,
    name: &str,
    app_id: &str,
    query: &LogQuery,
) -> Result<Vec<LogLine>, String> {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let min_level = query.level.as_deref().map(rank).unwrap_or(0);
    let since = match &query.since {
        Some(s) => {
            let ago = humantime_serde::re::humantime::parse_duration(s)
                .map_err(|e| format!("since {s:?}: {e}"))?;
            let from = SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some(humantime_serde::re::humantime::format_rfc3339_micros(from).to_string())
        }
        None => None,
    };
    let worker_index = match &query.worker {
        Some(w) => Some(
            w.strip_prefix(&format!("{name}-"))
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| format!("worker {w:?} is not one of {name}'s ({name}-N)"))?,
        ),
        None => None,
    };
    let mut lines = Vec::new();
    for (index, version, path) in files(dir, app_id) {
        if worker_index.is_some_and(|w| w != index) {
            continue;
        }
        let Ok(text) = tail(&path) else { continue };
        let (start, body) = text;
        let mut offset = start;
        for raw in body.split_inclusive('\n') {
            let here = offset;
            offset += raw.len() as u64;
            let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(raw.trim_end())
            else {
                continue;
            };
            let take = |f: &mut serde_json::Map<String, serde_json::Value>, k: &str| {
                f.remove(k)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let at = take(&mut fields, "timestamp");
            let level = take(&mut fields, "level");
            let message = take(&mut fields, "message");
            fields.remove("target");
            if rank(&level) < min_level
                || since.as_ref().is_some_and(|s| at.as_str() < s.as_str())
                || query
                    .grep
                    .as_ref()
                    .is_some_and(|g| !message.contains(g.as_str()))
            {
                continue;
            }
            let cursor = cursor(&at, index, version, here);
            if query
                .after
                .as_ref()
                .is_some_and(|a| cursor.as_str() <= a.as_str())
            {
                continue;
            }
            lines.push(LogLine {
                at,
                worker: format!("{name}-{index}"),
                version,
                level,
                message,
                fields,
                cursor,
            });
        }
    }
    lines.sort_by(|a, b| a.cursor.cmp(&b.cursor));
    if query.after.is_some() {
        lines.truncate(limit);
    } else {
        let over = lines.len().saturating_sub(limit);
        lines.drain(..over);
    }
    Ok(lines)
}

/// The last [`READ_BYTES`] of `path`, from a line's start: its offset, and the text.
fn tail(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(READ_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(READ_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if from == 0 {
        return Ok((0, text));
    }
    // Cut mid-line: from the next line on.
    match text.find('\n') {
        Some(i) => Ok((from + i as u64 + 1, text[i + 1..].to_string())),
        None => Ok((len, String::new())),
    }
}

/// How long and how much of an app's logs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retention {
    /// Files not written to for this long are removed.
    #[serde(with = "humantime_serde")]
    pub age: Duration,
    /// An app's files past this many bytes together are removed, oldest first
    /// (the file a worker writes now is cut to half of this instead).
    pub bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            age: Duration::from_secs(30 * 24 * 3600),
            bytes: 100 * 1024 * 1024,
        }
    }
}

/// Removes log files past `retention` under `dir`; returns how many.
pub fn prune(dir: &Path, retention: Retention) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut by_app: std::collections::BTreeMap<String, Vec<(SystemTime, u64, PathBuf)>> =
        Default::default();
    let mut removed = 0;
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        let modified = meta.modified().unwrap_or(now);
        if now.duration_since(modified).unwrap_or_default() > retention.age {
            removed += usize::from(std::fs::remove_file(e.path()).is_ok());
            continue;
        }
        // `{app id}-{n}-v{version}`: the app id is what precedes `-{n}-v`.
        let Some((head, _version)) = stem.rsplit_once("-v") else {
            continue;
        };
        let Some((app_id, _n)) = head.rsplit_once('-') else {
            continue;
        };
        by_app
            .entry(app_id.to_string())
            .or_default()
            .push((modified, meta.len(), e.path()));
    }
    for files in by_app.values_mut() {
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        // The newest file is being written: trimmed, never removed.
        let Some(((_, live_len, live), older)) = files.split_last() else {
            continue;
        };
        for (_, len, path) in older {
            if total <= retention.bytes {
                break;
            }
            if std::fs::remove_file(path).is_ok() {
                total -= len;
                removed += 1;
            }
        }
        if *live_len > retention.bytes
            && let Err(e) = keep_tail(live, retention.bytes / 2)
        {
            tracing::warn!(file = %live.display(), error = %e, "could not trim a worker's log");
        }
    }
    removed
}

/// Cuts the log at `path`, which its worker is appending to, down to its
/// last `keep` bytes from a line's start. The worker's own handle appends
/// (`O_APPEND`), so it writes on at the new end; a line it writes while the
/// cut is made may be lost, as with a copy-and-truncate rotation.
fn keep_tail(path: &Path, keep: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::File::options()
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(keep)))?;
    let mut tail = Vec::new();
    (&mut file).take(keep).read_to_end(&mut tail)?;
    let from = tail
        .iter()
        .position(|b| *b == b'\n')
        .map_or(tail.len(), |i| i + 1);
    file.set_len(0)?;
    file.write_all(&tail[from..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: &str, level: &str, message: &str) -> String {
        format!(
            "{}\n",
            serde_json::json!({"timestamp": at, "level": level, "message": message,
                               "target": "workers::engine", "correlation_id": "c-1"})
        )
    }

    #[test]
    fn an_apps_lines_are_merged_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("shop--k2m9-1-v1.log"),
            line("2026-12-01T00:00:01.000000Z", "INFO", "one")
                + "not json\n"
                + &line("2026-12-01T00:00:03.000000Z", "WARN", "three"),
        )
        .unwrap();
        std::fs::write(
            d.join("shop--k2m9-2-v1.log"),
            line("2026-12-01T00:00:02.000000Z", "ERROR", "two"),
        )
        .unwrap();
        // Another app's, and an earlier instance's of the same name.
        std::fs::write(
            d.join("shopping--x-1-v1.log"),
            line("2026-12-01T00:00:01Z", "INFO", "theirs"),
        )
        .unwrap();
        std::fs::write(
            d.join("shop--old-1-v1.log"),
            line("2026-12-01T00:00:01Z", "INFO", "before"),
        )
        .unwrap();
        let all = read(d, "shop", "shop--k2m9", &LogQuery::default()).unwrap();
        let messages: Vec<&str> = all.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["one", "two", "three"]);
        assert_eq!(all[1].worker, "shop-2");
        assert_eq!(all[0].fields["correlation_id"], "c-1");
        let q = |f: fn(&mut LogQuery)| {
            let mut query = LogQuery::default();
            f(&mut query);
            read(d, "shop", "shop--k2m9", &query)
                .unwrap()
                .into_iter()
                .map(|l| l.message)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(|q| q.level = Some("warn".into())), ["two", "three"]);
        assert_eq!(q(|q| q.worker = Some("shop-2".into())), ["two"]);
        assert_eq!(q(|q| q.grep = Some("hre".into())), ["three"]);
        assert_eq!(q(|q| q.limit = Some(1)), ["three"], "the newest");
        let after = Some(all[0].cursor.clone());
        let next = read(
            d,
            "shop",
            "shop--k2m9",
            &LogQuery {
                after,
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(next[0].message, "two", "the first after the cursor");
        assert!(
            read(
                d,
                "shop",
                "shop--k2m9",
                &LogQuery {
                    worker: Some("other-1".into()),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            read(
                d,
                "shop",
                "shop--k2m9",
                &LogQuery {
                    since: Some("soon".into()),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            q(|q| q.since = Some("1m".into())).is_empty(),
            "all older than a minute"
        );
    }

    #[test]
    fn retention_removes_old_and_oversized_logs_but_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, bytes: usize, age: Duration| {
            let path = d.join(name);
            std::fs::write(&path, vec![b'x'; bytes]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::now() - age).unwrap();
        };
        write("shop--a-1-v1.log", 10, Duration::from_secs(40 * 24 * 3600));
        write("shop--a-1-v2.log", 600, Duration::from_secs(3600));
        write("shop--a-1-v3.log", 600, Duration::from_secs(60));
        write("shop--a-1-v4.log", 2000, Duration::ZERO);
        write("other--b-1-v1.log", 600, Duration::from_secs(60));
        let removed = prune(
            d,
            Retention {
                age: Duration::from_secs(30 * 24 * 3600),
                bytes: 1000,
            },
        );
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(removed, 3);
        assert_eq!(left, ["other--b-1-v1.log", "shop--a-1-v4.log"]);
    }

    #[test]
    fn a_live_log_past_the_size_keeps_its_last_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop--a-1-v1.log");
        let text: String = (0..200).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        // The worker's own handle, appending.
        let mut worker = std::fs::File::options().append(true).open(&path).unwrap();
        let retention = Retention {
            age: Duration::from_secs(3600),
            bytes: 1000,
        };
        assert_eq!(prune(dir.path(), retention), 0, "the live file stays");
        std::io::Write::write_all(&mut worker, b"line 200\n").unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(kept.len() <= 500 + 9, "{}", kept.len());
        assert!(kept.starts_with("line "), "whole lines: {}", &kept[..12]);
        assert!(
            kept.ends_with("line 199\nline 200\n"),
            "the newest, and what came after"
        );
    }
}
