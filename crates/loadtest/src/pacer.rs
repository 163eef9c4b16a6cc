//! The pacer: one OS thread that releases every slot at its scheduled instant.
//!
//! tokio's timers tick in whole milliseconds and its reactor waits in whole milliseconds, so a
//! task that sleeps until a deadline wakes up to about 2 ms late. The pacer sleeps with the
//! operating system's fine-grained timer instead and hands each due slot to its target's queue,
//! where the first free worker of that target takes it. If no worker is free the slot waits in
//! the queue: it is sent late and the lag is recorded, never skipped silently.

use crate::schedule::{Schedule, TargetMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Slots released but not yet taken by a worker, beyond which the pacer stops queueing (they
/// are reported as unsent): bounds memory when the workers cannot keep up at all.
pub(crate) const MAX_BACKLOG: u64 = 1_000_000;

/// The longest single sleep, so a stop request is seen promptly.
const MAX_NAP: Duration = Duration::from_millis(20);

/// The shortest interval between two wake-ups: at high rates the slots due within it are
/// released together, so the pacer (and the wake-ups it causes) costs at most this many
/// wake-ups per second, whatever the rate, for at most this much added lag.
const QUANTUM: Duration = Duration::from_micros(500);

/// State shared between the pacer and the workers.
#[derive(Debug, Default)]
pub(crate) struct PaceState {
    /// Released and not yet taken.
    pub backlog: AtomicU64,
    /// Set to make the pacer return early.
    pub stop: AtomicBool,
}

/// Sets the stop flag when dropped (the run ended or was cancelled).
pub(crate) struct StopOnDrop(pub Arc<PaceState>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Releases slots `0..schedule.total()` in order, each at `t0 + its offset`, into the queue
/// of its target. Returns when every slot is released, when `state.stop` is set, or when the
/// workers are gone. Dropping the senders on return closes the queues.
pub(crate) fn pace(
    schedule: &Schedule,
    map: &TargetMap,
    queues: Vec<UnboundedSender<u64>>,
    t0: Instant,
    state: &PaceState,
) {
    let mut hint = 0;
    // The pacer does not wake again before this instant (see QUANTUM).
    let mut not_before = t0;
    for slot in 0..schedule.total() {
        let Some(phase) = schedule.phase_of(slot, hint) else {
            break;
        };
        hint = phase;
        let due = t0 + Duration::from_secs_f64(schedule.time_of(slot, phase));
        if Instant::now() < due {
            // Not due yet: sleep until it is, and no sooner than a quantum after the last
            // wake-up. Never release early.
            let wake = due.max(not_before);
            loop {
                if state.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= wake {
                    not_before = now + QUANTUM;
                    break;
                }
                std::thread::sleep((wake - now).min(MAX_NAP));
            }
        } else if state.stop.load(Ordering::Relaxed) {
            return;
        }
        if state.backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
            continue;
        }
        state.backlog.fetch_add(1, Ordering::Relaxed);
        if queues[map.target_of(slot)].send(slot).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    #[test]
    fn releases_every_slot_on_time_to_its_target() {
        let schedule = Schedule::constant(2000.0, None, Some(400), None).unwrap();
        let map = TargetMap::new(&[3, 1]).unwrap();
        let (a_tx, mut a_rx) = unbounded_channel();
        let (b_tx, mut b_rx) = unbounded_channel();
        let state = PaceState::default();
        let t0 = Instant::now();
        pace(&schedule, &map, vec![a_tx, b_tx], t0, &state);
        let elapsed = t0.elapsed();
        // The last slot is due at 199.5 ms; the pacer never releases early.
        assert!(elapsed >= Duration::from_micros(199_500), "{elapsed:?}");
        let mut a = Vec::new();
        while let Ok(s) = a_rx.try_recv() {
            a.push(s);
        }
        let mut b = Vec::new();
        while let Ok(s) = b_rx.try_recv() {
            b.push(s);
        }
        assert_eq!((a.len(), b.len()), (300, 100));
        assert!(b.iter().all(|&s| map.target_of(s) == 1));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(state.backlog.load(Ordering::Relaxed), 400);
    }

    #[test]
    fn stops_when_asked_and_when_the_backlog_is_full() {
        let schedule = Schedule::constant(1.0, Some(1000.0), None, None).unwrap();
        let map = TargetMap::new(&[1]).unwrap();
        let (tx, mut rx) = unbounded_channel();
        let state = PaceState::default();
        state.stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        pace(&schedule, &map, vec![tx], t0, &state);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(rx.try_recv().is_err());

        let schedule = Schedule::constant(1000.0, None, Some(10), None).unwrap();
        let (tx, mut rx) = unbounded_channel();
        let state = PaceState::default();
        state.backlog.store(MAX_BACKLOG, Ordering::Relaxed);
        // Every slot is due in the past: nothing to wait for, nothing queued.
        pace(
            &schedule,
            &map,
            vec![tx],
            Instant::now() - Duration::from_secs(1),
            &state,
        );
        assert!(rx.try_recv().is_err());
    }
}
