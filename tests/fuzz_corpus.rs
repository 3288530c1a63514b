//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) and any
//! regression inputs (`fuzz/regressions/<target>/`) through the same oracles
//! the fuzz targets run, so CI checks every seed without a nightly
//! toolchain or libFuzzer; then runs a short deterministic mutation loop
//! over the seeds (`TOLLGATE_FUZZ_ITERATIONS` per target, default 3000),
//! which also serves as a stand-in for cargo-fuzz where none is installed.

#[path = "../fuzz/oracles.rs"]
mod oracles;

use std::path::Path;

/// The seeds of `target`: every file under `fuzz/corpus/<target>` and
/// `fuzz/regressions/<target>`, in name order.
fn seeds(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&file).unwrap();
            out.push((file, data));
        }
    }
    out
}

/// Runs `oracle` over every seed of `target`; returns how many there were.
fn replay(target: &str, oracle: fn(&[u8])) -> usize {
    let seeds = seeds(target);
    for (file, data) in &seeds {
        let outcome = std::panic::catch_unwind(|| oracle(data));
        assert!(outcome.is_ok(), "{} broke the oracle", file.display());
    }
    seeds.len()
}

/// Mutates the seeds of `target` (bit flips, byte changes, deletions,
/// duplications, splices with other seeds and dictionary tokens) and runs
/// `oracle` on each result. Deterministic: a failure names the iteration
/// and prints the input.
fn mutate(target: &str, oracle: fn(&[u8])) -> u64 {
    let seeds: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, d)| d).collect();
    let dict = dictionary(target);
    let iterations: u64 = std::env::var("TOLLGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = 0x853c_49e6_748f_ea9bu64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    for i in 0..iterations {
        let mut data = seeds[next(seeds.len())].clone();
        for _ in 0..=next(4) {
            let len = data.len();
            match next(7) {
                0 if len > 0 => {
                    let at = next(len);
                    data[at] ^= 1 << next(8);
                }
                1 if len > 0 => {
                    let at = next(len);
                    data[at] = next(256) as u8;
                }
                2 if len > 0 => {
                    let at = next(len);
                    let n = next(len - at).min(16) + 1;
                    data.drain(at..(at + n).min(len));
                }
                3 if len > 0 => {
                    let at = next(len);
                    let n = (next(len - at) + 1).min(64);
                    let piece = data[at..at + n].to_vec();
                    let to = next(data.len() + 1);
                    data.splice(to..to, piece);
                }
                4 if !dict.is_empty() => {
                    let token = dict[next(dict.len())].clone();
                    let to = next(len + 1);
                    data.splice(to..to, token);
                }
                5 => {
                    let other = &seeds[next(seeds.len())];
                    let from = next(other.len() + 1);
                    let to = next(len + 1);
                    data.truncate(to);
                    data.extend_from_slice(&other[from..]);
                }
                _ => {
                    let to = next(len + 1);
                    data.insert(to, next(256) as u8);
                }
            }
        }
        data.truncate(64 * 1024);
        let outcome = std::panic::catch_unwind(|| oracle(&data));
        assert!(
            outcome.is_ok(),
            "{target}: mutation {i} broke the oracle: {:?}",
            String::from_utf8_lossy(&data)
        );
    }
    iterations
}

/// The tokens of `fuzz/dict/<target>.dict` (libFuzzer's format: one
/// double-quoted string a line, `\xNN` and `\\` escapes).
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/dict")
        .join(format!("{target}.dict"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix('"'))
        .map(|s| {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match (b[i], b.get(i + 1)) {
                    (b'\\', Some(b'x')) if i + 4 <= b.len() => {
                        let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 4;
                    }
                    (b'\\', Some(&c)) => {
                        out.push(c);
                        i += 2;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            out
        })
        .collect()
}

#[test]
fn every_target_seed_passes_the_target_oracle() {
    assert!(replay("target", oracles::target) >= 30);
}

#[test]
fn every_credential_seed_passes_the_credential_oracle() {
    assert!(replay("credential", oracles::credential) >= 20);
}

#[test]
fn every_config_seed_passes_the_config_oracle() {
    assert!(replay("config", oracles::config) >= 20);
}

#[test]
fn mutated_targets_pass_the_target_oracle() {
    assert!(mutate("target", oracles::target) > 0);
}

#[test]
fn mutated_credentials_pass_the_credential_oracle() {
    assert!(mutate("credential", oracles::credential) > 0);
}

#[test]
fn mutated_configs_pass_the_config_oracle() {
    assert!(mutate("config", oracles::config) > 0);
}
