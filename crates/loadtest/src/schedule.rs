//! The send schedule: phases, the instant of every request slot, and which target gets it.
//!
//! Everything here is pure arithmetic on seconds since the run's start (`t0`), so the whole
//! schedule is known before the first request is sent and can be tested without a network.

use serde::{Deserialize, Serialize};

/// What a phase is for; decides how it is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// `--rate N`: one constant rate for the whole run.
    Constant,
    /// Rate grows linearly towards the sustained rate.
    Ramp,
    /// Just under the ceiling.
    Sustain,
    /// Above the ceiling: the gateway must throttle the excess with 429.
    Overload,
    /// The seconds right after a spec change, while it propagates: reported, not judged.
    Transition,
}

/// What the server is expected to do with a phase's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// Serve (almost) every request with 2xx, within the latency budget.
    Serve,
    /// Admit about the ceiling and answer the excess with 429.
    Throttle,
    /// Not judged.
    None,
}

/// One phase of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhasePlan {
    pub name: String,
    pub kind: PhaseKind,
    pub expect: Expectation,
    /// Seconds from the run's start.
    pub start_s: f64,
    pub duration_s: f64,
    /// Requested rate at the phase's start and end (equal unless ramping).
    pub start_rps: f64,
    pub end_rps: f64,
    /// The ceiling in force during the phase, if the run has one.
    pub ceiling_rps: Option<f64>,
    /// The catalog spec in force during the phase, if known.
    pub spec: Option<String>,
    /// How many request slots the phase schedules.
    pub requests: u64,
    /// The global index of the phase's first slot.
    pub first_slot: u64,
}

impl PhasePlan {
    /// The rate's slope, requests per second per second.
    fn slope(&self) -> f64 {
        if self.duration_s > 0.0 {
            (self.end_rps - self.start_rps) / self.duration_s
        } else {
            0.0
        }
    }

    /// Offset, in seconds from the phase's start, of the phase's `k`-th slot: the instant at
    /// which the integral of the rate reaches `k`.
    pub fn offset_of(&self, k: u64) -> f64 {
        if k == 0 {
            return 0.0;
        }
        let k = k as f64;
        let r0 = self.start_rps;
        let a = self.slope();
        // Solves r0 t + a t^2 / 2 = k in the form that stays exact for a == 0 and a < 0.
        let disc = (r0 * r0 + 2.0 * a * k).max(0.0);
        let denom = r0 + disc.sqrt();
        if denom <= 0.0 {
            return self.duration_s;
        }
        2.0 * k / denom
    }

    /// The rate's integral from the phase's start to `tau` seconds into it.
    fn integral(&self, tau: f64) -> f64 {
        let tau = tau.clamp(0.0, self.duration_s);
        self.start_rps * tau + self.slope() * tau * tau / 2.0
    }

    /// How many of the phase's slots are scheduled strictly before `tau` seconds into it.
    pub fn slots_before(&self, tau: f64) -> u64 {
        if tau <= 0.0 {
            return 0;
        }
        if tau >= self.duration_s {
            return self.requests;
        }
        // Slot k is before tau iff k < integral(tau); allow for float noise on exact hits.
        let x = self.integral(tau);
        let n = (x - 1e-9).ceil().max(0.0) as u64;
        n.min(self.requests)
    }

    /// The requested rate `tau` seconds into the phase.
    pub fn rate_at(&self, tau: f64) -> f64 {
        self.start_rps + self.slope() * tau.clamp(0.0, self.duration_s)
    }

    /// The mean scheduled rate of the phase.
    pub fn planned_rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }

    pub fn end_s(&self) -> f64 {
        self.start_s + self.duration_s
    }
}

/// A phase before slots are numbered.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    name: String,
    kind: PhaseKind,
    expect: Expectation,
    duration_s: f64,
    start_rps: f64,
    end_rps: f64,
    ceiling_rps: Option<f64>,
    spec: Option<String>,
    /// Exact slot count, when the caller fixed it (`--requests`).
    requests: Option<u64>,
}

/// The whole schedule: phases in order, slots numbered globally from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    phases: Vec<PhasePlan>,
    total: u64,
    duration_s: f64,
}

/// A planned mid-run change of the instance's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecChangePlan {
    /// Seconds from the run's start at which `SpecChanger::change` is called.
    pub at_s: f64,
    /// The spec to change to.
    pub to: String,
    /// Its ceiling.
    pub ceiling_rps: f64,
    /// How long after `at_s` the new ceiling is expected to be in force everywhere; the load in
    /// between forms a `Transition` phase that is not judged.
    pub settle_s: f64,
}

/// The phases of an SLA test, as fractions of the ceiling.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaShape {
    pub ceiling_rps: f64,
    pub spec: Option<String>,
    pub ramp_s: f64,
    pub sustain_s: f64,
    pub overload_s: f64,
    /// The ramp starts at this fraction of the ceiling and ends at `sustain_fraction`.
    pub ramp_from: f64,
    pub sustain_fraction: f64,
    pub overload_factor: f64,
    pub spec_change: Option<SpecChangePlan>,
}

/// Upper bound on the slots of one run, so a typo cannot schedule a runaway test.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

impl Schedule {
    /// One constant-rate phase of `duration_s` seconds, or of exactly `requests` requests.
    pub fn constant(
        rps: f64,
        duration_s: Option<f64>,
        requests: Option<u64>,
        ceiling: Option<(f64, Option<String>)>,
    ) -> Result<Schedule, String> {
        if !(rps.is_finite() && rps > 0.0) {
            return Err(format!("rate must be a positive number, got {rps}"));
        }
        let (duration_s, requests) = match (duration_s, requests) {
            (_, Some(n)) => (n as f64 / rps, Some(n)),
            (Some(d), None) => (d, None),
            (None, None) => return Err("give a duration or a request count".into()),
        };
        let (ceiling_rps, spec) = match ceiling {
            Some((c, s)) => (Some(c), s),
            None => (None, None),
        };
        let expect = match ceiling_rps {
            Some(c) if rps > c => Expectation::Throttle,
            _ => Expectation::Serve,
        };
        Schedule::from_segments(vec![Segment {
            name: "constant".into(),
            kind: PhaseKind::Constant,
            expect,
            duration_s,
            start_rps: rps,
            end_rps: rps,
            ceiling_rps,
            spec,
            requests,
        }])
    }

    /// Ramp, sustain and overload, split around a spec change if one is planned.
    pub fn sla(shape: &SlaShape) -> Result<Schedule, String> {
        let c1 = shape.ceiling_rps;
        if !(c1.is_finite() && c1 > 0.0) {
            return Err(format!("ceiling must be a positive number, got {c1}"));
        }
        if !(shape.sustain_fraction > 0.0 && shape.sustain_fraction <= 1.0) {
            return Err(format!(
                "sustain fraction must be in (0, 1], got {}",
                shape.sustain_fraction
            ));
        }
        if !(shape.ramp_from >= 0.0 && shape.ramp_from <= shape.sustain_fraction) {
            return Err(format!(
                "ramp start fraction must be in [0, sustain fraction], got {}",
                shape.ramp_from
            ));
        }
        if !(shape.overload_factor > 1.0 && shape.overload_factor.is_finite()) {
            return Err(format!(
                "overload factor must be above 1, got {}",
                shape.overload_factor
            ));
        }
        // (name, kind, duration, fraction at start, fraction at end)
        let base = [
            (
                "ramp",
                PhaseKind::Ramp,
                shape.ramp_s,
                shape.ramp_from,
                shape.sustain_fraction,
            ),
            (
                "sustain",
                PhaseKind::Sustain,
                shape.sustain_s,
                shape.sustain_fraction,
                shape.sustain_fraction,
            ),
            (
                "overload",
                PhaseKind::Overload,
                shape.overload_s,
                shape.overload_factor,
                shape.overload_factor,
            ),
        ];
        let total: f64 = base.iter().map(|b| b.2).sum();
        if total <= 0.0 {
            return Err("the SLA test has no phase longer than zero".into());
        }
        let change = shape.spec_change.as_ref();
        if let Some(ch) = change {
            if !(ch.at_s > 0.0 && ch.at_s < total) {
                return Err(format!(
                    "the spec change at {:.3}s must fall inside the run (0s..{total:.3}s)",
                    ch.at_s
                ));
            }
            if !(ch.ceiling_rps.is_finite() && ch.ceiling_rps > 0.0) {
                return Err(format!(
                    "new ceiling must be positive, got {}",
                    ch.ceiling_rps
                ));
            }
        }
        let mut segments = Vec::new();
        let mut a = 0.0;
        for (name, kind, dur, f0, f1) in base {
            let b = a + dur;
            if dur <= 0.0 {
                continue;
            }
            let frac = |t: f64| f0 + (f1 - f0) * (t - a) / dur;
            let mut cuts = vec![a];
            if let Some(ch) = change {
                for x in [ch.at_s, ch.at_s + ch.settle_s] {
                    if x > a && x < b {
                        cuts.push(x);
                    }
                }
            }
            cuts.push(b);
            for w in cuts.windows(2) {
                let (x, y) = (w[0], w[1]);
                if y - x < 1e-9 {
                    continue;
                }
                let judged = if kind == PhaseKind::Overload {
                    Expectation::Throttle
                } else {
                    Expectation::Serve
                };
                let (seg_name, seg_kind, expect, ceiling, spec, rate_ceiling) = match change {
                    Some(ch) if x >= ch.at_s + ch.settle_s - 1e-9 => (
                        format!("{name} @{}", ch.to),
                        kind,
                        judged,
                        Some(ch.ceiling_rps),
                        Some(ch.to.clone()),
                        ch.ceiling_rps,
                    ),
                    Some(ch) if x >= ch.at_s - 1e-9 => {
                        // While the change propagates, stay safe under the ceiling and keep
                        // overload above both ceilings, so the admitted rate shows the switch.
                        let rc = if kind == PhaseKind::Overload {
                            c1.max(ch.ceiling_rps)
                        } else {
                            c1.min(ch.ceiling_rps)
                        };
                        (
                            format!("{name} (spec change)"),
                            PhaseKind::Transition,
                            Expectation::None,
                            None,
                            None,
                            rc,
                        )
                    }
                    _ => (
                        name.to_string(),
                        kind,
                        judged,
                        Some(c1),
                        shape.spec.clone(),
                        c1,
                    ),
                };
                segments.push(Segment {
                    name: seg_name,
                    kind: seg_kind,
                    expect,
                    duration_s: y - x,
                    start_rps: frac(x) * rate_ceiling,
                    end_rps: frac(y) * rate_ceiling,
                    ceiling_rps: ceiling,
                    spec,
                    requests: None,
                });
            }
            a = b;
        }
        Schedule::from_segments(segments)
    }

    fn from_segments(segments: Vec<Segment>) -> Result<Schedule, String> {
        let mut phases = Vec::with_capacity(segments.len());
        let mut start_s = 0.0;
        let mut first_slot = 0u64;
        for s in segments {
            if !(s.duration_s.is_finite() && s.duration_s >= 0.0) {
                return Err(format!("phase {} has an invalid duration", s.name));
            }
            if !(s.start_rps >= 0.0 && s.end_rps >= 0.0) {
                return Err(format!("phase {} has a negative rate", s.name));
            }
            let requests = match s.requests {
                Some(n) => n,
                None => ((s.start_rps + s.end_rps) / 2.0 * s.duration_s).round() as u64,
            };
            let phase = PhasePlan {
                name: s.name,
                kind: s.kind,
                expect: s.expect,
                start_s,
                duration_s: s.duration_s,
                start_rps: s.start_rps,
                end_rps: s.end_rps,
                ceiling_rps: s.ceiling_rps,
                spec: s.spec,
                requests,
                first_slot,
            };
            start_s += s.duration_s;
            first_slot = first_slot.saturating_add(requests);
            phases.push(phase);
        }
        if first_slot == 0 {
            return Err("the schedule sends no request".into());
        }
        if first_slot > MAX_REQUESTS {
            return Err(format!(
                "the schedule has {first_slot} requests, more than the limit of {MAX_REQUESTS}"
            ));
        }
        Ok(Schedule {
            phases,
            total: first_slot,
            duration_s: start_s,
        })
    }

    pub fn phases(&self) -> &[PhasePlan] {
        &self.phases
    }

    /// Number of slots in the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Planned length of the run, in seconds.
    pub fn duration_s(&self) -> f64 {
        self.duration_s
    }

    /// The phase that holds `slot`, searching forward from `hint` (slots are claimed in
    /// increasing order, so the hint is almost always right).
    pub fn phase_of(&self, slot: u64, hint: usize) -> Option<usize> {
        if slot >= self.total {
            return None;
        }
        let mut i = hint.min(self.phases.len() - 1);
        if slot < self.phases[i].first_slot {
            i = 0;
        }
        while i + 1 < self.phases.len() && slot >= self.phases[i + 1].first_slot {
            i += 1;
        }
        Some(i)
    }

    /// Seconds from the run's start at which `slot` is due.
    pub fn time_of(&self, slot: u64, phase: usize) -> f64 {
        let p = &self.phases[phase];
        p.start_s + p.offset_of(slot - p.first_slot)
    }

    /// The phase running at `t` seconds into the run (the last one after the end).
    pub fn phase_at(&self, t: f64) -> usize {
        self.phases
            .iter()
            .rposition(|p| p.start_s <= t)
            .unwrap_or(0)
    }

    /// How many slots of the whole run are due strictly before `t` seconds.
    pub fn slots_before(&self, t: f64) -> u64 {
        let i = self.phase_at(t);
        let p = &self.phases[i];
        p.first_slot + p.slots_before(t - p.start_s)
    }

    /// The requested rate at `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < 0.0 || t >= self.duration_s {
            return 0.0;
        }
        let p = &self.phases[self.phase_at(t)];
        p.rate_at(t - p.start_s)
    }
}

/// Spreads slots over weighted targets with smooth weighted round robin: in every period of
/// `sum(weights)` slots (after dividing by their gcd) target `j` gets exactly `weights[j]`,
/// evenly interleaved. Each target's slots can be enumerated on their own, so the workers of
/// one target claim that target's slots from one counter.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetMap {
    weights: Vec<u64>,
    seq: Vec<u32>,
    positions: Vec<Vec<u64>>,
}

/// The largest period (sum of reduced weights) accepted.
pub const MAX_WEIGHT_PERIOD: u64 = 100_000;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl TargetMap {
    pub fn new(weights: &[u32]) -> Result<TargetMap, String> {
        if weights.is_empty() {
            return Err("no target".into());
        }
        if weights.contains(&0) {
            return Err("target weights must be at least 1".into());
        }
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
        let period: u64 = weights.iter().sum();
        if period > MAX_WEIGHT_PERIOD {
            return Err(format!(
                "target weights are too fine-grained (reduced sum {period} > {MAX_WEIGHT_PERIOD}); use smaller numbers"
            ));
        }
        let mut current = vec![0i64; weights.len()];
        let mut seq = Vec::with_capacity(period as usize);
        let mut positions = vec![Vec::new(); weights.len()];
        for pos in 0..period {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += *w as i64;
            }
            // Highest current wins; ties go to the earlier target.
            let mut best = 0;
            for j in 1..current.len() {
                if current[j] > current[best] {
                    best = j;
                }
            }
            current[best] -= period as i64;
            seq.push(best as u32);
            positions[best].push(pos);
        }
        Ok(TargetMap {
            weights,
            seq,
            positions,
        })
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    fn period(&self) -> u64 {
        self.seq.len() as u64
    }

    /// The target of global slot `slot`.
    pub fn target_of(&self, slot: u64) -> usize {
        self.seq[(slot % self.period()) as usize] as usize
    }

    /// The global slot of target `target`'s `k`-th slot.
    pub fn slot_of(&self, target: usize, k: u64) -> u64 {
        let w = self.weights[target];
        (k / w) * self.period() + self.positions[target][(k % w) as usize]
    }
}

/// Splits `total` connections over targets in proportion to their weights (largest
/// remainder), giving every target at least one.
pub fn split_connections(total: usize, weights: &[u32]) -> Result<Vec<usize>, String> {
    if total < weights.len() {
        return Err(format!(
            "{total} connections cannot serve {} targets; give at least one per target",
            weights.len()
        ));
    }
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let total64 = total as u64;
    let mut out: Vec<usize> = Vec::with_capacity(weights.len());
    let mut rema: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (j, &w) in weights.iter().enumerate() {
        let exact = total64 * u64::from(w);
        out.push(((exact / sum) as usize).max(1));
        rema.push((exact % sum, j));
    }
    let given: usize = out.iter().sum();
    if given < total {
        rema.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, j) in rema.iter().cycle().take(total - given) {
            out[j] += 1;
        }
    } else {
        // The minimum of one each over-allocated: take back from the largest shares.
        for _ in 0..(given - total) {
            let j = (0..out.len())
                .max_by_key(|&j| (out[j], usize::MAX - j))
                .unwrap_or(0);
            out[j] -= 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> SlaShape {
        SlaShape {
            ceiling_rps: 2500.0,
            spec: Some("api.s1.small".into()),
            ramp_s: 10.0,
            sustain_s: 30.0,
            overload_s: 10.0,
            ramp_from: 0.1,
            sustain_fraction: 0.9,
            overload_factor: 2.0,
            spec_change: None,
        }
    }

    #[test]
    fn constant_slots_are_evenly_spaced() {
        let s = Schedule::constant(2000.0, Some(3.0), None, None).unwrap();
        assert_eq!(s.total(), 6000);
        assert_eq!(s.phases()[0].expect, Expectation::Serve);
        for slot in [0u64, 1, 1999, 5999] {
            let t = s.time_of(slot, 0);
            assert!(
                (t - slot as f64 / 2000.0).abs() < 1e-12,
                "slot {slot} at {t}"
            );
        }
        assert_eq!(s.slots_before(1.0), 2000);
        assert_eq!(s.slots_before(1.0001), 2001);
        assert_eq!(s.slots_before(10.0), 6000);
    }

    #[test]
    fn request_count_fixes_slots_and_duration() {
        let s = Schedule::constant(400.0, None, Some(1000), None).unwrap();
        assert_eq!(s.total(), 1000);
        assert!((s.duration_s() - 2.5).abs() < 1e-12);
    }

    #[test]
    fn constant_above_a_ceiling_expects_throttling() {
        let s = Schedule::constant(3000.0, Some(1.0), None, Some((2500.0, None))).unwrap();
        assert_eq!(s.phases()[0].expect, Expectation::Throttle);
        let s = Schedule::constant(2000.0, Some(1.0), None, Some((2500.0, None))).unwrap();
        assert_eq!(s.phases()[0].expect, Expectation::Serve);
    }

    #[test]
    fn sla_phases_follow_the_ceiling() {
        let s = Schedule::sla(&shape()).unwrap();
        let names: Vec<_> = s.phases().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ramp", "sustain", "overload"]);
        let [ramp, sustain, overload] = s.phases() else {
            panic!()
        };
        assert_eq!(ramp.requests, ((250.0 + 2250.0) / 2.0 * 10.0) as u64);
        assert_eq!(sustain.requests, 2250 * 30);
        assert_eq!(overload.requests, 5000 * 10);
        assert_eq!(overload.expect, Expectation::Throttle);
        assert_eq!(sustain.expect, Expectation::Serve);
        assert_eq!(sustain.first_slot, ramp.requests);
        assert!((s.duration_s() - 50.0).abs() < 1e-9);
        assert!((s.rate_at(45.0) - 5000.0).abs() < 1e-9);
    }

    #[test]
    fn ramp_slots_are_monotonic_and_match_the_integral() {
        let s = Schedule::sla(&shape()).unwrap();
        let ramp = &s.phases()[0];
        let mut prev = -1.0;
        for k in 0..ramp.requests {
            let t = ramp.offset_of(k);
            assert!(t > prev, "slot {k} at {t} not after {prev}");
            assert!(t < ramp.duration_s);
            prev = t;
        }
        // First second of the ramp: rate 250 -> 450, integral 350.
        assert_eq!(ramp.slots_before(1.0), 350);
        // Ramping down works too.
        let down = PhasePlan {
            start_rps: 1000.0,
            end_rps: 0.0,
            duration_s: 2.0,
            requests: 1000,
            ..ramp.clone()
        };
        assert!((down.offset_of(750) - 1.0).abs() < 1e-9);
        assert!(down.offset_of(999) < 2.0);
    }

    #[test]
    fn slots_before_inverts_offsets() {
        let s = Schedule::sla(&shape()).unwrap();
        for slot in [0u64, 17, 12_345, 60_000, s.total() - 1] {
            let p = s.phase_of(slot, 0).unwrap();
            let t = s.time_of(slot, p);
            assert_eq!(s.slots_before(t), slot, "slot {slot}");
            assert_eq!(s.slots_before(t + 1e-7), slot + 1, "slot {slot}");
        }
        assert_eq!(s.phase_of(s.total(), 0), None);
    }

    #[test]
    fn spec_change_splits_phases_with_a_transition() {
        let mut sh = shape();
        sh.spec_change = Some(SpecChangePlan {
            at_s: 45.0,
            to: "api.s1.medium".into(),
            ceiling_rps: 5000.0,
            settle_s: 1.0,
        });
        let s = Schedule::sla(&sh).unwrap();
        let names: Vec<_> = s.phases().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ramp",
                "sustain",
                "overload",
                "overload (spec change)",
                "overload @api.s1.medium"
            ]
        );
        let p = s.phases();
        assert_eq!(p[2].ceiling_rps, Some(2500.0));
        assert!((p[2].duration_s - 5.0).abs() < 1e-9);
        assert_eq!(p[3].expect, Expectation::None);
        assert!((p[3].start_rps - 10_000.0).abs() < 1e-9);
        assert_eq!(p[4].ceiling_rps, Some(5000.0));
        assert_eq!(p[4].spec.as_deref(), Some("api.s1.medium"));
        assert!((p[4].start_rps - 10_000.0).abs() < 1e-9);
        assert!((p[4].duration_s - 4.0).abs() < 1e-9);
        // Under the ceiling a transition keeps to the lower of the two ceilings.
        sh.spec_change.as_mut().unwrap().at_s = 20.0;
        sh.spec_change.as_mut().unwrap().ceiling_rps = 1000.0;
        let s = Schedule::sla(&sh).unwrap();
        let t = s
            .phases()
            .iter()
            .find(|p| p.kind == PhaseKind::Transition)
            .unwrap();
        assert!((t.start_rps - 900.0).abs() < 1e-9);
        // A change outside the run is refused.
        sh.spec_change.as_mut().unwrap().at_s = 50.0;
        assert!(Schedule::sla(&sh).is_err());
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut sh = shape();
        sh.overload_factor = 1.0;
        assert!(Schedule::sla(&sh).is_err());
        let mut sh = shape();
        sh.sustain_fraction = 1.2;
        assert!(Schedule::sla(&sh).is_err());
        assert!(Schedule::constant(0.0, Some(1.0), None, None).is_err());
        assert!(Schedule::constant(1e9, Some(1e9), None, None).is_err());
    }

    #[test]
    fn weighted_targets_split_exactly_and_evenly() {
        let m = TargetMap::new(&[80, 20]).unwrap();
        let mut counts = [0u64; 2];
        for slot in 0..1000 {
            counts[m.target_of(slot)] += 1;
        }
        assert_eq!(counts, [800, 200]);
        // Smooth: target 1 never gets two slots in a row.
        for slot in 0..999 {
            assert!(!(m.target_of(slot) == 1 && m.target_of(slot + 1) == 1));
        }
        let m = TargetMap::new(&[3, 2, 1]).unwrap();
        let mut counts = [0u64; 3];
        for slot in 0..600 {
            counts[m.target_of(slot)] += 1;
        }
        assert_eq!(counts, [300, 200, 100]);
    }

    #[test]
    fn per_target_enumeration_covers_every_slot_once() {
        let m = TargetMap::new(&[5, 3, 2]).unwrap();
        let mut seen = vec![false; 1000];
        for t in 0..3 {
            let mut prev = None;
            for k in 0.. {
                let slot = m.slot_of(t, k);
                if slot >= 1000 {
                    break;
                }
                assert_eq!(m.target_of(slot), t);
                assert!(prev.is_none_or(|p| p < slot));
                assert!(!seen[slot as usize]);
                seen[slot as usize] = true;
                prev = Some(slot);
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn weights_are_validated() {
        assert!(TargetMap::new(&[]).is_err());
        assert!(TargetMap::new(&[1, 0]).is_err());
        assert!(TargetMap::new(&[99_991, 99_989]).is_err());
        assert_eq!(TargetMap::new(&[50, 50]).unwrap().period(), 2);
    }

    #[test]
    fn connections_follow_weights() {
        assert_eq!(split_connections(64, &[1]).unwrap(), [64]);
        assert_eq!(split_connections(10, &[80, 20]).unwrap(), [8, 2]);
        assert_eq!(split_connections(3, &[1000, 1, 1]).unwrap(), [1, 1, 1]);
        let s = split_connections(64, &[3, 2, 2]).unwrap();
        assert_eq!(s.iter().sum::<usize>(), 64);
        assert!(split_connections(1, &[1, 1]).is_err());
    }
}
