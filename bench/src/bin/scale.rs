//! bench/scale: what the fabric costs as apps grow.
//!
//! Runs `fabric up` (the release build beside this binary) and deploys apps
//! of one worker each (size 0.1) until there are 1, 10, 50 and 100 (or the
//! counts given as arguments). At each count: the time from a deploy's start
//! until the app answers through the load balancer (the route table pushed
//! and applied), the route table's size, the `fabric up` process's resident
//! memory and CPU at rest (control plane, load balancer and services; the
//! workers are processes of their own), and requests per second through the
//! load balancer spread over every app. Each figure is printed beside the
//! same figure per app at the first count, the reference of the same run:
//! growth is linear or better when the ratio stays at or under 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use control_plane::model::DeployRequest;
use fabric_bench::{bench_line, cpu_s, mem_mb};

const APP: &str = include_str!("../../../examples/hello.yaml");
/// How long CPU use at rest is sampled.
const REST: Duration = Duration::from_secs(5);
/// How long the load runs at each count.
const LOAD: Duration = Duration::from_secs(5);
/// Connections the load keeps open.
const CONNECTIONS: usize = 32;

/// What one count of apps measured.
struct Step {
    apps: usize,
    deploy_to_routable_s: f64,
    route_table_bytes: usize,
    rss_mb: f64,
    rest_cpu_pct: f64,
    /// The workers' CPU at rest, all together, in percent of one core.
    rest_workers_cpu_pct: f64,
    req_per_s: f64,
    /// Requests per second to one app only, at this count: beside
    /// `req_per_s`, it tells the balancer's cost of a larger table from the
    /// cost of spreading requests over many workers.
    one_app_req_per_s: f64,
    /// Over all apps, and to one app: what each request cost.
    all: Load,
    one: Load,
}

/// Context switches on the whole machine since boot (`/proc/stat`'s `ctxt`).
fn switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of every process descended from `pid` (the workers `fabric
/// up` started), not counting `pid` itself.
fn descendants_cpu_s(pid: u32) -> f64 {
    // Each thread lists the children it started.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    threads
        .flat_map(|t| {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(|c| cpu_s(c) + descendants_cpu_s(c))
        .sum()
}

/// What one load phase measured: requests a second, and per request the
/// machine's context switches and the CPU time of `fabric up` (load
/// balancer, control plane, services) and of the workers.
struct Load {
    req_per_s: f64,
    switches: f64,
    fabric_us: f64,
    workers_us: f64,
}

/// [`load`], with what each request cost the machine.
async fn measured_load(proxy: &str, apps: usize, fabric: u32) -> Load {
    let (s0, f0, w0) = (switches(), cpu_s(fabric), descendants_cpu_s(fabric));
    let req_per_s = load(proxy, apps).await;
    let requests = (req_per_s * LOAD.as_secs_f64()).max(1.0);
    Load {
        req_per_s,
        switches: (switches() - s0) as f64 / requests,
        fabric_us: (cpu_s(fabric) - f0) / requests * 1e6,
        workers_us: (descendants_cpu_s(fabric) - w0) / requests * 1e6,
    }
}

async fn routable(http: &reqwest::Client, proxy: &str, app: &str) {
    let started = Instant::now();
    loop {
        let r = http
            .get(format!("http://{proxy}/hello/bench"))
            .header("host", format!("{app}.fabric.localhost"))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{app} never routable"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Requests per second through the load balancer, round robin over the
/// first `apps` apps.
async fn load(proxy: &str, apps: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + LOAD;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (done, proxy) = (done.clone(), proxy.to_string());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = c;
                while Instant::now() < stop {
                    let app = format!("scale-{}", i % apps);
                    i += CONNECTIONS;
                    let ok = http
                        .get(format!("http://{proxy}/hello/load"))
                        .header("host", format!("{app}.fabric.localhost"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    done.load(Ordering::Relaxed) as f64 / LOAD.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let counts: Vec<usize> = {
        let given: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if given.is_empty() {
            vec![1, 10, 50, 100]
        } else {
            given
        }
    };
    let fabric = fabric_bench::LocalFabric::start("run bench/scale/run");
    let (url, admin, proxy) = (
        fabric.url.clone(),
        fabric.admin.clone(),
        fabric.proxy.clone(),
    );
    let client = fabric.client();
    let http = reqwest::Client::new();

    let mut steps: Vec<Step> = Vec::new();
    let mut deployed = 0;
    for &target in &counts {
        let mut times = Vec::new();
        while deployed < target {
            let name = format!("scale-{deployed}");
            let req = DeployRequest {
                name: Some(name.clone()),
                encrypt_queues: false,
                ..DeployRequest::of(APP, 1, 0.1)
            };
            let started = Instant::now();
            client.deploy(&req).await.expect("deploy");
            routable(&http, &proxy, &name).await;
            times.push(started.elapsed().as_secs_f64());
            deployed += 1;
        }
        times.sort_by(f64::total_cmp);
        let table = http
            .get(format!("{url}/v1/routes"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("routes")
            .bytes()
            .await
            .expect("routes body")
            .len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (before, workers_before) = (cpu_s(fabric.pid()), descendants_cpu_s(fabric.pid()));
        tokio::time::sleep(REST).await;
        let rest_cpu_pct = (cpu_s(fabric.pid()) - before) / REST.as_secs_f64() * 100.0;
        let rest_workers_cpu_pct =
            (descendants_cpu_s(fabric.pid()) - workers_before) / REST.as_secs_f64() * 100.0;
        let all = measured_load(&proxy, target, fabric.pid()).await;
        let one = measured_load(&proxy, 1, fabric.pid()).await;
        let step = Step {
            apps: target,
            deploy_to_routable_s: times[times.len() / 2],
            route_table_bytes: table,
            rss_mb: mem_mb(fabric.pid(), "VmRSS"),
            rest_cpu_pct,
            rest_workers_cpu_pct,
            req_per_s: all.req_per_s,
            one_app_req_per_s: one.req_per_s,
            all,
            one,
        };
        let first = steps.first().unwrap_or(&step);
        let per_app = |v: f64, v0: f64| (v / step.apps as f64) / (v0 / first.apps as f64);
        println!(
            "{:>4} apps: deploy to routable {:.3} s (x{:.2} of {} app)  route table {} B ({:.2} per app vs first)  fabric up RSS {:.1} MB  at rest {:.2}% CPU  {:.0} req/s over all apps (x{:.2} of first), {:.0} to one app (x{:.2})",
            step.apps,
            step.deploy_to_routable_s,
            step.deploy_to_routable_s / first.deploy_to_routable_s,
            first.apps,
            step.route_table_bytes,
            per_app(
                step.route_table_bytes as f64,
                first.route_table_bytes as f64
            ),
            step.rss_mb,
            step.rest_cpu_pct,
            step.req_per_s,
            step.req_per_s / first.req_per_s,
            step.one_app_req_per_s,
            step.one_app_req_per_s / first.one_app_req_per_s,
        );
        println!(
            "      the workers at rest: {:.2}% CPU all together",
            step.rest_workers_cpu_pct
        );
        for (what, l) in [("over all apps", &step.all), ("to one app", &step.one)] {
            println!(
                "      a request {what}: {:.1} us of fabric up's CPU, {:.1} us of the workers', {:.2} context switches on the machine",
                l.fabric_us, l.workers_us, l.switches,
            );
        }
        steps.push(step);
    }
    drop(fabric);
    let fmt = |v: f64| format!("{v:.0}");
    fabric_bench::report::Report {
        name: "scale".into(),
        title:
            "What one fabric costs as apps grow: apps of one worker each (size 0.1) on a 2-core \
                machine; each figure beside the first count's, the reference of the same run."
                .into(),
        header: [
            "apps",
            "deploy to routable",
            "route table",
            "fabric up RSS",
            "CPU at rest",
            "req/s over all apps",
            "req/s to one app",
            "CPU µs a request, fabric up + workers: all apps / one app",
        ]
        .map(String::from)
        .to_vec(),
        rows: steps
            .iter()
            .map(|s| {
                vec![
                    s.apps.to_string(),
                    format!("{:.3} s", s.deploy_to_routable_s),
                    format!("{} B", s.route_table_bytes),
                    format!("{:.1} MB", s.rss_mb),
                    format!("{:.2}%", s.rest_cpu_pct),
                    fmt(s.req_per_s),
                    fmt(s.one_app_req_per_s),
                    format!(
                        "{:.1} + {:.1} / {:.1} + {:.1}",
                        s.all.fabric_us, s.all.workers_us, s.one.fabric_us, s.one.workers_us
                    ),
                ]
            })
            .collect(),
        chart: fabric_bench::report::Chart {
            y_label: "requests per second".into(),
            categories: steps.iter().map(|s| format!("{} apps", s.apps)).collect(),
            series: vec![
                (
                    "over all apps".into(),
                    steps.iter().map(|s| s.req_per_s).collect(),
                ),
                (
                    "to one app".into(),
                    steps.iter().map(|s| s.one_app_req_per_s).collect(),
                ),
            ],
        },
    }
    .write();
    for s in &steps {
        let apps = s.apps.to_string();
        println!(
            "{}",
            bench_line(
                &format!("scale apps={apps}"),
                &[
                    ("deploy_to_routable_s", s.deploy_to_routable_s),
                    ("route_table_bytes", s.route_table_bytes as f64),
                    ("fabric_up_rss_mb", s.rss_mb),
                    ("rest_cpu_pct", s.rest_cpu_pct),
                    ("rest_workers_cpu_pct", s.rest_workers_cpu_pct),
                    ("req_per_s", s.req_per_s),
                    ("one_app_req_per_s", s.one_app_req_per_s),
                    ("fabric_us_per_req", s.all.fabric_us),
                    ("workers_us_per_req", s.all.workers_us),
                    ("switches_per_req", s.all.switches),
                ]
            )
        );
    }
}
