//! The upstream-duration histogram, recorded by every worker without a lock.
//!
//! `prometheus_client`'s histogram takes a write lock per observation, one
//! lock for all workers. Here each worker thread records into its own shard
//! (a cache-line-aligned block of atomic counters; threads past
//! [`SHARDS`] share one round robin), and a scrape adds the shards up. The
//! count is the sum of the buckets, so a scrape never shows a count that
//! disagrees with its `+Inf` bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds: 100 µs doubling to about 52 s, then `+Inf`.
const BOUNDS: usize = 20;
const FIRST_BOUND: f64 = 0.000_1;

/// Shards per histogram; at least the worker count of most machines.
const SHARDS: usize = 16;

/// One thread's counters: per bucket, and the sum in nanoseconds.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard {
    buckets: [AtomicU64; BOUNDS + 1],
    sum_nanos: AtomicU64,
}

/// A latency histogram in seconds (cloning shares it).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    shards: Arc<[Shard; SHARDS]>,
}

/// The bucket's upper bound, `f64::MAX` standing for `+Inf`.
fn bound(i: usize) -> f64 {
    if i < BOUNDS {
        FIRST_BOUND * f64::from(1u32 << i)
    } else {
        f64::MAX
    }
}

/// This thread's shard number, handed out round robin on first use.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Histogram {
    /// Records one duration in seconds.
    #[inline]
    pub fn observe(&self, seconds: f64) {
        let bucket = (0..BOUNDS).find(|&i| seconds <= bound(i)).unwrap_or(BOUNDS);
        let shard = &self.shards[shard_index()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating float-to-int: a negative or NaN duration adds 0.
        let nanos = (seconds * 1e9) as u64;
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and per-bucket counts with their bounds.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = (0..=BOUNDS).map(|i| (bound(i), 0)).collect();
        let mut nanos = 0u64;
        for shard in self.shards.iter() {
            for (total, b) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += b.load(Ordering::Relaxed);
            }
            nanos = nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (nanos as f64 / 1e9, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn text(h: &Histogram) -> String {
        let mut registry = Registry::default();
        registry.register("d", "durations", h.clone());
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn buckets_are_cumulative_and_the_count_is_the_inf_bucket() {
        let h = Histogram::default();
        for s in [0.000_05, 0.000_1, 0.000_3, 0.01, 100.0] {
            h.observe(s);
        }
        let out = text(&h);
        for line in [
            "d_bucket{le=\"0.0001\"} 2",
            "d_bucket{le=\"0.0004\"} 3",
            "d_bucket{le=\"0.0128\"} 4",
            "d_bucket{le=\"52.4288\"} 4",
            "d_bucket{le=\"+Inf\"} 5",
            "d_count 5",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("d_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 100.01045).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn observations_from_many_threads_all_count() {
        let h = Histogram::default();
        std::thread::scope(|s| {
            for _ in 0..2 * SHARDS {
                s.spawn(|| (0..1000).for_each(|_| h.observe(0.001)));
            }
        });
        let (sum, count, buckets) = h.totals();
        assert_eq!(count, 2 * SHARDS as u64 * 1000);
        assert_eq!(buckets[4].1, count, "0.001 s falls under the 1.6 ms bound");
        assert!((sum - count as f64 * 0.001).abs() < 1e-6);
    }
}
