//! The `eval` node kind (parameters and the distinct-inputs check: `kinds::eval`): scores every
//! model × dataset and writes the table.
//!
//! Each model tokenises with the tokenizer and chat template of its own directory and computes
//! in f32 on every device; the metrics and their formulas are [`crate::evaluate::score`]'s:
//! loss = `Σ CE / Σ targets` and perplexity = `exp(loss)`, exact-match of greedy completions,
//! preference accuracy `mean[logπ(yc) > logπ(yr)]` and margin. A dataset's metric is the one
//! asked for, else its format's default ([`pick_metric`]); `max-records N` keeps the first N
//! records.
//!
//! Artifact: `results.json` (parameters and, per model × dataset, format, metric, records,
//! target tokens, loss, perplexity, exact-match or preference accuracy and margin with counts,
//! and the first `examples` predictions). The summary (what `temper show` prints) holds the
//! same rows without the examples, and the log gets a table.

use crate::data::{read_normalized, Format};
use crate::evaluate::report::summary_row;
pub use crate::evaluate::report::table;
use crate::evaluate::score::{prefix, score, DataSet, Opts, Scorer};
use crate::stage::{Kind, StageCtx, StageError};
use ::kinds::eval::{Metric, Params};
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::fs;

/// The `eval` kind.
pub struct Eval;

/// Name of the results file in the artifact.
pub const RESULTS_FILE: &str = "results.json";

impl Kind for Eval {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::eval::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        if p.model.is_empty() || p.data.is_empty() {
            return Err(StageError::user(
                "an eval node needs at least one `model` and one `data`",
                Some("e.g. `eval scores { model tuned; data heldout }`".into()),
            ));
        }
        let sets = datasets(ctx, &p)?;
        let opts = Opts {
            max_new: p.max_new_tokens,
            chat: p.use_chat_template,
            skip_long: p.skip_long,
            keep: p.examples,
            batch: p.batch_size,
        };
        let rows = score_all(ctx, &p, &sets, &opts)?;
        write_results(ctx, &p, &rows)
    }
}

/// Reads each `data` dataset (its first `max-records` records) and picks its metric.
fn datasets(ctx: &StageCtx, p: &Params) -> Result<Vec<DataSet>, StageError> {
    let mut sets = Vec::with_capacity(p.data.len());
    for d in &p.data {
        let input = ctx.input(&d.name.param)?;
        let (format, mut records) = read_normalized(&input.dir)
            .with_context(|| format!("reading dataset {}", input.node))?;
        if let Some(n) = p.max_records {
            records.truncate(n);
        }
        let metric = pick_metric(d.metric, format, &input.node)?;
        sets.push(DataSet {
            node: input.node.clone(),
            format,
            metric,
            records,
        });
    }
    Ok(sets)
}

/// Every model × dataset row, models in order (each loaded once), logging each row's summary
/// as a metric. Progress counts records, twice for exact-match (scored, then generated).
fn score_all(
    ctx: &StageCtx,
    p: &Params,
    sets: &[DataSet],
    opts: &Opts,
) -> Result<Vec<J>, StageError> {
    let per_model: u64 = sets
        .iter()
        .map(|s| s.records.len() as u64 * if s.metric == Metric::ExactMatch { 2 } else { 1 })
        .sum();
    ctx.progress.set_length(per_model * p.model.len() as u64);
    let mut rows = Vec::new();
    for model in &p.model {
        ctx.check_cancel()?;
        ctx.progress.set_message(&format!("loading {}", model.node));
        let scorer = Scorer::load(ctx, model)?;
        for set in sets {
            ctx.check_cancel()?;
            let what = format!("model {} on dataset {}", scorer.node, set.node);
            ctx.progress
                .set_message(&format!("{} on {}", scorer.node, set.node));
            let row = score(ctx, &scorer, set, opts).map_err(|e| prefix(e, &what))?;
            let _ = ctx.metrics.log(&summary_row(&row));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes `results.json` and logs the table; returns the summary rows.
fn write_results(ctx: &StageCtx, p: &Params, rows: &[J]) -> Result<J, StageError> {
    let results = json!({
        "max_new_tokens": p.max_new_tokens,
        "max_records": p.max_records,
        "results": rows,
    });
    let path = ctx.out_dir.join(RESULTS_FILE);
    fs::write(
        &path,
        serde_json::to_string_pretty(&results).context("serialising results")? + "\n",
    )
    .with_context(|| format!("writing {}", path.display()))?;
    for line in table(rows) {
        tracing::info!("{line}");
    }
    Ok(json!({ "results": rows.iter().map(summary_row).collect::<Vec<_>>() }))
}

/// The metric of a dataset: the one asked for, or the default of its format (prompt-completion:
/// exact-match; preference: preference-accuracy; else loss). Preference data is scored with
/// preference-accuracy only, and only it; text data has no exact-match.
fn pick_metric(asked: Option<Metric>, format: Format, node: &str) -> Result<Metric, StageError> {
    let m = match asked {
        Some(m) => m,
        None if format == Format::PromptCompletion => Metric::ExactMatch,
        None if format == Format::Preference => Metric::PreferenceAccuracy,
        None => Metric::Loss,
    };
    let name = m.name();
    match format {
        Format::Preference if m != Metric::PreferenceAccuracy => Err(StageError::user(
            format!("dataset {node} is in the preference format: eval scores it with preference-accuracy only, not {name}"),
            Some("use `metric=preference-accuracy` (or leave `metric` unset) for preference data".into()),
        )),
        _ if format != Format::Preference && m == Metric::PreferenceAccuracy => Err(StageError::user(
            format!("dataset {node}: preference-accuracy needs prompt/chosen/rejected pairs, and this dataset is {}", format.name()),
            Some("give a `format=preference` dataset, or use loss / exact-match here".into()),
        )),
        Format::Text if m == Metric::ExactMatch => Err(StageError::user(
            format!("dataset {node}: exact-match needs prompts and references, and this dataset is plain text"),
            Some("use `metric=loss` (or perplexity) for text data".into()),
        )),
        _ => Ok(m),
    }
}
