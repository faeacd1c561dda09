//! A bench's figures as a reader sees them without running anything: its
//! table as Markdown and one chart as SVG, written into `docs/bench/` (or
//! `$BENCH_REPORT_DIR`) as `{name}.md` and `{name}.svg`.

use std::path::PathBuf;

use plotters::prelude::*;

/// One bench's report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The file name, without extension.
    pub name: String,
    /// A sentence on what was measured, and against what.
    pub title: String,
    /// The table's column names.
    pub header: Vec<String>,
    /// The table's rows.
    pub rows: Vec<Vec<String>>,
    /// The chart: categories along the bottom, one bar per series in each.
    pub chart: Chart,
}

/// A grouped bar chart.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// What the bars measure, with its unit.
    pub y_label: String,
    /// The categories, left to right.
    pub categories: Vec<String>,
    /// Each series: its label, and one value per category.
    pub series: Vec<(String, Vec<f64>)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(47, 111, 222),
    RGBColor(224, 112, 61),
    RGBColor(46, 158, 106),
    RGBColor(155, 89, 182),
    RGBColor(192, 57, 43),
    RGBColor(22, 160, 133),
];

/// The font charts are written with (Debian's `fonts-dejavu-core`, which
/// `scripts/install-browser` installs beside Chromium).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as the charts' sans-serif, once.
fn font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT)
                .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
            // Registered fonts live as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a font"))
        })
        .clone()
}

/// Where reports go: `$BENCH_REPORT_DIR`, else `docs/bench`.
pub fn dir() -> PathBuf {
    std::env::var_os("BENCH_REPORT_DIR").map_or_else(|| PathBuf::from("docs/bench"), PathBuf::from)
}

impl Report {
    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!("# {}\n\n{}\n\n", self.name, self.title);
        md.push_str(&format!("| {} |\n", self.header.join(" | ")));
        md.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for row in &self.rows {
            md.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        md.push_str(&format!("\n![{}]({}.svg)\n", self.name, self.name));
        md
    }

    /// The chart as SVG.
    pub fn svg(&self) -> Result<String, String> {
        font()?;
        let mut svg = String::new();
        {
            let area = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
            area.fill(&WHITE).map_err(|e| e.to_string())?;
            let c = &self.chart;
            let top = c
                .series
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE)
                * 1.15;
            let groups = c.categories.len().max(1);
            let per = c.series.len().max(1);
            let mut chart = ChartBuilder::on(&area)
                .caption(&self.name, ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..groups as f64, 0.0..top)
                .map_err(|e| e.to_string())?;
            let categories = c.categories.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(groups * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    if (x - i as f64 - 0.5).abs() < 0.01 {
                        categories.get(i).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc(&c.y_label)
                .draw()
                .map_err(|e| e.to_string())?;
            let width = 0.8 / per as f64;
            for (s, (label, values)) in c.series.iter().enumerate() {
                let color = PALETTE[s % PALETTE.len()];
                chart
                    .draw_series(
                        values
                            .iter()
                            .enumerate()
                            .filter(|(_, v)| v.is_finite())
                            .map(|(i, v)| {
                                let x0 = i as f64 + 0.1 + s as f64 * width;
                                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], color.filled())
                            }),
                    )
                    .map_err(|e| e.to_string())?
                    .label(label.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
            area.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }

    /// Writes `{name}.md` and `{name}.svg`; says where, or why not.
    pub fn write(&self) {
        let dir = dir();
        let written = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::write(dir.join(format!("{}.md", self.name)), self.markdown())
                    .map_err(|e| e.to_string())
            })
            .and_then(|()| self.svg())
            .and_then(|svg| {
                std::fs::write(dir.join(format!("{}.svg", self.name)), svg)
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => eprintln!("report: {}/{}.md and .svg", dir.display(), self.name),
            Err(e) => eprintln!("report {} not written: {e}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_a_table_and_a_chart() {
        let r = Report {
            name: "demo".into(),
            title: "Two things beside a reference.".into(),
            header: vec!["case".into(), "req/s".into()],
            rows: vec![vec!["a".into(), "1".into()], vec!["b".into(), "2".into()]],
            chart: Chart {
                y_label: "req/s".into(),
                categories: vec!["a".into(), "b".into()],
                series: vec![
                    ("x".into(), vec![1.0, 2.0]),
                    ("y".into(), vec![f64::NAN, 3.0]),
                ],
            },
        };
        let md = r.markdown();
        assert!(
            md.contains("| case | req/s |\n|---|---|\n| a | 1 |"),
            "{md}"
        );
        let svg = r.svg().unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("\nx\n") && svg.contains("\ny\n"),
            "the legend names the series"
        );
    }
}
