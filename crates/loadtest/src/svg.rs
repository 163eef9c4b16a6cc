//! A self-contained SVG chart of a report: admitted, throttled and failed requests per second
//! against the ceiling, with the phases shaded and labelled. Written by hand as text.

use crate::report::Report;
use crate::verdict::Status;
use std::fmt::Write as _;

const W: f64 = 1100.0;
const H: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

const ADMITTED: &str = "#2e7d32";
const THROTTLED: &str = "#ef6c00";
const FAILED: &str = "#c62828";
const OFFERED: &str = "#9e9e9e";
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

/// Renders the chart.
pub fn render(report: &Report) -> String {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x_max = (report.windows.len() as f64)
        .max(report.planned_duration_s)
        .max(1.0);
    let y_data = report
        .windows
        .iter()
        .map(|w| (w.sent.max(w.planned) as f64).max(w.ceiling_rps.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let y_step = nice_step(y_data * 1.1, 6.0);
    let y_max = (y_data * 1.1 / y_step).ceil() * y_step;
    let x = |t: f64| LEFT + t / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);

    // Title.
    let what = match (&report.spec, report.ceiling_rps) {
        (Some(spec), Some(c)) => format!("{spec}, ceiling {c:.0}/s"),
        (None, Some(c)) => format!("ceiling {c:.0}/s"),
        _ => "no ceiling".to_string(),
    };
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
        r##"<text x="{LEFT}" y="46" font-size="12" fill="#555">{} target(s), {} connections, 1 s windows by send time. Overall: <tspan fill="{vcolor}" font-weight="bold">{verdict}</tspan></text>"##,
        report.targets.len(),
        report.connections
    );

    // Phase bands, names and verdicts.
    for (i, p) in report.phases.iter().enumerate() {
        let x0 = x(p.start_s);
        let x1 = x((p.start_s + p.duration_s).min(x_max));
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
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text>"##,
            x0 + 4.0,
            TOP + 14.0,
            esc(&p.name)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" font-weight="bold" fill="{color}">{label}</text>"##,
            x0 + 4.0,
            TOP + 28.0
        );
        if i > 0 {
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" y1="{TOP}" x2="{x0:.1}" y2="{:.1}" stroke="#b0b8c8" stroke-width="1"/>"##,
                TOP + plot_h
            );
        }
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
    // x axis.
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
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">time since start (s)</text>"##,
        LEFT + plot_w / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="{:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 20 {:.1})">requests per second</text>"##,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // Ceiling: a step line over the windows.
    let mut d = String::new();
    let mut pen_down = false;
    for w in &report.windows {
        let x0 = x(w.second as f64);
        let x1 = x((w.second as f64 + 1.0).min(x_max));
        match w.ceiling_rps {
            Some(c) => {
                let yy = y(c);
                if pen_down {
                    let _ = write!(d, " L{x0:.1},{yy:.1} L{x1:.1},{yy:.1}");
                } else {
                    let _ = write!(d, " M{x0:.1},{yy:.1} L{x1:.1},{yy:.1}");
                }
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !d.is_empty() {
        let _ = writeln!(
            s,
            r##"<path d="{}" fill="none" stroke="{CEILING}" stroke-width="2" stroke-dasharray="8 4"/>"##,
            d.trim()
        );
    }

    // Series at window centres.
    let series: [(
        &str,
        &str,
        f64,
        &str,
        fn(&crate::report::WindowReport) -> u64,
    ); 4] = [
        ("offered", OFFERED, 1.5, "4 3", |w| w.sent),
        ("failed", FAILED, 2.0, "", |w| w.failed),
        ("throttled", THROTTLED, 2.0, "", |w| w.throttled_429),
        ("admitted", ADMITTED, 2.5, "", |w| w.ok_2xx),
    ];
    for (name, color, width, dash, get) in series {
        let pts: Vec<String> = report
            .windows
            .iter()
            .map(|w| format!("{:.1},{:.1}", x(w.second as f64 + 0.5), y(get(w) as f64)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r##" stroke-dasharray="{dash}""##)
        };
        let _ = writeln!(
            s,
            r##"<polyline class="{name}" points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"{dash}/>"##,
            pts.join(" ")
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
            TOP + 42.0,
            esc(&c.to)
        );
    }

    // Legend.
    let lx = LEFT + plot_w + 18.0;
    let mut ly = TOP + 10.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx:.1}" y="{ly:.1}" font-weight="bold">Legend</text>"##
    );
    ly += 20.0;
    let entries = [
        ("admitted (2xx)", ADMITTED, ""),
        ("throttled (429)", THROTTLED, ""),
        ("failed (other)", FAILED, ""),
        ("offered (sent)", OFFERED, "4 3"),
        ("ceiling", CEILING, "8 4"),
    ];
    for (label, color, dash) in entries {
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r##" stroke-dasharray="{dash}""##)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2.5"{dash}/>"##,
            ly - 4.0,
            lx + 28.0,
            ly - 4.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}">{label}</text>"##,
            lx + 36.0
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
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11">{} {}: {rate}</text>"##,
            esc(&p.name),
            p.verdict.status.label()
        );
        ly += 16.0;
    }
    let g = &report.generator;
    if !g.on_schedule {
        ly += 8.0;
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11" fill="{FAILED}">generator fell behind:</text>"##
        );
        ly += 15.0;
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11" fill="{FAILED}">{} sent >10ms late</text>"##,
            g.late_10ms
        );
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
