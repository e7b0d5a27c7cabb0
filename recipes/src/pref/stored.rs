//! The artifact of a `ref-logps` node: tokenised records with the reference model's
//! log-probs, read by every preference stage that uses them (the reference model itself is
//! never loaded by those stages).
//!
//! Layout: `logps.jsonl`, one [`StoredRec`] per kept record in dataset order, and
//! `summary.json` ([`StoredSummary`]: counts, skips, tokenisation parameters and the
//! tokenizer's fingerprint, which consumers compare with their policy's).
//!
//! Consumers read it through [`read_for_policy`]: the policy's tokenizer must map every token
//! to the same id as the one the records were tokenised with (equal [`tokenizer_fingerprint`]),
//! and every stored id must lie inside the policy's vocabulary.

use crate::batching::examples::{Example, IGNORE};
use crate::stage::{StageCtx, StageError};
use crate::tok::TokenizerDir;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;
use tokenizers::Tokenizer;

/// A tokenised sequence: token ids and the `[start, end)` ranges of its target positions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seq {
    pub ids: Vec<i64>,
    pub targets: Vec<(usize, usize)>,
}

impl Seq {
    /// The ranges of an example's labelled positions.
    pub fn from_example(e: &Example) -> Seq {
        let mut targets: Vec<(usize, usize)> = Vec::new();
        for (i, &l) in e.labels.iter().enumerate() {
            if l == IGNORE {
                continue;
            }
            match targets.last_mut() {
                Some(r) if r.1 == i => r.1 = i + 1,
                _ => targets.push((i, i + 1)),
            }
        }
        Seq {
            ids: e.input_ids.clone(),
            targets,
        }
    }
    /// Back to an example (labels = ids on the target ranges, −100 elsewhere); ranges past the
    /// end are clipped.
    pub fn to_example(&self) -> Example {
        let mut labels = vec![IGNORE; self.ids.len()];
        for &(a, b) in &self.targets {
            let b = b.min(self.ids.len());
            if a < b {
                labels[a..b].copy_from_slice(&self.ids[a..b]);
            }
        }
        Example {
            input_ids: self.ids.clone(),
            labels,
        }
    }
}

/// One tokenised record: a preference pair, or a single sequence (forget / retain sets).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StoredRec {
    Pair {
        /// 0-based record index in the dataset.
        record: usize,
        chosen: Seq,
        rejected: Seq,
        /// Reference log-probs summed over completion tokens (`None`: no reference model).
        ref_chosen: Option<f64>,
        ref_rejected: Option<f64>,
    },
    Seq {
        record: usize,
        seq: Seq,
        /// Summed reference log-prob of the targets.
        ref_sum: Option<f64>,
        /// Per-target-token reference log-probs, in position order.
        ref_tok: Option<Vec<f32>>,
    },
}

impl StoredRec {
    /// Real tokens of the record.
    pub fn n_tokens(&self) -> usize {
        match self {
            StoredRec::Pair {
                chosen, rejected, ..
            } => chosen.ids.len() + rejected.ids.len(),
            StoredRec::Seq { seq, .. } => seq.ids.len(),
        }
    }
}

/// `summary.json` of a `ref-logps` artifact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSummary {
    pub kind: String,
    /// `pairs` (preference data) or `sequences` (any other format).
    pub layout: String,
    pub records: usize,
    pub kept: usize,
    /// Skips by reason (`prompt_too_long`, `identical_after_truncation`, `too_long`,
    /// `no_target`).
    pub skipped: std::collections::BTreeMap<String, u64>,
    pub truncated: u64,
    /// The reference model's node, `None` when only tokenising.
    pub reference: Option<String>,
    pub tokenizer_fingerprint: String,
    pub max_len: usize,
    pub max_prompt_len: Option<usize>,
    pub use_chat_template: bool,
    /// Mean reference log-probs (sums) of chosen / rejected, or of the sequences.
    pub mean_ref_chosen: Option<f64>,
    pub mean_ref_rejected: Option<f64>,
}

/// A hash of the tokenizer's vocabulary (token → id, added tokens included), equal for two
/// tokenizers that map every token to the same id.
pub fn tokenizer_fingerprint(tok: &Tokenizer) -> String {
    let mut v: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    v.sort();
    let mut h = blake3::Hasher::new();
    for (t, id) in v {
        h.update(t.as_bytes());
        h.update(&[0]);
        h.update(&id.to_le_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Writes `logps.jsonl` and `summary.json` into `dir`.
pub fn write(dir: &Path, recs: &[StoredRec], summary: &StoredSummary) -> anyhow::Result<()> {
    let p = dir.join("logps.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?,
    );
    for r in recs {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    crate::json::write_json(&dir.join("summary.json"), &serde_json::to_value(summary)?)
}

/// Reads a `ref-logps` artifact; `shown` names it in errors.
pub fn read(dir: &Path, shown: &str) -> anyhow::Result<(Vec<StoredRec>, StoredSummary)> {
    let sp = dir.join("summary.json");
    let summary: StoredSummary = serde_json::from_str(
        &std::fs::read_to_string(&sp)
            .with_context(|| format!("{shown}: reading {}", sp.display()))?,
    )
    .with_context(|| format!("{shown}: parsing {}", sp.display()))?;
    let p = dir.join("logps.jsonl");
    let f = std::fs::File::open(&p).with_context(|| format!("{shown}: opening {}", p.display()))?;
    let mut recs = Vec::with_capacity(summary.kept);
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{shown}: reading logps.jsonl"))?;
        recs.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{shown}: logps.jsonl line {}", i + 1))?,
        );
    }
    Ok((recs, summary))
}

/// The policy a `ref-logps` artifact is read for: its node, tokenizer and vocabulary size.
pub struct Policy<'a> {
    pub node: &'a str,
    pub tok: &'a TokenizerDir,
    pub vocab: usize,
}

impl<'a> Policy<'a> {
    /// The policy a training kind's prologue loaded.
    pub fn of(model: &'a crate::prologue::Model, tok: &'a crate::prologue::Tok) -> Self {
        Policy {
            node: &model.node,
            tok: &tok.dir,
            vocab: model.hf.config.vocab_size,
        }
    }
}

/// Reads the `ref-logps` artifact of input `input` for `policy`, checking the tokenizer
/// fingerprints agree and every token id is inside the policy's vocabulary.
pub fn read_for_policy(
    ctx: &StageCtx,
    input: &kinds::Input,
    policy: &Policy,
) -> Result<(Vec<StoredRec>, StoredSummary), StageError> {
    let a = ctx.input(&input.param)?;
    let shown = format!("ref-logps {}", a.node);
    let (recs, summary) = read(&a.dir, &shown)?;
    let fp = tokenizer_fingerprint(&policy.tok.tokenizer);
    if fp != summary.tokenizer_fingerprint {
        return Err(StageError::user(
            format!(
                "node {}: {shown} was tokenised with a different tokenizer (vocabulary {}) than the policy model {} (vocabulary {fp})",
                ctx.node, summary.tokenizer_fingerprint, policy.node
            ),
            Some("compute the reference log-probs with a reference model that shares the policy's tokenizer (usually the policy's starting point)".into()),
        ));
    }
    let max_id = recs
        .iter()
        .flat_map(|r| match r {
            StoredRec::Pair {
                chosen, rejected, ..
            } => chosen.ids.iter().chain(&rejected.ids).max().copied(),
            StoredRec::Seq { seq, .. } => seq.ids.iter().max().copied(),
        })
        .max()
        .unwrap_or(0);
    if max_id < 0 || max_id as usize >= policy.vocab {
        return Err(StageError::user(
            format!(
                "node {}: {shown} holds token id {max_id}, outside the policy's vocabulary of {}",
                ctx.node, policy.vocab
            ),
            None,
        ));
    }
    Ok((recs, summary))
}
