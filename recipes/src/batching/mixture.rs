//! The `mixture` artifact, written by the `mixture` and `reweight` kinds and streamed by the
//! training kinds: `mixture.json` ([`MixtureSpec`]: domains with name, dataset node, format,
//! records, tokens, `weight` = sampling probability `p_i`, `max_epochs`; budget; seed;
//! temperature) and `sources/NAME/` holding each source's normalised `data.jsonl` +
//! `stats.json` (hard links into the store when possible), so the artifact is self-contained
//! and [`crate::data::read_normalized`] reads each source.
//!
//! Token counts ([`count_tokens`]): text records count their tokens + EOS, as CPT trains them;
//! other formats the tokens of the record's texts + EOS (an estimate).

use crate::batching::stream::{Budget, MixtureStream, StreamSource};
use crate::data::{read_normalized, Format, Record, DATA_FILE, STATS_FILE};
use crate::tok::TokenizerDir;
use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Name of the description file in a mixture artifact.
pub const MIXTURE_FILE: &str = "mixture.json";
/// Directory of the sources' data in a mixture artifact.
pub const SOURCES_DIR: &str = "sources";

/// One domain of a mixture as written in `mixture.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    /// Node that produced the source data.
    pub dataset: String,
    pub format: Format,
    pub records: u64,
    pub tokens: Option<u64>,
    /// Sampling probability (weights normalised over all domains).
    pub weight: f64,
    pub max_epochs: Option<f64>,
}

/// `mixture.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixtureSpec {
    pub domains: Vec<Domain>,
    pub budget: Budget,
    pub seed: u64,
    pub temperature: f64,
    pub weight_by: String,
}

impl MixtureSpec {
    /// The data directory of a domain inside the artifact `dir`.
    pub fn domain_dir(dir: &Path, name: &str) -> PathBuf {
        dir.join(SOURCES_DIR).join(name)
    }

    /// Stream sources given each domain's per-record token lengths (in domain order).
    pub fn stream(&self, lengths: Vec<Vec<u64>>) -> anyhow::Result<MixtureStream> {
        if lengths.len() != self.domains.len() {
            return Err(anyhow!(
                "{} length lists for {} domains",
                lengths.len(),
                self.domains.len()
            ));
        }
        let sources = self
            .domains
            .iter()
            .zip(lengths)
            .map(|(d, l)| StreamSource {
                name: d.name.clone(),
                weight: d.weight,
                max_epochs: d.max_epochs,
                lengths: l,
            })
            .collect();
        MixtureStream::new(sources, self.budget, self.seed)
    }
}

/// Reads `mixture.json` of a mixture artifact.
pub fn read_mixture(dir: &Path) -> anyhow::Result<MixtureSpec> {
    let p = dir.join(MIXTURE_FILE);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Reads the records of every domain of a mixture artifact, in domain order.
pub fn read_domains(dir: &Path, spec: &MixtureSpec) -> anyhow::Result<Vec<(Format, Vec<Record>)>> {
    spec.domains
        .iter()
        .map(|d| read_normalized(&MixtureSpec::domain_dir(dir, &d.name)))
        .collect()
}

/// `p_i = b_i^(1/T) / Σ_j b_j^(1/T)`; all-zero bases give all-zero weights.
pub fn temperature_weights(base: &[f64], temperature: f64) -> Vec<f64> {
    let powed: Vec<f64> = base
        .iter()
        .map(|&b| {
            if b > 0.0 {
                b.powf(1.0 / temperature)
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = powed.iter().sum();
    powed
        .iter()
        .map(|&p| if total > 0.0 { p / total } else { 0.0 })
        .collect()
}

/// Tokens of a source as the mixture counts them: `Σ_records (Σ_texts |tokens| + 1)` (the
/// module doc); `reweight` recounts with the same rule to detect a tokenizer mismatch.
pub fn count_tokens(t: &TokenizerDir, records: &[Record]) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for r in records {
        for text in r.texts() {
            let enc = t
                .tokenizer
                .encode(text, true)
                .map_err(|e| anyhow!("tokenising: {e}"))?;
            n += enc.get_ids().len() as u64;
        }
        n += 1;
    }
    Ok(n)
}

/// Hard-links (or copies) a dataset artifact's data and stats into `dst`.
pub fn link_source(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst)?;
    for f in [DATA_FILE, STATS_FILE] {
        let (a, b) = (src.join(f), dst.join(f));
        if fs::hard_link(&a, &b).is_err() {
            fs::copy(&a, &b).with_context(|| format!("copying {}", a.display()))?;
        }
    }
    Ok(())
}
