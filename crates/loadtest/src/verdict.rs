//! SLA verdicts: pure functions of a phase's numbers.
//!
//! * Under the ceiling ([`Expectation::Serve`]): at least `success_ratio` of the *scheduled*
//!   requests got a 2xx (429s, errors, timeouts and unsent requests all count against it), and
//!   p99 latency from the scheduled send time is within the budget.
//! * In overload ([`Expectation::Throttle`]): the generator really offered more than the ceiling;
//!   the admitted (2xx) rate is within `tolerance` of the ceiling, both on average and in every
//!   whole 1 s window of the phase but its first (where a token bucket's burst lands); and the
//!   excess got 429, not errors (errors at most `1 - success_ratio` of the scheduled requests).
//! * Every judged phase also gets a `schedule` check, a warning (never a failure) when the
//!   generator sent under 99% of the planned rate or its p99 send lag exceeded 10 ms.

use crate::config::Criteria;
pub use crate::report::{Check, SCHEDULE_CHECK, Status, Verdict};
use crate::report::{PhaseReport, WindowReport};
use crate::schedule::Expectation;

fn check(name: &str, pass: bool, observed: f64, limit: f64, detail: String) -> Check {
    Check {
        name: name.to_string(),
        status: if pass { Status::Pass } else { Status::Fail },
        observed,
        limit,
        detail,
    }
}

fn pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

/// Judges one phase; `windows` are the whole run's 1 s windows.
pub fn judge_phase(p: &PhaseReport, windows: &[WindowReport], c: &Criteria) -> Verdict {
    let mut checks = Vec::new();
    let o = &p.outcomes;
    let scheduled = p.scheduled.max(1) as f64;
    match p.expect {
        Expectation::None => {}
        Expectation::Serve => {
            let ratio = o.ok_2xx as f64 / scheduled;
            checks.push(check(
                "success",
                p.scheduled > 0 && ratio >= c.success_ratio,
                ratio,
                c.success_ratio,
                format!(
                    "{} of {} scheduled got 2xx ({}, need >= {}); 429: {}, other 4xx: {}, 5xx: {}, timeouts: {}, connection errors: {}, unsent: {}",
                    o.ok_2xx,
                    p.scheduled,
                    pct(ratio),
                    pct(c.success_ratio),
                    o.throttled_429,
                    o.other_4xx + o.other_status,
                    o.server_5xx,
                    o.timeouts,
                    o.connection_errors,
                    p.unsent
                ),
            ));
            let budget = c.p99_budget.as_secs_f64() * 1e3;
            checks.push(check(
                "p99",
                o.sent > 0 && p.latency.p99_ms <= budget,
                p.latency.p99_ms,
                budget,
                format!(
                    "p99 {:.2} ms (budget {budget:.2} ms); p50 {:.2}, p99.9 {:.2}, max {:.2} ms",
                    p.latency.p99_ms, p.latency.p50_ms, p.latency.p99_9_ms, p.latency.max_ms
                ),
            ));
        }
        Expectation::Throttle => {
            let Some(ceiling) = p.ceiling_rps else {
                checks.push(check(
                    "admitted",
                    false,
                    p.admitted_rps,
                    0.0,
                    "overload phase without a ceiling".into(),
                ));
                return finish(checks);
            };
            let need = ceiling * (1.0 + c.tolerance);
            checks.push(check(
                "offered",
                p.achieved_rps > need,
                p.achieved_rps,
                need,
                format!(
                    "sent {:.0}/s (planned {:.0}/s) against a ceiling of {ceiling:.0}/s; must exceed {need:.0}/s to test throttling",
                    p.achieved_rps, p.planned_rps
                ),
            ));
            // Whole windows inside the phase, skipping its first second.
            let end = p.start_s + p.duration_s;
            let judged: Vec<&WindowReport> = windows
                .iter()
                .filter(|w| {
                    let s = w.second as f64;
                    s >= p.start_s + 1.0 - 1e-9 && s + 1.0 <= end + 1e-9
                })
                .collect();
            let (mean, n) = if judged.is_empty() {
                (p.admitted_rps, 0)
            } else {
                let sum: u64 = judged.iter().map(|w| w.ok_2xx).sum();
                (sum as f64 / judged.len() as f64, judged.len())
            };
            let dev = (mean - ceiling) / ceiling;
            checks.push(check(
                "admitted",
                dev.abs() <= c.tolerance,
                mean,
                ceiling,
                format!(
                    "admitted {mean:.0}/s vs ceiling {ceiling:.0}/s ({:+.2}%, tolerance {:.2}%) over {}",
                    dev * 100.0,
                    c.tolerance * 100.0,
                    if n > 0 {
                        format!("{n} whole 1 s windows")
                    } else {
                        "the phase (too short for whole windows)".to_string()
                    }
                ),
            ));
            if n > 0 {
                let outside: Vec<&&WindowReport> = judged
                    .iter()
                    .filter(|w| (w.ok_2xx as f64 - ceiling).abs() / ceiling > c.tolerance)
                    .collect();
                let worst = judged
                    .iter()
                    .max_by(|a, b| {
                        let da = (a.ok_2xx as f64 - ceiling).abs();
                        let db = (b.ok_2xx as f64 - ceiling).abs();
                        da.total_cmp(&db)
                    })
                    .map(|w| (w.second, w.ok_2xx))
                    .unwrap_or((0, 0));
                checks.push(check(
                    "admitted_windows",
                    outside.is_empty(),
                    outside.len() as f64,
                    0.0,
                    format!(
                        "{} of {n} windows outside {:.2}% of the ceiling; worst: second {} admitted {}/s",
                        outside.len(),
                        c.tolerance * 100.0,
                        worst.0,
                        worst.1
                    ),
                ));
            }
            let errors = o.failed();
            let allowed = 1.0 - c.success_ratio;
            let err_ratio = errors as f64 / scheduled;
            checks.push(check(
                "errors",
                err_ratio <= allowed + 1e-12,
                err_ratio,
                allowed,
                format!(
                    "excess answered with 429: {} throttled, {} errors ({}, allowed {}): other 4xx {}, 5xx {}, timeouts {}, connection errors {}",
                    o.throttled_429,
                    errors,
                    pct(err_ratio),
                    pct(allowed),
                    o.other_4xx + o.other_status,
                    o.server_5xx,
                    o.timeouts,
                    o.connection_errors
                ),
            ));
        }
    }
    let behind = p.achieved_rps < 0.99 * p.planned_rps || p.lag.p99_ms > 10.0;
    checks.push(Check {
        name: SCHEDULE_CHECK.to_string(),
        status: if behind { Status::Warn } else { Status::Pass },
        observed: p.achieved_rps,
        limit: 0.99 * p.planned_rps,
        detail: format!(
            "generator {}: sent {:.0}/s of {:.0}/s planned; {} sent >1ms late, {} >10ms late, p99 lag {:.2} ms, max lag {:.2} ms",
            if behind {
                "fell behind"
            } else {
                "on schedule"
            },
            p.achieved_rps,
            p.planned_rps,
            p.lag.late_1ms,
            p.lag.late_10ms,
            p.lag.p99_ms,
            p.lag.max_ms
        ),
    });
    if p.expect == Expectation::None {
        return Verdict {
            status: Status::Skip,
            checks,
        };
    }
    finish(checks)
}

fn finish(checks: Vec<Check>) -> Verdict {
    let status = if checks.iter().any(|c| c.status == Status::Fail) {
        Status::Fail
    } else {
        Status::Pass
    };
    Verdict { status, checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Lag, Latency, Outcomes};
    use crate::schedule::PhaseKind;
    use std::time::Duration;

    fn serve_phase(scheduled: u64, ok: u64, throttled: u64, p99_ms: f64) -> PhaseReport {
        let rate = scheduled as f64 / 10.0;
        PhaseReport {
            name: "sustain".into(),
            kind: PhaseKind::Sustain,
            expect: Expectation::Serve,
            start_s: 10.0,
            duration_s: 10.0,
            start_rps: rate,
            end_rps: rate,
            planned_rps: rate,
            ceiling_rps: Some(2500.0),
            spec: None,
            scheduled,
            outcomes: Outcomes {
                sent: ok + throttled,
                ok_2xx: ok,
                throttled_429: throttled,
                ..Outcomes::default()
            },
            unsent: scheduled - ok - throttled,
            achieved_rps: rate,
            admitted_rps: ok as f64 / 10.0,
            latency: Latency {
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms,
                p99_9_ms: p99_ms * 2.0,
                max_ms: p99_ms * 3.0,
                mean_ms: 1.0,
            },
            lag: Lag::default(),
            verdict: Verdict::default(),
        }
    }

    /// 10 s overload at 5000/s against 2500/s, with windows 10..20 admitting `admitted[i]`.
    fn overload(admitted: &[u64], errors: u64) -> (PhaseReport, Vec<WindowReport>) {
        let ok: u64 = admitted.iter().sum();
        let windows: Vec<WindowReport> = admitted
            .iter()
            .enumerate()
            .map(|(i, &a)| WindowReport {
                second: 10 + i as u64,
                planned: 5000,
                sent: 5000,
                ok_2xx: a,
                throttled_429: 5000 - a,
                failed: 0,
                p99_ms: 1.0,
                ceiling_rps: Some(2500.0),
            })
            .collect();
        let mut p = serve_phase(50_000, ok, 50_000 - ok - errors, 1.0);
        p.name = "overload".into();
        p.kind = PhaseKind::Overload;
        p.expect = Expectation::Throttle;
        p.outcomes.server_5xx = errors;
        p.outcomes.sent += errors;
        p.unsent = 0;
        (p, windows)
    }

    fn status_of(v: &Verdict, name: &str) -> Status {
        v.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {v:?}"))
            .status
    }

    #[test]
    fn serve_passes_at_the_sla() {
        let c = Criteria::default();
        // 99.95% exactly: 20000 scheduled, 10 failures allowed.
        let v = judge_phase(&serve_phase(20_000, 19_990, 10, 12.0), &[], &c);
        assert_eq!(v.status, Status::Pass, "{v:?}");
        assert_eq!(status_of(&v, "success"), Status::Pass);
        assert_eq!(status_of(&v, "p99"), Status::Pass);
    }

    #[test]
    fn throttling_under_the_ceiling_is_a_failure() {
        let c = Criteria::default();
        // One 429 too many.
        let v = judge_phase(&serve_phase(20_000, 19_989, 11, 12.0), &[], &c);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(status_of(&v, "success"), Status::Fail);
        let detail = &v.checks[0].detail;
        assert!(detail.contains("19989 of 20000"), "{detail}");
        assert!(detail.contains("429: 11"), "{detail}");
    }

    #[test]
    fn unsent_requests_count_against_success() {
        let c = Criteria::default();
        // Every response was 2xx but 100 scheduled requests were never sent.
        let v = judge_phase(&serve_phase(20_000, 19_900, 0, 1.0), &[], &c);
        assert_eq!(status_of(&v, "success"), Status::Fail);
    }

    #[test]
    fn p99_over_budget_fails() {
        let c = Criteria {
            p99_budget: Duration::from_millis(50),
            ..Criteria::default()
        };
        let v = judge_phase(&serve_phase(1000, 1000, 0, 50.0), &[], &c);
        assert_eq!(status_of(&v, "p99"), Status::Pass);
        let v = judge_phase(&serve_phase(1000, 1000, 0, 50.5), &[], &c);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(status_of(&v, "p99"), Status::Fail);
        assert_eq!(status_of(&v, "success"), Status::Pass);
    }

    #[test]
    fn overload_at_the_ceiling_passes() {
        let c = Criteria::default();
        // First window may burst; the others stay within 5%.
        let (p, w) = overload(
            &[3100, 2500, 2480, 2520, 2600, 2400, 2500, 2500, 2450, 2550],
            0,
        );
        let v = judge_phase(&p, &w, &c);
        assert_eq!(v.status, Status::Pass, "{v:#?}");
    }

    #[test]
    fn overload_admitting_too_much_fails() {
        let c = Criteria::default();
        let (p, w) = overload(&[2700; 10], 0);
        let v = judge_phase(&p, &w, &c);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(status_of(&v, "admitted"), Status::Fail);
        assert_eq!(status_of(&v, "admitted_windows"), Status::Fail);
    }

    #[test]
    fn one_bad_window_fails_even_if_the_mean_is_right() {
        let c = Criteria::default();
        let (p, w) = overload(
            &[2500, 2500, 2500, 2000, 3000, 2500, 2500, 2500, 2500, 2500],
            0,
        );
        let v = judge_phase(&p, &w, &c);
        assert_eq!(status_of(&v, "admitted"), Status::Pass);
        assert_eq!(status_of(&v, "admitted_windows"), Status::Fail);
        assert_eq!(v.status, Status::Fail);
    }

    #[test]
    fn overload_excess_must_be_429_not_errors() {
        let c = Criteria::default();
        let (p, w) = overload(&[2500; 10], 26); // 26 > 0.05% of 50000
        let v = judge_phase(&p, &w, &c);
        assert_eq!(status_of(&v, "errors"), Status::Fail);
        assert_eq!(v.status, Status::Fail);
        let (p, w) = overload(&[2500; 10], 25);
        assert_eq!(judge_phase(&p, &w, &c).status, Status::Pass);
    }

    #[test]
    fn overload_that_never_exceeded_the_ceiling_fails() {
        let c = Criteria::default();
        let (mut p, w) = overload(&[2500; 10], 0);
        p.achieved_rps = 2600.0; // the generator could not offer 2x
        let v = judge_phase(&p, &w, &c);
        assert_eq!(status_of(&v, "offered"), Status::Fail);
        assert_eq!(v.status, Status::Fail);
    }

    #[test]
    fn tolerance_is_configurable() {
        let (p, w) = overload(&[2700; 10], 0);
        let c = Criteria {
            tolerance: 0.1,
            ..Criteria::default()
        };
        assert_eq!(judge_phase(&p, &w, &c).status, Status::Pass);
    }

    #[test]
    fn lagging_generator_warns_without_failing() {
        let c = Criteria::default();
        let mut p = serve_phase(1000, 1000, 0, 1.0);
        p.achieved_rps = 90.0; // planned 100/s
        p.lag.p99_ms = 30.0;
        let v = judge_phase(&p, &[], &c);
        assert_eq!(status_of(&v, SCHEDULE_CHECK), Status::Warn);
        assert_eq!(v.status, Status::Pass);
    }

    #[test]
    fn transitions_are_not_judged() {
        let c = Criteria::default();
        let mut p = serve_phase(1000, 0, 1000, 900.0);
        p.expect = Expectation::None;
        let v = judge_phase(&p, &[], &c);
        assert_eq!(v.status, Status::Skip);
    }
}
