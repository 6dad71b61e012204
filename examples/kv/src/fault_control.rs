//! The chaos harness's runtime control of a member's fault-injecting transport (feature
//! `fault-injection`, hidden flag `serve --fault-control FILE`).
//!
//! The member reads FILE every 100 ms; each change replaces the faults in force. The file
//! holds `key=value` lines; a missing or empty file means no faults:
//!
//! ```text
//! delay_ms=50..300     # hold each message back 50 to 300 ms (reorders too)
//! drop=0.1             # drop 10 % of messages
//! duplicate=0.1        # send 10 % of messages twice
//! block=2,3            # send nothing to members 2 and 3
//! ```

use std::path::PathBuf;
use std::time::Duration;

use dengine_net_grpc::fault::{FaultHandle, Faults};

/// Parses the control file's text; unknown or malformed lines are reported.
fn parse(text: &str) -> Result<Faults, String> {
    let mut faults = Faults::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("{line:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        let rate = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("{key}: {value:?} is not a rate in [0, 1]"))
        };
        match key {
            "delay_ms" => {
                let (lo, hi) = value
                    .split_once("..")
                    .ok_or_else(|| format!("delay_ms: {value:?} is not LO..HI"))?;
                let ms = |v: &str| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| format!("delay_ms: {v:?} is not milliseconds"))
                };
                faults.delay = Some((ms(lo)?, ms(hi)?));
            }
            "drop" => faults.drop_rate = rate()?,
            "duplicate" => faults.duplicate_rate = rate()?,
            "block" => {
                for id in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    let id = id
                        .parse()
                        .map_err(|_| format!("block: {id:?} is not a member id"))?;
                    faults.blocked.insert(id);
                }
            }
            other => return Err(format!("unknown fault {other:?}")),
        }
    }
    Ok(faults)
}

/// Polls `file` every 100 ms for the life of the process and applies what it says.
pub(crate) fn spawn_poller(file: PathBuf, handle: FaultHandle) {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if last.as_deref() != Some(text.as_str()) {
                match parse(&text) {
                    Ok(faults) => {
                        tracing::info!(?faults, "fault control: new faults in force");
                        handle.set(faults);
                    }
                    Err(e) => tracing::warn!(file = %file.display(), "fault control: {e}"),
                }
                last = Some(text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault_and_rejects_nonsense() {
        let f = parse("delay_ms=50..300\ndrop=0.25 # comment\nduplicate=0\nblock=2, 3\n")
            .unwrap_or_default();
        assert_eq!(
            f.delay,
            Some((Duration::from_millis(50), Duration::from_millis(300)))
        );
        assert_eq!(f.drop_rate, 0.25);
        assert_eq!(f.blocked.iter().copied().collect::<Vec<u64>>(), vec![2, 3]);
        assert_eq!(parse(""), Ok(Faults::default()));
        assert!(parse("drop=2").is_err());
        assert!(parse("delay_ms=5").is_err());
        assert!(parse("latency=1").is_err());
    }
}
