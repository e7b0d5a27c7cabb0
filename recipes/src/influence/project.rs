//! Optional random projection of flat gradients (Johnson–Lindenstrauss): `y = Rᵀx` with
//! `R ∈ {±1/√d}^{P×d}`, so `E⟨Rᵀx, Rᵀy⟩ = ⟨x, y⟩` and dot products keep their expectation
//! with a relative spread of about `√(2/d)`.
//!
//! `R` is never stored: rows `[c·B, (c+1)·B)` (block `c`, `B` = [`BLOCK`]) are regenerated from
//! `SplitMix64::derived(seed, PROJECTION_STREAM, c)`, one sign per bit, so a projection is a
//! pure function of `(seed, d)` and costs `O(P·d)` per vector.

use crate::rng::SplitMix64;
use anyhow::anyhow;
use tch::{Kind, Tensor};

/// Rows of `R` generated at a time.
pub const BLOCK: usize = 4096;
const PROJECTION_STREAM: u64 = 0x9A0;

/// Projects flat f64 vectors of length `P` to `d` dimensions.
#[derive(Clone, Copy, Debug)]
pub struct Projector {
    pub dim: usize,
    pub seed: u64,
}

impl Projector {
    fn block(&self, c: usize, rows: usize) -> Vec<f64> {
        let mut g = SplitMix64::derived(self.seed, PROJECTION_STREAM, c as u64);
        let v = 1.0 / (self.dim as f64).sqrt();
        let mut out = Vec::with_capacity(rows * self.dim);
        let mut bits = 0u64;
        for i in 0..rows * self.dim {
            if i % 64 == 0 {
                bits = g.next_u64();
            }
            out.push(if (bits >> (i % 64)) & 1 == 1 { v } else { -v });
        }
        out
    }

    /// `Rᵀx` for a flat f64 vector `x`.
    pub fn apply(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        if self.dim == 0 {
            return Err(anyhow!("projection dimension 0"));
        }
        let p = x.numel();
        let mut y = Tensor::f_zeros([self.dim as i64], (Kind::Double, x.device()))?;
        let mut c = 0;
        while c * BLOCK < p {
            let rows = BLOCK.min(p - c * BLOCK);
            let r = Tensor::from_slice(&self.block(c, rows))
                .f_view([rows as i64, self.dim as i64])?
                .f_to_device(x.device())?;
            let xs = x.f_narrow(0, (c * BLOCK) as i64, rows as i64)?;
            y = y.f_add(&xs.f_unsqueeze(0)?.f_matmul(&r)?.f_squeeze_dim(0)?)?;
            c += 1;
        }
        Ok(y)
    }
}
