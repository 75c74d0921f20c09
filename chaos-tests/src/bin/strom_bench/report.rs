//! What `strom-bench` writes: every line it prints is also kept, and a full run puts
//! them into `docs/benchmarks.md` (between the report markers, leaving the notes
//! around them alone) with a chart of the latency distributions and failover
//! times in `docs/benchmarks.svg`.

use std::path::Path;
use std::sync::Mutex;

use plotters::prelude::*;

static LINES: Mutex<String> = Mutex::new(String::new());
static CHART: Mutex<Chart> = Mutex::new(Chart {
    latency: Vec::new(),
    failover: Vec::new(),
});

pub const BEGIN: &str = "<!-- strom-bench report: begin (generated; edits are overwritten) -->";
pub const END: &str = "<!-- strom-bench report: end -->";

/// Print a line and keep it for the report.
macro_rules! out {
    () => { $crate::report::line("") };
    ($($arg:tt)*) => { $crate::report::line(&format!($($arg)*)) };
}

pub fn line(text: &str) {
    println!("{text}");
    let mut all = LINES.lock().expect("report lock");
    all.push_str(text);
    all.push('\n');
}

/// A latency series: target, connections, [(quantile, µs)].
type LatencySeries = (String, usize, Vec<(f64, f64)>);

struct Chart {
    latency: Vec<LatencySeries>,
    /// (system, failover times in ms).
    failover: Vec<(String, Vec<f64>)>,
}

/// The quantiles the latency chart shows.
pub const QUANTILES: [f64; 7] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999];

pub fn latency(target: &str, connections: usize, points: Vec<(f64, f64)>) {
    CHART
        .lock()
        .expect("chart lock")
        .latency
        .push((target.to_string(), connections, points));
}

pub fn failover(system: &str, ms: Vec<f64>) {
    CHART
        .lock()
        .expect("chart lock")
        .failover
        .push((system.to_string(), ms));
}

/// Put the kept lines into `markdown` between the markers (after the first
/// heading's introduction when there are none yet), and draw the chart to `svg`.
pub fn write(markdown: &Path, svg: &Path) -> anyhow::Result<()> {
    draw(svg)?;
    let lines = LINES.lock().expect("report lock").clone();
    let svg_name = svg
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let block = format!(
        "{BEGIN}\n\n## Latest full run\n\n![Gateway latency percentiles and failover times]({svg_name})\n\n{}\n{END}",
        lines.trim_end()
    );
    let old = std::fs::read_to_string(markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => match old.find("\n## ") {
            Some(at) => format!("{}{block}\n\n{}", &old[..at + 1], &old[at + 1..]),
            None => format!("{}\n{block}\n", old.trim_end()),
        },
    };
    std::fs::write(markdown, new)?;
    println!("wrote {} and {}", markdown.display(), svg.display());
    Ok(())
}

/// Where quantile `q` sits on the latency charts' x axis: p50 at 0, p90 at 1, then
/// one step per nine (p99 at 2, p99.9 at 3, p99.99 at 4), so the tail spreads evenly.
fn percentile_axis(q: f64) -> f64 {
    if q < 0.9 {
        (q - 0.5) / 0.4
    } else {
        -(1.0 - q).log10()
    }
}

/// The tick label at `x` on that axis: "p50", "p90", "p99", "p99.9", "p99.99" at the
/// whole steps, nothing between them.
fn percentile_label(x: f64) -> String {
    let step = x.round();
    if (x - step).abs() > 1e-6 || step < 0.0 {
        return String::new();
    }
    if step == 0.0 {
        return "p50".into();
    }
    let percent = format!("{:.4}", 100.0 - 10f64.powf(2.0 - step));
    format!("p{}", percent.trim_end_matches('0').trim_end_matches('.'))
}

/// Three panels: gateway latency percentiles at 1 and at 32 connections (log
/// scale), and the failover times of each system as a distribution.
fn draw(path: &Path) -> anyhow::Result<()> {
    let chart = CHART.lock().expect("chart lock");
    let root = SVGBackend::new(path, (1500, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for (panel, connections) in panels.iter().zip([1usize, 32]) {
        let series: Vec<_> = chart
            .latency
            .iter()
            .filter(|(_, c, _)| *c == connections)
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|x| x.1))
            .fold(1.0f64, f64::max);
        let mut c = ChartBuilder::on(panel)
            .caption(
                format!("Gateway latency, {connections} connection(s)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..4.0, (10f64..max * 1.5).log_scale())?;
        c.configure_mesh()
            .x_desc("percentile")
            .y_desc("µs")
            .x_labels(5)
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        for (i, (name, _, points)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            c.draw_series(LineSeries::new(
                points.iter().map(|(q, us)| (percentile_axis(*q), *us)),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        // The lower right is empty: latencies only rise with the percentile.
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    let max = chart
        .failover
        .iter()
        .flat_map(|(_, ms)| ms.iter().copied())
        .fold(100.0f64, f64::max);
    let mut c = ChartBuilder::on(&panels[2])
        .caption(
            "Leader failover: kill -9 → first write acknowledged",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max * 1.1, 0f64..1.0)?;
    c.configure_mesh()
        .x_desc("ms")
        .y_desc("fraction of trials")
        .draw()?;
    for (i, (name, ms)) in chart.failover.iter().enumerate() {
        let color = palette[i % palette.len()];
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mut steps = vec![(0.0, 0.0)];
        for (k, v) in sorted.iter().enumerate() {
            steps.push((*v, k as f64 / n));
            steps.push((*v, (k + 1) as f64 / n));
        }
        c.draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_replaces_its_own_block_and_keeps_the_notes() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("benchmarks.md");
        let svg = dir.path().join("benchmarks.svg");
        std::fs::write(&md, "# Benchmarks\n\nIntro.\n\n## Notes\n\nHand-written.\n").unwrap();
        line("| target | p50 |");
        latency("direct", 1, vec![(0.5, 50.0), (0.99, 70.0), (0.9999, 90.0)]);
        latency(
            "strom gateway",
            1,
            vec![(0.5, 140.0), (0.99, 200.0), (0.9999, 400.0)],
        );
        latency("strom gateway", 32, vec![(0.5, 1600.0), (0.99, 5700.0)]);
        failover("strom", vec![900.0, 1100.0, 1450.0]);
        failover("etcd", vec![1300.0, 1500.0]);
        write(&md, &svg).unwrap();
        let first = std::fs::read_to_string(&md).unwrap();
        assert!(first.starts_with("# Benchmarks\n\nIntro.\n"), "{first}");
        let block = first.find(BEGIN).unwrap();
        assert!(block < first.find("## Notes").unwrap(), "{first}");
        assert!(first.contains("| target | p50 |"), "{first}");
        assert!(first.contains("![Gateway latency percentiles and failover times](benchmarks.svg)"));
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(drawn.starts_with("<svg"), "{drawn}");
        for label in [
            "strom gateway",
            "direct",
            "etcd",
            "Leader failover",
            "\np50\n",
            "\np90\n",
            "\np99\n",
            "\np99.9\n",
            "\np99.99\n",
        ] {
            assert!(drawn.contains(label), "{label} missing from the chart");
        }
        // A second run replaces the block; the notes stay, once.
        write(&md, &svg).unwrap();
        let second = std::fs::read_to_string(&md).unwrap();
        assert_eq!(second.matches(BEGIN).count(), 1, "{second}");
        assert_eq!(second.matches("Hand-written.").count(), 1, "{second}");
        assert_eq!(first, second);
    }
}
