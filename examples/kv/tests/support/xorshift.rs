//! A small deterministic generator (xorshift64) for tests and benchmarks: the same sequence
//! in every build, so a failing test names its seed and two builds being compared get the
//! same work. Included by path (`#[path]`) by the unit tests, the integration tests and the
//! benchmarks, which are separate crates and cannot share a `#[cfg(test)]` item.

/// xorshift64 over its state (a state of 0 stays 0).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (not 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
