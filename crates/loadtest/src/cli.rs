//! The command-line face: `gatewayctl loadtest ...` flattens [`LoadtestArgs`] and calls
//! [`run_cli`].

use crate::config::{
    Ceiling, Config, Criteria, Load, SlaLoad, SpecChange, Stop, Target, parse_duration,
};
use crate::{LoadtestError, SpecChanger, run};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `loadtest`. Either `--rate N` (constant rate for `--duration` or `--requests`), or
/// `--spec NAME` / `--ceiling N` alone for the SLA test (ramp, sustain, overload).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Target URL, repeatable; `URL@WEIGHT` skews the load (e.g. `http://127.0.0.1:8080/ping@80`).
    #[arg(long = "target", value_name = "URL[@WEIGHT]", required = true)]
    pub targets: Vec<String>,

    /// Keep-alive connections in all, spread over the targets by weight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Constant-rate mode: send N requests per second. With --spec or --ceiling the run is
    /// judged against that ceiling.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,

    /// Constant-rate mode: how long to run (default 10s). Accepts 500ms, 10s, 2m.
    #[arg(long, value_parser = parse_duration, requires = "rate", conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Constant-rate mode: how many requests to send.
    #[arg(long, requires = "rate")]
    pub requests: Option<u64>,

    /// The instance spec whose ceiling the SLA test targets, from the catalog (e.g. api.s1.small).
    #[arg(long, value_name = "SPEC", conflicts_with = "ceiling")]
    pub spec: Option<String>,

    /// A ceiling in requests per second, instead of --spec.
    #[arg(long, value_name = "N")]
    pub ceiling: Option<f64>,

    /// SLA test: length of the ramp from --ramp-from to --sustain-fraction of the ceiling.
    #[arg(long, value_parser = parse_duration, default_value = "10s", conflicts_with = "rate")]
    pub ramp: Duration,

    /// SLA test: length of the sustained phase just under the ceiling.
    #[arg(long, value_parser = parse_duration, default_value = "30s", conflicts_with = "rate")]
    pub sustain: Duration,

    /// SLA test: length of the overload phase.
    #[arg(long, value_parser = parse_duration, default_value = "10s", conflicts_with = "rate")]
    pub overload: Duration,

    /// SLA test: where the ramp starts, as a fraction of the ceiling.
    #[arg(long, default_value_t = 0.1, conflicts_with = "rate")]
    pub ramp_from: f64,

    /// SLA test: the sustained rate as a fraction of the ceiling.
    #[arg(long, default_value_t = 0.9, conflicts_with = "rate")]
    pub sustain_fraction: f64,

    /// SLA test: the overload rate as a multiple of the ceiling.
    #[arg(long, default_value_t = 2.0, conflicts_with = "rate")]
    pub overload_factor: f64,

    /// SLA test: call ModifyInstanceSpec this long after the start.
    #[arg(long, value_name = "T", value_parser = parse_duration, requires_all = ["to", "instance"], conflicts_with = "rate")]
    pub modify_spec_at: Option<Duration>,

    /// The spec to change to (from the catalog).
    #[arg(long, value_name = "SPEC", requires = "modify_spec_at")]
    pub to: Option<String>,

    /// Instance whose spec is changed (through the admin API at `gatewayctl --endpoint`).
    #[arg(long, value_name = "NAME", requires = "modify_spec_at")]
    pub instance: Option<String>,

    /// How long the spec change may take to reach every node; that stretch is not judged.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub spec_settle: Duration,

    /// Under the ceiling, p99 latency must stay within this budget.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    pub p99_budget: Duration,

    /// In overload, the admitted rate must be within this many percent of the ceiling.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    pub tolerance: f64,

    /// Under the ceiling, this percentage of scheduled requests must get a 2xx.
    #[arg(long, value_name = "PERCENT", default_value_t = 99.95)]
    pub success_percent: f64,

    /// Per-request timeout, from the moment it is sent.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub timeout: Duration,

    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body.
    #[arg(long)]
    pub body: Option<String>,

    /// Write the whole report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw admitted, throttled and failed rates per second against the ceiling to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn ceiling_of(args: &LoadtestArgs) -> Result<Option<Ceiling>, LoadtestError> {
    match (&args.spec, args.ceiling) {
        (Some(name), _) => {
            let spec = catalog::Catalog::builtin().spec(name)?;
            Ok(Some(Ceiling {
                rps: f64::from(spec.max_rps),
                spec: Some(spec.name.clone()),
            }))
        }
        (None, Some(c)) if c.is_finite() && c > 0.0 => Ok(Some(Ceiling { rps: c, spec: None })),
        (None, Some(c)) => Err(LoadtestError::invalid(format!(
            "--ceiling must be a positive number, got {c}"
        ))),
        (None, None) => Ok(None),
    }
}

fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), LoadtestError> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| LoadtestError::invalid(format!("header '{h}' is not 'Name: value'")))?;
    let name = HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|e| LoadtestError::invalid(format!("header name '{}': {e}", k.trim())))?;
    let value = HeaderValue::from_str(v.trim())
        .map_err(|e| LoadtestError::invalid(format!("header value '{}': {e}", v.trim())))?;
    Ok((name, value))
}

impl LoadtestArgs {
    /// The library configuration these flags describe (looks specs up in the catalog).
    pub fn to_config(&self) -> Result<Config, LoadtestError> {
        let targets = self
            .targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let ceiling = ceiling_of(self)?;
        let load = match (self.rate, ceiling) {
            (Some(rps), ceiling) => Load::Rate {
                rps,
                stop: match (self.duration, self.requests) {
                    (_, Some(n)) => Stop::Requests(n),
                    (Some(d), None) => Stop::Duration(d),
                    (None, None) => Stop::Duration(Duration::from_secs(10)),
                },
                ceiling,
            },
            (None, Some(ceiling)) => {
                let spec_change = match (self.modify_spec_at, &self.to) {
                    (Some(at), Some(to)) => {
                        let spec = catalog::Catalog::builtin().spec(to)?;
                        Some(SpecChange {
                            at,
                            to: spec.name.clone(),
                            ceiling_rps: f64::from(spec.max_rps),
                            settle: self.spec_settle,
                        })
                    }
                    (Some(_), None) => {
                        return Err(LoadtestError::invalid("--modify-spec-at needs --to SPEC"));
                    }
                    _ => None,
                };
                Load::Sla(SlaLoad {
                    ramp: self.ramp,
                    sustain: self.sustain,
                    overload: self.overload,
                    ramp_from: self.ramp_from,
                    sustain_fraction: self.sustain_fraction,
                    overload_factor: self.overload_factor,
                    spec_change,
                    ..SlaLoad::new(ceiling)
                })
            }
            (None, None) => {
                return Err(LoadtestError::invalid(
                    "give --rate N for a constant rate, or --spec NAME / --ceiling N for the SLA test",
                ));
            }
        };
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| LoadtestError::invalid(format!("bad method '{}'", self.method)))?;
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let config = Config {
            targets,
            connections: self.connections,
            load,
            timeout: self.timeout,
            method,
            headers,
            body: Bytes::from(self.body.clone().unwrap_or_default()),
            criteria: Criteria {
                success_ratio: self.success_percent / 100.0,
                p99_budget: self.p99_budget,
                tolerance: self.tolerance / 100.0,
            },
            progress: !self.quiet,
        };
        config.validate()?;
        Ok(config)
    }
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), LoadtestError> {
    std::fs::write(path, contents).map_err(|source| LoadtestError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Runs the load test the flags describe: progress on stderr, the summary table on stdout,
/// the optional JSON and SVG files. Returns whether every verdict passed (exit 0 / 1).
/// `spec_changer` is required when `--modify-spec-at` is given.
pub async fn run_cli(
    args: LoadtestArgs,
    spec_changer: Option<Box<dyn SpecChanger>>,
) -> Result<bool, LoadtestError> {
    let config = args.to_config()?;
    if config.spec_change().is_some() && spec_changer.is_none() {
        return Err(LoadtestError::NoSpecChanger);
    }
    let schedule = config.schedule()?;
    if config.progress {
        eprintln!(
            "loadtest: {} requests over {:.1}s in {} phase(s), {} connections to {} target(s)",
            schedule.total(),
            schedule.duration_s(),
            schedule.phases().len(),
            config.connections,
            config.targets.len()
        );
    }
    let report = run(config, spec_changer).await?;
    print!("{}", report.summary_table());
    if let Some(path) = &args.json {
        let mut text = serde_json::to_vec_pretty(&report)?;
        text.push(b'\n');
        write_file(path, &text)?;
    }
    if let Some(path) = &args.svg {
        write_file(path, crate::svg::render(&report).as_bytes())?;
    }
    Ok(report.all_pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn parse(argv: &[&str]) -> Result<LoadtestArgs, clap::Error> {
        let mut v = vec!["loadtest"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).map(|c| c.args)
    }

    #[test]
    fn rate_mode_with_weighted_targets() {
        let a = parse(&[
            "--target",
            "http://127.0.0.1:8080/a@80",
            "--target",
            "http://127.0.0.1:8081/b@20",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--connections",
            "10",
            "--header",
            "X-Ca-Key: k1",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(c.targets[0], Target::new("http://127.0.0.1:8080/a", 80));
        assert_eq!(c.targets[1].weight, 20);
        assert_eq!(c.connections, 10);
        assert_eq!(
            c.load,
            Load::Rate {
                rps: 1000.0,
                stop: Stop::Duration(Duration::from_secs(3)),
                ceiling: None
            }
        );
        assert_eq!(c.headers[0].0.as_str(), "x-ca-key");
        assert!(c.progress);
        assert_eq!(c.criteria, Criteria::default());
    }

    #[test]
    fn sla_mode_takes_the_ceiling_from_the_catalog() {
        let a = parse(&[
            "--target",
            "http://h:1/",
            "--spec",
            "api.s1.small",
            "--quiet",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        let Load::Sla(sla) = &c.load else {
            panic!("not SLA: {:?}", c.load)
        };
        assert_eq!(sla.ceiling.rps, 2500.0);
        assert_eq!(sla.ceiling.spec.as_deref(), Some("api.s1.small"));
        assert_eq!(sla.sustain_fraction, 0.9);
        assert_eq!(sla.overload_factor, 2.0);
        let s = c.schedule().unwrap();
        assert_eq!(s.phases().len(), 3);
        assert!(!c.progress);
    }

    #[test]
    fn unknown_spec_lists_the_valid_ones() {
        let a = parse(&["--target", "http://h:1/", "--spec", "api.s9.huge"]).unwrap();
        let e = a.to_config().unwrap_err().to_string();
        assert!(e.contains("api.s9.huge"), "{e}");
        assert!(e.contains("api.s1.small"), "{e}");
    }

    #[test]
    fn spec_change_flags() {
        let a = parse(&[
            "--target",
            "http://h:1/",
            "--ceiling",
            "1000",
            "--modify-spec-at",
            "45s",
            "--to",
            "api.s1.small",
            "--instance",
            "inst-1",
        ])
        .unwrap();
        assert_eq!(a.instance.as_deref(), Some("inst-1"));
        let c = a.to_config().unwrap();
        let ch = c.spec_change().unwrap();
        assert_eq!(ch.ceiling_rps, 2500.0);
        assert_eq!(ch.at, Duration::from_secs(45));
        // --to is required with --modify-spec-at.
        assert!(
            parse(&[
                "--target",
                "http://h:1/",
                "--ceiling",
                "1000",
                "--modify-spec-at",
                "5s"
            ])
            .is_err()
        );
    }

    #[test]
    fn conflicting_or_missing_modes_are_refused() {
        assert!(parse(&["--target", "http://h:1/", "--rate", "10", "--ramp", "5s"]).is_err());
        assert!(parse(&["--target", "http://h:1/", "--duration", "5s"]).is_err());
        assert!(parse(&["--target", "http://h:1/", "--spec", "x", "--ceiling", "5"]).is_err());
        assert!(parse(&["--rate", "10"]).is_err());
        let a = parse(&["--target", "http://h:1/"]).unwrap();
        assert!(matches!(a.to_config(), Err(LoadtestError::Invalid(_))));
        let a = parse(&["--target", "https://h:1/", "--rate", "5"]).unwrap();
        assert!(a.to_config().is_err());
    }

    #[tokio::test]
    async fn spec_change_without_a_changer_is_an_error() {
        let a = parse(&[
            "--target",
            "http://127.0.0.1:1/",
            "--ceiling",
            "100",
            "--modify-spec-at",
            "5s",
            "--to",
            "api.s1.small",
            "--instance",
            "i",
        ])
        .unwrap();
        assert!(matches!(
            run_cli(a, None).await,
            Err(LoadtestError::NoSpecChanger)
        ));
    }
}
