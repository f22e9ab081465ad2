//! The report's two charts as small hand-written SVG: a CDF (one polyline per arm through its
//! 0..100 % quantiles) and a dot-and-whisker plot (a value and its 95 % interval per arm).
//!
//! Why by hand rather than `plotters`: these are two fixed chart shapes of a few dozen elements.
//! `plotters`, even with only its SVG backend, adds three crates, draws to fixed pixel sizes
//! (no `viewBox`, so no scaling with the page), and without a font feature only guesses text
//! widths. Writing the elements directly keeps the report one small, self-contained file whose
//! colours come from the page's CSS, and every piece of text goes through the same HTML escape.

use std::fmt::Write;

use minijinja::HtmlEscape;

/// One arm's distribution: quantiles at evenly spaced levels from 0 % to 100 %.
pub struct Series<'a> {
    pub name: &'a str,
    /// Index into the palette (the arm's position, so colours match across charts).
    pub color: usize,
    pub quantiles: Vec<f64>,
}

/// One arm's value with its interval.
pub struct Interval<'a> {
    pub name: &'a str,
    pub color: usize,
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Colour-blind-safe palette (Okabe–Ito), cycled.
const PALETTE: &[&str] = &[
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000",
];

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const W: f64 = 720.0;

/// About `n` round tick values (1, 2 or 5 × 10^k apart) covering `lo..=hi`.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut x = first;
    while x <= hi + step * 1e-9 {
        // Avoid "-0" and float noise such as 0.30000000000000004.
        out.push(if x.abs() < step * 1e-9 { 0.0 } else { x });
        x += step;
    }
    out
}

fn tick_label(x: f64) -> String {
    if x.abs() >= 1000.0 || x.fract().abs() < 1e-9 {
        format!("{x:.0}")
    } else if (x * 10.0).fract().abs() < 1e-6 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn open(out: &mut String, title: &str, h: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h}" role="img" class="chart"><title>{}</title>"#,
        HtmlEscape(title)
    );
}

/// A CDF chart: x is the value, y the share of samples at or below it. `None` without data.
pub fn cdf(title: &str, x_label: &str, series: &[Series]) -> Option<String> {
    let series: Vec<&Series> = series.iter().filter(|s| s.quantiles.len() >= 2).collect();
    if series.is_empty() {
        return None;
    }
    let (ml, mr, mt, mb) = (56.0, 16.0, 16.0 + 18.0 * series.len() as f64, 44.0);
    let h = 300.0 + mt;
    let (pw, ph) = (W - ml - mr, h - mt - mb);
    let lo = series
        .iter()
        .map(|s| s.quantiles[0])
        .fold(f64::INFINITY, f64::min);
    let max = series
        .iter()
        .map(|s| s.quantiles[s.quantiles.len() - 1])
        .fold(f64::NEG_INFINITY, f64::max);
    // The top 1 % can be ten times the p99 and would squash everything else: cut the axis a
    // little past the largest p99 and let the tails leave the plot (clipped).
    let p99 = series
        .iter()
        .map(|s| s.quantiles[(s.quantiles.len() - 1) * 99 / 100])
        .fold(f64::NEG_INFINITY, f64::max);
    let hi = max.min(p99 + (p99 - lo) * 0.15).max(lo + 1e-9);
    let clipped = max > hi;
    let ticks = nice_ticks(lo, hi, 8);
    let x0 = ticks.first().copied().unwrap_or(lo).min(lo);
    let x1 = hi.max(ticks.last().copied().unwrap_or(hi));
    let sx = |v: f64| ml + (v - x0) / (x1 - x0) * pw;
    let sy = |p: f64| mt + (1.0 - p / 100.0) * ph;

    let mut o = String::new();
    open(&mut o, title, h);
    let clip = format!(
        "clip-{}",
        x_label.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    let _ = write!(
        o,
        r#"<defs><clipPath id="{clip}"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}"/></clipPath></defs>"#
    );
    for p in [0.0, 25.0, 50.0, 75.0, 90.0, 99.0, 100.0] {
        let y = sy(p);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{ml}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/>"#,
            ml + pw
        );
        // 99 sits too close to 100 for a label of its own: its grid line is enough.
        if p != 99.0 {
            let _ = write!(
                o,
                r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{p}</text>"#,
                ml - 6.0,
                y + 4.0
            );
        }
    }
    for t in &ticks {
        let x = sx(*t);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{mt}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            mt + ph,
            mt + ph + 16.0,
            tick_label(*t)
        );
    }
    let _ = write!(
        o,
        r#"<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}{}</text><text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">% of samples ≤ x</text>"#,
        ml + pw / 2.0,
        h - 8.0,
        HtmlEscape(x_label),
        if clipped {
            " (axis cut past the largest p99)"
        } else {
            ""
        },
        mt + ph / 2.0
    );
    for s in &series {
        let n = s.quantiles.len() - 1;
        let pts: Vec<String> = s
            .quantiles
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", sx(*v), sy(i as f64 * 100.0 / n as f64)))
            .collect();
        let _ = write!(
            o,
            r#"<polyline clip-path="url(#{clip})" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            color(s.color),
            pts.join(" ")
        );
    }
    for (i, s) in series.iter().enumerate() {
        let y = 14.0 + 18.0 * i as f64;
        let _ = write!(
            o,
            r#"<line x1="{ml}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"/><text class="legend" x="{:.1}" y="{:.1}">{}</text>"#,
            ml + 22.0,
            color(s.color),
            ml + 28.0,
            y + 4.0,
            HtmlEscape(s.name)
        );
    }
    o.push_str("</svg>");
    Some(o)
}

/// A dot-and-whisker chart, one row per arm. `None` without data.
pub fn intervals(title: &str, x_label: &str, items: &[Interval]) -> Option<String> {
    dots(title, x_label, items, &[])
}

/// A forest plot: each item's value and interval as in [`intervals`], against dashed vertical
/// reference lines (`marks`: position and label, e.g. the policy's 15 % apply limit), which
/// the axis always includes.
pub fn forest(
    title: &str,
    x_label: &str,
    items: &[Interval],
    marks: &[(f64, String)],
) -> Option<String> {
    dots(title, x_label, items, marks)
}

fn dots(title: &str, x_label: &str, items: &[Interval], marks: &[(f64, String)]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let row = 34.0;
    let mb = if marks.is_empty() { 44.0 } else { 60.0 };
    let (ml, mr, mt) = (230.0, 70.0, 12.0);
    let h = mt + mb + row * items.len() as f64;
    let pw = W - ml - mr;
    let lows = items.iter().map(|i| i.low.unwrap_or(i.value).min(i.value));
    let highs = items.iter().map(|i| i.high.unwrap_or(i.value).max(i.value));
    let marked = marks.iter().map(|m| m.0);
    let lo = lows.chain(marked.clone()).fold(f64::INFINITY, f64::min);
    let hi = highs.chain(marked).fold(f64::NEG_INFINITY, f64::max);
    // Throughput differences of a few percent vanish on an axis from zero: pad the data range.
    let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.01).max(1e-9);
    let ticks = nice_ticks(lo - pad, hi + pad, 5);
    let x0 = ticks.first().copied().unwrap_or(lo).min(lo - pad);
    let x1 = ticks.last().copied().unwrap_or(hi).max(hi + pad);
    let sx = |v: f64| ml + (v - x0) / (x1 - x0) * pw;
    let ph = row * items.len() as f64;

    let mut o = String::new();
    open(&mut o, title, h);
    for t in &ticks {
        let x = sx(*t);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{mt}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            mt + ph,
            mt + ph + 16.0,
            tick_label(*t)
        );
    }
    let _ = write!(
        o,
        r#"<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 8.0,
        HtmlEscape(x_label)
    );
    for (x, label) in marks {
        let px = sx(*x);
        let _ = write!(
            o,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{mt}" y2="{:.1}" class="mark"/><text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            mt + ph,
            mt + ph + 30.0,
            HtmlEscape(label)
        );
    }
    for (i, it) in items.iter().enumerate() {
        let y = mt + row * (i as f64 + 0.5);
        let c = color(it.color);
        let name: String = if it.name.chars().count() > 34 {
            it.name.chars().take(33).chain(['…']).collect()
        } else {
            it.name.to_owned()
        };
        let _ = write!(
            o,
            r#"<text class="legend" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ml - 8.0,
            y + 4.0,
            HtmlEscape(&name)
        );
        if let (Some(l), Some(hh)) = (it.low, it.high) {
            let (a, b) = (sx(l), sx(hh));
            let _ = write!(
                o,
                r#"<line x1="{a:.1}" x2="{b:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{c}" stroke-width="2"/><line x1="{a:.1}" x2="{a:.1}" y1="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="2"/><line x1="{b:.1}" x2="{b:.1}" y1="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="2"/>"#,
                y - 7.0,
                y + 7.0,
                y - 7.0,
                y + 7.0
            );
        }
        let right = it.high.unwrap_or(it.value).max(it.value);
        let _ = write!(
            o,
            r#"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{c}"/><text class="tick" x="{:.1}" y="{:.1}">{}</text>"#,
            sx(it.value),
            sx(right) + 8.0,
            y + 4.0,
            HtmlEscape(&super::view::fmt_num(it.value))
        );
    }
    o.push_str("</svg>");
    Some(o)
}

/// One arm's latency–load curve: (load, latency) points, lowest load first, and its knee.
pub struct Curve<'a> {
    pub name: &'a str,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    pub knee: Option<f64>,
}

/// A latency–load chart: one polyline per arm, its knee ringed, and a dashed horizontal line at
/// the latency target (`target`, labelled). The load axis is logarithmic (base 2) when the
/// loads span a factor of 8 or more, as sweeps double their levels. `None` without two points.
pub fn load_curves(
    title: &str,
    x_label: &str,
    y_label: &str,
    curves: &[Curve],
    target: Option<(f64, String)>,
) -> Option<String> {
    let curves: Vec<&Curve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    if curves.iter().map(|c| c.points.len()).sum::<usize>() < 2 {
        return None;
    }
    let pts = || curves.iter().flat_map(|c| c.points.iter());
    let (xmin, xmax) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let ymax = pts()
        .map(|p| p.1)
        .chain(target.as_ref().map(|t| t.0))
        .fold(0.0_f64, f64::max);
    if !(xmin > 0.0 && xmax.is_finite() && ymax > 0.0) {
        return None;
    }
    let log = xmax / xmin >= 8.0;
    let (ml, mr, mt, mb) = (64.0, 16.0, 16.0 + 18.0 * curves.len() as f64, 44.0);
    let h = 280.0 + mt;
    let (pw, ph) = (W - ml - mr, h - mt - mb);
    let fx = |x: f64| if log { x.log2() } else { x };
    let (x0, x1) = if xmax > xmin {
        (fx(xmin), fx(xmax))
    } else {
        (fx(xmin) - 1.0, fx(xmin) + 1.0)
    };
    let yticks = nice_ticks(0.0, ymax * 1.1, 5);
    let y1 = yticks.last().copied().unwrap_or(ymax).max(ymax * 1.05);
    let sx = |x: f64| ml + (fx(x) - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + ph - y / y1 * ph;
    let mut o = String::new();
    open(&mut o, title, h);
    for t in &yticks {
        let y = sy(*t);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{ml}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ml + pw,
            ml - 6.0,
            y + 4.0,
            tick_label(*t)
        );
    }
    let mut xs: Vec<f64> = pts().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in &xs {
        let px = sx(*x);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{px:.1}" x2="{px:.1}" y1="{mt}" y2="{:.1}"/><text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            mt + ph,
            mt + ph + 16.0,
            tick_label(*x)
        );
    }
    let _ = write!(
        o,
        r#"<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}{}</text><text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 8.0,
        HtmlEscape(x_label),
        if log { " (log scale)" } else { "" },
        mt + ph / 2.0,
        HtmlEscape(y_label)
    );
    if let Some((t, label)) = &target {
        let y = sy(*t);
        let _ = write!(
            o,
            r#"<line class="mark" x1="{ml}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ml + pw,
            ml + pw - 4.0,
            y - 4.0,
            HtmlEscape(label)
        );
    }
    for (i, c) in curves.iter().enumerate() {
        let line: Vec<String> = c
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            color(c.color),
            line.join(" ")
        );
        for (x, y) in &c.points {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(*x),
                sy(*y),
                color(c.color)
            );
        }
        if let Some(k) = c.knee {
            if let Some((x, y)) = c.points.iter().find(|p| p.0 == k) {
                let _ = write!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="8" fill="none" stroke="{}" stroke-width="2"/>"#,
                    sx(*x),
                    sy(*y),
                    color(c.color)
                );
            }
        }
        let ly = 14.0 + 18.0 * i as f64;
        let _ = write!(
            o,
            r#"<line x1="{ml}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text class="legend" x="{:.1}" y="{:.1}">{}{}</text>"#,
            ml + 24.0,
            color(c.color),
            ml + 30.0,
            ly + 4.0,
            HtmlEscape(c.name),
            match c.knee {
                Some(k) => format!(" (knee {}, ringed)", tick_label(k)),
                None => " (no knee)".to_owned(),
            }
        );
    }
    o.push_str("</svg>");
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(12.0, 58.0, 5), vec![20.0, 30.0, 40.0, 50.0]);
        let t = nice_ticks(0.1, 0.9, 4);
        assert_eq!(t.len(), 4);
        assert!((t[0] - 0.2).abs() < 1e-12 && (t[3] - 0.8).abs() < 1e-12);
        assert_eq!(nice_ticks(5.0, 5.0, 5), vec![5.0]);
    }

    #[test]
    fn cdf_draws_one_polyline_per_arm_and_escapes_names() {
        let q: Vec<f64> = (0..=100).map(|i| 10.0 + i as f64).collect();
        let s = [
            Series {
                name: "a<b>",
                color: 0,
                quantiles: q.clone(),
            },
            Series {
                name: "c",
                color: 1,
                quantiles: q,
            },
        ];
        let svg = cdf("t", "TTFT (ms)", &s).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b&gt;") && !svg.contains("a<b>"));
        // The first point is the minimum at 0 %, on the plot's left and bottom edge.
        assert!(svg.contains(r#"points="56.0,"#));
        assert!(cdf("t", "x", &[]).is_none());
    }

    #[test]
    fn intervals_draw_whiskers_only_with_an_interval() {
        let items = [
            Interval {
                name: "x",
                color: 0,
                value: 100.0,
                low: Some(90.0),
                high: Some(110.0),
            },
            Interval {
                name: "y",
                color: 1,
                value: 120.0,
                low: None,
                high: None,
            },
        ];
        let svg = intervals("t", "tok/s", &items).unwrap();
        assert_eq!(svg.matches("<circle").count(), 2);
        // Three lines (whisker and two caps) for x only, besides the grid lines.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 3);
        assert!(svg.contains(">100.0<") && svg.contains(">120.0<"));
    }

    #[test]
    fn load_curves_ring_the_knee_draw_the_target_and_need_two_points() {
        let curves = [
            Curve {
                name: "bf16",
                color: 0,
                points: vec![(32.0, 800.0), (64.0, 2200.0)],
                knee: Some(32.0),
            },
            Curve {
                name: "fp8 <x>",
                color: 1,
                points: vec![(32.0, 560.0), (64.0, 1000.0), (128.0, 2800.0)],
                knee: Some(64.0),
            },
        ];
        let svg = load_curves(
            "t",
            "concurrency",
            "ms",
            &curves,
            Some((2000.0, "target".into())),
        )
        .unwrap();
        assert_eq!(svg.matches(r#"r="8""#).count(), 2, "one ring per knee");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("target") && svg.contains("fp8 &lt;x&gt;"));
        // 32..128 spans a factor of 4: a linear axis.
        assert!(!svg.contains("log scale"));
        let one = [Curve {
            name: "a",
            color: 0,
            points: vec![(1.0, 5.0)],
            knee: None,
        }];
        assert!(load_curves("t", "x", "y", &one, None).is_none());
    }
}
