//! The `pairs` node kind (parameters and checks: `kinds::pairs`): preference pairs from the
//! completions of a `generate` node, ranked by a score.
//!
//! Reads the `samples.jsonl` of the `data=` artifact (one line per prompt, at least two
//! completions each), scores every completion (`reference-match` and `length` by
//! [`crate::generate::rank`], `judge-logp` by [`crate::generate::judge`] with `model=`), and
//! keeps per prompt the highest-scored completion as `chosen` and the lowest as `rejected`
//! ([`crate::generate::rank::choose`]: first in order among equals; prompts tied, identical or
//! with fewer than two non-blank completions skipped and counted).
//!
//! Artifact — a preference dataset, as a `dataset` node publishes it:
//! - `data.jsonl` + `stats.json` ([`crate::data::write_normalized`]): `{prompt, chosen,
//!   rejected}` per pair in prompt order (sides are assistant turns when the prompt is chat
//!   turns, else text); `stats.json` adds `score`, `prompts`, `skipped` (per reason) and
//!   `skipped_examples` (the first few, by record);
//! - `pairs.jsonl`: line `i` describes record `i`: `{index, chosen_index, rejected_index,
//!   chosen_score, rejected_score}` (`index`: the prompt's record in the prompts dataset).
//!
//! The summary: prompts, pairs, skipped per reason, the score and the mean chosen and rejected
//! scores. No pair at all is an error.

use crate::data::{read_stats, write_normalized, Format, Message, Record, Role, Turns};
use crate::generate::judge::Judge;
use crate::generate::rank::{
    length_score, rank, read_samples, reference_match, text_scores, Ranking, Sample, Skip,
    PAIRS_FILE, SAMPLES_FILE,
};
use crate::prologue;
use crate::stage::{InputArtifact, Kind, StageCtx, StageError};
use ::kinds::pairs::{Params, Score};
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};

/// The `pairs` kind.
pub struct Pairs;

/// How many skipped prompts `stats.json` lists.
const SKIP_EXAMPLES: usize = 5;

/// The `generate` node's summary file, read for its `use_chat_template`.
const GENERATE_SUMMARY: &str = "generate_summary.json";

impl Kind for Pairs {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::pairs::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let data = ctx.input(&p.data.param)?;
        let samples = read_input(data)?;
        let scores = match p.score {
            Score::ReferenceMatch => {
                check_references(data, &samples)?;
                text_scores(&samples, |c, s| {
                    reference_match(c, s.reference.as_deref().unwrap_or_default())
                })
            }
            Score::Length => text_scores(&samples, |c, _| length_score(c)),
            Score::JudgeLogp => judge_scores(ctx, &p, data, &samples)?,
        };
        check_finite(&samples, &scores)?;
        let ranking = rank(&samples, &scores);
        if ranking.pairs.is_empty() {
            return Err(no_pairs(data, &samples, &ranking, p.score));
        }
        write(ctx, &samples, &ranking, p.score)
    }
}

/// The samples of the `generate` artifact `data`: at least one prompt, two completions each.
fn read_input(data: &InputArtifact) -> Result<Vec<Sample>, StageError> {
    let path = data.dir.join(SAMPLES_FILE);
    if !path.is_file() {
        let what = read_stats(&data.dir)
            .ok()
            .and_then(|s| s.get("format").and_then(|f| f.as_str()).map(String::from))
            .map_or_else(
                || "has no samples.jsonl".to_string(),
                |f| format!("is a `{f}` dataset"),
            );
        return Err(StageError::user(
            format!(
                "`pairs` reads the completions of a `generate` node; dataset {} {what}",
                data.node
            ),
            Some(format!(
                "sample completions first: `generate samples model=policy data={} {{ n 4 }}`, then `pairs ranked data=samples`",
                data.node
            )),
        ));
    }
    let samples = read_samples(&path)
        .map_err(|e| StageError::user(format!("dataset {}: {e:#}", data.node), None))?;
    if samples.is_empty() {
        return Err(StageError::user(
            format!("dataset {}: no prompts in {SAMPLES_FILE}", data.node),
            None,
        ));
    }
    if let Some(s) = samples.iter().min_by_key(|s| s.completions.len()) {
        let n = s.completions.len();
        if n < 2 {
            return Err(StageError::user(
                format!(
                    "dataset {}: record {} has {n} completion{}; a pair needs at least 2 per prompt (n = {n})",
                    data.node,
                    s.index,
                    if n == 1 { "" } else { "s" }
                ),
                Some(format!("sample more: `n 4` on the generate node {}", data.node)),
            ));
        }
    }
    Ok(samples)
}

/// `reference-match` needs every prompt's reference completion.
fn check_references(data: &InputArtifact, samples: &[Sample]) -> Result<(), StageError> {
    let missing: Vec<u64> = samples
        .iter()
        .filter(|s| s.reference.is_none())
        .map(|s| s.index)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = missing.iter().take(5).map(u64::to_string).collect();
    Err(StageError::user(
        format!(
            "score reference-match: {} of {} prompts of {} have no reference (records {}{})",
            missing.len(),
            samples.len(),
            data.node,
            shown.join(", "),
            if missing.len() > 5 { ", …" } else { "" }
        ),
        Some("prompts need a reference completion: prompt-completion data, or messages ending in an assistant turn; or rank by `score judge-logp`".into()),
    ))
}

/// Scores under the judge `model=`, on the node's device in its dtype.
fn judge_scores(
    ctx: &StageCtx,
    p: &Params,
    data: &InputArtifact,
    samples: &[Sample],
) -> Result<Vec<Vec<f64>>, StageError> {
    let Some(input) = &p.model else {
        return Err(StageError::user(
            "score judge-logp needs the judge: `model=`",
            Some("`pairs ranked data=samples model=judge { score judge-logp }`".to_string()),
        ));
    };
    let device = prologue::device(ctx)?;
    let model = prologue::load_model(ctx, input, device, prologue::resolve_dtype(p.dtype, device))?;
    let tok = prologue::tokenizer(ctx, None, Some(&model))?;
    let template = tok.chat_template()?;
    let chat_text = generate_used_chat_template(data);
    let plain = !chat_text && samples.iter().any(|s| matches!(s.prompt, Turns::Text(_)));
    let eos_id = if plain {
        Some(tok.eos("judge-logp scores plain completions with EOS appended, as preference stages train them")?)
    } else {
        None
    };
    let shown = model.shown();
    let judge = Judge {
        model: &model.hf,
        shown: &shown,
        tokenizer: &tok.dir.tokenizer,
        template: template.as_ref(),
        eos_id,
        pad_id: tok.pad(),
        chat_text,
        batch_size: p.batch_size,
    };
    let total: usize = samples.iter().map(|s| s.completions.len()).sum();
    ctx.progress.set_length(total as u64);
    judge.scores(samples, &mut |n| {
        ctx.progress.inc(n as u64);
        ctx.check_cancel()
    })
}

/// Whether the `generate` node rendered text prompts as a user turn (`use_chat_template` in
/// its summary file; false when absent).
fn generate_used_chat_template(data: &InputArtifact) -> bool {
    std::fs::read_to_string(data.dir.join(GENERATE_SUMMARY))
        .ok()
        .and_then(|t| serde_json::from_str::<J>(&t).ok())
        .and_then(|v| v.get("use_chat_template").and_then(J::as_bool))
        .unwrap_or(false)
}

/// Every score of a non-blank completion is finite (a judge that gives NaN is broken).
fn check_finite(samples: &[Sample], scores: &[Vec<f64>]) -> Result<(), StageError> {
    for (s, sc) in samples.iter().zip(scores) {
        for (c, x) in s.completions.iter().zip(sc) {
            if !c.trim().is_empty() && !x.is_finite() {
                return Err(StageError::user(
                    format!("record {}: a completion scored {x}", s.index),
                    Some("the judge's log-probs are not finite: check the model (dtype f32 avoids bf16 overflow)".into()),
                ));
            }
        }
    }
    Ok(())
}

/// The error when every prompt was skipped.
fn no_pairs(data: &InputArtifact, samples: &[Sample], r: &Ranking, score: Score) -> StageError {
    let n = samples.len();
    if r.count(Skip::Tied) == n {
        return StageError::user(
            format!(
                "every prompt's completions tied under score {} ({n} prompts of {})",
                score.name(),
                data.node
            ),
            Some("raise `temperature` or `n` on the generate node, so completions differ".into()),
        );
    }
    let why: Vec<String> = r
        .skipped()
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    StageError::user(
        format!(
            "no pair from the {n} prompts of {} under score {}: skipped {}",
            data.node,
            score.name(),
            why.join(", ")
        ),
        Some("raise `temperature` or `n` on the generate node, so completions differ; blank completions cannot be a side of a pair".into()),
    )
}

/// The preference record of one pair: chat prompts get assistant-turn sides.
pub fn pair_record(s: &Sample, chosen: usize, rejected: usize) -> Record {
    let side = |text: &str| match &s.prompt {
        Turns::Messages(_) => Turns::Messages(vec![Message {
            role: Role::Assistant,
            content: text.to_string(),
        }]),
        Turns::Text(_) => Turns::Text(text.to_string()),
    };
    Record::Preference {
        prompt: s.prompt.clone(),
        chosen: side(&s.completions[chosen]),
        rejected: side(&s.completions[rejected]),
    }
}

/// Writes the artifact; returns the summary.
fn write(ctx: &StageCtx, samples: &[Sample], r: &Ranking, score: Score) -> Result<J, StageError> {
    let records: Vec<Record> = r
        .pairs
        .iter()
        .map(|(at, pr)| pair_record(&samples[*at], pr.chosen_index, pr.rejected_index))
        .collect();
    let examples: Vec<J> = r
        .skips
        .iter()
        .take(SKIP_EXAMPLES)
        .map(|&(at, why)| skip_example(&samples[at], why))
        .collect();
    let extra = json!({
        "score": score.name(),
        "prompts": samples.len(),
        "skipped": r.skipped(),
        "skipped_examples": examples,
    });
    write_normalized(&ctx.out_dir, Format::Preference, &records, extra)
        .with_context(|| format!("node {}: writing the dataset", ctx.node))?;
    let mut lines = String::new();
    for (_, pr) in &r.pairs {
        lines.push_str(&serde_json::to_string(pr).context("serialising a pair")?);
        lines.push('\n');
    }
    let path = ctx.out_dir.join(PAIRS_FILE);
    std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    let (mc, mr) = r.mean_scores().unwrap_or((f64::NAN, f64::NAN));
    let (tied, identical, blank) = (
        r.count(Skip::Tied),
        r.count(Skip::Identical),
        r.count(Skip::Blank),
    );
    tracing::info!(
        "{}: {} pairs from {} prompts under score {} (skipped: {tied} tied, {identical} identical, {blank} with fewer than two non-blank completions); mean chosen score {mc:.4}, rejected {mr:.4}",
        ctx.node,
        r.pairs.len(),
        samples.len(),
        score.name(),
    );
    Ok(json!({
        "prompts": samples.len(),
        "pairs": r.pairs.len(),
        "skipped_ties": tied,
        "skipped_identical": identical,
        "skipped_blank": blank,
        "score": score.name(),
        "mean_chosen_score": mc,
        "mean_rejected_score": mr,
    }))
}

/// A skipped prompt as `stats.json` lists it.
fn skip_example(s: &Sample, why: Skip) -> J {
    let n = s.completions.len();
    let message = match why {
        Skip::Tied => format!("all {n} completions have the same score"),
        Skip::Identical => "the best and the worst completion are the same text".to_string(),
        Skip::Blank => {
            let blank = s.completions.iter().filter(|c| c.trim().is_empty()).count();
            format!("{blank} of {n} completions are blank")
        }
    };
    json!({
        "location": format!("{SAMPLES_FILE}: record {}", s.index),
        "reason": why.name(),
        "message": message,
    })
}
