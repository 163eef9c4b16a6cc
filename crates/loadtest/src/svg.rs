//! A self-contained SVG chart of a report: admitted, throttled and failed requests per second
//! against the ceiling, with the phases shaded and labelled. Written by hand as text.

use crate::report::Status;
use crate::report::{Report, WindowReport};
use std::fmt::Write as _;

const W: f64 = 1100.0;
const H: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

const ADMITTED: &str = "#2e7d32";
const THROTTLED: &str = "#ef6c00";
const FAILED: &str = "#c62828";
const PLANNED: &str = "#555555";
const CEILING: &str = "#1a237e";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` ticks over `range`.
fn nice_step(range: f64, n: f64) -> f64 {
    if range <= 0.0 {
        return 1.0;
    }
    let raw = range / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nf = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nf * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Cuts `s` to about `px` pixels of 11 px text.
fn fit(s: &str, px: f64) -> String {
    let max = (px / 6.2).floor() as usize;
    if s.chars().count() <= max {
        s.to_string()
    } else if max <= 1 {
        String::new()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Renders the chart: one stacked bar per 1 s window (admitted, throttled, failed), the
/// planned rate and the ceiling as step lines, phases as shaded bands with their verdicts.
pub fn render(report: &Report) -> String {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    // The planned run; windows after it only hold stragglers sent late, noted in the legend.
    let x_max = report.planned_duration_s.ceil().max(1.0);
    let shown: Vec<&WindowReport> = report
        .windows
        .iter()
        .filter(|w| (w.second as f64) < x_max)
        .collect();
    let late_after_end: u64 = report
        .windows
        .iter()
        .filter(|w| (w.second as f64) >= x_max)
        .map(|w| w.sent)
        .sum();
    let y_data = shown
        .iter()
        .map(|w| (w.sent.max(w.planned) as f64).max(w.ceiling_rps.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let y_step = nice_step(y_data * 1.1, 6.0);
    let y_max = (y_data * 1.1 / y_step).ceil() * y_step;
    let x = |t: f64| LEFT + t.clamp(0.0, x_max) / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v.min(y_max) / y_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);

    // Title.
    let mut what = match (&report.spec, report.ceiling_rps) {
        (Some(spec), Some(c)) => format!("{spec}, ceiling {c:.0}/s"),
        (None, Some(c)) => format!("ceiling {c:.0}/s"),
        _ => "no ceiling".to_string(),
    };
    if let Some(c) = &report.spec_change {
        let _ = write!(
            what,
            " → {} {:.0}/s at {}s",
            c.to,
            c.ceiling_rps,
            trim(c.at_s)
        );
    }
    let (verdict, vcolor) = if report.all_pass {
        ("PASS", ADMITTED)
    } else {
        ("FAIL", FAILED)
    };
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="26" font-size="17" font-weight="bold">Requests per second by outcome ({})</text>"##,
        esc(&what)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="46" font-size="12" fill="#555">{} target(s), {} connections; bars: requests sent in each 1 s window, by outcome. Overall: <tspan fill="{vcolor}" font-weight="bold">{verdict}</tspan></text>"##,
        report.targets.len(),
        report.connections
    );

    // Phase bands, names and verdicts.
    for (i, p) in report.phases.iter().enumerate() {
        let x0 = x(p.start_s);
        let x1 = x(p.start_s + p.duration_s);
        let fill = if i % 2 == 0 { "#eef2f8" } else { "#f8f9fb" };
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{fill}"/>"##,
            (x1 - x0).max(0.0)
        );
        let (label, color) = match p.verdict.status {
            Status::Pass => ("PASS", ADMITTED),
            Status::Fail => ("FAIL", FAILED),
            Status::Warn => ("WARN", THROTTLED),
            Status::Skip => ("not judged", "#777"),
        };
        let room = x1 - x0 - 6.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text>"##,
            x0 + 4.0,
            TOP + 14.0,
            esc(&fit(&p.name, room))
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" font-weight="bold" fill="{color}">{}</text>"##,
            x0 + 4.0,
            TOP + 28.0,
            fit(label, room)
        );
    }

    // Grid and y axis.
    let mut v = 0.0;
    while v <= y_max + y_step * 0.01 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#d5d9e0" stroke-width="0.7"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
        v += y_step;
    }

    // Stacked bars: admitted at the bottom, then throttled, then failed.
    let bar_w = plot_w / x_max;
    let gap = (bar_w * 0.12).min(3.0);
    for w in &shown {
        let bx = x(w.second as f64) + gap / 2.0;
        let bw = (bar_w - gap).max(0.5);
        let mut base = 0.0;
        for (n, color, class) in [
            (w.ok_2xx, ADMITTED, "admitted"),
            (w.throttled_429, THROTTLED, "throttled"),
            (w.failed, FAILED, "failed"),
        ] {
            if n == 0 {
                continue;
            }
            let top = base + n as f64;
            let _ = writeln!(
                s,
                r##"<rect class="{class}" x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}" fill-opacity="0.85"><title>second {}: {n} {class}</title></rect>"##,
                y(top),
                (y(base) - y(top)).max(0.0),
                w.second
            );
            base = top;
        }
    }

    // Phase boundaries over the bars.
    for p in report.phases.iter().skip(1) {
        let x0 = x(p.start_s);
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" y1="{TOP}" x2="{x0:.1}" y2="{:.1}" stroke="#7a8599" stroke-width="1" stroke-dasharray="2 2"/>"##,
            TOP + plot_h
        );
    }

    // Step lines over the windows: planned rate and ceiling.
    let step = |get: &dyn Fn(&WindowReport) -> Option<f64>| -> String {
        let mut d = String::new();
        let mut pen_down = false;
        for w in &shown {
            let x0 = x(w.second as f64);
            let x1 = x(w.second as f64 + 1.0);
            match get(w) {
                Some(v) => {
                    let yy = y(v);
                    let op = if pen_down { 'L' } else { 'M' };
                    let _ = write!(d, " {op}{x0:.1},{yy:.1} L{x1:.1},{yy:.1}");
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d.trim().to_string()
    };
    let planned = step(&|w| Some(w.planned as f64));
    if !planned.is_empty() {
        let _ = writeln!(
            s,
            r##"<path class="planned" d="{planned}" fill="none" stroke="{PLANNED}" stroke-width="1.5" stroke-dasharray="4 3"/>"##
        );
    }
    let ceiling = step(&|w| w.ceiling_rps);
    if !ceiling.is_empty() {
        let _ = writeln!(
            s,
            r##"<path class="ceiling" d="{ceiling}" fill="none" stroke="{CEILING}" stroke-width="2.5" stroke-dasharray="9 4"/>"##
        );
    }

    // Spec change marker.
    if let Some(c) = &report.spec_change {
        let xx = x(c.at_s);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="{CEILING}" stroke-width="1.5"/>"##,
            TOP + plot_h
        );
        let status = if c.error.is_some() { " (failed)" } else { "" };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="{CEILING}">spec → {}{status}</text>"##,
            xx + 4.0,
            TOP + 44.0,
            esc(&c.to)
        );
    }

    // Frame and x axis.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let x_step = nice_step(x_max, 10.0).max(1.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h + 18.0,
            trim(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">time since start (s)</text>"##,
        LEFT + plot_w / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r##"<text x="22" y="{:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 22 {:.1})">requests per second</text>"##,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // Legend.
    let lx = LEFT + plot_w + 18.0;
    let mut ly = TOP + 10.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx:.1}" y="{ly:.1}" font-weight="bold">Legend</text>"##
    );
    ly += 20.0;
    for (label, color) in [
        ("admitted (2xx)", ADMITTED),
        ("throttled (429)", THROTTLED),
        ("failed (other)", FAILED),
    ] {
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{:.1}" width="22" height="11" fill="{color}" fill-opacity="0.85"/>"##,
            ly - 10.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}">{label}</text>"##,
            lx + 30.0
        );
        ly += 20.0;
    }
    for (label, color, dash) in [
        ("planned rate", PLANNED, "4 3"),
        ("ceiling", CEILING, "9 4"),
    ] {
        let _ = writeln!(
            s,
            r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2.5" stroke-dasharray="{dash}"/>"##,
            ly - 4.0,
            lx + 22.0,
            ly - 4.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}">{label}</text>"##,
            lx + 30.0
        );
        ly += 20.0;
    }
    ly += 10.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx:.1}" y="{ly:.1}" font-weight="bold">Phases</text>"##
    );
    ly += 18.0;
    for p in &report.phases {
        let rate = if (p.start_rps - p.end_rps).abs() < 0.5 {
            format!("{:.0}/s", p.start_rps)
        } else {
            format!("{:.0}→{:.0}/s", p.start_rps, p.end_rps)
        };
        let color = match p.verdict.status {
            Status::Pass => ADMITTED,
            Status::Fail => FAILED,
            Status::Warn => THROTTLED,
            Status::Skip => "#777",
        };
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11">{}</text>"##,
            esc(&fit(&p.name, RIGHT - 24.0))
        );
        ly += 14.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}" font-size="11"><tspan fill="{color}" font-weight="bold">{}</tspan> {}–{}s, {rate}</text>"##,
            lx + 8.0,
            p.verdict.status.label(),
            trim(p.start_s),
            trim(p.start_s + p.duration_s)
        );
        ly += 18.0;
    }
    let g = &report.generator;
    let mut notes: Vec<(String, &str)> = Vec::new();
    if !g.on_schedule {
        notes.push(("generator fell behind:".to_string(), FAILED));
        notes.push((format!("{} sent >10ms late", g.late_10ms), FAILED));
    }
    if late_after_end > 0 {
        notes.push((format!("{late_after_end} sent after the planned"), "#777"));
        notes.push(("end (not drawn)".to_string(), "#777"));
    }
    ly += 6.0;
    for (n, color) in notes {
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11" fill="{color}">{}</text>"##,
            esc(&n)
        );
        ly += 15.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 10.0), 1.0);
        assert_eq!(nice_step(50.0, 10.0), 5.0);
        assert_eq!(nice_step(5500.0, 6.0), 1000.0);
        assert_eq!(nice_step(120.0, 10.0), 20.0);
        assert_eq!(fmt_num(2500.0), "2500");
        assert_eq!(fmt_num(15000.0), "15k");
        assert_eq!(fmt_num(2.5e6), "2.5M");
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
