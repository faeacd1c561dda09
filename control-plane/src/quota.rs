//! Tenants' quotas, checked against what runs and what is on its way.
//!
//! A deploy or scale takes seconds, and the registry's record changes only
//! when it ends. Each change in flight therefore holds a [`Claim`] on what
//! it asks for, and checks count every claim beside the records: checking
//! and claiming happen under one lock, so two changes of one tenant's apps
//! at once cannot both fit a quota that only one of them does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::{AppRecord, PurgeRecord, Quota};

/// What one app runs or asks for: workers, and vCores (workers × size).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Use {
    workers: u32,
    vcores: f64,
}

impl Use {
    fn of(workers: u32, size: f64) -> Self {
        Use {
            workers,
            vcores: f64::from(workers) * size,
        }
    }

    fn max(self, other: Use) -> Use {
        Use {
            workers: self.workers.max(other.workers),
            vcores: self.vcores.max(other.vcores),
        }
    }
}

/// Changes in flight, by app name: its tenant and what it asks for.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    inner: Arc<Mutex<HashMap<String, (String, Use)>>>,
}

/// Held while a change is in flight; dropping it gives the claim back.
#[derive(Debug)]
pub struct Claim {
    claims: Claims,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.lock().remove(&self.name);
    }
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Use)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that `tenant` may run `workers` of `size` as app `name` beside
    /// its other apps (running, being changed, or being purged) within
    /// `quota`, and claims it until the returned [`Claim`] is dropped.
    /// `Err` says what would be exceeded.
    pub fn claim(
        &self,
        quota: Quota,
        (tenant, name): (&str, &str),
        (workers, size): (u32, f64),
        apps: &[AppRecord],
        purges: &[PurgeRecord],
    ) -> Result<Claim, String> {
        let mut claims = self.lock();
        let mut others: HashMap<&str, Use> = apps
            .iter()
            .filter(|a| a.tenant == tenant && a.name != name)
            .map(|a| (a.name.as_str(), Use::of(a.workers, a.size)))
            .collect();
        for (app, (owner, claimed)) in claims.iter() {
            if owner == tenant && app != name {
                let entry = others.entry(app.as_str()).or_default();
                *entry = entry.max(*claimed);
            }
        }
        let purging = purges
            .iter()
            .filter(|p| {
                p.tenant == tenant && p.name != name && !others.contains_key(p.name.as_str())
            })
            .count() as u32;
        let wanted = Use::of(workers, size);
        let apps_n = others.len() as u32 + purging + 1;
        let workers_n = others.values().map(|u| u.workers).sum::<u32>() + wanted.workers;
        let vcores = others.values().map(|u| u.vcores).sum::<f64>() + wanted.vcores;
        if apps_n > quota.apps {
            return Err(format!(
                "{apps_n} apps, more than the {} allowed",
                quota.apps
            ));
        }
        if workers_n > quota.workers {
            return Err(format!(
                "{workers_n} workers, more than the {} allowed",
                quota.workers
            ));
        }
        if vcores > quota.vcores + 1e-9 {
            return Err(format!(
                "{vcores} vCores, more than the {} allowed",
                quota.vcores
            ));
        }
        claims.insert(name.to_string(), (tenant.to_string(), wanted));
        drop(claims);
        Ok(Claim {
            claims: self.clone(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> Quota {
        Quota {
            apps: 3,
            workers: 4,
            vcores: 2.0,
        }
    }

    fn app(name: &str, tenant: &str, workers: u32, size: f64) -> AppRecord {
        AppRecord {
            name: name.into(),
            tenant: tenant.into(),
            instance: "i".into(),
            version: 1,
            manifest: String::new(),
            workers,
            size,
            persistent_queues: false,
            encrypt_queues: true,
            properties: Default::default(),
            secure_properties: Default::default(),
            autoscale: None,
        }
    }

    #[test]
    fn two_changes_in_flight_cannot_both_fit_what_only_one_does() {
        let claims = Claims::default();
        let apps = [app("a", "t", 1, 0.1), app("b", "t", 1, 0.1)];
        // Each alone fits: 3 + 1 workers. Both at once would be 6.
        let first = claims
            .claim(quota(), ("t", "a"), (3, 0.1), &apps, &[])
            .unwrap();
        let second = claims.claim(quota(), ("t", "b"), (3, 0.1), &apps, &[]);
        assert!(second.unwrap_err().contains("6 workers"));
        drop(first);
        // Once the first has landed (its record now says 3), the second is
        // measured against that, and still refused.
        let landed = [app("a", "t", 3, 0.1), app("b", "t", 1, 0.1)];
        assert!(
            claims
                .claim(quota(), ("t", "b"), (3, 0.1), &landed, &[])
                .is_err()
        );
        assert!(
            claims
                .claim(quota(), ("t", "b"), (1, 0.1), &landed, &[])
                .is_ok()
        );
    }

    #[test]
    fn another_tenants_claims_and_apps_do_not_count() {
        let claims = Claims::default();
        let apps = [app("x", "other", 2, 0.5)];
        let _theirs = claims
            .claim(quota(), ("other", "y"), (2, 0.5), &apps, &[])
            .unwrap();
        assert!(
            claims
                .claim(quota(), ("t", "a"), (4, 0.5), &apps, &[])
                .is_ok()
        );
    }

    #[test]
    fn apps_being_purged_count_toward_the_app_quota() {
        let claims = Claims::default();
        let purges = [
            PurgeRecord {
                name: "gone1".into(),
                app_id: "gone1--i".into(),
                tenant: "t".into(),
            },
            PurgeRecord {
                name: "gone2".into(),
                app_id: "gone2--i".into(),
                tenant: "t".into(),
            },
        ];
        let apps = [app("a", "t", 1, 0.1)];
        let err = claims.claim(quota(), ("t", "new"), (1, 0.1), &apps, &purges);
        assert!(err.unwrap_err().contains("4 apps"));
    }
}
