//! The token index as it is (a hash table inside the `ArcSwap`ped snapshot,
//! read without a lock) against a `DashMap` of the same keys (a shard
//! `RwLock` taken on every read), at 10,000 and 1,000,000 tokens, on one
//! thread and on two threads at once. Both hash the digest by its first
//! eight bytes, so the difference is the lock, not the hash function. The key
//! is already a SHA-256; hashing the presented token is benchmarked in
//! `policy`.
//!
//! `cargo bench --bench index -- --quick`

use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dashmap::DashMap;
use http::HeaderValue;

use tollgate::tokens::{Scope, TokenHash, TokenId, TokenIndex, TokenRecord};

/// Hashes a digest by its first eight bytes, as the index does.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_ne_bytes(first);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type Dash = DashMap<TokenHash, HeaderValue, BuildHasherDefault<DigestHasher>>;

/// How many distinct present keys the lookups cycle through.
const PROBES: usize = 4096;

fn hashes(n: usize) -> Vec<TokenHash> {
    (0..n)
        .map(|i| TokenHash::of(format!("secret-{i}").as_bytes()))
        .collect()
}

fn snapshot_index(hashes: &[TokenHash]) -> TokenIndex {
    let records = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            TokenRecord::new(
                TokenId::parse(&format!("token-{i}")).unwrap(),
                *h,
                vec![Scope::parse("scope:bench").unwrap()],
            )
        })
        .collect();
    TokenIndex::build(records).unwrap()
}

fn dash_index(hashes: &[TokenHash]) -> Dash {
    let map = Dash::with_capacity_and_hasher(hashes.len(), Default::default());
    for (i, h) in hashes.iter().enumerate() {
        map.insert(*h, HeaderValue::from_str(&format!("token-{i}")).unwrap());
    }
    map
}

/// Present keys spread over the whole map, so large maps miss the cache.
fn probes(hashes: &[TokenHash]) -> Vec<TokenHash> {
    let step = (hashes.len() / PROBES).max(1);
    (0..PROBES)
        .map(|i| hashes[(i * step * 7 + i) % hashes.len()])
        .collect()
}

/// Runs `lookup` `iters` times on this thread and on one more at once;
/// returns the wall time (per iteration: one lookup on each thread).
fn two_threads(
    iters: u64,
    probes: &[TokenHash],
    lookup: &(dyn Fn(&TokenHash) -> bool + Sync),
) -> Duration {
    let run = |offset: usize| {
        let mut found = 0u64;
        for i in 0..iters as usize {
            found += lookup(&probes[(i + offset) % PROBES]) as u64;
        }
        black_box(found)
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        let other = s.spawn(|| run(PROBES / 2));
        run(0);
        other.join().unwrap();
    });
    start.elapsed()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for n in [10_000usize, 1_000_000] {
        let all = hashes(n);
        let keys = probes(&all);
        let snapshot = snapshot_index(&all);
        let dash = dash_index(&all);
        drop(all);
        let label = if n >= 1_000_000 { "1M" } else { "10k" };

        group.bench_function(BenchmarkId::new("snapshot_get", label), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                snapshot.get(black_box(&keys[i])).is_some()
            })
        });
        group.bench_function(BenchmarkId::new("dashmap_get", label), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                dash.get(black_box(&keys[i])).is_some()
            })
        });
        group.bench_function(BenchmarkId::new("snapshot_get_2_threads", label), |b| {
            b.iter_custom(|iters| two_threads(iters, &keys, &|k| snapshot.get(k).is_some()))
        });
        group.bench_function(BenchmarkId::new("dashmap_get_2_threads", label), |b| {
            b.iter_custom(|iters| two_threads(iters, &keys, &|k| dash.get(k).is_some()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = lookups
}
criterion_main!(benches);
