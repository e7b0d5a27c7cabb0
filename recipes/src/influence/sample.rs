//! Which records a `reweight` node measures: a uniform sample without replacement, and its
//! split into two halves for the uncertainty estimate.
//!
//! The sample of a source of `n` records is the first `min(m, n)` entries of a SplitMix64
//! permutation of `0..n` seeded by `(seed, stream)` — a function of the seed and the size only,
//! never of the domain's name or position, so permuting domains permutes results and two
//! identical domains get identical samples. Half A is the first `⌈m/2⌉` sampled records,
//! half B the rest.

use crate::rng::SplitMix64;

/// Stream of the domain samples.
pub const DOMAIN_STREAM: u64 = 0x00D0;
/// Stream of the target samples.
pub const TARGET_STREAM: u64 = 0x7A6E;

/// Indices of the sample (module docs), in sample order.
pub fn indices(n: usize, m: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut g = SplitMix64::derived(seed, stream, n as u64);
    let mut p = g.permutation(n);
    p.truncate(m.min(n));
    p.into_iter().map(|i| i as usize).collect()
}

/// Length of half A of a sample of `m` records: `⌈m/2⌉`.
pub fn half(m: usize) -> usize {
    m.div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sample_is_a_prefix_of_one_permutation() {
        let a = indices(100, 10, 3, DOMAIN_STREAM);
        let b = indices(100, 20, 3, DOMAIN_STREAM);
        assert_eq!(a[..], b[..10]);
        let mut all = indices(5, 64, 3, DOMAIN_STREAM);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert_ne!(indices(100, 10, 4, DOMAIN_STREAM), a);
    }
}
