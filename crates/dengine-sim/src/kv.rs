//! The tiny key-value state machine the simulated clients use: puts, compare-and-sets and
//! reads on `u64` keys and values, with commands encoded into log entry payloads.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A write command carried in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: u64,
        /// The value.
        value: u64,
    },
    /// Set `key` to `new` if it holds `expected` (`None` = absent).
    Cas {
        /// The key.
        key: u64,
        /// The value the key must hold.
        expected: Option<u64>,
        /// The value to write.
        new: u64,
    },
}

impl Command {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(26);
        match *self {
            Command::Put { key, value } => {
                b.put_u8(1);
                b.put_u64(key);
                b.put_u64(value);
            }
            Command::Cas { key, expected, new } => {
                b.put_u8(2);
                b.put_u64(key);
                b.put_u64(new);
                b.put_u8(u8::from(expected.is_some()));
                b.put_u64(expected.unwrap_or(0));
            }
        }
        b.freeze()
    }

    /// Decodes a payload written by [`Command::encode`]; `None` if it is not one.
    pub fn decode(data: &[u8]) -> Option<Command> {
        let u64_at = |at: usize| -> Option<u64> {
            let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_be_bytes(bytes))
        };
        match data.first()? {
            1 if data.len() == 17 => Some(Command::Put {
                key: u64_at(1)?,
                value: u64_at(9)?,
            }),
            2 if data.len() == 26 => Some(Command::Cas {
                key: u64_at(1)?,
                new: u64_at(9)?,
                expected: match data.get(17)? {
                    0 => None,
                    _ => Some(u64_at(18)?),
                },
            }),
            _ => None,
        }
    }
}

/// The store: one register per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: HashMap<u64, u64>,
}

impl KvStore {
    /// Applies a command; returns whether it took effect (always true for a put).
    pub fn apply(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Put { key, value } => {
                self.values.insert(key, value);
                true
            }
            Command::Cas { key, expected, new } => {
                if self.values.get(&key).copied() == expected {
                    self.values.insert(key, new);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.values.get(&key).copied()
    }

    /// The whole store as bytes (a snapshot): pairs in ascending key order, so equal stores
    /// encode equally.
    pub fn encode(&self) -> Bytes {
        let mut pairs: Vec<(u64, u64)> = self.values.iter().map(|(k, v)| (*k, *v)).collect();
        pairs.sort_unstable();
        let mut b = BytesMut::with_capacity(pairs.len() * 16);
        for (key, value) in pairs {
            b.put_u64(key);
            b.put_u64(value);
        }
        b.freeze()
    }

    /// Reads bytes written by [`KvStore::encode`]; `None` if they are not such bytes.
    pub fn decode(data: &[u8]) -> Option<KvStore> {
        if !data.len().is_multiple_of(16) {
            return None;
        }
        let values = data
            .chunks_exact(16)
            .map(|pair| {
                let (key, value) = pair.split_at(8);
                Some((
                    u64::from_be_bytes(key.try_into().ok()?),
                    u64::from_be_bytes(value.try_into().ok()?),
                ))
            })
            .collect::<Option<HashMap<u64, u64>>>()?;
        Some(KvStore { values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_rejected() {
        for cmd in [
            Command::Put { key: 3, value: 9 },
            Command::Cas {
                key: 1,
                expected: None,
                new: 2,
            },
            Command::Cas {
                key: 1,
                expected: Some(7),
                new: 2,
            },
        ] {
            assert_eq!(Command::decode(&cmd.encode()), Some(cmd));
        }
        assert_eq!(Command::decode(b""), None);
        assert_eq!(Command::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn snapshots_round_trip_and_garbage_is_rejected() {
        let mut kv = KvStore::default();
        assert_eq!(KvStore::decode(&kv.encode()), Some(kv.clone()));
        kv.apply(Command::Put { key: 9, value: 1 });
        kv.apply(Command::Put { key: 2, value: 7 });
        assert_eq!(KvStore::decode(&kv.encode()), Some(kv.clone()));
        assert_eq!(KvStore::decode(&[0; 15]), None);
    }

    #[test]
    fn cas_swaps_only_on_the_expected_value() {
        let mut kv = KvStore::default();
        assert!(kv.apply(Command::Cas {
            key: 1,
            expected: None,
            new: 5
        }));
        assert!(!kv.apply(Command::Cas {
            key: 1,
            expected: Some(4),
            new: 6
        }));
        assert_eq!(kv.get(1), Some(5));
    }
}
