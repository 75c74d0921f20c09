//! The cluster page's charts: inline SVG, drawn on the server from the node's
//! [`crate::invocation_history`] (no script, no external Prometheus). Each chart
//! has a text alternative (its title and a summary) for screen readers.

use maud::{html, Markup};

use crate::invocation_history::Point;

const W: f64 = 320.0;
const H: f64 = 130.0;
const PAD_L: f64 = 40.0;
const PAD_B: f64 = 16.0;
const PAD_T: f64 = 8.0;

/// One series of a chart. Its colour is the stylesheet's for `tone` (`accent`,
/// `bad`, `ok`, `warn`): the page's policy allows no inline style, and the colours
/// live in one place.
pub struct Series<'a> {
    pub name: &'a str,
    pub tone: &'a str,
    pub values: Vec<Option<f64>>,
}

fn ticks_label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart over the last hour (one value per minute, oldest first).
pub fn line(id: &str, title: &str, unit: &str, series: &[Series<'_>]) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let n = series.first().map(|s| s.values.len()).unwrap_or(0).max(2);
    let x = |i: usize| PAD_L + (W - PAD_L - 4.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| PAD_T + (H - PAD_T - PAD_B) * (1.0 - v / top);
    let summary: Vec<String> = series
        .iter()
        .map(|s| {
            let last = s.values.iter().rev().flatten().next();
            let peak = s.values.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
            match last {
                Some(l) => format!(
                    "{}: last {} {unit}, peak {} {unit}",
                    s.name,
                    ticks_label(*l),
                    ticks_label(peak)
                ),
                None => format!("{}: no data", s.name),
            }
        })
        .collect();
    let title_id = format!("{id}-title");
    let desc_id = format!("{id}-desc");
    html! {
        figure.chart.card {
            figcaption id=(title_id) { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img"
                aria-labelledby=(format!("{title_id} {desc_id}")) {
                desc id=(desc_id) { "Last 60 minutes. " (summary.join("; ")) }
                line.axis x1=(PAD_L) y1=(H - PAD_B) x2=(W) y2=(H - PAD_B) {}
                line.axis x1=(PAD_L) y1=(PAD_T) x2=(PAD_L) y2=(H - PAD_B) {}
                text x=(PAD_L - 4.0) y=(PAD_T + 10.0) text-anchor="end" { (ticks_label(top)) }
                text x=(PAD_L - 4.0) y=(H - PAD_B) text-anchor="end" { "0" }
                text x=(PAD_L) y=(H - 3.0) { "-60 min" }
                text x=(W - 4.0) y=(H - 3.0) text-anchor="end" { "now" }
                @for s in series {
                    polyline.series.(s.tone) points=(points(&s.values, &x, &y)) {}
                    // A minute with no neighbour draws no line: a dot.
                    @for (i, v) in isolated(&s.values) {
                        circle.dot.(s.tone) cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(v))) r="2.5" {}
                    }
                }
            }
            ul.legend {
                @for (s, text) in series.iter().zip(&summary) {
                    li { span.swatch.(s.tone) aria-hidden="true" {} (text) }
                }
            }
        }
    }
}

/// Points whose neighbours have no value.
fn isolated(values: &[Option<f64>]) -> Vec<(usize, f64)> {
    let at = |i: Option<usize>| i.and_then(|i| values.get(i).copied().flatten());
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = (*v)?;
            (at(i.checked_sub(1)).is_none() && at(Some(i + 1)).is_none()).then_some((i, v))
        })
        .collect()
}

fn points(values: &[Option<f64>], x: &dyn Fn(usize) -> f64, y: &dyn Fn(f64) -> f64) -> String {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three charts of the cluster page.
pub fn hour(points: &[Point]) -> Markup {
    let rate: Vec<Option<f64>> = points
        .iter()
        .map(|p| Some(p.invocations as f64 / 60.0))
        .collect();
    let errors: Vec<Option<f64>> = points.iter().map(|p| Some(p.errors as f64)).collect();
    let p50: Vec<Option<f64>> = points.iter().map(|p| p.p50_ms).collect();
    let p99: Vec<Option<f64>> = points.iter().map(|p| p.p99_ms).collect();
    html! {
        div.grid {
            (line("chart-rate", "Invocations per second", "/s", &[Series { name: "invocations/s", tone: "accent", values: rate }]))
            (line("chart-errors", "Failed invocations per minute", "", &[Series { name: "errors", tone: "bad", values: errors }]))
            (line("chart-duration", "Duration (ms)", "ms", &[
                Series { name: "p50", tone: "ok", values: p50 },
                Series { name: "p99", tone: "warn", values: p99 },
            ]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_its_points_and_says_what_it_shows() {
        let m = line(
            "c",
            "Rate",
            "/s",
            &[Series {
                name: "r",
                tone: "accent",
                values: vec![Some(0.0), None, Some(2.0)],
            }],
        )
        .into_string();
        assert!(m.contains("<polyline"), "{m}");
        // Two points drawn (the gap skipped).
        let points = m
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 2, "{points}");
        assert!(m.contains("last 2.0 /s, peak 2.0 /s"), "{m}");
        assert!(m.contains("role=\"img\""));
        assert_eq!(
            isolated(&[None, Some(1.0), None, Some(2.0), Some(3.0)]),
            vec![(1, 1.0)]
        );
    }
}
