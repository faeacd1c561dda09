//! Worker sizes, as in CloudHub: what a size in vCores buys a worker.

use std::fmt;
use std::str::FromStr;

/// A worker size and what it sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerSize {
    /// vCores, as the tenant asked for them.
    pub vcores: f64,
    /// Threads of the worker's async runtime.
    pub runtime_threads: usize,
    /// Events in flight at once across all flows; more wait (back-pressure).
    pub concurrency: usize,
    /// Bytes of payload in flight at once (request bodies and queued messages).
    pub payload_budget: usize,
    /// Bytes the worker may hold on its heap (CloudHub's memory per size):
    /// past it an allocation fails and the worker ends, as a container past
    /// its memory limit does, and is restarted.
    pub memory: usize,
}

const MIB: usize = 1024 * 1024;

/// Every size, smallest first.
pub const SIZES: [WorkerSize; 7] = [
    WorkerSize {
        vcores: 0.1,
        runtime_threads: 1,
        concurrency: 16,
        payload_budget: 16 * MIB,
        memory: 512 * MIB,
    },
    WorkerSize {
        vcores: 0.2,
        runtime_threads: 1,
        concurrency: 32,
        payload_budget: 32 * MIB,
        memory: 1024 * MIB,
    },
    WorkerSize {
        vcores: 1.0,
        runtime_threads: 2,
        concurrency: 128,
        payload_budget: 128 * MIB,
        memory: 1536 * MIB,
    },
    WorkerSize {
        vcores: 2.0,
        runtime_threads: 4,
        concurrency: 256,
        payload_budget: 256 * MIB,
        memory: 3584 * MIB,
    },
    WorkerSize {
        vcores: 4.0,
        runtime_threads: 8,
        concurrency: 512,
        payload_budget: 512 * MIB,
        memory: 7680 * MIB,
    },
    WorkerSize {
        vcores: 8.0,
        runtime_threads: 16,
        concurrency: 1024,
        payload_budget: 1024 * MIB,
        memory: 15360 * MIB,
    },
    WorkerSize {
        vcores: 16.0,
        runtime_threads: 32,
        concurrency: 2048,
        payload_budget: 2048 * MIB,
        memory: 32768 * MIB,
    },
];

impl Default for WorkerSize {
    fn default() -> Self {
        SIZES[2]
    }
}

impl WorkerSize {
    /// The largest single payload a worker of this size accepts: a quarter of its budget.
    pub fn max_payload(&self) -> usize {
        self.payload_budget / 4
    }
}

impl fmt::Display for WorkerSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.vcores)
    }
}

/// A size that is not one of [`SIZES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker size {0:?} is not one of 0.1, 0.2, 1, 2, 4, 8, 16 (vCores)")]
pub struct SizeError(pub String);

impl FromStr for WorkerSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s.trim().parse().map_err(|_| SizeError(s.to_string()))?;
        SIZES
            .into_iter()
            .find(|size| (size.vcores - v).abs() < 1e-9)
            .ok_or_else(|| SizeError(s.to_string()))
    }
}

impl serde::Serialize for WorkerSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.vcores)
    }
}

impl<'de> serde::Deserialize<'de> for WorkerSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Written as a number in TOML, but environment variables may read as text.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_grow() {
        assert_eq!("0.2".parse::<WorkerSize>().unwrap().concurrency, 32);
        assert_eq!("1".parse::<WorkerSize>().unwrap(), WorkerSize::default());
        for bad in ["0.3", "", "x", "-1", "32"] {
            assert!(bad.parse::<WorkerSize>().is_err(), "{bad}");
        }
        for pair in SIZES.windows(2) {
            assert!(pair[1].runtime_threads >= pair[0].runtime_threads);
            assert!(pair[1].concurrency > pair[0].concurrency);
            assert!(pair[1].payload_budget > pair[0].payload_budget);
        }
    }
}
