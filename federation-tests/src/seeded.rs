//! What the seeded harnesses (`txn_fuzz`, `split_runs`) share: a small deterministic
//! generator, so a seed replays a run, their command-line numbers, and the process's CPU
//! time.

use std::time::Duration;

/// xorshift64*: deterministic for a seed, good enough to pick mutations and steps.
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed` (any seed, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The number after `name` among the process's arguments (`--runs 20`), if any.
pub fn number_arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// The CPU time of the whole process so far (user + system, from `/proc/self/stat`, in
/// clock ticks of 10 ms).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which ends with the last ')'): utime and stime
    // are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Whether the harness runs as a benchmark (`cargo bench`), not as a short test run.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_below_stays_below() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let n = a.below(13);
            assert_eq!(n, b.below(13));
            assert!(n < 13);
        }
        assert_eq!(Rng::new(0).below(0), 0);
    }
}
