//! The `mixture` node kind (parameters, the weight and budget rules: `kinds::mixture`): reads
//! each source dataset, counts its tokens when a tokenizer is given, turns the base weights
//! `b_i` into sampling probabilities `p_i = b_i^(1/T) / Σ_j b_j^(1/T)`
//! ([`temperature_weights`]) and writes the mixture artifact ([`crate::batching::mixture`]:
//! `mixture.json` + each source's data), from which training stages draw a deterministic
//! example stream ([`crate::batching::stream::MixtureStream`]).

use crate::batching::mixture::{
    count_tokens, link_source, temperature_weights, Domain, MixtureSpec, MIXTURE_FILE, SOURCES_DIR,
};
use crate::batching::stream::Budget;
use crate::data::read_normalized;
use crate::stage::{Kind, StageCtx, StageError};
use crate::tok::TokenizerDir;
use ::kinds::mixture::{Params, Source, WeightBy};
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::fs;

/// The `mixture` kind.
pub struct Mixture;

impl Kind for Mixture {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::mixture::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        if p.source.is_empty() {
            return Err(StageError::user(
                "a mixture needs at least one `source`",
                None,
            ));
        }
        let tokenizer = match &p.tokenizer {
            Some(t) => {
                let input = ctx.input(&t.param)?;
                let shown = format!("tokenizer {}", input.node);
                Some(TokenizerDir::load(&input.dir, &shown)?)
            }
            None => None,
        };
        ctx.progress.set_length(p.source.len() as u64);
        let mut domains = Vec::with_capacity(p.source.len());
        let mut base = Vec::with_capacity(p.source.len());
        for s in &p.source {
            ctx.check_cancel()?;
            let (d, b) = domain(ctx, &p, s, tokenizer.as_ref())?;
            domains.push(d);
            base.push(b);
            ctx.progress.inc(1);
        }
        set_weights(&mut domains, &base, p.temperature)?;
        let spec = MixtureSpec {
            domains,
            budget: budget(&p),
            seed: p.seed,
            temperature: p.temperature,
            weight_by: p.weight_by.name().to_string(),
        };
        write_spec(ctx, &spec)
    }
}

/// `tokens N` → a token budget; `examples N` → an example budget; neither → every source
/// read to its cap.
fn budget(p: &Params) -> Budget {
    match (p.tokens, p.examples) {
        (Some(t), _) => Budget::Tokens(t),
        (None, Some(n)) => Budget::Examples(n),
        (None, None) => Budget::Exhaust,
    }
}

/// One source: reads its dataset, counts its tokens (with a tokenizer) and links its data into
/// the artifact. Returns its domain (weight still 0) and its base weight `b_i`.
fn domain(
    ctx: &StageCtx,
    p: &Params,
    s: &Source,
    tokenizer: Option<&TokenizerDir>,
) -> Result<(Domain, f64), StageError> {
    let input = ctx.input(&s.name.param)?;
    let name = s.name.node.clone();
    let (format, records) = read_normalized(&input.dir)
        .with_context(|| format!("source {name}: reading dataset {}", input.node))?;
    let tokens = match tokenizer {
        Some(t) => Some(
            count_tokens(t, &records).with_context(|| format!("source {name}: counting tokens"))?,
        ),
        None => None,
    };
    let b = match p.weight_by {
        WeightBy::Records => records.len() as f64,
        WeightBy::Tokens => tokens
            .ok_or_else(|| StageError::user("`weight-by tokens` needs `tokenizer=`", None))?
            as f64,
        WeightBy::Given => s.given_weight(),
    };
    link_source(&input.dir, &ctx.out_dir.join(SOURCES_DIR).join(&name))
        .with_context(|| format!("source {name}: copying dataset {}", input.node))?;
    let domain = Domain {
        name,
        dataset: input.node.clone(),
        format,
        records: records.len() as u64,
        tokens,
        weight: 0.0,
        max_epochs: s.max_epochs,
    };
    Ok((domain, b))
}

/// Sets each domain's sampling probability from the base weights; all zero is an error.
fn set_weights(domains: &mut [Domain], base: &[f64], temperature: f64) -> Result<(), StageError> {
    let w = temperature_weights(base, temperature);
    if w.iter().all(|&x| x == 0.0) {
        return Err(StageError::user(
            "every source of the mixture has weight 0",
            Some("give at least one source a positive weight".into()),
        ));
    }
    for (d, w) in domains.iter_mut().zip(w) {
        d.weight = w;
    }
    Ok(())
}

/// Writes `mixture.json`; returns the node's summary.
fn write_spec(ctx: &StageCtx, spec: &MixtureSpec) -> Result<J, StageError> {
    let p = ctx.out_dir.join(MIXTURE_FILE);
    fs::write(
        &p,
        serde_json::to_string_pretty(spec).context("serialising mixture.json")? + "\n",
    )
    .with_context(|| format!("writing {}", p.display()))?;
    Ok(json!({
        "domains": spec.domains.iter().map(|d| json!({
            "name": d.name, "weight": d.weight, "records": d.records, "tokens": d.tokens,
        })).collect::<Vec<_>>(),
        "budget": spec.budget,
    }))
}
