//! What a worker is started with beside its manifest, and the Kubernetes
//! objects an app's workers would run as.

use std::sync::Arc;

use common::token::TokenKey;

use crate::{Config, Settings, model, scheduler, supervisor};

/// The fabric's own addresses (`host:port`) no flow may reach: this API,
/// the services workers are given, and the load balancers routes are pushed to.
fn own_addresses(s: &Settings, api: Option<std::net::SocketAddr>) -> Vec<String> {
    let mut own: Vec<String> = api.iter().map(|a| a.to_string()).collect();
    let urls = s
        .queue_url
        .iter()
        .chain(&s.objectstore_url)
        .chain(&s.routes_push);
    for url in urls {
        if let Ok(u) = reqwest::Url::parse(url)
            && let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default())
        {
            own.push(format!("{host}:{port}"));
        }
    }
    own
}

/// What every worker is started with beside its manifest: the services'
/// URLs, an app token that opens its own app's queues and stores only, and
/// its egress policy.
pub(crate) fn worker_env(
    config: &Config,
    key: TokenKey,
    api: std::net::SocketAddr,
) -> supervisor::WorkerEnv {
    let s = config.settings.clone();
    let deny = own_addresses(&s, Some(api));
    Arc::new(move |record: &model::AppRecord| {
        // Bound to the instance: it opens nothing of a later app of the same name.
        let token = key.issue(
            &record.app_id(),
            common::token::Scope::Worker,
            s.worker_token_ttl,
        );
        worker_vars(&s, record, token, &deny)
    })
}

/// A worker's environment for `record` with `token`, never reaching `deny`.
fn worker_vars(
    s: &Settings,
    record: &model::AppRecord,
    token: String,
    deny: &[String],
) -> Vec<(String, String)> {
    let list = |items: &[String]| serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
    let mut env = vec![
        ("FABRIC_APP_TOKEN".to_string(), token),
        (
            "FABRIC_PERSISTENT_QUEUES".into(),
            record.persistent_queues.to_string(),
        ),
        (
            "FABRIC_ENCRYPT_QUEUES".into(),
            record.encrypt_queues.to_string(),
        ),
    ];
    if let Some(url) = &s.objectstore_url {
        env.push(("FABRIC_OBJECTSTORE_URL".into(), url.clone()));
    }
    if let Some(url) = &s.queue_url {
        env.push(("FABRIC_QUEUE_URL".into(), url.clone()));
    }
    let properties = record.worker_properties();
    if !properties.is_empty() {
        env.push((
            "FABRIC_PROPERTIES".into(),
            common::app::encode_properties(&properties),
        ));
    }
    env.push(("FABRIC_EGRESS_ALLOW".into(), list(&s.egress_allow)));
    env.push(("FABRIC_EGRESS_DENY".into(), list(deny)));
    env
}

/// The Kubernetes objects `record`'s workers would run as, placed over the
/// configured AZs, as YAML for review: what the Kubernetes scheduler
/// creates, the app token shown as where it goes, not as one.
pub fn render_kubernetes(s: &Settings, record: &model::AppRecord) -> String {
    let env = worker_vars(s, record, String::new(), &own_addresses(s, None));
    let specs: Vec<scheduler::WorkerSpec> = supervisor::placements(&s.azs, record.workers)
        .into_iter()
        .zip(1..)
        .map(|(az, index)| {
            scheduler::WorkerSpec::of(record, record.version, index, &az, env.clone())
        })
        .collect();
    scheduler::kubernetes::objects::render(&specs, &s.kubernetes)
}
