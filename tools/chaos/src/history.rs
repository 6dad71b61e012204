//! The recorded history: its JSON-lines file format and the checks run on it after the run
//! (linearizability with `dengine_sim::linearizability`, and the explicit "no acknowledged
//! write lost" check against the final reads).
//!
//! One line per operation, times in microseconds since the workload started, `null` for an
//! unknown outcome (the client timed out or lost its connection after sending):
//!
//! ```text
//! {"client":3,"key":5,"op":"put","value":3000017,"invoke":120,"complete":900}
//! {"client":1,"key":5,"op":"get","invoke":950,"complete":1200,"read":3000017}
//! {"client":2,"key":5,"op":"cas","expected":3000017,"new":2000009,"invoke":1300,"complete":null,"swapped":null}
//! ```

use std::collections::BTreeMap;

use dengine_sim::linearizability::{Op, OpResult, Operation, Outcome};

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// One operation as a JSON line (without the newline).
pub(crate) fn encode(o: &Operation) -> String {
    let complete = match o.outcome {
        Outcome::Completed { at, .. } => at.to_string(),
        Outcome::Unknown => "null".into(),
    };
    let result = match o.outcome {
        Outcome::Completed { result, .. } => Some(result),
        Outcome::Unknown => None,
    };
    let head = format!("{{\"client\":{},\"key\":{}", o.client, o.key);
    match o.op {
        Op::Put { value } => format!(
            "{head},\"op\":\"put\",\"value\":{value},\"invoke\":{},\"complete\":{complete}}}",
            o.invoke
        ),
        Op::Get => {
            let read = match result {
                Some(OpResult::Get(v)) => opt(v),
                _ => "null".into(),
            };
            format!(
                "{head},\"op\":\"get\",\"invoke\":{},\"complete\":{complete},\"read\":{read}}}",
                o.invoke
            )
        }
        Op::Cas { expected, new } => {
            let swapped = match result {
                Some(OpResult::Cas(s)) => s.to_string(),
                _ => "null".into(),
            };
            format!(
                "{head},\"op\":\"cas\",\"expected\":{},\"new\":{new},\"invoke\":{},\
                 \"complete\":{complete},\"swapped\":{swapped}}}",
                opt(expected),
                o.invoke
            )
        }
    }
}

/// Reads back a line written by [`encode`].
pub(crate) fn decode(line: &str) -> Result<Operation, String> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .ok_or_else(|| format!("not a JSON object: {line}"))?;
    let mut fields = BTreeMap::new();
    for part in body.split(',') {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("bad field {part:?} in {line}"))?;
        fields.insert(k.trim().trim_matches('"'), v.trim().trim_matches('"'));
    }
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| format!("no {k:?} in {line}"))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse()
            .map_err(|_| format!("{k:?} is not a number in {line}"))
    };
    let opt_num = |k: &str| -> Result<Option<u64>, String> {
        match get(k)? {
            "null" => Ok(None),
            _ => num(k).map(Some),
        }
    };
    let complete = opt_num("complete")?;
    let (op, result) = match get("op")? {
        "put" => (
            Op::Put {
                value: num("value")?,
            },
            OpResult::Put,
        ),
        "get" => (Op::Get, OpResult::Get(opt_num("read")?)),
        "cas" => (
            Op::Cas {
                expected: opt_num("expected")?,
                new: num("new")?,
            },
            OpResult::Cas(get("swapped")? == "true"),
        ),
        other => return Err(format!("unknown op {other:?} in {line}")),
    };
    Ok(Operation {
        client: num("client")?,
        key: num("key")?,
        op,
        invoke: num("invoke")?,
        outcome: match complete {
            Some(at) => Outcome::Completed { at, result },
            None => Outcome::Unknown,
        },
    })
}

/// Acknowledged writes that the final reads show lost: for each key, an acknowledged put or
/// successful compare-and-set whose value is not the final one although no write that could
/// have come after it produced the final value (or the key is absent at the end). One line of
/// explanation per lost write; empty when none is lost. `finals` holds the final read of
/// every key.
pub(crate) fn lost_writes(ops: &[Operation], finals: &BTreeMap<u64, Option<u64>>) -> Vec<String> {
    // Every value that may have been written: (key, value) -> the write's invoke and its
    // completion (u64::MAX when unknown: it may take effect any time later).
    let mut writers: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for o in ops {
        let value = match (o.op, o.outcome) {
            (Op::Put { value }, _) => value,
            (Op::Cas { new, .. }, Outcome::Unknown) => new,
            (
                Op::Cas { new, .. },
                Outcome::Completed {
                    result: OpResult::Cas(true),
                    ..
                },
            ) => new,
            _ => continue,
        };
        let complete = match o.outcome {
            Outcome::Completed { at, .. } => at,
            Outcome::Unknown => u64::MAX,
        };
        writers.insert((o.key, value), (o.invoke, complete));
    }
    let mut lost = Vec::new();
    for o in ops {
        let value = match (o.op, o.outcome) {
            (Op::Put { value }, Outcome::Completed { .. }) => value,
            (
                Op::Cas { new, .. },
                Outcome::Completed {
                    result: OpResult::Cas(true),
                    ..
                },
            ) => new,
            _ => continue,
        };
        let Some(&final_value) = finals.get(&o.key) else {
            continue;
        };
        if final_value == Some(value) {
            continue;
        }
        let later = final_value
            .and_then(|v| writers.get(&(o.key, v)))
            .is_some_and(|&(_, complete)| complete > o.invoke);
        if !later {
            lost.push(format!(
                "key {}: write of {value} by client {} (acknowledged at {} µs) is lost: the \
                 final value is {}, {}",
                o.key,
                o.client,
                match o.outcome {
                    Outcome::Completed { at, .. } => at,
                    Outcome::Unknown => 0,
                },
                opt(final_value),
                match final_value {
                    None => "the key is absent".to_string(),
                    Some(v) if writers.contains_key(&(o.key, v)) =>
                        "written by an operation that completed before this one started".into(),
                    Some(_) => "a value nobody wrote".into(),
                }
            ));
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(client: u64, key: u64, op: Op, invoke: u64, at: u64, result: OpResult) -> Operation {
        Operation {
            client,
            key,
            op,
            invoke,
            outcome: Outcome::Completed { at, result },
        }
    }

    #[test]
    fn encoding_round_trips_every_shape() {
        let ops = [
            done(3, 5, Op::Put { value: 30017 }, 120, 900, OpResult::Put),
            done(1, 5, Op::Get, 950, 1200, OpResult::Get(Some(30017))),
            done(1, 6, Op::Get, 950, 1200, OpResult::Get(None)),
            done(
                2,
                5,
                Op::Cas {
                    expected: None,
                    new: 9,
                },
                1,
                2,
                OpResult::Cas(false),
            ),
            Operation {
                client: 2,
                key: 5,
                op: Op::Cas {
                    expected: Some(30017),
                    new: 20009,
                },
                invoke: 1300,
                outcome: Outcome::Unknown,
            },
            Operation {
                client: 4,
                key: 0,
                op: Op::Put { value: 1 },
                invoke: 7,
                outcome: Outcome::Unknown,
            },
        ];
        for o in ops {
            let line = encode(&o);
            assert_eq!(decode(&line), Ok(o), "{line}");
        }
        assert!(decode("{\"client\":1}").is_err());
    }

    #[test]
    fn a_write_overwritten_later_is_not_lost_but_a_vanished_one_is() {
        let ops = vec![
            done(1, 0, Op::Put { value: 11 }, 0, 10, OpResult::Put),
            done(2, 0, Op::Put { value: 21 }, 20, 30, OpResult::Put),
            done(1, 1, Op::Put { value: 12 }, 0, 10, OpResult::Put),
            done(2, 1, Op::Put { value: 22 }, 20, 30, OpResult::Put),
        ];
        // Key 0 ends with the later write: fine. Key 1 ends with the earlier one: the later
        // acknowledged write was lost.
        let finals = BTreeMap::from([(0, Some(21)), (1, Some(12))]);
        let lost = lost_writes(&ops, &finals);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].starts_with("key 1: write of 22"), "{lost:?}");
        // An absent key loses every acknowledged write.
        let finals = BTreeMap::from([(0, None), (1, Some(22))]);
        assert_eq!(lost_writes(&ops, &finals).len(), 2);
    }
}
