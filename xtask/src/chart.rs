//! A small hand-written SVG chart for `bench e2e`: two panels (throughput and p99 latency
//! against the number of clients, log-scaled x), one line with points per system, a legend.
//! No dependencies; pure, unit-tested.

use std::fmt::Write as _;

/// One system's measurements: `(clients, ops/s, p99 in ms)` per point, ascending clients.
pub(crate) struct Series {
    /// Legend label, e.g. "dengine".
    pub(crate) name: String,
    /// CSS colour of the line and the points.
    pub(crate) color: &'static str,
    /// The points.
    pub(crate) points: Vec<(u64, f64, f64)>,
}

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_T: f64 = 50.0;
const MARGIN_B: f64 = 50.0;
const GAP: f64 = 90.0;

/// A "nice" upper bound (1, 2 or 5 × 10^k) at or above `max`, and its tick step.
fn nice_scale(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * magnitude >= max {
            let top = m * magnitude;
            return (top, top / 5.0);
        }
    }
    (10.0 * magnitude, 2.0 * magnitude)
}

/// A tick label: thousands as "k", small numbers with one decimal.
fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(String::from).unwrap_or(s)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart of `series` under `title`, as an SVG document.
pub(crate) fn render(title: &str, series: &[Series]) -> String {
    let clients: Vec<u64> = {
        let mut c: Vec<u64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let (x_lo, x_hi) = match (clients.first(), clients.last()) {
        (Some(&lo), Some(&hi)) if hi > lo => ((lo as f64).log2(), (hi as f64).log2()),
        (Some(&lo), _) => ((lo as f64).log2() - 1.0, (lo as f64).log2() + 1.0),
        _ => (0.0, 1.0),
    };
    let width = MARGIN_L + 2.0 * PANEL_W + GAP + 30.0;
    let height = MARGIN_T + PANEL_H + MARGIN_B + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    type Pick = fn(&(u64, f64, f64)) -> f64;
    let panels: [(&str, Pick); 2] = [
        ("throughput (ops/s)", |p| p.1),
        ("p99 latency (ms)", |p| p.2),
    ];
    for (i, (y_title, pick)) in panels.into_iter().enumerate() {
        let left = MARGIN_L + i as f64 * (PANEL_W + GAP);
        let top = MARGIN_T;
        let y_max = series
            .iter()
            .flat_map(|s| s.points.iter().map(pick))
            .fold(0.0, f64::max);
        let (y_top, y_step) = nice_scale(y_max);
        let x = |c: u64| left + ((c as f64).log2() - x_lo) / (x_hi - x_lo) * PANEL_W;
        let y = |v: f64| top + PANEL_H - v / y_top * PANEL_H;
        // Frame, grid and ticks.
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        let mut v = 0.0;
        while v <= y_top + y_step / 2.0 {
            let yy = y(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PANEL_W,
                left - 6.0,
                yy + 4.0,
                label(v)
            );
            v += y_step;
        }
        for &c in &clients {
            let xx = x(c);
            let _ = writeln!(
                svg,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{c}</text>"##,
                top + PANEL_H,
                top + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">clients (log scale)</text>"#,
            left + PANEL_W / 2.0,
            top + PANEL_H + 36.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{y_title}</text>"#,
            left - 52.0,
            top + PANEL_H / 2.0,
            left - 52.0,
            top + PANEL_H / 2.0
        );
        // One line with points per system.
        for s in series {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p))))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                escape(&s.name),
                s.color,
                pts.join(" ")
            );
            for p in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}: {} clients, {}</title></circle>"#,
                    x(p.0),
                    y(pick(p)),
                    s.color,
                    escape(&s.name),
                    p.0,
                    label(pick(p))
                );
            }
        }
    }
    // Legend, top left of the first panel.
    for (i, s) in series.iter().enumerate() {
        let lx = MARGIN_L + 12.0;
        let ly = MARGIN_T + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/><circle cx="{}" cy="{ly}" r="3.5" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            s.color,
            lx + 12.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_series() -> Vec<Series> {
        vec![
            Series {
                name: "dengine".into(),
                color: "#1f77b4",
                points: vec![(1, 2000.0, 1.0), (16, 20000.0, 3.0), (256, 50000.0, 20.0)],
            },
            Series {
                name: "etcd <3.4>".into(),
                color: "#d62728",
                points: vec![(1, 1000.0, 2.0), (16, 3300.0, 12.0), (256, 8800.0, 70.0)],
            },
        ]
    }

    #[test]
    fn svg_has_both_series_in_both_panels() {
        let svg = render("e2e", &two_series());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("data-name=\"dengine\"").count(), 2);
        assert_eq!(svg.matches("data-name=\"etcd &lt;3.4&gt;\"").count(), 2);
        // Every point in both panels, plus one legend marker per series.
        assert_eq!(svg.matches("<circle").count(), 2 * 6 + 2);
        assert!(svg.contains("clients (log scale)"));
        assert!(svg.contains("p99 latency (ms)"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn svg_tags_are_balanced() {
        let svg = render("e2e", &two_series());
        for tag in ["svg", "text", "circle", "title"] {
            let open =
                svg.matches(&format!("<{tag} ")).count() + svg.matches(&format!("<{tag}>")).count();
            let close = svg.matches(&format!("</{tag}>")).count();
            let self_closed = svg
                .split(&format!("<{tag}"))
                .skip(1)
                .filter(|rest| rest.split('>').next().is_some_and(|t| t.ends_with('/')))
                .count();
            assert_eq!(open, close + self_closed, "<{tag}> unbalanced");
        }
    }

    #[test]
    fn nice_scales() {
        assert_eq!(nice_scale(8800.0), (10000.0, 2000.0));
        assert_eq!(nice_scale(42.0), (50.0, 10.0));
        assert_eq!(nice_scale(1.0), (1.0, 0.2));
        assert_eq!(nice_scale(0.0), (1.0, 0.25));
        assert_eq!(label(25000.0), "25k");
        assert_eq!(label(2.5), "2.5");
    }

    #[test]
    fn one_point_or_none_renders() {
        let one = vec![Series {
            name: "x".into(),
            color: "black",
            points: vec![(64, 1.0, 1.0)],
        }];
        assert!(!render("t", &one).contains("NaN"));
        assert!(render("t", &[]).ends_with("</svg>\n"));
    }
}
