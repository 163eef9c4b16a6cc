//! The report: what was scheduled, what happened, and the verdicts. Its serde field names are
//! the JSON schema (`loadtest.report.v1`); keep them stable.

use crate::client::Outcome;
use crate::schedule::{Expectation, PhaseKind};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The outcome of a check or of a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Worth a look but not a failure (only checks have it).
    Warn,
    /// Not judged.
    #[default]
    Skip,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Skip => "SKIP",
        }
    }
}

/// One criterion with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `success`, `p99`, `offered`, `admitted`, `admitted_windows`, `errors` or `schedule`.
    pub name: String,
    pub status: Status,
    pub observed: f64,
    pub limit: f64,
    /// A sentence with the numbers, for people.
    pub detail: String,
}

/// A phase's verdict: `fail` if any check failed, `skip` for phases that are not judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub status: Status,
    pub checks: Vec<Check>,
}

pub const SCHEDULE_CHECK: &str = "schedule";

/// The schema name written in every report.
pub const SCHEMA: &str = "loadtest.report.v1";

/// Request outcomes. `sent` is the sum of all the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub sent: u64,
    pub ok_2xx: u64,
    pub throttled_429: u64,
    pub other_4xx: u64,
    pub server_5xx: u64,
    /// 1xx and 3xx.
    pub other_status: u64,
    pub timeouts: u64,
    pub connection_errors: u64,
}

impl Outcomes {
    pub fn add(&mut self, o: Outcome) {
        self.sent += 1;
        match o {
            Outcome::Status(s) if (200..300).contains(&s) => self.ok_2xx += 1,
            Outcome::Status(429) => self.throttled_429 += 1,
            Outcome::Status(s) if (400..500).contains(&s) => self.other_4xx += 1,
            Outcome::Status(s) if (500..600).contains(&s) => self.server_5xx += 1,
            Outcome::Status(_) => self.other_status += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::ConnError => self.connection_errors += 1,
        }
    }

    /// Everything that is neither 2xx nor 429.
    pub fn failed(&self) -> u64 {
        self.other_4xx
            + self.server_5xx
            + self.other_status
            + self.timeouts
            + self.connection_errors
    }
}

/// Latency percentiles in milliseconds, measured from each request's scheduled send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub(crate) fn from_us(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Latency {
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            max_ms: h.max() as f64 / 1e3,
            mean_ms: h.mean() / 1e3,
        }
    }
}

/// How far behind its schedule the generator sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Requests sent more than 1 ms after their scheduled time.
    pub late_1ms: u64,
    /// Requests sent more than 10 ms after their scheduled time.
    pub late_10ms: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One phase's plan, results and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub kind: PhaseKind,
    pub expect: Expectation,
    pub start_s: f64,
    pub duration_s: f64,
    pub start_rps: f64,
    pub end_rps: f64,
    /// Scheduled requests / duration.
    pub planned_rps: f64,
    pub ceiling_rps: Option<f64>,
    pub spec: Option<String>,
    /// Requests the schedule put in this phase.
    pub scheduled: u64,
    pub outcomes: Outcomes,
    /// Scheduled but never sent (the run ended first).
    pub unsent: u64,
    /// Sent / time from the phase's start to its last send (at least the phase's duration).
    pub achieved_rps: f64,
    /// 2xx / phase duration.
    pub admitted_rps: f64,
    pub latency: Latency,
    pub lag: Lag,
    pub verdict: Verdict,
}

/// One second of the run, by actual send time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Seconds from the run's start to the window's start.
    pub second: u64,
    /// Requests the schedule put in this second.
    pub planned: u64,
    pub sent: u64,
    pub ok_2xx: u64,
    pub throttled_429: u64,
    /// Neither 2xx nor 429.
    pub failed: u64,
    pub p99_ms: f64,
    pub ceiling_rps: Option<f64>,
}

/// One target and what it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub url: String,
    pub weight: u32,
    pub connections: usize,
    pub outcomes: Outcomes,
}

/// The mid-run spec change, as planned and as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecChangeReport {
    pub to: String,
    pub ceiling_rps: f64,
    /// When it was planned, seconds from the run's start.
    pub at_s: f64,
    pub called_at_s: Option<f64>,
    pub returned_at_s: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Whether the generator kept to its schedule over the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorReport {
    /// Sent at least 99% of the planned rate in every phase, with p99 lag at most 10 ms.
    pub on_schedule: bool,
    pub late_1ms: u64,
    pub late_10ms: u64,
    pub p99_lag_ms: f64,
    pub max_lag_ms: f64,
    pub unsent: u64,
    /// Connections that could not be opened before the start (retried on first use).
    pub warmup_connect_failures: u64,
    /// The run hit its hard deadline and was cut short.
    pub aborted: bool,
}

/// The pass/fail thresholds used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriteriaReport {
    pub success_ratio: f64,
    pub p99_budget_ms: f64,
    pub tolerance: f64,
}

/// `rate` (one constant rate) or `sla` (ramp, sustain, overload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Rate,
    Sla,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub mode: Mode,
    pub targets: Vec<TargetReport>,
    pub connections: usize,
    pub timeout_ms: f64,
    pub criteria: CriteriaReport,
    /// The ceiling at the start, if any.
    pub ceiling_rps: Option<f64>,
    pub spec: Option<String>,
    pub planned_duration_s: f64,
    pub elapsed_s: f64,
    pub phases: Vec<PhaseReport>,
    pub windows: Vec<WindowReport>,
    pub spec_change: Option<SpecChangeReport>,
    pub generator: GeneratorReport,
    pub all_pass: bool,
}

/// Whether every judged phase passed and the spec change, if any, succeeded.
pub fn all_pass(report: &Report) -> bool {
    report
        .phases
        .iter()
        .all(|p| p.verdict.status != Status::Fail)
        && report
            .spec_change
            .as_ref()
            .is_none_or(|c| c.error.is_none())
        && !report.generator.aborted
}

impl Report {
    /// The end-of-run summary: outcomes, latency and schedule per phase, then the verdicts.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let w = self
            .phases
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            // The widest first-column header ("latency ms"), so every column sits under its name.
            .max("latency ms".len());
        let _ = writeln!(
            s,
            "{:<w$} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>7} {:>7} {:>6}",
            "phase",
            "secs",
            "planned/s",
            "sent/s",
            "2xx/s",
            "2xx",
            "429",
            "4xx",
            "5xx",
            "timeout",
            "connerr",
            "unsent"
        );
        for p in &self.phases {
            let o = &p.outcomes;
            let _ = writeln!(
                s,
                "{:<w$} {:>6.1} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>8} {:>6} {:>6} {:>7} {:>7} {:>6}",
                p.name,
                p.duration_s,
                p.planned_rps,
                p.achieved_rps,
                p.admitted_rps,
                o.ok_2xx,
                o.throttled_429,
                o.other_4xx + o.other_status,
                o.server_5xx,
                o.timeouts,
                o.connection_errors,
                p.unsent
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<w$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "latency ms", "p50", "p90", "p99", "p99.9", "max", "late>1ms", "late>10ms", "max lag"
        );
        for p in &self.phases {
            let l = &p.latency;
            let _ = writeln!(
                s,
                "{:<w$} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>9} {:>8.2}",
                p.name,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p99_9_ms,
                l.max_ms,
                p.lag.late_1ms,
                p.lag.late_10ms,
                p.lag.max_ms
            );
        }
        let _ = writeln!(s);
        for p in &self.phases {
            let _ = writeln!(s, "{:<w$} {}", p.name, p.verdict.status.label());
            for c in &p.verdict.checks {
                let _ = writeln!(s, "{:<w$}   {:<4} {}", "", c.status.label(), c.detail);
            }
        }
        if let Some(c) = &self.spec_change {
            let what = match (&c.error, c.returned_at_s) {
                (Some(e), _) => format!("FAIL {e}"),
                (None, Some(t)) => format!("PASS returned at {t:.3}s"),
                (None, None) => "FAIL did not return".to_string(),
            };
            let _ = writeln!(
                s,
                "spec change to {} ({:.0}/s) planned at {:.3}s: {what}",
                c.to, c.ceiling_rps, c.at_s
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            s,
            "generator: {}; {} sent >1ms late, {} >10ms late, p99 lag {:.2} ms, max lag {:.2} ms, {} unsent{}{}",
            if g.on_schedule {
                "on schedule"
            } else {
                "FELL BEHIND SCHEDULE"
            },
            g.late_1ms,
            g.late_10ms,
            g.p99_lag_ms,
            g.max_lag_ms,
            g.unsent,
            if g.warmup_connect_failures > 0 {
                format!(
                    ", {} connections failed to open before the start",
                    g.warmup_connect_failures
                )
            } else {
                String::new()
            },
            if g.aborted {
                ", ABORTED at the hard deadline"
            } else {
                ""
            }
        );
        if self.targets.len() > 1 {
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "target {} (weight {}, {} connections): sent {}, 2xx {}, 429 {}, failed {}",
                    t.url,
                    t.weight,
                    t.connections,
                    t.outcomes.sent,
                    t.outcomes.ok_2xx,
                    t.outcomes.throttled_429,
                    t.outcomes.failed()
                );
            }
        }
        let _ = writeln!(
            s,
            "overall: {}",
            if self.all_pass { "PASS" } else { "FAIL" }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified() {
        let mut o = Outcomes::default();
        for x in [
            Outcome::Status(200),
            Outcome::Status(204),
            Outcome::Status(429),
            Outcome::Status(404),
            Outcome::Status(502),
            Outcome::Status(301),
            Outcome::Timeout,
            Outcome::ConnError,
        ] {
            o.add(x);
        }
        assert_eq!(
            o,
            Outcomes {
                sent: 8,
                ok_2xx: 2,
                throttled_429: 1,
                other_4xx: 1,
                server_5xx: 1,
                other_status: 1,
                timeouts: 1,
                connection_errors: 1,
            }
        );
        assert_eq!(o.failed(), 5);
    }
}
