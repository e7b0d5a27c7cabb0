//! The sharded state's plan (`recipes::trainer::shard::Plan`) on two in-process ranks (threads
//! summing through shared memory), with rounds of a few floats so that tensors straddle them:
//! owners balance the elements, the all-gather gives every rank the owners' values (of all the
//! tensors, and of a subset: one block's), and the reduce-scatter gives each owner the sum of the
//! ranks' gradients.

use recipes::dist::Collective;
use recipes::trainer::shard::{Mode, Plan};
use std::sync::{Arc, Barrier, Mutex};
use tch::{Kind, Tensor};

/// Ranks as threads: an all-reduce deposits each rank's buffer and sums them in rank order.
struct Threads {
    rank: usize,
    world: usize,
    slots: Arc<Mutex<Vec<Vec<f32>>>>,
    barrier: Arc<Barrier>,
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        self.slots.lock().unwrap()[self.rank] = buf.to_vec();
        self.barrier.wait();
        {
            let slots = self.slots.lock().unwrap();
            for (i, x) in buf.iter_mut().enumerate() {
                *x = slots.iter().map(|s| s[i]).fold(-0.0, |a, b| a + b);
            }
        }
        self.barrier.wait();
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> anyhow::Result<()> {
        unimplemented!("not used by the plan")
    }
}

const SHAPES: [&[i64]; 5] = [&[7, 3], &[5], &[4, 4], &[11], &[2, 3, 2]];

/// Rank `r`'s tensors: values that differ per rank, gradients `g[r][i]` (also per rank).
fn tensors(r: usize) -> Vec<Tensor> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: i64 = s.iter().product();
            let v = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * (r as f64 + 1.0)
                + i as f64 * 100.0;
            let t = v.view(*s).set_requires_grad(true);
            (&t * grad_of(r, i, s)).sum(Kind::Float).backward();
            t
        })
        .collect()
}

fn grad_of(r: usize, i: usize, s: &[i64]) -> Tensor {
    let n: i64 = s.iter().product();
    (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.5 + (r * 10 + i) as f64).view(s)
}

#[test]
fn a_plan_gathers_weights_and_reduce_scatters_gradients_across_rounds() {
    let world = 2;
    let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
    let barrier = Arc::new(Barrier::new(world));
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let (slots, barrier) = (slots.clone(), barrier.clone());
            std::thread::spawn(move || {
                let c = Arc::new(Threads {
                    rank,
                    world,
                    slots,
                    barrier,
                });
                let ts = tensors(rank);
                let numel: Vec<usize> = ts.iter().map(|t| t.numel()).collect();
                let plan = Plan::new(Mode::Gradients, numel, c).with_bucket(4);
                let grads: Vec<Tensor> = ts.iter().map(Tensor::grad).collect();
                let all: Vec<usize> = (0..SHAPES.len()).collect();
                let sums = plan.reduce(&grads, &all).unwrap();
                let mine: Vec<usize> = all.iter().copied().filter(|&i| plan.owns(i)).collect();
                assert_eq!(sums.iter().map(|(i, _)| *i).collect::<Vec<_>>(), mine);
                for (i, sum) in &sums {
                    let want = grad_of(0, *i, SHAPES[*i]) + grad_of(1, *i, SHAPES[*i]);
                    assert!(sum.equal(&want), "rank {rank}: summed gradient {i}");
                }
                // A subset (tensors 1 and 3, one of each rank's): only those move.
                let before: Vec<Tensor> = ts.iter().map(|t| t.detach().copy()).collect();
                plan.gather_some(&ts, &[1, 3]).unwrap();
                for (i, t) in ts.iter().enumerate() {
                    if ![1, 3].contains(&i) {
                        assert!(t.detach().equal(&before[i]), "rank {rank}: {i} untouched");
                    }
                }
                plan.gather(&ts).unwrap();
                let values: Vec<Vec<f32>> = ts
                    .iter()
                    .map(|t| Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap())
                    .collect();
                (plan.owner.clone(), values)
            })
        })
        .collect();
    let out: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let owner = &out[0].0;
    assert_eq!(owner, &out[1].0, "both ranks agree on the owners");
    // 65 elements, the largest tensor first to the lighter rank: 21 → 0, 16 → 1, 12 → 1,
    // 11 → 0, 5 → 1.
    let load = |r: usize| -> usize {
        (0..SHAPES.len())
            .filter(|&i| owner[i] == r)
            .map(|i| SHAPES[i].iter().product::<i64>() as usize)
            .sum()
    };
    assert_eq!((load(0), load(1)), (32, 33));
    // After the gather every rank holds the owner's values.
    for i in 0..SHAPES.len() {
        let want = &out[owner[i]].1[i];
        assert_eq!(&out[0].1[i], want, "tensor {i} on rank 0");
        assert_eq!(&out[1].1[i], want, "tensor {i} on rank 1");
    }
}
