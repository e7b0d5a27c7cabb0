//! Data parallelism's reductions (`recipes::dist`) against a stand-in collective: two ranks
//! holding the same gradients, so every sum is exactly twice the local value. (Real ranks over
//! MPI are tested end to end: `tests/tests/ranks.rs`.)

use recipes::dist::{all_reduce_grads_in, any, Collective, Solo};
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// Rank 0 of two whose twin holds the same values; counts the calls.
struct Twin {
    calls: Mutex<Vec<usize>>,
}

impl Collective for Twin {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        self.calls.lock().unwrap().push(buf.len());
        buf.iter_mut().for_each(|x| *x += *x);
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> anyhow::Result<()> {
        buf.iter_mut().for_each(|x| *x += *x);
        Ok(())
    }
}

/// A parameter of `shape` and `kind` with gradient 1, 2, 3, … (in its dtype).
fn param(shape: &[i64], kind: Kind, offset: f64) -> Tensor {
    let p = Tensor::zeros(shape, (kind, tch::Device::Cpu)).set_requires_grad(true);
    let n: i64 = shape.iter().product();
    let w = Tensor::arange(n, (Kind::Float, tch::Device::Cpu))
        .to_kind(kind)
        .reshape(shape)
        + offset;
    (&p * &w).sum(kind).backward();
    p
}

#[test]
fn gradients_are_summed_in_buckets_in_place_keeping_their_dtype() {
    let params = vec![
        param(&[3], Kind::Float, 1.0),
        param(&[2, 4], Kind::Float, 10.0), // bigger than a bucket: goes alone
        param(&[2], Kind::BFloat16, 0.5),
        Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)), // no gradient: skipped
        param(&[1], Kind::Float, -3.0),
    ];
    let before: Vec<Tensor> = params
        .iter()
        .filter(|p| p.grad().defined())
        .map(|p| p.grad().copy())
        .collect();
    let twin = Twin {
        calls: Mutex::new(Vec::new()),
    };
    all_reduce_grads_in(&twin, &params, 5).unwrap();
    // [3] alone (3 + 8 > 5), [2,4] alone, then [2] + [1] together.
    assert_eq!(*twin.calls.lock().unwrap(), vec![3, 8, 3]);
    let after: Vec<Tensor> = params
        .iter()
        .filter(|p| p.grad().defined())
        .map(|p| p.grad())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.kind(), b.kind());
        assert_eq!(a.size(), b.size());
        assert!(a.equal(&(b * 2)), "{a} vs 2 × {b}");
    }
}

#[test]
fn one_rank_changes_nothing_and_flags_are_agreed() {
    let p = param(&[3], Kind::Float, 1.0);
    let g = p.grad().copy();
    all_reduce_grads_in(&Solo, std::slice::from_ref(&p), 5).unwrap();
    assert!(p.grad().equal(&g));
    assert!(any(&Solo, true).unwrap());
    assert!(!any(&Solo, false).unwrap());
    let twin = Twin {
        calls: Mutex::new(Vec::new()),
    };
    assert!(any(&twin, true).unwrap());
    assert!(!any(&twin, false).unwrap());
}
