//! bench/console: what the web console's pages weigh and cost the server.
//!
//! Runs `fabric up` (the release build beside this binary), deploys two
//! apps (`hello`, transient queues; `orders`, persistent queues) of two
//! workers each, signs in as the admin, and asks for each main page
//! [`ROUNDS`] times in a row. For each page: its HTML size, the assets it
//! loads (the same for every page, gzipped, and cached by the browser
//! after the first load), the server's own time per page (its `Server-Timing`), and
//! the time a client waits, p50 and p99. The reference, measured in the
//! same run: the API call behind the app page's header (`GET /v1/apps/N`,
//! JSON), so a page's cost reads as a multiple of one API answer.

use std::time::Instant;

use control_plane::model::DeployRequest;
use fabric_bench::{Latencies, bench_line};

const ROUNDS: usize = 200;
const HELLO: &str = include_str!("../../../examples/hello.yaml");
const ORDERS: &str = include_str!("../../../examples/orders.yaml");
const ASSETS: [&str; 7] = [
    "htmx.min.js",
    "htmx-sse.js",
    "uPlot.iife.min.js",
    "uPlot.min.css",
    "console.css",
    "console.js",
    "favicon.svg",
];

fn server_ms(r: &reqwest::Response) -> f64 {
    r.headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("dur=").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string()
}

fn csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

struct Measured {
    bytes: usize,
    server: Latencies,
    client: Latencies,
}

async fn measure(req: impl Fn() -> reqwest::RequestBuilder) -> Measured {
    let mut m = Measured {
        bytes: 0,
        server: Latencies::default(),
        client: Latencies::default(),
    };
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let r = req().send().await.expect("a page");
        assert!(r.status().is_success(), "{}", r.status());
        let server = server_ms(&r);
        let body = r.bytes().await.expect("its body");
        m.client.record(started.elapsed());
        m.server
            .record(std::time::Duration::from_secs_f64(server / 1000.0));
        m.bytes = body.len();
    }
    m
}

#[tokio::main]
async fn main() {
    let fabric = fabric_bench::LocalFabric::start(
        "cargo build --release -p fabric -p fabric-bench --bin fabric --bin console",
    );
    let api = fabric.client();
    for (manifest, persistent) in [(HELLO, false), (ORDERS, true)] {
        api.deploy(&DeployRequest {
            persistent_queues: persistent,
            ..DeployRequest::of(manifest, 2, 0.1)
        })
        .await
        .expect("a demo app deploys");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let url = fabric.url.clone();
    let form = http
        .get(format!("{url}/console/sign-in"))
        .send()
        .await
        .expect("sign-in");
    let pre = cookie(&form, "fabric_console_sign_in");
    let token = csrf(&form.text().await.unwrap_or_default());
    let signed = http
        .post(format!("{url}/console/sign-in"))
        .header("cookie", format!("fabric_console_sign_in={pre}"))
        .form(&[("key", fabric.admin.as_str()), ("csrf", token.as_str())])
        .send()
        .await
        .expect("signed in");
    let session = format!("fabric_console={}", cookie(&signed, "fabric_console"));

    let (mut assets, mut gzipped) = (0, 0);
    for a in ASSETS {
        let r = http
            .get(format!("{url}/console/assets/{a}"))
            .send()
            .await
            .expect("an asset");
        assets += r.bytes().await.map_or(0, |b| b.len());
        let r = http
            .get(format!("{url}/console/assets/{a}"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("an asset, gzipped");
        gzipped += r.bytes().await.map_or(0, |b| b.len());
    }

    let reference = measure(|| {
        http.get(format!("{url}/v1/apps/orders"))
            .bearer_auth(&fabric.admin)
    })
    .await;
    let ref_p50 = reference.client.percentile_ms(50.0);
    println!(
        "reference: GET /v1/apps/orders (JSON) {} B, client p50 {:.2} ms, p99 {:.2} ms",
        reference.bytes,
        ref_p50,
        reference.client.percentile_ms(99.0)
    );
    println!(
        "assets (loaded once, then cached as immutable): {assets} B, {gzipped} B gzipped (what a browser loads)\n"
    );
    println!(
        "| page | HTML | HTML + gzipped assets | server p50 | server p99 | client p50 | client p99 | client p50 ÷ reference |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut fields = Vec::new();
    let mut report = fabric_bench::report::Report {
        name: "console".into(),
        title: format!(
            "The web console's pages: 200 requests each, one after another, on a 2-core machine; \
             the reference is `GET /v1/apps/orders` (JSON) in the same run, client p50 {ref_p50:.2} ms. \
             Assets: {:.1} KB, {:.1} KB gzipped, loaded once.",
            assets as f64 / 1024.0,
            gzipped as f64 / 1024.0
        ),
        header: [
            "page",
            "HTML",
            "HTML + gzipped assets",
            "server p50",
            "server p99",
            "client p50",
            "client p99",
            "client p50 ÷ reference",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    report.chart.y_label = "ms".into();
    let (mut server, mut client) = (Vec::new(), Vec::new());
    for (name, path) in [
        ("sign-in", "/console/sign-in"),
        ("apps", "/console/apps"),
        ("app", "/console/apps/orders"),
        ("deploy", "/console/deploy"),
        ("zones", "/console/azs"),
        ("dead-letters", "/console/apps/orders/queues/incoming"),
    ] {
        let m = measure(|| http.get(format!("{url}{path}")).header("cookie", &session)).await;
        let p50 = m.client.percentile_ms(50.0);
        println!(
            "| {name} `{path}` | {:.1} KB | {:.1} KB | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× |",
            m.bytes as f64 / 1024.0,
            (m.bytes + gzipped) as f64 / 1024.0,
            m.server.percentile_ms(50.0),
            m.server.percentile_ms(99.0),
            p50,
            m.client.percentile_ms(99.0),
            p50 / ref_p50
        );
        fields.push((name, m.server.percentile_ms(50.0)));
        report.rows.push(vec![
            name.to_string(),
            format!("{:.1} KB", m.bytes as f64 / 1024.0),
            format!("{:.1} KB", (m.bytes + gzipped) as f64 / 1024.0),
            format!("{:.2} ms", m.server.percentile_ms(50.0)),
            format!("{:.2} ms", m.server.percentile_ms(99.0)),
            format!("{p50:.2} ms"),
            format!("{:.2} ms", m.client.percentile_ms(99.0)),
            format!("{:.2}×", p50 / ref_p50),
        ]);
        report.chart.categories.push(name.to_string());
        server.push(m.server.percentile_ms(50.0));
        client.push(p50);
    }
    let reference = vec![ref_p50; client.len()];
    report.chart.series = vec![
        ("server p50".into(), server),
        ("client p50".into(), client),
        ("reference (API answer) client p50".into(), reference),
    ];
    report.write();
    let mut line: Vec<(&str, f64)> = vec![
        ("assets_kb", assets as f64 / 1024.0),
        ("assets_gzip_kb", gzipped as f64 / 1024.0),
        ("reference_p50_ms", ref_p50),
    ];
    let keys: Vec<String> = fields
        .iter()
        .map(|(n, _)| format!("{n}_server_p50_ms"))
        .collect();
    for ((_, v), k) in fields.iter().zip(&keys) {
        line.push((k.as_str(), *v));
    }
    println!("\n{}", bench_line("console", &line));
}
