//! The `mixture` node kind: named dataset sources with sampling weights, per-source caps, a
//! budget and a seed. It produces a `mixture` artifact that training stages read with
//! [`read_mixture`] and turn into a deterministic example stream
//! ([`crate::train::stream::MixtureStream`]); `reweight` (later) writes the same format.
//!
//! ```kdl
//! mixture cpt-mix tokenizer=tok { source web weight=0.6; source med weight=0.4 max-epochs=4; tokens 20_000_000; seed 1 }
//! ```
//!
//! Weights: the base weight of source `i` is `b_i` = its `weight` (default 1) with
//! `weight-by given`, or its size with `weight-by records` / `weight-by tokens`
//! (`tokens` needs `tokenizer=`). The sampling probability is `p_i = b_i^(1/T) / Σ_j b_j^(1/T)`
//! with `temperature T` (default 1: proportional to `b`; `T → ∞`: uniform).
//!
//! Budget: `tokens N` or `examples N`; without either, every source is read `max-epochs`
//! times (unset = once) and the stream ends. With a budget, a source without `max-epochs`
//! repeats as often as the budget needs; a capped source drops out when it reaches its cap
//! and the others' probabilities renormalise.
//!
//! Token counts need a tokenizer, so `tokenizer=` (a tokenizer or model node) is optional: with
//! it the artifact records each source's token count (text records: tokens + EOS, as CPT
//! trains them; other formats: tokens of the record's texts + EOS, an estimate); without it
//! the counts are `null` and the consumer, which tokenises anyway, counts the budget.
//!
//! Artifact: `mixture.json` (domains with name, dataset node, format, records, tokens,
//! `weight` = `p_i`, `max_epochs`; budget; seed; temperature) and `sources/NAME/` holding the
//! source's normalised `data.jsonl` + `stats.json` (hard links into the store when possible),
//! so the artifact is self-contained and [`crate::data::read_normalized`] reads each source.

use crate::data::{read_normalized, Format, Record, DATA_FILE, STATS_FILE};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::stream::{Budget, MixtureStream, StreamSource};
use anyhow::{anyhow, Context};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as J};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The `mixture` kind.
pub struct Mixture;

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

const WEIGHT_BY: &[&str] = &["given", "records", "tokens"];

impl Stage for Mixture {
    fn schema(&self) -> KindSchema {
        let pos = |min: f64| ParamType::Float {
            min: Some(min),
            max: None,
        };
        KindSchema::new("mixture", 1, "mixture")
            .doc("A weighted mixture of datasets with a budget, per-source caps and a seed; consumers draw a deterministic example stream from it.")
            .param(
                ParamSpec::new(
                    "source",
                    ParamType::Record {
                        positional: &["name"],
                        fields: vec![
                            ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("the dataset node"),
                            ParamSpec::new("weight", pos(0.0)).optional()
                                .doc("sampling weight (normalised over sources; default 1)"),
                            ParamSpec::new("max-epochs", pos(0.0)).optional()
                                .doc("at most this many passes over the source (fractions allowed)"),
                        ],
                    },
                )
                .repeated()
                .doc("`source DATASET weight=0.6 max-epochs=4`; repeat for each source"),
            )
            .param(ParamSpec::new("tokens", ParamType::Int { min: Some(1), max: None }).optional()
                .doc("token budget: the stream ends once this many tokens were drawn"))
            .param(ParamSpec::new("examples", ParamType::Int { min: Some(1), max: None }).optional()
                .doc("example budget (instead of `tokens`)"))
            .param(ParamSpec::new("temperature", ParamType::Float { min: Some(1e-6), max: None })
                .default(Value::Float(1.0))
                .doc("p_i ∝ b_i^(1/T)"))
            .param(ParamSpec::new("weight-by", ParamType::Enum(WEIGHT_BY))
                .default(Value::Str("given".into()))
                .doc("base weights: the `weight`s given, or source sizes in records or tokens"))
            .param(ParamSpec::new("seed", ParamType::Int { min: Some(0), max: None })
                .default(Value::Int(0))
                .doc("seed of the example order"))
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional()
                .doc("count tokens per source with this tokenizer (needed by `weight-by tokens`)"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        let sources = ctx.param("source").as_list().unwrap_or(&[]).to_vec();
        if sources.is_empty() {
            return Err(StageError::user(
                "a mixture needs at least one `source`",
                None,
            ));
        }
        let weight_by = ctx
            .param("weight-by")
            .as_str()
            .unwrap_or("given")
            .to_string();
        let temperature = ctx.param("temperature").as_f64().unwrap_or(1.0);
        let seed = ctx.param("seed").as_i64().unwrap_or(0).max(0) as u64;
        let budget = match (ctx.param("tokens").as_i64(), ctx.param("examples").as_i64()) {
            (Some(t), _) => Budget::Tokens(t as u64),
            (None, Some(n)) => Budget::Examples(n as u64),
            (None, None) => Budget::Exhaust,
        };
        let tokenizer = match ctx.param("tokenizer") {
            Value::Null => None,
            _ => {
                let input = ctx.input("tokenizer")?;
                Some(TokenizerDir::load(
                    &input.dir,
                    &format!("tokenizer {}", input.node),
                )?)
            }
        };
        ctx.progress.set_length(sources.len() as u64);
        let mut domains = Vec::new();
        let mut base = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            ctx.check_cancel()?;
            let rec = s
                .as_record()
                .ok_or_else(|| anyhow!("source[{i}] is not a record"))?;
            let input = ctx.input(&format!("source[{i}].name"))?;
            let name = rec
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or(&input.node)
                .to_string();
            let (format, records) = read_normalized(&input.dir)
                .with_context(|| format!("source {name}: reading dataset {}", input.node))?;
            let tokens = match &tokenizer {
                Some(t) => Some(
                    count_tokens(t, &records)
                        .with_context(|| format!("source {name}: counting tokens"))?,
                ),
                None => None,
            };
            let b = match weight_by.as_str() {
                "records" => records.len() as f64,
                "tokens" => tokens.ok_or_else(|| {
                    StageError::user("`weight-by tokens` needs `tokenizer=`", None)
                })? as f64,
                _ => rec.get("weight").and_then(|v| v.as_f64()).unwrap_or(1.0),
            };
            base.push(b);
            link_source(&input.dir, &ctx.out_dir.join(SOURCES_DIR).join(&name))
                .with_context(|| format!("source {name}: copying dataset {}", input.node))?;
            domains.push(Domain {
                name,
                dataset: input.node.clone(),
                format,
                records: records.len() as u64,
                tokens,
                weight: 0.0,
                max_epochs: rec.get("max-epochs").and_then(|v| v.as_f64()),
            });
            ctx.progress.inc(1);
        }
        let w = temperature_weights(&base, temperature);
        if w.iter().all(|&x| x == 0.0) {
            return Err(StageError::user(
                "every source of the mixture has weight 0",
                Some("give at least one source a positive weight".into()),
            ));
        }
        for (d, w) in domains.iter_mut().zip(w) {
            d.weight = w;
        }
        let spec = MixtureSpec {
            domains,
            budget,
            seed,
            temperature,
            weight_by,
        };
        let p = ctx.out_dir.join(MIXTURE_FILE);
        fs::write(
            &p,
            serde_json::to_string_pretty(&spec).context("serialising mixture.json")? + "\n",
        )
        .with_context(|| format!("writing {}", p.display()))?;
        Ok(json!({
            "domains": spec.domains.iter().map(|d| json!({
                "name": d.name, "weight": d.weight, "records": d.records, "tokens": d.tokens,
            })).collect::<Vec<_>>(),
            "budget": spec.budget,
        }))
    }
}

/// Tokens of a source as the mixture counts them (see the module docs); `reweight` recounts
/// with the same rule to detect a tokenizer mismatch.
pub(crate) fn count_tokens(t: &TokenizerDir, records: &[Record]) -> anyhow::Result<u64> {
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
pub(crate) fn link_source(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst)?;
    for f in [DATA_FILE, STATS_FILE] {
        let (a, b) = (src.join(f), dst.join(f));
        if fs::hard_link(&a, &b).is_err() {
            fs::copy(&a, &b).with_context(|| format!("copying {}", a.display()))?;
        }
    }
    Ok(())
}

/// Cross-parameter rules: distinct source names, one budget, `weight` only with
/// `weight-by given`, `weight-by tokens` with a tokenizer.
fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let issue = |p: &str, m: String, h: Option<&str>| ParamIssue {
        param: Some(p.to_string()),
        message: m,
        hint: h.map(str::to_string),
    };
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let mut out = Vec::new();
    let sources = n
        .params
        .get("source")
        .and_then(|v| v.as_list())
        .unwrap_or(&[]);
    let mut seen = BTreeSet::new();
    let by = n
        .params
        .get("weight-by")
        .and_then(|v| v.as_str())
        .unwrap_or("given");
    for s in sources {
        let Some(r) = s.as_record() else { continue };
        if let Some(name) = r.get("name").and_then(|v| v.as_str()) {
            if !seen.insert(name.to_string()) {
                out.push(issue(
                    "source",
                    format!("source `{name}` is listed twice"),
                    Some("list each dataset once and set its weight"),
                ));
            }
        }
        if by != "given" && r.get("weight").is_some_and(|w| !matches!(w, Value::Null)) {
            out.push(issue(
                "source",
                format!("`weight` is ignored with `weight-by {by}`"),
                Some("remove the weights, or use `weight-by given`"),
            ));
        }
    }
    if set("tokens") && set("examples") {
        out.push(issue(
            "examples",
            "`tokens` and `examples` are exclusive: a mixture has one budget".into(),
            None,
        ));
    }
    if by == "tokens" && !set("tokenizer") {
        out.push(issue(
            "weight-by",
            "`weight-by tokens` needs a tokenizer to count tokens".into(),
            Some("add `tokenizer=TOK`"),
        ));
    }
    out
}
