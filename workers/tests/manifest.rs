//! A bad manifest is refused before anything starts, with line, column and reason.

use workers::manifest::{self, ManifestError, Source, Strategy};

fn refused(yaml: &str) -> ManifestError {
    match manifest::load(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

fn assert_refused(yaml: &str, line: u64, needle: &str) {
    let e = refused(yaml);
    assert_eq!(e.line, line, "{e}");
    assert!(e.column >= 1, "{e}");
    assert!(e.reason.contains(needle), "{needle:?} not in {e}");
}

const GOOD: &str = r#"
name: orders
properties: { threshold: 100 }
flows:
  - name: accept
    source: { http: { method: POST, path: /orders } }
    steps:
      - validate: '.orderId != null'
      - publish: { queue: incoming }
      - respond: { status: 202, body: '{accepted: .orderId}' }
  - name: process
    source: { queue: { name: incoming, concurrency: 4, max-deliveries: 5 } }
    strategy: queued-async
    max-concurrency: 8
    steps:
      - flow-ref: audit
  - name: audit
    steps:
      - log: '"order \(.orderId)"'
"#;

#[test]
fn the_design_shape_loads() {
    let app = manifest::load(GOOD).unwrap();
    assert_eq!(app.name.as_deref(), Some("orders"));
    assert_eq!(app.properties["threshold"], 100);
    assert_eq!(app.flows.len(), 3);
    assert_eq!(
        app.flow("accept").unwrap().source,
        Some(Source::Http {
            method: "POST".into(),
            path: "/orders".into()
        })
    );
    let process = app.flow("process").unwrap();
    assert_eq!(
        process.source,
        Some(Source::Queue {
            name: "incoming".into(),
            concurrency: 4,
            max_deliveries: 5
        })
    );
    assert_eq!(
        process.strategy,
        Strategy::QueuedAsync { max_concurrency: 8 }
    );
    assert!(app.flow("audit").unwrap().source.is_none());
}

#[test]
fn yaml_and_shape_errors() {
    assert_refused("name: [\n", 1, "");
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - frobnicate: 1\n",
        4,
        "unknown variant `frobnicate`",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - respond: { stat: 1 }\n",
        4,
        "unknown field `stat`",
    );
    assert_refused("flows:\n  - steps: []\n", 2, "missing field `name`");
    assert_refused("flows: []\n", 1, "at least one flow");
    assert_refused(
        "name: Bad_Name\nflows:\n  - name: a\n    steps: []\n",
        1,
        "app name",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps: []\n  - name: a\n    steps: []\n",
        4,
        "defined twice",
    );
}

#[test]
fn references_must_exist() {
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - flow-ref: nowhere\n",
        4,
        "no flow is named",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - publish: { queue: nobody }\n",
        4,
        "no flow consumes queue",
    );
    let cycle = "flows:\n  - name: a\n    steps: [ { flow-ref: b } ]\n  - name: b\n    steps: [ { flow-ref: a } ]\n";
    assert!(refused(cycle).reason.contains("cycle"));
}

#[test]
fn a_flow_ref_cycle_is_reported_at_the_ref_that_closes_it() {
    // a -> b -> c -> b: the search from `a` reaches `b` again through the
    // ref in `c`'s `try`, so that ref (line 13) is where the cycle is.
    let yaml = "\
flows:
  - name: a
    steps:
      - flow-ref: b
  - name: b
    steps:
      - log: '\"b\"'
      - flow-ref: c
  - name: c
    steps:
      - try:
          steps:
            - flow-ref: b
";
    let e = refused(yaml);
    assert_eq!((e.line, e.column), (13, 25), "{e}");
    assert!(e.reason.contains("cycle: b -> c -> b"), "{e}");

    let self_ref = "flows:\n  - name: a\n    steps:\n      - log: '1'\n      - flow-ref: a\n";
    assert_eq!(refused(self_ref).line, 5);
}

#[test]
fn expressions_must_compile() {
    let e = refused("flows:\n  - name: a\n    steps:\n      - set-payload: '.a | nosuchfn(1)'\n");
    assert_eq!((e.line, e.column), (4, 22), "{e}");
    assert!(
        e.reason.contains("nosuchfn") && e.reason.contains("character 5"),
        "{e}"
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - validate: '.a == ('\n",
        4,
        "expected",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - log: '$nope'\n",
        4,
        "nope",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - choice:\n          when:\n            - if: '.x ==='\n              steps: []\n",
        6,
        "expression",
    );
}

#[test]
fn sources_are_checked() {
    let http = |method: &str, path: &str| {
        format!(
            "flows:\n  - name: a\n    source: {{ http: {{ method: {method}, path: '{path}' }} }}\n    steps: []\n"
        )
    };
    assert_refused(&http("FETCH", "/x"), 3, "not one of");
    assert_refused(&http("GET", "x"), 3, "starts with '/'");
    // An app may own /metrics: a worker's ops endpoints are on a port of their own.
    assert!(manifest::load(&http("GET", "/metrics")).is_ok());
    assert_refused(&http("GET", "/a/{*rest}/b"), 3, "last segment");
    assert_refused(&http("GET", "/a/{x}/{x}"), 3, "twice");
    let twice = "flows:\n  - name: a\n    source: { http: { method: GET, path: '/o/{id}' } }\n    steps: []\n  - name: b\n    source: { http: { method: GET, path: '/o/{key}' } }\n    steps: []\n";
    assert_eq!(refused(twice).line, 6);
    let clash = "flows:\n  - name: a\n    source: { http: { method: GET, path: '/o/{id}' } }\n    steps: []\n  - name: b\n    source: { http: { method: POST, path: '/o/{key}' } }\n    steps: []\n";
    assert_eq!(refused(clash).line, 6);
    let queue = |extra: &str| {
        format!(
            "flows:\n  - name: a\n    source: {{ queue: {{ name: q{extra} }} }}\n    steps: []\n"
        )
    };
    assert_refused(&queue(", concurrency: 0"), 3, "concurrency");
    assert_refused(&queue(", max-deliveries: 0"), 3, "max-deliveries");
    assert_refused(
        "flows:\n  - name: a\n    max-concurrency: 4\n    steps: []\n",
        2,
        "queued-async",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - http-request: { url: '\"http://x\"', timeout: forever }\n",
        4,
        "duration",
    );
    assert_refused(
        "flows:\n  - name: a\n    steps:\n      - respond: { status: 1000 }\n",
        4,
        "HTTP status",
    );
}

#[test]
fn every_example_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut loaded = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let app = manifest::load(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!app.flows.is_empty());
            loaded += 1;
        }
    }
    assert!(loaded >= 4, "only {loaded} examples");
}

#[test]
fn store_steps_and_schedules_are_checked() {
    let flow = |steps: &str| format!("flows:\n  - name: a\n    steps:\n{steps}");
    assert_refused(
        &flow("      - store: { store: _mine, key: '.id' }\n"),
        4,
        "reserved for the runtime",
    );
    assert_refused(
        &flow("      - retrieve: { store: 'a b', key: '.id' }\n"),
        4,
        "only letters",
    );
    assert_refused(
        &flow("      - idempotent: { key: '.id', ttl: 90d }\n"),
        4,
        "ttl must be 1s to 30d",
    );
    assert_refused(
        &flow("      - aggregate: { key: '.g', size: 0 }\n"),
        4,
        "size must be 1 to 1000",
    );
    assert_refused(
        &flow("      - store: { store: s, key: '.id |' }\n"),
        4,
        "expression",
    );
    let schedule = |source: &str| {
        format!(
            "flows:\n  - name: a\n    source: {{ schedule: {source} }}\n    steps:\n      - log: '1'\n"
        )
    };
    assert_refused(
        &schedule("{ every: 10ms }"),
        3,
        "every must be 100ms to 30d",
    );
    assert_refused(&schedule("{ }"), 3, "exactly one of every and cron");
    assert_refused(
        &schedule("{ every: 1s, cron: '* * * * * *' }"),
        3,
        "exactly one of every and cron",
    );
    assert_refused(&schedule("{ cron: 'not cron' }"), 3, "cron expression");
    let app = manifest::load(&schedule("{ cron: '*/5 * * * *' }")).unwrap();
    assert!(matches!(
        app.flows[0].source,
        Some(Source::Schedule(manifest::Trigger::Cron { .. }))
    ));
    assert!(app.uses_store(), "a schedule needs the primary lease");
}

#[test]
fn flows_cannot_set_framing_or_connection_headers() {
    for header in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "upgrade",
    ] {
        for step in [
            format!("respond: {{ status: 200, headers: {{ {header}: '\"1\"' }} }}"),
            format!(
                "http-request: {{ url: '\"https://example.com\"', headers: {{ {header}: '\"1\"' }} }}"
            ),
        ] {
            let yaml = format!(
                "flows:\n  - name: f\n    source: {{ http: {{ method: GET, path: /x }} }}\n    steps:\n      - {step}\n"
            );
            let e = manifest::load(&yaml).unwrap_err();
            assert!(e.reason.contains("set by the fabric"), "{header}: {e}");
            assert_eq!(e.line, 5, "{e}");
        }
    }
    let fine = "flows:\n  - name: f\n    source: { http: { method: GET, path: /x } }\n    steps:\n      - respond: { status: 200, headers: { x-trace: '\"1\"', set-cookie: '\"a=b\"' } }\n";
    manifest::load(fine).unwrap();
}
