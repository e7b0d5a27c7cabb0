//! The data source the preference kinds train on: a seeded order over items ([`Order`]),
//! metrics averaged over a logging window ([`Window`]), and the pairs of a `ref-logps` node
//! with their loss ([`PrefData`], the `dpo` kind's [`Objective`]).
//!
//! Order: epoch `e` visits the items in `SplitMix64::derived(seed, stream, e).permutation(n)`;
//! a run consumes a prefix of that endless sequence, `batch · accum` items per step, so the
//! position is one counter (saved in checkpoints).
//!
//! Per micro-batch, chosen and rejected of its pairs go through one forward pass; the loss is
//! [`super::pair_loss`] summed over the pairs (the trainer divides by the pairs of the step).
//! Window metrics, means over the pairs since the last metrics line: `rewards/chosen`,
//! `rewards/rejected`, `rewards/margins`, `rewards/accuracies` (strict `ρc > ρr`),
//! `logps/chosen`, `logps/rejected` (sums over completion tokens), `nll` when used.

use super::logps::{seq_logps, SeqLogps};
use super::stored::StoredRec;
use super::{pair_loss, LossConfig, PairInputs, PairOut};
use crate::arch::HfModel;
use crate::batching::examples::Example;
use crate::rng::SplitMix64;
use crate::trainer::{LossOut, Objective};
use anyhow::Context;
use serde_json::{json, Value as J};
use tch::{Kind, Tensor};

/// A seeded order over `n` items, one permutation per epoch.
pub struct Order {
    seed: u64,
    stream: u64,
    n: u64,
    perm: Option<(u64, Vec<u32>)>,
}

impl Order {
    pub fn new(seed: u64, stream: u64, n: u64) -> Order {
        Order {
            seed,
            stream,
            n: n.max(1),
            perm: None,
        }
    }
    /// The item at global position `g` (epoch `g / n`).
    pub fn at(&mut self, g: u64) -> usize {
        let (epoch, i) = (g / self.n, (g % self.n) as usize);
        if self.perm.as_ref().map(|p| p.0) != Some(epoch) {
            let p = SplitMix64::derived(self.seed, self.stream, epoch).permutation(self.n as usize);
            self.perm = Some((epoch, p));
        }
        self.perm.as_ref().map_or(i, |p| p.1[i] as usize)
    }
}

/// Sums over the pairs of the logging window, kept on the device as f64 scalars: each
/// micro-batch adds its sums there ([`total`]) and nothing is read back until the window's
/// metrics line ([`Window::take`], one read) or a checkpoint (serialising reads the sums, one
/// read; the saved form is `{"pairs": p, "sums": [[name, value], …]}`). The values equal
/// those of adding each micro-batch's sum, read as f64, on the host in the same order.
#[derive(Debug, Default)]
pub struct Window {
    pub pairs: f64,
    sums: Vec<(String, Tensor)>,
}

/// The saved form of a [`Window`].
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedWindow {
    pairs: f64,
    sums: Vec<(String, f64)>,
}

impl Window {
    /// Adds `x` (an f64 scalar, e.g. from [`total`]) to the sum named `k`.
    pub fn add(&mut self, k: &str, x: Tensor) -> anyhow::Result<()> {
        match self.sums.iter_mut().find(|(n, _)| n == k) {
            Some(s) => s.1 = s.1.f_to_device(x.device())?.f_add(&x)?,
            None => self.sums.push((k.to_string(), x)),
        }
        Ok(())
    }
    /// The sums on the host (one read; none when the window is empty).
    fn read(&self) -> anyhow::Result<Vec<(String, f64)>> {
        if self.sums.is_empty() {
            return Ok(Vec::new());
        }
        let dev = self.sums[0].1.device();
        let all = self
            .sums
            .iter()
            .map(|(_, x)| x.f_to_device(dev)?.f_reshape([1]))
            .collect::<Result<Vec<_>, _>>()?;
        let v = crate::trainer::host::read(&Tensor::f_cat(&all, 0)?)?;
        Ok(self.sums.iter().map(|(k, _)| k.clone()).zip(v).collect())
    }
    /// Means per pair; resets the window.
    pub fn take(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        let n = self.pairs.max(1.0);
        let out = self.read()?.into_iter().map(|(k, x)| (k, x / n)).collect();
        *self = Window::default();
        Ok(out)
    }
}

impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sums = self.read().map_err(serde::ser::Error::custom)?;
        SavedWindow {
            pairs: self.pairs,
            sums,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = SavedWindow::deserialize(d)?;
        Ok(Window {
            pairs: w.pairs,
            sums: w
                .sums
                .into_iter()
                .map(|(k, x)| (k, Tensor::from(x)))
                .collect(),
        })
    }
}

/// The sum of a `[B]` tensor as an f64 scalar on its device, detached (nothing is read back).
pub fn total(t: &Tensor) -> anyhow::Result<Tensor> {
    Ok(t.f_detach()?.f_sum(Kind::Double)?)
}

/// A pair ready for training.
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
    pub ref_chosen: Option<f64>,
    pub ref_rejected: Option<f64>,
}

impl Pair {
    /// The pairs of stored records (single sequences are left out).
    pub fn from_stored(recs: Vec<StoredRec>) -> Vec<Pair> {
        recs.into_iter()
            .filter_map(|r| match r {
                StoredRec::Pair {
                    chosen,
                    rejected,
                    ref_chosen,
                    ref_rejected,
                    ..
                } => Some(Pair {
                    chosen: chosen.to_example(),
                    rejected: rejected.to_example(),
                    ref_chosen,
                    ref_rejected,
                }),
                StoredRec::Seq { .. } => None,
            })
            .collect()
    }
}

/// The pairs in their seeded order and the loss: the `dpo` kind's objective.
pub struct PrefData {
    pub pairs: Vec<Pair>,
    pub order: Order,
    /// Pairs consumed (across epochs).
    pub cursor: u64,
    /// Pairs the run consumes in total.
    pub limit: u64,
    pub batch: usize,
    pub accum: usize,
    pub pad: i64,
    pub cfg: LossConfig,
    pub window: Window,
}

/// The policy's log-probs of a micro-batch's pairs: sums and completion lengths (≥ 1).
struct PairLogps {
    chosen: Tensor,
    rejected: Tensor,
    len_chosen: Tensor,
    len_rejected: Tensor,
    /// Every row's log-probs, which carry the loss's gradient to the model.
    all: SeqLogps,
}

impl PrefData {
    /// One forward over chosen (rows `0..k`) and rejected (rows `k..2k`).
    fn logps(&self, model: &HfModel, ps: &[&Pair]) -> anyhow::Result<PairLogps> {
        let seqs: Vec<&Example> = ps
            .iter()
            .map(|p| &p.chosen)
            .chain(ps.iter().map(|p| &p.rejected))
            .collect();
        let lp = seq_logps(model, &seqs, self.pad)?;
        let k = ps.len() as i64;
        Ok(PairLogps {
            chosen: lp.sum.narrow(0, 0, k),
            rejected: lp.sum.narrow(0, k, k),
            len_chosen: lp.len.narrow(0, 0, k).clamp_min(1.0),
            len_rejected: lp.len.narrow(0, k, k).clamp_min(1.0),
            all: lp,
        })
    }

    /// Adds a micro-batch's metrics to the window.
    fn record(&mut self, k: usize, lp: &PairLogps, out: &PairOut) -> anyhow::Result<()> {
        let w = &mut self.window;
        w.pairs += k as f64;
        w.add("rewards/chosen", total(&out.reward_chosen)?)?;
        w.add("rewards/rejected", total(&out.reward_rejected)?)?;
        w.add(
            "rewards/margins",
            total(&(&out.reward_chosen - &out.reward_rejected))?,
        )?;
        let won = out.reward_chosen.gt_tensor(&out.reward_rejected);
        w.add("rewards/accuracies", total(&won.to_kind(Kind::Float))?)?;
        w.add("logps/chosen", total(&lp.chosen)?)?;
        w.add("logps/rejected", total(&lp.rejected)?)?;
        if let Some(nll) = &out.nll {
            w.add("nll", total(nll)?)?;
        }
        Ok(())
    }
}

/// The stored reference log-probs of `ps` on `dev`, when every pair has them.
fn refs(ps: &[&Pair], dev: tch::Device, f: impl Fn(&Pair) -> Option<f64>) -> Option<Tensor> {
    let v: Option<Vec<f32>> = ps.iter().map(|p| f(p).map(|x| x as f32)).collect();
    v.map(|v| Tensor::from_slice(&v).to_device(dev))
}

impl Objective for PrefData {
    type Batch = Vec<usize>;

    fn micro_batches(&mut self, _step: u64) -> anyhow::Result<Option<Vec<Vec<usize>>>> {
        let end = (self.cursor + (self.batch * self.accum) as u64).min(self.limit);
        if end <= self.cursor {
            return Ok(None);
        }
        let idx: Vec<usize> = (self.cursor..end).map(|g| self.order.at(g)).collect();
        self.cursor = end;
        Ok(Some(idx.chunks(self.batch).map(|c| c.to_vec()).collect()))
    }
    fn n_targets(&self, b: &Vec<usize>) -> usize {
        b.len()
    }
    fn n_tokens(&self, b: &Vec<usize>) -> usize {
        b.iter()
            .map(|&i| self.pairs[i].chosen.len() + self.pairs[i].rejected.len())
            .sum()
    }
    fn loss(&mut self, model: &HfModel, b: &Vec<usize>) -> anyhow::Result<LossOut> {
        let ps: Vec<&Pair> = b.iter().map(|&i| &self.pairs[i]).collect();
        let lp = self.logps(model, &ps)?;
        let dev = lp.chosen.device();
        let (rc, rr) = (
            refs(&ps, dev, |p| p.ref_chosen),
            refs(&ps, dev, |p| p.ref_rejected),
        );
        let out = pair_loss(
            &self.cfg,
            &PairInputs {
                chosen: &lp.chosen,
                rejected: &lp.rejected,
                ref_chosen: rc.as_ref(),
                ref_rejected: rr.as_ref(),
                len_chosen: &lp.len_chosen,
                len_rejected: &lp.len_rejected,
            },
        )?;
        self.record(ps.len(), &lp, &out)?;
        Ok(LossOut {
            sum: lp.all.attach(&out.loss.sum(Kind::Float))?,
            extra: Vec::new(),
        })
    }
    fn state(&self) -> J {
        json!({"pairs_consumed": self.cursor, "window": self.window})
    }
    fn restore(&mut self, s: &J) -> anyhow::Result<()> {
        self.cursor = s
            .get("pairs_consumed")
            .and_then(J::as_u64)
            .context("no `pairs_consumed` in the data position")?;
        if let Some(w) = s.get("window") {
            self.window = serde_json::from_value(w.clone()).context("the metrics window")?;
        }
        Ok(())
    }
    fn epoch(&self) -> f64 {
        self.cursor as f64 / self.pairs.len().max(1) as f64
    }
    fn window_metrics(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        self.window.take()
    }
}
