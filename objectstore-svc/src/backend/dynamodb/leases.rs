//! Leases: acquire, renew and release by conditional updates, with fencing tokens.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::{DynamoDb, Item, READ_ATTEMPTS, get_n, get_s, malformed, n, s, sdk};
use crate::backend::{LeaseId, LeaseOutcome, LeaseState, Millis, Result};

fn lease_of(item: &Item) -> Option<LeaseState> {
    Some(LeaseState {
        holder: get_s(item, "h").unwrap_or_default().to_string(),
        token: get_n(item, "t")?,
        expires_at: get_n(item, "x").unwrap_or(0),
    })
}

impl DynamoDb {
    /// One conditional update of a lease item; `None` when the condition failed.
    async fn update_lease(
        &self,
        op: &'static str,
        id: &LeaseId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("l#{}", id.app)))
            .key("sk", s(&id.name))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        for (name, attr) in [("#sk", "sk"), ("#h", "h"), ("#t", "t"), ("#x", "x")] {
            if update.contains(name) || condition.contains(name) {
                req = req.expression_attribute_names(name, attr);
            }
        }
        for (name, value) in values {
            req = req.expression_attribute_values(name, value);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk(op)(e)),
        }
    }

    pub(super) async fn acquire_lease(
        &self,
        id: LeaseId,
        holder: String,
        ttl_ms: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let granted = |item: Item| {
            lease_of(&item)
                .map(LeaseOutcome::Granted)
                .ok_or_else(|| malformed(&id.name, "lease without a token"))
        };
        // Take it if free or lapsed; else extend it if ours; else report who
        // has it. A lease released between those steps sends us round again.
        for _ in 0..READ_ATTEMPTS {
            let take = self
                .update_lease(
                    "acquire lease",
                    &id,
                    "SET #h = :h, #x = :exp, #t = if_not_exists(#t, :zero) + :one",
                    "attribute_not_exists(#sk) OR #x <= :now",
                    vec![
                        (":h", s(&holder)),
                        (":exp", n(now + ttl_ms)),
                        (":zero", n(0)),
                        (":one", n(1)),
                        (":now", n(now)),
                    ],
                )
                .await?;
            if let Some(item) = take {
                return granted(item);
            }
            let extend = self
                .update_lease(
                    "acquire lease",
                    &id,
                    "SET #x = :exp",
                    "#h = :h AND #x > :now",
                    vec![
                        (":h", s(&holder)),
                        (":exp", n(now + ttl_ms)),
                        (":now", n(now)),
                    ],
                )
                .await?;
            if let Some(item) = extend {
                return granted(item);
            }
            let current = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(format!("l#{}", id.app)))
                .key("sk", s(&id.name))
                .consistent_read(true)
                .send()
                .await
                .map_err(sdk("read lease"))?
                .item
                .as_ref()
                .and_then(lease_of);
            if let Some(cur) = current.filter(|c| c.expires_at > now) {
                return Ok(LeaseOutcome::Held(cur));
            }
        }
        Err(malformed(&id.name, "lease kept changing hands"))
    }

    /// A conditional update of a lease still held by `holder` with `token`;
    /// `None` when it is not (lapsed, released or taken over).
    async fn update_held(
        &self,
        op: &'static str,
        id: &LeaseId,
        (holder, token, now): (&str, u64, Millis),
        update: &str,
        value: (&str, AttributeValue),
    ) -> Result<Option<Item>> {
        let values = vec![(":h", s(holder)), (":t", n(token)), (":now", n(now)), value];
        self.update_lease(op, id, update, "#h = :h AND #t = :t AND #x > :now", values)
            .await
    }

    pub(super) async fn renew_lease(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        ttl_ms: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let held = (holder.as_str(), token, now);
        let item = self
            .update_held(
                "renew lease",
                &id,
                held,
                "SET #x = :exp",
                (":exp", n(now + ttl_ms)),
            )
            .await?;
        Ok(match item.as_ref().and_then(lease_of) {
            Some(state) => LeaseOutcome::Granted(state),
            None => LeaseOutcome::Lost,
        })
    }

    pub(super) async fn release_lease(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let held = (holder.as_str(), token, now);
        let item = self
            .update_held(
                "release lease",
                &id,
                held,
                "SET #x = :zero REMOVE #h",
                (":zero", n(0)),
            )
            .await?;
        Ok(match item {
            Some(_) => LeaseOutcome::Released,
            None => LeaseOutcome::Lost,
        })
    }
}
