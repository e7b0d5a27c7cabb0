//! The streaming merge alone, for `bench/merge_bench.sh` (ignored in normal runs): merges the
//! model directories `MERGE_BENCH_A` and `MERGE_BENCH_B` with slerp t=0.5 into
//! `MERGE_BENCH_OUT`, so `/usr/bin/time -v` measures the driver without the store's hashing.

use recipes::merge::driver::{self, Input, Job, ParamSet};
use recipes::merge::params::ParamValue;

#[test]
#[ignore = "benchmark: run by bench/merge_bench.sh"]
fn stream() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let (a, b, out) = (
        var("MERGE_BENCH_A"),
        var("MERGE_BENCH_B"),
        var("MERGE_BENCH_OUT"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let mut params = ParamSet::default();
    params.global.insert("t".into(), ParamValue::Scalar(0.5));
    let job = Job {
        method: recipes::merge::method("slerp").unwrap(),
        base: Some(Input {
            name: "a".into(),
            dir: a.into(),
        }),
        models: vec![Input {
            name: "b".into(),
            dir: b.into(),
        }],
        params,
        normalize: None,
        seed: 0,
        dtype: None,
        tokenizer_from: None,
        missing_from_base: false,
        max_shard_bytes: 2_000_000_000,
        f64: false,
    };
    let t = std::time::Instant::now();
    let s = driver::run(&job, std::path::Path::new(&out), &mut |_, _| Ok(())).unwrap();
    eprintln!(
        "merged {} tensors, {} bytes in {:.2} s",
        s["tensors"],
        s["bytes"],
        t.elapsed().as_secs_f64()
    );
}
