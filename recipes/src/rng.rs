//! A small deterministic PRNG (SplitMix64) for data order, independent of torch's global RNG,
//! so the example stream is a pure function of its seed and position.
//!
//! SplitMix64: `state += 0x9E3779B97F4A7C15; z = state;
//! z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//! return z ^ (z >> 31)` (wrapping arithmetic).

/// SplitMix64 generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for a derived stream: `mix(seed, a, b)` keyed by two integers.
    pub fn derived(seed: u64, a: u64, b: u64) -> Self {
        let mut g = SplitMix64::new(seed ^ 0x5EED_0F7E_4DE8);
        let x = g.next_u64() ^ a.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut g = SplitMix64::new(x);
        let y = g.next_u64() ^ b.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        SplitMix64::new(y)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates, from the back).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}
