//! The `reweight` node kind: influence-based mixture reweighting at a checkpoint
//! (shared/reference/mixtures.md; the formulas are in [`crate::influence`]).
//!
//! ```kdl
//! reweight tuned model=phase-1 mixture=cpt-mix { target med-val weight=1; samples 64; check #true }
//! ```
//!
//! Inputs: `model=` (any model artifact; its tokenizer files encode the data), `mixture=` (its
//! domains and their data; its weights are `w0`), one or more `target DATASET weight=c`
//! (text datasets). It produces a `mixture` artifact with the same layout as the `mixture`
//! kind (`mixture.json` with the new weights, same budget and seed, plus `sources/`), so a
//! `cpt` node takes it as `data=` unchanged, and `diagnostics.json` ([`crate::influence::Report`]).
//!
//! Bounds: every domain's weight lies in `[floor, cap]`, overridable per domain with
//! `bound DOMAIN floor=… cap=…`. A domain that may repeat at most `R` times (`max-repeats`,
//! else its `max-epochs` in the mixture) is also capped at `R·size_k / budget` — in tokens
//! under a token budget, in records under an example budget; without a budget no cap follows.
//!
//! Errors: a target with no records; weights that do not sum to a positive number;
//! infeasible bounds; a checkpoint whose tokenizer differs from the one the mixture counted
//! its tokens with (token counts disagree) or whose tokens exceed the model's vocabulary.
//! A domain smaller than `samples` is measured on all its records, and the diagnostics say so.

use crate::batching::examples::Encoder;
use crate::batching::mixture::{
    count_tokens, link_source, read_domains, read_mixture, MixtureSpec, MIXTURE_FILE, SOURCES_DIR,
};
use crate::batching::stream::Budget;
use crate::data::{read_normalized, Format, Record};
use crate::influence::{self, sample, Batching, Bounds, Config, DomainIn, Report, TargetIn};
use crate::prologue::{self, Model, Tok};
use crate::stage::{InputArtifact, Kind, StageCtx, StageError};
use crate::tok::TokenizerDir;
use anyhow::{anyhow, Context};
use dsl::device::Dtype;
use dsl::KindSchema;
use kinds::reweight::{Params, ReweightDtype};
use serde_json::{json, Value as J};

/// The `reweight` kind.
pub struct Reweight;

/// Name of the diagnostics file in the artifact.
pub const DIAGNOSTICS_FILE: &str = "diagnostics.json";

impl Kind for Reweight {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::reweight::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let (model, tok) = load(ctx, &p)?;
        let eos = tok.eos("documents are measured as CPT trains them, ending with EOS")?;
        let m = Measure {
            ctx,
            enc: Encoder::plain(&tok.dir.tokenizer, eos),
            vocab: model.hf.config.vocab_size as i64,
            shown: model.shown(),
        };
        let mix = ctx.input(&p.mixture.param)?;
        let mut mixture = read_domains_of(ctx, &p, &m, &tok.dir, mix)?;
        let targets = read_targets(ctx, &p, &m)?;
        let (bounds, mut bound_notes) = bounds(&p, &mixture, &tok.dir)?;
        let cfg = config(&p, tok.pad());
        let mut report = estimate(ctx, &model, &mixture, &targets, &bounds, &cfg)?;
        report.notes.append(&mut mixture.notes);
        report.notes.append(&mut bound_notes);
        write(ctx, mix, &mixture.spec, &report)?;
        Ok(summary(&report))
    }
}

/// The checkpoint in the node's dtype (`f64` besides the usual ones) and its tokenizer.
fn load(ctx: &StageCtx, p: &Params) -> Result<(Model, Tok), StageError> {
    let device = prologue::device(ctx)?;
    let kind = match p.dtype {
        ReweightDtype::F64 => tch::Kind::Double,
        ReweightDtype::Auto => prologue::resolve_dtype(Dtype::Auto, device),
        ReweightDtype::F32 => prologue::resolve_dtype(Dtype::F32, device),
        ReweightDtype::Bf16 => prologue::resolve_dtype(Dtype::Bf16, device),
    };
    let model = prologue::load_model(ctx, &p.model, device, kind)?;
    let tok = prologue::tokenizer(ctx, None, Some(&model))?;
    Ok((model, tok))
}

/// Encodes sampled text records as CPT trains them (ending with EOS), checking every id is
/// inside the checkpoint's vocabulary.
struct Measure<'a> {
    ctx: &'a StageCtx,
    enc: Encoder<'a>,
    vocab: i64,
    /// The checkpoint, as errors name it.
    shown: String,
}

impl Measure<'_> {
    /// The records `idx` of `recs` (`what` in errors), tokenised.
    fn encode(
        &self,
        what: &str,
        recs: &[Record],
        idx: &[usize],
    ) -> Result<Vec<Vec<i64>>, StageError> {
        let mut out = Vec::with_capacity(idx.len());
        for &i in idx {
            self.ctx.check_cancel()?;
            let Some(Record::Text { text }) = recs.get(i) else {
                return Err(StageError::user(
                    format!("{what}: record {} is not text", i + 1),
                    None,
                ));
            };
            let ids = self
                .enc
                .document(text)
                .with_context(|| format!("{what}: record {}", i + 1))?;
            if let Some(&bad) = ids.iter().find(|&&t| t >= self.vocab) {
                return Err(StageError::user(
                    format!(
                        "{what}: token id {bad} is outside the vocabulary of {} ({} entries)",
                        self.shown, self.vocab
                    ),
                    Some("the checkpoint's tokenizer does not belong to its model".into()),
                ));
            }
            out.push(ids);
        }
        Ok(out)
    }
}

/// The mixture's domains: its spec, every domain's records, the sampled documents, and the
/// notes for the diagnostics.
struct Domains {
    spec: MixtureSpec,
    data: Vec<(Format, Vec<Record>)>,
    docs: Vec<Vec<Vec<i64>>>,
    notes: Vec<String>,
}

/// Reads and samples the mixture's domains: text, at least 2 records each, and token counts
/// that agree with the checkpoint's tokenizer.
fn read_domains_of(
    ctx: &StageCtx,
    p: &Params,
    m: &Measure,
    tdir: &TokenizerDir,
    mix: &InputArtifact,
) -> Result<Domains, StageError> {
    if !mix.dir.join(MIXTURE_FILE).is_file() {
        return Err(StageError::user(
            format!("mixture {}: no {MIXTURE_FILE} in its artifact", mix.node),
            None,
        ));
    }
    let spec = read_mixture(&mix.dir).with_context(|| format!("mixture {}", mix.node))?;
    let data = read_domains(&mix.dir, &spec).with_context(|| format!("mixture {}", mix.node))?;
    let mut notes = Vec::new();
    let mut docs = Vec::new();
    for (d, (format, recs)) in spec.domains.iter().zip(&data) {
        let what = format!(
            "domain {} (dataset {}) of mixture {}",
            d.name, d.dataset, mix.node
        );
        if *format != Format::Text {
            return Err(StageError::user(
                format!(
                    "{what}: reweighting measures text data, this domain is `{}`",
                    format.name()
                ),
                None,
            ));
        }
        if recs.len() < 2 {
            return Err(StageError::user(
                format!(
                    "{what}: {} record(s); reweighting needs at least 2 per domain (two halves)",
                    recs.len()
                ),
                None,
            ));
        }
        if recs.len() < p.samples {
            let note = format!(
                "domain {}: {} records, fewer than samples={}: used all of them",
                d.name,
                recs.len(),
                p.samples
            );
            tracing::warn!("node {}: {note}", ctx.node);
            notes.push(note);
        }
        if let Some(tokens) = d.tokens {
            let counted = count_tokens(tdir, recs).with_context(|| what.clone())?;
            if counted != tokens {
                return Err(StageError::user(
                    format!("{what}: the mixture counted {tokens} tokens, the tokenizer of {} gives {counted}: the checkpoint's tokenizer differs from the mixture's", m.shown),
                    Some("use a checkpoint trained with the mixture's tokenizer, or give the mixture `tokenizer=` of this model".into()),
                ));
            }
        }
        let idx = sample::indices(recs.len(), p.samples, p.seed, sample::DOMAIN_STREAM);
        docs.push(m.encode(&what, recs, &idx)?);
    }
    Ok(Domains {
        spec,
        data,
        docs,
        notes,
    })
}

/// A target: its node, weight `c_j` and sampled documents.
struct Target {
    node: String,
    weight: f64,
    docs: Vec<Vec<i64>>,
}

/// Reads and samples every `target`: a non-empty text dataset.
fn read_targets(ctx: &StageCtx, p: &Params, m: &Measure) -> Result<Vec<Target>, StageError> {
    let mut targets = Vec::new();
    for t in &p.target {
        let input = ctx.input(&t.name.param)?;
        let what = format!("target {}", input.node);
        let (format, recs) = read_normalized(&input.dir).with_context(|| what.clone())?;
        if format != Format::Text {
            return Err(StageError::user(
                format!(
                    "{what}: targets are text datasets, this one is `{}`",
                    format.name()
                ),
                None,
            ));
        }
        if recs.is_empty() {
            return Err(StageError::user(
                format!("{what}: the dataset has no records"),
                Some("a target needs held-out text to measure its loss".into()),
            ));
        }
        let idx = sample::indices(recs.len(), p.target_samples, p.seed, sample::TARGET_STREAM);
        targets.push(Target {
            node: input.node.clone(),
            weight: t.weight(),
            docs: m.encode(&what, &recs, &idx)?,
        });
    }
    if targets.is_empty() {
        return Err(StageError::user(
            "a reweight node needs at least one `target`",
            None,
        ));
    }
    Ok(targets)
}

/// The measurement's knobs from the node's parameters.
fn config(p: &Params, pad_id: i64) -> Config {
    Config {
        batching: Batching {
            seq_len: p.seq_len,
            batch_size: p.batch_size,
            pad_id,
        },
        params: p.params.clone(),
        project: p.project,
        seed: p.seed,
        temperature: p.temperature,
        smoothing: p.smoothing,
        abstain_z: p.abstain_z,
        check_lr: p.check.then_some(p.check_lr),
    }
}

/// Runs [`influence::estimate`] on the sampled documents (a cancel is [`StageError::Cancelled`],
/// any other failure a user error naming the node).
fn estimate(
    ctx: &StageCtx,
    model: &Model,
    mixture: &Domains,
    targets: &[Target],
    bounds: &Bounds,
    cfg: &Config,
) -> Result<Report, StageError> {
    let domains: Vec<DomainIn> = mixture
        .spec
        .domains
        .iter()
        .zip(&mixture.docs)
        .map(|(d, docs)| DomainIn {
            name: d.name.clone(),
            docs: docs.iter().map(Vec::as_slice).collect(),
            w0: d.weight,
        })
        .collect();
    let tin: Vec<TargetIn> = targets
        .iter()
        .map(|t| TargetIn {
            name: t.node.clone(),
            weight: t.weight,
            docs: t.docs.iter().map(Vec::as_slice).collect(),
        })
        .collect();
    let cancel = || ctx.check_cancel().map_err(|_| anyhow!("cancelled"));
    influence::estimate(&model.hf, &domains, &tin, bounds, cfg, &cancel).map_err(|e| {
        if ctx.cancel.is_cancelled() {
            StageError::Cancelled
        } else {
            StageError::user(format!("node {}: {e:#}", ctx.node), None)
        }
    })
}

/// The artifact: the mixture with the new weights (its sources linked) and the diagnostics.
fn write(
    ctx: &StageCtx,
    mix: &InputArtifact,
    spec: &MixtureSpec,
    report: &Report,
) -> Result<(), StageError> {
    let mut out_spec = spec.clone();
    for (d, w) in out_spec.domains.iter_mut().zip(&report.w) {
        d.weight = *w;
        link_source(
            &MixtureSpec::domain_dir(&mix.dir, &d.name),
            &ctx.out_dir.join(SOURCES_DIR).join(&d.name),
        )
        .with_context(|| format!("domain {}: copying its data", d.name))?;
    }
    out_spec.weight_by = "influence".into();
    let mj = serde_json::to_value(&out_spec).context("serialising mixture.json")?;
    crate::json::write_json(&ctx.out_dir.join(MIXTURE_FILE), &mj)?;
    let dj = serde_json::to_value(report).context("serialising diagnostics")?;
    crate::json::write_json(&ctx.out_dir.join(DIAGNOSTICS_FILE), &dj)?;
    Ok(())
}

/// What `temper show` prints: w0 → w per domain and the headline diagnostics.
pub fn summary(r: &Report) -> J {
    json!({
        "domains": r.domains.iter().enumerate().map(|(k, n)| json!({
            "name": n, "w0": r.w0[k], "w": r.w[k], "score": r.scores.s[k], "se": r.scores.se[k],
        })).collect::<Vec<_>>(),
        "targets": r.targets,
        "abstained": r.abstained,
        "abstain_reason": r.abstain_reason,
        "kl": r.kl,
        "effective_domains": r.effective_domains,
        "bounds_hit": r.bounds_hit.iter().map(|h| json!({"domain": r.domains[h.domain], "bound": h.bound})).collect::<Vec<_>>(),
        "rank_correlation": r.check.as_ref().and_then(|c| c.rank_correlation),
        "notes": r.notes,
    })
}

/// Floors and caps per domain (module docs): `floor`/`cap` for all, the repeat cap
/// `R·size_k / budget`, then each `bound DOMAIN floor=… cap=…` (a cap only lowers); with the
/// notes on the caps derived.
fn bounds(
    p: &Params,
    mixture: &Domains,
    tdir: &TokenizerDir,
) -> Result<(Bounds, Vec<String>), StageError> {
    let spec = &mixture.spec;
    let k = spec.domains.len();
    let mut floor = vec![p.floor; k];
    let mut cap = vec![p.cap; k];
    let mut notes = Vec::new();
    for (i, d) in spec.domains.iter().enumerate() {
        let Some(r) = p.max_repeats.or(d.max_epochs) else {
            continue;
        };
        let derived = match spec.budget {
            Budget::Tokens(b) => {
                let t = match d.tokens {
                    Some(t) => t,
                    None => count_tokens(tdir, &mixture.data[i].1)
                        .with_context(|| format!("domain {}", d.name))?,
                };
                Some(r * t as f64 / b as f64)
            }
            Budget::Examples(b) => Some(r * d.records as f64 / b as f64),
            Budget::Exhaust => None,
        };
        match derived {
            Some(c) if c < cap[i] => {
                notes.push(format!(
                    "domain {}: capped at {c:.4} (may repeat {r} times within the budget)",
                    d.name
                ));
                cap[i] = c;
            }
            Some(_) => {}
            None => notes.push(format!(
                "domain {}: the mixture has no budget, so max-repeats implies no cap",
                d.name
            )),
        }
    }
    let names: Vec<&str> = spec.domains.iter().map(|d| d.name.as_str()).collect();
    for b in &p.bound {
        let name = b.domain.as_str();
        let Some(i) = names.iter().position(|n| *n == name) else {
            return Err(StageError::user(
                format!("bound {name}: the mixture has no domain `{name}`"),
                Some(format!("its domains are: {}", names.join(", "))),
            ));
        };
        if let Some(v) = b.floor {
            floor[i] = v;
        }
        if let Some(v) = b.cap {
            cap[i] = cap[i].min(v);
        }
    }
    let b = Bounds { floor, cap };
    let shown: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    influence::update::check_bounds(&b, &shown).map_err(|e| {
        StageError::user(
            e,
            Some("lower the floors, raise the caps or max-repeats, or shrink the budget".into()),
        )
    })?;
    Ok((b, notes))
}
