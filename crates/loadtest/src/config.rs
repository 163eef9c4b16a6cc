//! The library's configuration: what to load, how hard, and how to judge it.

use crate::LoadtestError;
use crate::schedule::{Schedule, SlaShape, SpecChangePlan};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::time::Duration;

/// One target URL and its share of the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port/path?query`.
    pub url: String,
    /// Relative share of the requests (default 1).
    pub weight: u32,
}

impl Target {
    pub fn new(url: impl Into<String>, weight: u32) -> Target {
        Target {
            url: url.into(),
            weight,
        }
    }

    /// Parses `URL` or `URL@WEIGHT` (the weight is the part after the last `@` when it is a
    /// whole number, so user-info in a URL is left alone).
    pub fn parse(s: &str) -> Result<Target, LoadtestError> {
        if let Some((url, w)) = s.rsplit_once('@')
            && !w.is_empty()
            && w.bytes().all(|b| b.is_ascii_digit())
        {
            let weight: u32 = w
                .parse()
                .map_err(|_| LoadtestError::invalid(format!("target weight '{w}' is too large")))?;
            if weight == 0 {
                return Err(LoadtestError::invalid(format!(
                    "target '{s}' has weight 0; weights must be at least 1"
                )));
            }
            return Ok(Target::new(url, weight));
        }
        Ok(Target::new(s, 1))
    }
}

/// How the load is shaped.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// A constant rate, for a duration or a request count. With a ceiling, the run is judged
    /// against it (throttling expected above it).
    Rate {
        rps: f64,
        stop: Stop,
        ceiling: Option<Ceiling>,
    },
    /// The SLA test: ramp, sustain under the ceiling, overload above it.
    Sla(SlaLoad),
}

/// When a constant-rate run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Duration(Duration),
    Requests(u64),
}

/// A ceiling and, when it came from the catalog, the spec's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    pub rps: f64,
    pub spec: Option<String>,
}

/// The SLA test's phases.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaLoad {
    pub ceiling: Ceiling,
    pub ramp: Duration,
    pub sustain: Duration,
    pub overload: Duration,
    /// Start of the ramp, as a fraction of the ceiling.
    pub ramp_from: f64,
    /// The sustained rate, as a fraction of the ceiling (default 0.9).
    pub sustain_fraction: f64,
    /// The overload rate, as a multiple of the ceiling (default 2).
    pub overload_factor: f64,
    pub spec_change: Option<SpecChange>,
}

impl SlaLoad {
    /// The default phases around `ceiling`: 10 s ramp from 10%, 30 s at 90%, 10 s at 2x.
    pub fn new(ceiling: Ceiling) -> SlaLoad {
        SlaLoad {
            ceiling,
            ramp: Duration::from_secs(10),
            sustain: Duration::from_secs(30),
            overload: Duration::from_secs(10),
            ramp_from: 0.1,
            sustain_fraction: 0.9,
            overload_factor: 2.0,
            spec_change: None,
        }
    }
}

/// A mid-run `ModifyInstanceSpec`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecChange {
    /// When, from the run's start.
    pub at: Duration,
    /// The new spec's name, passed to the [`crate::SpecChanger`].
    pub to: String,
    /// The new spec's ceiling.
    pub ceiling_rps: f64,
    /// How long the change may take to reach every node; that stretch is not judged.
    pub settle: Duration,
}

/// Pass/fail thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Criteria {
    /// Under the ceiling: the share of scheduled requests that must get a 2xx (0.9995).
    pub success_ratio: f64,
    /// Under the ceiling: p99 latency budget (50 ms).
    pub p99_budget: Duration,
    /// In overload: allowed relative distance of the admitted rate from the ceiling (0.05).
    pub tolerance: f64,
}

impl Default for Criteria {
    fn default() -> Criteria {
        Criteria {
            success_ratio: 0.9995,
            p99_budget: Duration::from_millis(50),
            tolerance: 0.05,
        }
    }
}

/// Everything a run needs; [`crate::run`] turns it into a [`crate::Report`].
#[derive(Debug, Clone)]
pub struct Config {
    pub targets: Vec<Target>,
    /// Keep-alive connections in all, spread over the targets by weight.
    pub connections: usize,
    pub load: Load,
    /// Per-request timeout, from the moment it is sent.
    pub timeout: Duration,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub criteria: Criteria,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl Config {
    /// A constant-rate run against `targets` with the defaults (64 connections, 2 s timeout,
    /// GET, no progress output).
    pub fn rate(targets: Vec<Target>, rps: f64, stop: Stop) -> Config {
        Config::with_load(
            targets,
            Load::Rate {
                rps,
                stop,
                ceiling: None,
            },
        )
    }

    /// A run of the given shape with the defaults.
    pub fn with_load(targets: Vec<Target>, load: Load) -> Config {
        Config {
            targets,
            connections: 64,
            load,
            timeout: Duration::from_secs(2),
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            criteria: Criteria::default(),
            progress: false,
        }
    }

    /// The schedule this configuration produces.
    pub fn schedule(&self) -> Result<Schedule, LoadtestError> {
        let s = match &self.load {
            Load::Rate { rps, stop, ceiling } => {
                let (d, n) = match stop {
                    Stop::Duration(d) => (Some(d.as_secs_f64()), None),
                    Stop::Requests(n) => (None, Some(*n)),
                };
                Schedule::constant(
                    *rps,
                    d,
                    n,
                    ceiling.as_ref().map(|c| (c.rps, c.spec.clone())),
                )
            }
            Load::Sla(sla) => Schedule::sla(&SlaShape {
                ceiling_rps: sla.ceiling.rps,
                spec: sla.ceiling.spec.clone(),
                ramp_s: sla.ramp.as_secs_f64(),
                sustain_s: sla.sustain.as_secs_f64(),
                overload_s: sla.overload.as_secs_f64(),
                ramp_from: sla.ramp_from,
                sustain_fraction: sla.sustain_fraction,
                overload_factor: sla.overload_factor,
                spec_change: sla.spec_change.as_ref().map(|c| SpecChangePlan {
                    at_s: c.at.as_secs_f64(),
                    to: c.to.clone(),
                    ceiling_rps: c.ceiling_rps,
                    settle_s: c.settle.as_secs_f64(),
                }),
            }),
        };
        s.map_err(LoadtestError::Invalid)
    }

    /// The ceiling at the start of the run, if any.
    pub fn ceiling(&self) -> Option<&Ceiling> {
        match &self.load {
            Load::Rate { ceiling, .. } => ceiling.as_ref(),
            Load::Sla(s) => Some(&s.ceiling),
        }
    }

    /// The planned spec change, if any.
    pub fn spec_change(&self) -> Option<&SpecChange> {
        match &self.load {
            Load::Rate { .. } => None,
            Load::Sla(s) => s.spec_change.as_ref(),
        }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), LoadtestError> {
        if self.targets.is_empty() {
            return Err(LoadtestError::invalid("give at least one --target"));
        }
        for t in &self.targets {
            ParsedUrl::parse(&t.url)?;
        }
        if self.connections == 0 {
            return Err(LoadtestError::invalid("--connections must be at least 1"));
        }
        if self.connections > 100_000 {
            return Err(LoadtestError::invalid("--connections is limited to 100000"));
        }
        if self.timeout.is_zero() {
            return Err(LoadtestError::invalid("--timeout must be above zero"));
        }
        let c = &self.criteria;
        if !(c.success_ratio > 0.0 && c.success_ratio <= 1.0) {
            return Err(LoadtestError::invalid(
                "the success ratio must be in (0, 100] percent",
            ));
        }
        if !(c.tolerance >= 0.0 && c.tolerance.is_finite()) {
            return Err(LoadtestError::invalid("the tolerance must be positive"));
        }
        if let Some(ch) = self.spec_change()
            && ch.to.trim().is_empty()
        {
            return Err(LoadtestError::invalid("the spec change needs a spec name"));
        }
        self.schedule()?;
        Ok(())
    }
}

/// A target URL taken apart for HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    /// `host:port`, for connecting and for the `Host` header.
    pub host: String,
    pub port: u16,
    /// The request target in origin form, e.g. `/v1/ping?x=1`.
    pub path_and_query: String,
}

impl ParsedUrl {
    pub(crate) fn parse(url: &str) -> Result<ParsedUrl, LoadtestError> {
        let bad = |why: &str| LoadtestError::invalid(format!("target '{url}': {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported; use http://")),
            Some(other) => return Err(bad(&format!("unsupported scheme '{other}'"))),
            None => return Err(bad("missing scheme; use http://host:port/path")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok(ParsedUrl {
            host: host.to_string(),
            port,
            path_and_query,
        })
    }

    /// The `Host` header value.
    pub(crate) fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Parses `1.5s`, `250ms`, `2m`, `1h`, `100us` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use us, ms, s, m, h)"
            ));
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("'{s}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_weight() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/a@80").unwrap(),
            Target::new("http://127.0.0.1:8080/a", 80)
        );
        assert_eq!(
            Target::parse("http://h:1/x").unwrap(),
            Target::new("http://h:1/x", 1)
        );
        assert!(Target::parse("http://h/x@0").is_err());
        // An '@' that is not followed by a number belongs to the URL.
        assert_eq!(Target::parse("http://h/a@b").unwrap().weight, 1);
    }

    #[test]
    fn urls_are_taken_apart() {
        let u = ParsedUrl::parse("http://127.0.0.1:8080/v1/ping?x=1").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8080);
        assert_eq!(u.path_and_query, "/v1/ping?x=1");
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = ParsedUrl::parse("http://localhost").unwrap();
        assert_eq!((u.port, u.path_and_query.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "localhost");
        let u = ParsedUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.host_header(), "[::1]:9");
        assert!(ParsedUrl::parse("https://x/").is_err());
        assert!(ParsedUrl::parse("x:80/").is_err());
        assert!(ParsedUrl::parse("/just/a/path").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn validation_catches_bad_configs() {
        let ok = Config::rate(
            vec![Target::new("http://127.0.0.1:1/", 1)],
            100.0,
            Stop::Duration(Duration::from_secs(1)),
        );
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.targets.clear();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.connections = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.load = Load::Rate {
            rps: -1.0,
            stop: Stop::Requests(5),
            ceiling: None,
        };
        assert!(c.validate().is_err());
    }
}
