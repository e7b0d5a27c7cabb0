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

use super::mixture::{
    count_tokens, link_source, read_domains, read_mixture, MixtureSpec, MIXTURE_FILE, SOURCES_DIR,
};
use crate::data::{read_normalized, Format, Record};
use crate::influence::{self, sample, Batching, Bounds, Config, DomainIn, TargetIn};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::examples::{Encoder, LossOn};
use crate::train::stream::Budget;
use crate::trainer::params::{self, float, int};
use anyhow::{anyhow, Context};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use std::collections::BTreeSet;

/// The `reweight` kind.
pub struct Reweight;

/// Name of the diagnostics file in the artifact.
pub const DIAGNOSTICS_FILE: &str = "diagnostics.json";

impl Stage for Reweight {
    fn schema(&self) -> KindSchema {
        let unit = || ParamType::Float {
            min: Some(0.0),
            max: Some(1.0),
        };
        KindSchema::new("reweight", 1, "mixture")
            .doc("Influence-based reweighting: measures how much each domain of a mixture helps target datasets at a checkpoint and writes a new mixture (plus diagnostics).")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the checkpoint where influence is measured"))
            .param(ParamSpec::new("mixture", ParamType::Ref(&["mixture"])).doc("the domains and the starting weights w0"))
            .param(
                ParamSpec::new(
                    "target",
                    ParamType::Record {
                        positional: &["name"],
                        fields: vec![
                            ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("a text dataset"),
                            ParamSpec::new("weight", float(0.0)).optional().doc("c_j (default 1; normalised)"),
                        ],
                    },
                )
                .repeated()
                .doc("`target DATASET weight=1`; repeat for several targets"),
            )
            .param(ParamSpec::new("samples", int(2)).default(Value::Int(64)).doc("records sampled per domain"))
            .param(ParamSpec::new("target-samples", int(1)).default(Value::Int(64)).doc("records sampled per target"))
            .param(ParamSpec::new("seq-len", int(2)).default(Value::Int(512)).doc("documents are truncated to this many tokens"))
            .param(ParamSpec::new("params", ParamType::List(Box::new(ParamType::Str))).optional()
                .doc("glob patterns of tensor names whose gradients count (default: all)"))
            .param(ParamSpec::new("project", int(1)).optional().doc("random projection dimension of the gradients"))
            .param(ParamSpec::new("temperature", float(0.0)).default(Value::Float(1.0)).doc("trust region τ: w ∝ w0·exp(τ·ŝ)"))
            .param(ParamSpec::new("smoothing", unit()).default(Value::Float(1e-3)).doc("ε: w = (1−ε)·w + ε/K"))
            .param(ParamSpec::new("floor", unit()).default(Value::Float(0.0)).doc("lowest weight of a domain"))
            .param(ParamSpec::new("cap", unit()).default(Value::Float(1.0)).doc("highest weight of a domain"))
            .param(ParamSpec::new("max-repeats", float(0.0)).optional()
                .doc("cap a domain at max-repeats·size/budget (default: each domain's max-epochs)"))
            .param(
                ParamSpec::new(
                    "bound",
                    ParamType::Record {
                        positional: &["domain"],
                        fields: vec![
                            ParamSpec::new("domain", ParamType::Str).doc("a domain of the mixture"),
                            ParamSpec::new("floor", unit()).optional(),
                            ParamSpec::new("cap", unit()).optional(),
                        ],
                    },
                )
                .repeated()
                .optional()
                .doc("`bound DOMAIN floor=0.05 cap=0.5`: per-domain bounds"),
            )
            .param(ParamSpec::new("abstain-z", float(0.0)).default(Value::Float(2.0))
                .doc("keep w0 when the spread of scores is within z·√2 standard errors"))
            .param(ParamSpec::new("seed", int(0)).default(Value::Int(0)).doc("seed of the samples and the projection"))
            .param(ParamSpec::new("check", ParamType::Bool).default(Value::Bool(false))
                .doc("also measure L_j(θ) − L_j(θ − η·g_k) and its rank correlation with the prediction"))
            .param(ParamSpec::new("check-lr", float(0.0)).default(Value::Float(1e-3)).doc("η of check mode"))
            .param(ParamSpec::new("dtype", ParamType::Enum(&["auto", "f32", "bf16", "f64"])).default(Value::Str("auto".into()))
                .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).non_semantic().doc("documents per forward pass"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        run(ctx)
    }
}

fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    let targets = n
        .params
        .get("target")
        .and_then(|v| v.as_list())
        .unwrap_or(&[]);
    if targets.is_empty() {
        out.push(ParamIssue {
            param: None,
            message: "a reweight node needs at least one `target DATASET`".into(),
            hint: Some("add `target my-val weight=1` inside the node's block".into()),
        });
    }
    let total: f64 = targets
        .iter()
        .filter_map(|t| t.as_record())
        .map(|r| r.get("weight").and_then(|w| w.as_f64()).unwrap_or(1.0))
        .sum();
    if !targets.is_empty() && total <= 0.0 {
        out.push(ParamIssue {
            param: Some("target".into()),
            message: format!(
                "the target weights sum to {total}: they must sum to a positive number"
            ),
            hint: Some("give at least one target a positive weight".into()),
        });
    }
    let mut seen = BTreeSet::new();
    for t in targets.iter().filter_map(|t| t.as_record()) {
        if let Some(name) = t.get("name").and_then(|v| v.as_str()) {
            if !seen.insert(name.to_string()) {
                out.push(ParamIssue {
                    param: Some("target".into()),
                    message: format!("target `{name}` is listed twice"),
                    hint: Some("list each target once and set its weight".into()),
                });
            }
        }
    }
    out
}

fn f(ctx: &StageCtx, k: &str, d: f64) -> f64 {
    params::get_f64(ctx, k, d)
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let device = params::parse_device(&ctx.device)?;
    let dtype = match ctx.param("dtype").as_str().unwrap_or("auto") {
        "f64" => tch::Kind::Double,
        other => params::resolve_dtype(other, device),
    };
    let minput = ctx.input("model")?;
    let model = crate::arch::HfModel::load(
        &minput.dir,
        &format!("model {}", minput.node),
        &crate::arch::LoadOptions {
            device,
            dtype: Some(dtype),
        },
    )?;
    let tshown = format!("model {}", minput.node);
    let tdir = TokenizerDir::load(&minput.dir, &tshown)?;
    let eos = tdir.eos_id().ok_or_else(|| {
        StageError::user(
            format!(
                "{tshown}: the tokenizer has no EOS token (`eos_token` in tokenizer_config.json)"
            ),
            Some("documents are measured as CPT trains them, ending with EOS".into()),
        )
    })?;
    let enc = Encoder {
        tokenizer: &tdir.tokenizer,
        template: None,
        eos_id: eos,
        loss_on: LossOn::All,
        use_chat_template: false,
        max_len: None,
    };
    let vocab = model.config.vocab_size as i64;
    let encode = |what: &str,
                  recs: &[Record],
                  idx: &[usize]|
     -> Result<Vec<Vec<i64>>, StageError> {
        let mut out = Vec::with_capacity(idx.len());
        for &i in idx {
            ctx.check_cancel()?;
            let Some(Record::Text { text }) = recs.get(i) else {
                return Err(StageError::user(
                    format!("{what}: record {} is not text", i + 1),
                    None,
                ));
            };
            let ids = enc
                .document(text)
                .with_context(|| format!("{what}: record {}", i + 1))?;
            if let Some(&bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(StageError::user(
                    format!("{what}: token id {bad} is outside the vocabulary of {tshown} ({vocab} entries)"),
                    Some("the checkpoint's tokenizer does not belong to its model".into()),
                ));
            }
            out.push(ids);
        }
        Ok(out)
    };

    // Domains.
    let mix = ctx.input("mixture")?;
    if !mix.dir.join(MIXTURE_FILE).is_file() {
        return Err(StageError::user(
            format!("mixture {}: no {MIXTURE_FILE} in its artifact", mix.node),
            None,
        ));
    }
    let spec = read_mixture(&mix.dir).with_context(|| format!("mixture {}", mix.node))?;
    let data = read_domains(&mix.dir, &spec).with_context(|| format!("mixture {}", mix.node))?;
    let seed = params::get_u64(ctx, "seed").unwrap_or(0);
    let n_samples = params::get_u64(ctx, "samples").unwrap_or(64) as usize;
    let mut notes = Vec::new();
    let mut domain_docs = Vec::new();
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
        if recs.len() < n_samples {
            let note = format!(
                "domain {}: {} records, fewer than samples={n_samples}: used all of them",
                d.name,
                recs.len()
            );
            tracing::warn!("node {}: {note}", ctx.node);
            notes.push(note);
        }
        if let Some(tokens) = d.tokens {
            let counted = count_tokens(&tdir, recs).with_context(|| what.clone())?;
            if counted != tokens {
                return Err(StageError::user(
                    format!("{what}: the mixture counted {tokens} tokens, the tokenizer of {tshown} gives {counted}: the checkpoint's tokenizer differs from the mixture's"),
                    Some("use a checkpoint trained with the mixture's tokenizer, or give the mixture `tokenizer=` of this model".into()),
                ));
            }
        }
        let idx = sample::indices(recs.len(), n_samples, seed, sample::DOMAIN_STREAM);
        domain_docs.push(encode(&what, recs, &idx)?);
    }

    // Targets.
    let n_target = params::get_u64(ctx, "target-samples").unwrap_or(64) as usize;
    let mut targets = Vec::new();
    for (i, t) in ctx
        .param("target")
        .as_list()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let input = ctx.input(&format!("target[{i}].name"))?;
        let weight = t
            .as_record()
            .and_then(|r| r.get("weight"))
            .and_then(|w| w.as_f64())
            .unwrap_or(1.0);
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
        let idx = sample::indices(recs.len(), n_target, seed, sample::TARGET_STREAM);
        targets.push((input.node.clone(), weight, encode(&what, &recs, &idx)?));
    }
    if targets.is_empty() {
        return Err(StageError::user(
            "a reweight node needs at least one `target`",
            None,
        ));
    }

    let bounds = bounds(ctx, &spec, &tdir, &data, &mut notes)?;
    let cfg = Config {
        batching: Batching {
            seq_len: params::get_u64(ctx, "seq-len").unwrap_or(512) as usize,
            batch_size: params::get_u64(ctx, "batch-size").unwrap_or(8) as usize,
            pad_id: tdir.pad_id().unwrap_or(eos) as i64,
        },
        params: ctx
            .param("params")
            .as_list()
            .unwrap_or(&[])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        project: params::get_u64(ctx, "project").map(|d| d as usize),
        seed,
        temperature: f(ctx, "temperature", 1.0),
        smoothing: f(ctx, "smoothing", 1e-3),
        abstain_z: f(ctx, "abstain-z", 2.0),
        check_lr: ctx
            .param("check")
            .as_bool()
            .unwrap_or(false)
            .then(|| f(ctx, "check-lr", 1e-3)),
    };
    let domains: Vec<DomainIn> = spec
        .domains
        .iter()
        .zip(&domain_docs)
        .map(|(d, docs)| DomainIn {
            name: d.name.clone(),
            docs: docs.iter().map(Vec::as_slice).collect(),
            w0: d.weight,
        })
        .collect();
    let tin: Vec<TargetIn> = targets
        .iter()
        .map(|(n, w, docs)| TargetIn {
            name: n.clone(),
            weight: *w,
            docs: docs.iter().map(Vec::as_slice).collect(),
        })
        .collect();
    let cancel = || ctx.check_cancel().map_err(|_| anyhow!("cancelled"));
    let mut report =
        influence::estimate(&model, &domains, &tin, &bounds, &cfg, &cancel).map_err(|e| {
            if ctx.cancel.is_cancelled() {
                StageError::Cancelled
            } else {
                StageError::user(format!("node {}: {e:#}", ctx.node), None)
            }
        })?;
    report.notes.extend(notes);

    // Output: a mixture with the new weights, and the diagnostics.
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
    crate::tok::write_json(&ctx.out_dir.join(MIXTURE_FILE), &mj)?;
    let dj = serde_json::to_value(&report).context("serialising diagnostics")?;
    crate::tok::write_json(&ctx.out_dir.join(DIAGNOSTICS_FILE), &dj)?;
    Ok(summary(&report))
}

/// What `temper show` prints: w0 → w per domain and the headline diagnostics.
pub fn summary(r: &influence::Report) -> J {
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

/// Floors and caps per domain (module docs).
fn bounds(
    ctx: &StageCtx,
    spec: &MixtureSpec,
    tdir: &TokenizerDir,
    data: &[(Format, Vec<Record>)],
    notes: &mut Vec<String>,
) -> Result<Bounds, StageError> {
    let k = spec.domains.len();
    let mut floor = vec![f(ctx, "floor", 0.0); k];
    let mut cap = vec![f(ctx, "cap", 1.0); k];
    let repeats = ctx.param("max-repeats").as_f64();
    for (i, d) in spec.domains.iter().enumerate() {
        let Some(r) = repeats.or(d.max_epochs) else {
            continue;
        };
        let derived = match spec.budget {
            Budget::Tokens(b) => {
                let t = match d.tokens {
                    Some(t) => t,
                    None => count_tokens(tdir, &data[i].1)
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
    for b in ctx.param("bound").as_list().unwrap_or(&[]) {
        let Some(r) = b.as_record() else { continue };
        let name = r.get("domain").and_then(|v| v.as_str()).unwrap_or("");
        let Some(i) = names.iter().position(|n| *n == name) else {
            return Err(StageError::user(
                format!("bound {name}: the mixture has no domain `{name}`"),
                Some(format!("its domains are: {}", names.join(", "))),
            ));
        };
        if let Some(v) = r.get("floor").and_then(|v| v.as_f64()) {
            floor[i] = v;
        }
        if let Some(v) = r.get("cap").and_then(|v| v.as_f64()) {
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
    Ok(b)
}
