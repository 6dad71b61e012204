//! Latency percentiles from raw samples (pure, unit-tested).

/// Latency summary of one run, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    /// Number of samples.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50: u32,
    /// 99th percentile.
    pub(crate) p99: u32,
    /// 99.9th percentile.
    pub(crate) p999: u32,
    /// Largest sample.
    pub(crate) max: u32,
    /// Arithmetic mean.
    pub(crate) mean: f64,
}

/// The nearest-rank percentile `p` (0 < p <= 1) of `sorted` (ascending): the smallest sample
/// such that at least `p` of all samples are at or below it. 0 for no samples.
pub(crate) fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `samples` and summarizes them.
pub(crate) fn summarize(samples: &mut [u32]) -> Summary {
    samples.sort_unstable();
    let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
    Summary {
        count: samples.len(),
        p50: percentile(samples, 0.50),
        p99: percentile(samples, 0.99),
        p999: percentile(samples, 0.999),
        max: samples.last().copied().unwrap_or(0),
        mean: if samples.is_empty() {
            0.0
        } else {
            sum as f64 / samples.len() as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&s, 0.5), 500);
        assert_eq!(percentile(&s, 0.99), 990);
        assert_eq!(percentile(&s, 0.999), 999);
        assert_eq!(percentile(&s, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
        // Two samples: the median is the lower one, p99 the upper one.
        assert_eq!(percentile(&[1, 9], 0.5), 1);
        assert_eq!(percentile(&[1, 9], 0.99), 9);
    }

    #[test]
    fn summary_sorts_first() {
        let mut s = vec![5, 1, 4, 2, 3];
        let sum = summarize(&mut s);
        assert_eq!(s, vec![1, 2, 3, 4, 5]);
        assert_eq!((sum.count, sum.p50, sum.p99, sum.max), (5, 3, 5, 5));
        assert!((sum.mean - 3.0).abs() < 1e-9);
        let empty = summarize(&mut []);
        assert_eq!((empty.count, empty.p50, empty.max), (0, 0, 0));
    }
}
