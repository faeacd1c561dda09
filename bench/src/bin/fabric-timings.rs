//! bench/fabric: how fast the fabric deploys and heals, and what an idle worker costs.
//!
//! Runs `fabric up` (the release build beside this binary), then, several
//! times: deploys a 2-worker app and times it until both workers serve;
//! `kill -9`s one worker and times it until its replacement is ready; reads
//! each idle worker's resident memory. Ends with
//! `BENCH fabric deploy_to_ready_s=<x> replace_after_kill_s=<y> idle_worker_rss_mb=<z>`.

use std::time::{Duration, Instant};

use control_plane::model::{DeployRequest, WorkerState};
use fabric_bench::{bench_line, mem_mb};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROUNDS: usize = 5;
const APP: &str = include_str!("../../../examples/hello.yaml");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let fabric = fabric_bench::LocalFabric::start("run bench/fabric/run");
    let client = fabric.client();

    let (mut deploys, mut replaces, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("bench-{round}");
        let req = DeployRequest {
            name: Some(name.clone()),
            encrypt_queues: false,
            ..DeployRequest::of(APP, 2, 0.1)
        };
        let started = Instant::now();
        let app = client.deploy(&req).await.expect("deploy");
        assert_eq!(app.ready, 2);
        deploys.push(started.elapsed().as_secs_f64());

        let workers = client.workers(&name).await.expect("workers");
        // Let them settle to idle before reading their memory.
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss.extend(
            workers
                .iter()
                .filter_map(|w| w.pid)
                .map(|pid| mem_mb(pid, "VmRSS")),
        );
        let victim = workers[0].pid.expect("pid");
        let started = Instant::now();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill");
        loop {
            let ws = client.workers(&name).await.expect("workers");
            if ws.iter().all(|w| w.state == WorkerState::Ready) && ws[0].pid != Some(victim) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no replacement"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replaces.push(started.elapsed().as_secs_f64());
        client.delete(&name).await.expect("delete");
        println!(
            "round {round}: deploy {:.3}s, replacement ready {:.3}s after kill -9",
            deploys[round], replaces[round]
        );
    }
    drop(fabric);

    let (d, r, m) = (median(deploys), median(replaces), median(rss));
    println!(
        "deploy to ready, 2 workers (median of {ROUNDS}): {d:.3} s  (target <= 2 s; CloudHub deploys take minutes)"
    );
    println!(
        "replacement ready after kill -9 (median):      {r:.3} s  (target <= 2 s; Kubernetes probes default to 10 s periods)"
    );
    println!("idle worker RSS (median):                      {m:.1} MB");
    fabric_bench::report::Report {
        name: "fabric".into(),
        title: format!(
            "A local fabric (embedded backend) deploying an app of two workers and replacing \
             one after kill -9, median of {ROUNDS} rounds, beside the 2 s target; CloudHub \
             deploys take minutes, and Kubernetes probes default to 10 s periods."
        ),
        header: ["figure", "median", "target"].map(String::from).to_vec(),
        rows: vec![
            vec![
                "deploy to ready, 2 workers".into(),
                format!("{d:.3} s"),
                "2 s".into(),
            ],
            vec![
                "replacement ready after kill -9".into(),
                format!("{r:.3} s"),
                "2 s".into(),
            ],
            vec![
                "idle worker RSS".into(),
                format!("{m:.1} MB"),
                "20 MB".into(),
            ],
        ],
        chart: fabric_bench::report::Chart {
            y_label: "seconds".into(),
            categories: ["deploy to ready", "replacement after kill -9"]
                .map(String::from)
                .to_vec(),
            series: vec![
                ("this fabric (median)".into(), vec![d, r]),
                ("target".into(), vec![2.0, 2.0]),
            ],
        },
    }
    .write();
    println!(
        "{}",
        bench_line(
            "fabric",
            &[
                ("deploy_to_ready_s", d),
                ("replace_after_kill_s", r),
                ("idle_worker_rss_mb", m)
            ]
        )
    );
}
