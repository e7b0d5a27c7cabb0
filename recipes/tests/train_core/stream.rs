//! The mixture stream: deterministic, resumable, caps and budget honoured.

use recipes::batching::stream::{Budget, Draw, MixtureStream, StreamSource, StreamState};
use recipes::rng::SplitMix64;

fn sources() -> Vec<StreamSource> {
    vec![
        StreamSource {
            name: "web".into(),
            weight: 0.6,
            max_epochs: None,
            lengths: (0..50).map(|i| 10 + i % 7).collect(),
        },
        StreamSource {
            name: "med".into(),
            weight: 0.3,
            max_epochs: Some(2.0),
            lengths: vec![20; 8],
        },
        StreamSource {
            name: "code".into(),
            weight: 0.1,
            max_epochs: Some(0.5),
            lengths: vec![5; 10],
        },
    ]
}

fn all(s: MixtureStream) -> Vec<Draw> {
    s.collect()
}

#[test]
fn same_inputs_same_stream_and_seed_matters() {
    let a = all(MixtureStream::new(sources(), Budget::Examples(200), 7).unwrap());
    let b = all(MixtureStream::new(sources(), Budget::Examples(200), 7).unwrap());
    let c = all(MixtureStream::new(sources(), Budget::Examples(200), 8).unwrap());
    assert_eq!(a.len(), 200);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// Stream N, save the state (through JSON), restore, continue == uninterrupted — across
/// epoch boundaries and after a source dropped out.
#[test]
fn resume_continues_exactly() {
    let full = all(MixtureStream::new(sources(), Budget::Tokens(3000), 11).unwrap());
    for cut in [0usize, 1, 17, 60, 150, full.len()] {
        let mut s = MixtureStream::new(sources(), Budget::Tokens(3000), 11).unwrap();
        let head: Vec<Draw> = s.by_ref().take(cut).collect();
        let saved = serde_json::to_string(s.state()).unwrap();
        let state: StreamState = serde_json::from_str(&saved).unwrap();
        let rest = all(MixtureStream::resume(sources(), Budget::Tokens(3000), state).unwrap());
        let joined: Vec<Draw> = head.into_iter().chain(rest).collect();
        assert_eq!(joined, full, "cut at {cut}");
    }
    // A state for other sources is refused.
    let mut other = sources();
    other[1].name = "legal".into();
    let s = MixtureStream::new(sources(), Budget::Tokens(3000), 11).unwrap();
    assert!(MixtureStream::resume(other, Budget::Tokens(3000), s.state().clone()).is_err());
}

#[test]
fn caps_epochs_and_budget() {
    let draws = all(MixtureStream::new(sources(), Budget::Tokens(3000), 3).unwrap());
    let src = sources();
    let tokens: u64 = draws.iter().map(|d| src[d.source].lengths[d.record]).sum();
    let last = src[draws.last().unwrap().source].lengths[draws.last().unwrap().record];
    assert!(
        tokens >= 3000 && tokens - last < 3000,
        "ends at the first position past the budget"
    );
    let count = |i| draws.iter().filter(|d| d.source == i).count();
    assert_eq!(count(1), 16, "med: 2 epochs of 8 records");
    assert_eq!(count(2), 5, "code: half an epoch of 10");
    // Each epoch of a source is a permutation of its records.
    let med: Vec<&Draw> = draws.iter().filter(|d| d.source == 1).collect();
    for e in 0..2 {
        let mut recs: Vec<usize> = med
            .iter()
            .filter(|d| d.epoch == e)
            .map(|d| d.record)
            .collect();
        assert_eq!(recs.len(), 8);
        recs.sort();
        assert_eq!(recs, (0..8).collect::<Vec<_>>());
    }
    let e0: Vec<usize> = med
        .iter()
        .filter(|d| d.epoch == 0)
        .map(|d| d.record)
        .collect();
    let e1: Vec<usize> = med
        .iter()
        .filter(|d| d.epoch == 1)
        .map(|d| d.record)
        .collect();
    assert_ne!(e0, e1, "a new permutation per epoch");

    // Exhaust: every source once (unset cap = 1 epoch), then the stream ends.
    let ex = all(MixtureStream::new(sources(), Budget::Exhaust, 3).unwrap());
    assert_eq!(ex.len(), 50 + 16 + 5);
}

#[test]
fn proportions_follow_weights_and_renormalise() {
    let src = vec![
        StreamSource {
            name: "a".into(),
            weight: 3.0,
            max_epochs: None,
            lengths: vec![1; 100],
        },
        StreamSource {
            name: "b".into(),
            weight: 1.0,
            max_epochs: None,
            lengths: vec![1; 100],
        },
        StreamSource {
            name: "z".into(),
            weight: 0.0,
            max_epochs: None,
            lengths: vec![1; 100],
        },
    ];
    let s = MixtureStream::new(src.clone(), Budget::Examples(20_000), 5).unwrap();
    assert_eq!(s.probabilities(), vec![0.75, 0.25, 0.0]);
    let draws = all(s);
    let a = draws.iter().filter(|d| d.source == 0).count() as f64 / draws.len() as f64;
    assert!((a - 0.75).abs() < 0.015, "{a}");
    assert!(draws.iter().all(|d| d.source != 2));

    // Once `a` is capped, only `b` is drawn.
    let mut capped = src.clone();
    capped[0].max_epochs = Some(0.1);
    let mut s = MixtureStream::new(capped, Budget::Examples(100), 5).unwrap();
    let head: Vec<Draw> = s.by_ref().take(60).collect();
    assert_eq!(head.iter().filter(|d| d.source == 0).count(), 10);
    assert_eq!(s.probabilities(), vec![0.0, 1.0, 0.0]);
    assert!(s.all(|d| d.source == 1));
}

#[test]
fn splitmix_reference_values_and_permutations() {
    // Reference outputs of SplitMix64 seeded with 1234567 (from the algorithm's published test vector).
    let mut g = SplitMix64::new(1234567);
    let got: Vec<u64> = (0..3).map(|_| g.next_u64()).collect();
    assert_eq!(
        got,
        vec![
            6457827717110365317,
            3203168211198807973,
            9817491932198370423
        ]
    );
    let p = SplitMix64::new(9).permutation(100);
    let mut s = p.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<u32>>());
    assert_ne!(p, s);
    let mut g = SplitMix64::new(1);
    assert!((0..1000).map(|_| g.below(7)).all(|x| x < 7));
}
