//! The manifest's YAML shape: the contract users write against, with source locations.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::Text;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppDef {
    pub(super) name: Option<Text>,
    #[serde(default)]
    pub(super) properties: BTreeMap<String, Value>,
    pub(super) flows: Vec<Spanned<FlowDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FlowDef {
    pub(super) name: Text,
    pub(super) source: Option<Spanned<SourceDef>>,
    #[serde(default)]
    pub(super) strategy: StrategyDef,
    pub(super) max_concurrency: Option<usize>,
    pub(super) steps: Vec<Spanned<StepDef>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum StrategyDef {
    #[default]
    Synchronous,
    QueuedAsync,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) enum SourceDef {
    Http {
        method: Text,
        path: Text,
    },
    Queue {
        name: Text,
        #[serde(default = "one")]
        concurrency: usize,
        #[serde(rename = "max-deliveries", default = "five")]
        max_deliveries: u32,
    },
    Schedule {
        every: Option<Text>,
        cron: Option<Text>,
    },
}

fn one() -> usize {
    1
}
fn five() -> u32 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) enum StepDef {
    Log(Text),
    SetPayload(Text),
    SetVariable {
        name: Text,
        value: Text,
    },
    Validate(Text),
    Publish {
        queue: Text,
        body: Option<Text>,
    },
    Respond {
        status: Option<Spanned<u16>>,
        body: Option<Text>,
        #[serde(default)]
        headers: BTreeMap<String, Text>,
    },
    Choice {
        when: Vec<WhenDef>,
        #[serde(default)]
        otherwise: Vec<Spanned<StepDef>>,
    },
    FlowRef(Text),
    Try {
        steps: Vec<Spanned<StepDef>>,
        #[serde(rename = "on-error", default)]
        on_error: Vec<OnErrorDef>,
    },
    RaiseError {
        #[serde(rename = "type")]
        kind: Text,
        message: Option<Text>,
        status: Option<Spanned<u16>>,
    },
    HttpRequest {
        #[serde(default = "get")]
        method: Text,
        url: Text,
        body: Option<Text>,
        #[serde(default)]
        headers: BTreeMap<String, Text>,
        timeout: Option<Text>,
    },
    Store {
        store: Text,
        key: Text,
        value: Option<Text>,
        ttl: Option<Text>,
    },
    Retrieve {
        store: Text,
        key: Text,
        default: Option<Text>,
        target: Option<Text>,
    },
    Remove {
        store: Text,
        key: Text,
    },
    Idempotent {
        key: Text,
        ttl: Option<Text>,
    },
    Aggregate {
        key: Text,
        size: Spanned<u32>,
        ttl: Option<Text>,
    },
}

fn get() -> Text {
    Spanned::new(
        "GET".into(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhenDef {
    #[serde(rename = "if")]
    pub(super) condition: Text,
    pub(super) steps: Vec<Spanned<StepDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OnErrorDef {
    #[serde(rename = "type", default)]
    pub(super) types: Vec<Text>,
    #[serde(default)]
    pub(super) propagate: bool,
    pub(super) steps: Vec<Spanned<StepDef>>,
}
