//! Line charts as inline SVG, for the report's curves: one chart per (node, metric), a
//! polyline per series (a sweep variant), linear axes with "nice" ticks (1, 2 or 5 × 10ᵏ), and a
//! legend naming each series. No script: the SVG is complete as written.

use super::esc;
use std::fmt::Write;

/// Series colours (distinguishable, print-safe); series beyond them reuse the palette.
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line: a legend label and its `(x, y)` points (non-finite points are dropped).
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 330.0;
const H: f64 = 200.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 34.0;

/// Ticks covering `[lo, hi]`: about `n` values at a step of 1, 2 or 5 × 10ᵏ.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .take(50)
        .collect()
}

/// A tick label: short, without float noise (`0.30000000000000004` → `0.3`).
pub fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A tick label with as many digits as the tick spacing `step` needs (`0.00202`, `2.02e-5`).
pub fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 || !(step.is_finite() && step > 0.0) {
        return label(v);
    }
    let s = step.log10().floor();
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let d = (-s).clamp(0.0, 8.0) as usize;
        format!("{v:.d$}")
    } else {
        let d = (a.log10().floor() - s).clamp(0.0, 6.0) as usize;
        format!("{v:.d$e}")
    }
}

fn step_of(t: &[f64]) -> f64 {
    if t.len() > 1 {
        t[1] - t[0]
    } else {
        0.0
    }
}

/// The chart `title` (`x` against each series' y) as an `<svg class="curve">`; `attrs` are
/// extra attributes of the root element (e.g. `data-node="aligned"`).
pub fn line_chart(title: &str, x_name: &str, series: &[Series], attrs: &str) -> String {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let legend_h = 16.0 * series.len() as f64;
    let total_h = H + legend_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="curve" {attrs} xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" viewBox="0 0 {W} {total_h}" role="img"><title>{t}</title><text x="{LEFT}" y="16" class="ct">{t}</text>"#,
        t = esc(title)
    );
    if pts.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="{}" class="muted">no points yet</text></svg>"#,
            H / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
        y0 -= pad;
        y1 += pad;
    }
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;
    // Frame, grid and ticks.
    let _ = write!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>"#
    );
    let yt = ticks(y0, y1, 5);
    for &t in &yt {
        let y = sy(t);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            LEFT + pw,
            LEFT - 4.0,
            y + 3.5,
            tick_label(t, step_of(&yt))
        );
    }
    let xt = ticks(x0, x1, 6);
    for &t in &xt {
        let x = sx(t);
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" class="grid"/><text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + ph,
            TOP + ph + 13.0,
            tick_label(t, step_of(&xt))
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 6.0,
        esc(x_name)
    );
    // Lines (a lone point is drawn as a dot), then the legend.
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let p: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if p.len() == 1 {
            let (x, y) = p[0].split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>"#
            );
        } else if !p.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.6" class="series"/>"#,
                p.join(" ")
            );
        }
        let ly = H + 12.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{ly}" class="legend">{}</text>"#,
            LEFT + 18.0,
            ly - 4.0,
            ly - 4.0,
            LEFT + 24.0,
            esc(&s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.87, 4);
        assert_eq!(t.first().copied(), Some(0.2));
        assert!(t
            .iter()
            .all(|v| (v * 10.0 - (v * 10.0).round()).abs() < 1e-9));
        assert_eq!(label(0.30000000000000004), "0.3");
        assert_eq!(label(250_000.0), "2.5e5");
        let lr = ticks(0.001995, 0.00211, 5);
        let shown: Vec<String> = lr.iter().map(|v| tick_label(*v, lr[1] - lr[0])).collect();
        assert_eq!(shown, ["0.00200", "0.00205", "0.00210"]);
        assert_eq!(tick_label(2.5e-5, 5e-6), "2.5e-5");
    }

    #[test]
    fn a_chart_has_a_line_per_series_and_a_legend() {
        let s = vec![
            Series {
                label: "beta=0.1".into(),
                points: vec![(1.0, 2.0), (2.0, 1.5), (3.0, f64::NAN)],
            },
            Series {
                label: "beta=<0.3>".into(),
                points: vec![(1.0, 2.2)],
            },
        ];
        let svg = line_chart("loss", "step", &s, r#"data-node="a""#);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("beta=&lt;0.3&gt;") && svg.contains(r#"data-node="a""#));
        assert!(!svg.contains("NaN"));
    }
}
