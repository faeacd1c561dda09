//! `bench/proxy`'s report: reads the figures `bench/proxy/run` wrote as TSV
//! and writes `proxy.md` with `proxy.svg` (requests a second) and
//! `proxy-cpu.svg` (the proxy's CPU time a request) through
//! `fabric_bench::report`.
//!
//! Usage: `proxy-report FIGURES.tsv TITLE [NOTES]`. Each TSV line is
//! `scenario target req/s p50_ms p99_ms cpu_us_per_req status`, `status`
//! being `ok` or why the figure is missing; NOTES, a text file, is appended
//! to the Markdown below the charts.
#![forbid(unsafe_code)]

use fabric_bench::report::{Chart, Report};

/// The series of the charts, in this order, with their labels.
const SERIES: [(&str, &str); 3] = [
    ("lb-proxy", "lb-proxy"),
    ("nginx", "nginx"),
    ("haproxy", "HAProxy"),
];

struct Row {
    scenario: String,
    target: String,
    rps: f64,
    p50: String,
    p99: String,
    cpu: f64,
    status: String,
}

fn read(path: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() == 7, "{path}: not 7 fields: {l:?}");
            let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
            let ok = f[6] == "ok";
            Row {
                scenario: f[0].into(),
                target: f[1].into(),
                rps: if ok { num(f[2]) } else { f64::NAN },
                p50: f[3].into(),
                p99: f[4].into(),
                cpu: if ok { num(f[5]) } else { f64::NAN },
                status: f[6].into(),
            }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(tsv), Some(title)) = (args.next(), args.next()) else {
        eprintln!("usage: proxy-report FIGURES.tsv TITLE [NOTES]");
        std::process::exit(2);
    };
    let notes = args
        .next()
        .map(|p| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")));
    let rows = read(&tsv);
    let mut scenarios: Vec<String> = Vec::new();
    for r in &rows {
        if !scenarios.contains(&r.scenario) {
            scenarios.push(r.scenario.clone());
        }
    }
    let series = |value: fn(&Row) -> f64| -> Vec<(String, Vec<f64>)> {
        SERIES
            .iter()
            .filter(|(target, _)| rows.iter().any(|r| r.target == *target))
            .map(|(target, label)| {
                let values = scenarios
                    .iter()
                    .map(|s| {
                        rows.iter()
                            .find(|r| r.scenario == *s && r.target == *target)
                            .map_or(f64::NAN, value)
                    })
                    .collect();
                (label.to_string(), values)
            })
            .collect()
    };
    let table_rows = rows
        .iter()
        .map(|r| {
            if r.status == "ok" {
                vec![
                    r.scenario.clone(),
                    r.target.clone(),
                    format!("{:.0}", r.rps),
                    r.p50.clone(),
                    r.p99.clone(),
                    format!("{:.1}", r.cpu),
                ]
            } else {
                let why = r.status.clone();
                vec![
                    r.scenario.clone(),
                    r.target.clone(),
                    why,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]
            }
        })
        .collect();
    let report = Report {
        name: "proxy".into(),
        title,
        header: [
            "scenario",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/req",
        ]
        .map(String::from)
        .to_vec(),
        rows: table_rows,
        chart: Chart {
            y_label: "requests per second".into(),
            categories: scenarios.clone(),
            series: series(|r| r.rps),
        },
    };
    report.write();
    let cpu = Report {
        name: "proxy-cpu".into(),
        chart: Chart {
            y_label: "proxy CPU µs per request".into(),
            categories: scenarios.clone(),
            series: series(|r| r.cpu),
        },
        ..Report::default()
    };
    let dir = fabric_bench::report::dir();
    let extra = cpu
        .svg()
        .and_then(|svg| std::fs::write(dir.join("proxy-cpu.svg"), svg).map_err(|e| e.to_string()))
        .and_then(|()| {
            let md = dir.join("proxy.md");
            let mut text = std::fs::read_to_string(&md).map_err(|e| e.to_string())?;
            text.push_str("\n![proxy-cpu](proxy-cpu.svg)\n");
            if let Some(notes) = notes {
                text.push('\n');
                text.push_str(notes.trim_end());
                text.push('\n');
            }
            std::fs::write(&md, text).map_err(|e| e.to_string())
        });
    match extra {
        Ok(()) => eprintln!("report: {}/proxy-cpu.svg", dir.display()),
        Err(e) => eprintln!("report proxy-cpu not written: {e}"),
    }
}
