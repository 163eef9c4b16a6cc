use super::*;
use proptest::prelude::*;

/// Registers named by a key: writes, reads and fetch-and-add.
struct Registers;

#[derive(Debug, Clone)]
enum Op {
    Write(u8, i64),
    Read(u8),
    /// Adds and returns the new value.
    Add(u8, i64),
}

impl Model for Registers {
    type State = i64;
    type Input = Op;
    type Output = i64;
    type Key = u8;

    fn init(&self) -> i64 {
        0
    }

    fn partition(&self, input: &Op) -> u8 {
        match input {
            Op::Write(k, _) | Op::Read(k) | Op::Add(k, _) => *k,
        }
    }

    fn step(&self, state: &i64, input: &Op, output: Option<&i64>) -> Option<i64> {
        match input {
            Op::Write(_, v) => Some(*v),
            Op::Read(_) => output.is_none_or(|o| o == state).then_some(*state),
            Op::Add(_, d) => output.is_none_or(|o| *o == state + d).then_some(state + d),
        }
    }
}

fn done(client: u64, call: u64, at: u64, input: Op, output: i64) -> Operation<Op, i64> {
    Operation {
        client,
        call,
        input,
        completion: Completion::Returned { at, output },
    }
}

fn unknown(client: u64, call: u64, input: Op) -> Operation<Op, i64> {
    Operation {
        client,
        call,
        input,
        completion: Completion::Unknown,
    }
}

fn anomaly(r: Result<Report, CheckError>) -> Anomaly {
    match r {
        Err(CheckError::NotLinearizable(a)) => *a,
        other => panic!("expected an anomaly, got {other:?}"),
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    let h = vec![
        done(1, 0, 1, Op::Write(0, 5), 0),
        done(1, 2, 3, Op::Read(0), 5),
        done(2, 4, 5, Op::Add(0, 2), 7),
        done(2, 6, 7, Op::Read(0), 7),
    ];
    let r = check(&Registers, &h).unwrap();
    assert_eq!((r.partitions, r.operations), (1, 4));
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [0, 5] {
        let h = vec![
            done(1, 0, 10, Op::Write(0, 5), 0),
            done(2, 1, 9, Op::Read(0), seen),
        ];
        check(&Registers, &h).unwrap();
    }
}

#[test]
fn a_stale_read_after_a_completed_write_is_caught() {
    let h = vec![
        done(1, 0, 1, Op::Write(0, 5), 0),
        done(2, 2, 3, Op::Read(0), 0),
    ];
    let a = anomaly(check(&Registers, &h));
    assert_eq!(a.operations, 2);
    assert!(a.stuck.contains("Read"), "{a}");
}

#[test]
fn two_reads_may_not_see_a_write_undone() {
    // Both reads overlap the write, but the second starts after the first saw the new value.
    let h = vec![
        done(1, 0, 10, Op::Write(0, 5), 0),
        done(2, 1, 2, Op::Read(0), 5),
        done(3, 3, 4, Op::Read(0), 0),
    ];
    anomaly(check(&Registers, &h));
}

#[test]
fn an_add_applied_twice_is_caught() {
    let h = vec![
        done(1, 0, 1, Op::Add(0, 1), 1),
        done(1, 2, 3, Op::Read(0), 2),
    ];
    anomaly(check(&Registers, &h));
}

#[test]
fn an_unknown_outcome_may_apply_late_or_never() {
    let applied_late = vec![
        unknown(1, 0, Op::Add(0, 1)),
        done(2, 5, 6, Op::Read(0), 0),
        done(2, 7, 8, Op::Read(0), 1),
    ];
    check(&Registers, &applied_late).unwrap();
    let never = vec![unknown(1, 0, Op::Add(0, 1)), done(2, 5, 6, Op::Read(0), 0)];
    check(&Registers, &never).unwrap();
    // But not before it was invoked.
    let too_early = vec![done(2, 0, 1, Op::Read(0), 1), unknown(1, 2, Op::Add(0, 1))];
    anomaly(check(&Registers, &too_early));
}

#[test]
fn partitions_are_checked_separately() {
    let h = vec![
        done(1, 0, 1, Op::Write(0, 5), 0),
        done(1, 0, 1, Op::Write(1, 6), 0),
        done(2, 2, 3, Op::Read(1), 6),
        done(2, 4, 5, Op::Read(0), 6),
    ];
    let a = anomaly(check(&Registers, &h));
    assert_eq!(a.key, "0");
}

#[test]
fn a_completion_before_the_call_is_malformed() {
    let h = vec![done(1, 5, 4, Op::Read(0), 0)];
    assert!(matches!(
        check(&Registers, &h),
        Err(CheckError::Malformed { index: 0, .. })
    ));
}

#[test]
fn the_budget_makes_a_hard_history_inconclusive_not_wrong() {
    // Many concurrent unknown writes and no way to place a final impossible read: the search
    // must try a great many orders before it can say no.
    let mut h: Vec<_> = (0..40).map(|i| unknown(i, 0, Op::Add(0, 1))).collect();
    h.push(done(99, 1, 2, Op::Read(0), -1));
    assert!(matches!(
        check_with_budget(&Registers, &h, 1_000),
        Err(CheckError::TooComplex { .. })
    ));
}

/// A history made by running the operations in some real order, each taking effect at an
/// instant inside its own [call, return] window.
fn linear_run(ops: Vec<(Op, u64, u64, bool)>) -> Vec<Operation<Op, i64>> {
    let mut value = [0i64; 3];
    let mut history = Vec::new();
    let mut clock = 0u64;
    for (client, (op, before, after, lost)) in ops.into_iter().enumerate() {
        // The effect happens at `clock`; the window around it is random.
        clock += 10;
        let call = clock.saturating_sub(before);
        let at = clock + after;
        let output = match op {
            Op::Write(k, v) => {
                value[k as usize] = v;
                0
            }
            Op::Read(k) => value[k as usize],
            Op::Add(k, d) => {
                value[k as usize] += d;
                value[k as usize]
            }
        };
        let completion = if lost {
            Completion::Unknown
        } else {
            Completion::Returned { at, output }
        };
        history.push(Operation {
            client: client as u64,
            call,
            input: op,
            completion,
        });
    }
    history
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0i64..5).prop_map(|(k, v)| Op::Write(k, v)),
        (0u8..3).prop_map(Op::Read),
        (0u8..3, 1i64..3).prop_map(|(k, d)| Op::Add(k, d)),
    ]
}

proptest! {
    #[test]
    fn every_real_run_is_linearizable(
        ops in prop::collection::vec((any_op(), 0u64..40, 0u64..40, prop::bool::weighted(0.1)), 1..60)
    ) {
        let h = linear_run(ops);
        prop_assert!(check(&Registers, &h).is_ok());
    }

    #[test]
    fn a_read_of_a_value_never_held_is_always_caught(
        ops in prop::collection::vec((any_op(), 0u64..40, 0u64..40, Just(false)), 1..60),
        key in 0u8..3,
    ) {
        let mut h = linear_run(ops);
        // Values are never negative: no order can explain this read.
        h.push(done(1000, 0, u64::MAX - 1, Op::Read(key), -7));
        prop_assert!(matches!(check(&Registers, &h), Err(CheckError::NotLinearizable(_))));
    }
}
