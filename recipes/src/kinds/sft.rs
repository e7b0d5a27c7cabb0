//! The `sft` node kind: supervised fine-tuning of a `model` on prompt-completion or messages
//! data, producing a `model`.
//!
//! ```kdl
//! sft instruct model=domain data=chat { loss-on assistant; epochs 2; lr 1e-5; max-len 1024 }
//! ```
//!
//! Examples are tokenised by [`Encoder`] (labels on the completion / assistant turns and the
//! EOS or end-of-turn token; `loss-on all` trains every token); the chat template's clock is
//! pinned so the data does not change between a run and its resume. An example longer than
//! `max-len` tokens is an error naming the record, or skipped and counted with
//! `skip-long=#true`; `max-len` may not exceed the model's `max_position_embeddings` (its
//! default).
//!
//! Order: epoch `e` visits the examples in the permutation
//! `SplitMix64::derived(seed, ORDER, e).permutation(n)`; the run consumes
//! `⌈epochs · n⌉` examples (default 1 epoch) or `steps · batch-size · grad-accum` of the
//! endless epoch sequence, `batch-size` examples per micro-batch. The position (examples
//! consumed) is saved in checkpoints.
//!
//! Batches: with `packing` (default) a micro-batch's examples are packed first-fit into rows
//! of `seq-len` tokens (default `max-len`) with positions restarting per example and
//! block-diagonal causal attention; without it each example is its own row, right-padded.
//! Both give the same loss on the same examples. Columns that are padding in every row are
//! trimmed (they carry no target and no attention).

use crate::data::{read_normalized, Format};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::chat::ChatTemplate;
use crate::train::examples::{tokens_text, Encoded, Encoder, Example, LossOn};
use crate::train::pack::{pack_rows, pad_batch, Batch};
use crate::train::rng::SplitMix64;
use crate::trainer::params::{self, int};
use crate::trainer::{lm, train, LossOut, Objective};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};

/// The `sft` kind.
pub struct Sft;

/// Stream key of the epoch permutations.
const ORDER: u64 = 0x5F7_0DE4;

impl Stage for Sft {
    fn schema(&self) -> KindSchema {
        KindSchema::new("sft", 1, "model")
            .doc("Supervised fine-tuning on prompt-completion or chat data: loss on the completion / assistant turns, EOS trained.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the model to train"))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset"])).doc("a prompt-completion or messages dataset"))
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional().doc("default: the model's tokenizer files"))
            .param(ParamSpec::new("loss-on", ParamType::Enum(LossOn::NAMES)).default(Value::Str("assistant".into()))
                .doc("assistant | completion (the same) | all"))
            .param(ParamSpec::new("packing", ParamType::Bool).default(Value::Bool(true))
                .doc("pack examples into rows (block-diagonal attention) instead of padding"))
            .param(ParamSpec::new("max-len", int(2)).optional().doc("longest example in tokens (default: the model's max_position_embeddings)"))
            .param(ParamSpec::new("seq-len", int(2)).optional().doc("row length when packing (default: max-len)"))
            .param(ParamSpec::new("skip-long", ParamType::Bool).default(Value::Bool(false))
                .doc("skip and count examples longer than max-len instead of failing"))
            .param(ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
                .doc("render prompt-completion records with the chat template"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("examples per micro-batch"))
            .params(params::optim_params())
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        run(ctx)
    }
}

fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    params::check_optim(n, &mut out);
    params::check_steps_or_epochs(n, &mut out);
    let get = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    if let (Some(s), Some(m)) = (get("seq-len"), get("max-len")) {
        if s < m {
            out.push(ParamIssue {
                param: Some("seq-len".into()),
                message: format!("seq-len {s} is shorter than max-len {m}: the longest example must fit in a row"),
                hint: None,
            });
        }
    }
    out
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let (mut model, model_dir) = params::load_model(ctx)?;
    let (tok_dir, tok_shown) = params::tokenizer_dir(ctx, &model_dir)?;
    let tdir = TokenizerDir::load(&tok_dir, &tok_shown)?;
    let eos = tdir.eos_id().ok_or_else(|| {
        StageError::user(
            format!("{tok_shown}: the tokenizer has no EOS token (`eos_token` in tokenizer_config.json)"),
            Some("SFT appends and trains EOS".into()),
        )
    })?;
    let pad = tdir.pad_id().unwrap_or(eos) as i64;
    let maxp = model.config.max_position;
    let max_len = match (params::get_u64(ctx, "max-len"), maxp) {
        (Some(m), Some(p)) if m as usize > p => {
            return Err(StageError::user(
                format!("max-len {m} is longer than the model's max_position_embeddings {p}"),
                Some(format!("use max-len {p} or less")),
            ))
        }
        (Some(m), _) => m as usize,
        (None, Some(p)) => p,
        (None, None) => 2048,
    };
    let seq_len = params::get_u64(ctx, "seq-len")
        .map_or(max_len, |s| s as usize)
        .max(max_len);
    let template = match ChatTemplate::load(&tok_dir, &tdir.tokenizer) {
        Ok(Some(mut t)) => {
            t.set_now(0);
            Some(t)
        }
        Ok(None) => None,
        Err(e) => return Err(StageError::user(format!("{tok_shown}: {e:#}"), None)),
    };
    let loss_on = LossOn::parse(ctx.param("loss-on").as_str().unwrap_or("assistant"))
        .unwrap_or(LossOn::Assistant);
    let enc = Encoder {
        tokenizer: &tdir.tokenizer,
        template: template.as_ref(),
        eos_id: eos,
        loss_on,
        use_chat_template: ctx.param("use-chat-template").as_bool().unwrap_or(false),
        max_len: Some(max_len),
    };
    let data = ctx.input("data")?;
    let (format, records) =
        read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
    if format == Format::Preference {
        return Err(StageError::user(
            format!("dataset {}: SFT trains on prompt-completion or messages data, this one is `preference`", data.node),
            Some("use a preference stage (dpo …) for preference data".into()),
        ));
    }
    if format == Format::Messages && template.is_none() {
        return Err(StageError::user(
            format!("{tok_shown}: messages data needs a chat template, and this tokenizer has none"),
            Some("use a tokenizer with `chat_template.jinja` (or `chat_template` in tokenizer_config.json)".into()),
        ));
    }
    let skip_long = ctx.param("skip-long").as_bool().unwrap_or(false);
    let mut examples = Vec::with_capacity(records.len());
    let mut skipped = 0u64;
    for (i, r) in records.iter().enumerate() {
        ctx.check_cancel()?;
        let at = format!(
            "dataset {}: record {} (line {} of data.jsonl)",
            data.node,
            i + 1,
            i + 1
        );
        match enc.example(r).with_context(|| at.clone())? {
            Encoded::Ok(ex) => examples.push(ex),
            Encoded::TooLong { len, max, .. } if skip_long => {
                tracing::debug!("{at}: {len} tokens > max-len {max}, skipped");
                skipped += 1;
            }
            Encoded::TooLong { len, max, exact } => {
                return Err(StageError::user(
                    format!("{at}: {}, longer than max-len {max}", tokens_text(len, exact)),
                    Some("raise `max-len` (up to the model's limit) or set `skip-long=#true` to skip and count such examples".into()),
                ))
            }
            Encoded::NoTarget => {
                return Err(StageError::user(
                    format!("{at}: nothing to train on (every token is masked by loss-on {})", ctx.param("loss-on").display()),
                    Some("check that the record has an assistant turn / a non-empty completion".into()),
                ))
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(node = %ctx.node, "{skipped} examples longer than max-len {max_len} skipped");
    }
    if examples.is_empty() {
        return Err(StageError::user(
            format!("dataset {}: no example to train on", data.node),
            None,
        ));
    }
    let batch = params::get_u64(ctx, "batch-size").unwrap_or(8).max(1) as usize;
    let accum = params::get_u64(ctx, "grad-accum").unwrap_or(1).max(1) as usize;
    let n = examples.len() as u64;
    let per_step = (batch * accum) as u64;
    let mut spec = params::train_spec(ctx);
    let limit = match params::get_u64(ctx, "steps") {
        Some(s) => {
            spec.total_steps = s;
            s.saturating_mul(per_step)
        }
        None => {
            let e = ctx.param("epochs").as_f64().unwrap_or(1.0);
            let limit = ((e * n as f64).ceil() as u64).max(1);
            spec.total_steps = limit.div_ceil(per_step);
            limit
        }
    };
    let packing = ctx.param("packing").as_bool().unwrap_or(true);
    let mut obj = SftData::new(
        examples,
        spec.seed,
        limit,
        (batch, accum),
        packing,
        seq_len,
        pad,
    );
    let summary = train(ctx, &mut model, &spec, &mut obj)?;
    let extra = json!({
        "kind": "sft",
        "examples": n,
        "skipped_long": skipped,
        "max_len": max_len,
        "packing": obj.packing,
        "batch_size": batch,
        "grad_accum": accum,
        "dtype": params::dtype_name(model.kind()),
    });
    params::write_output(ctx, &model, &tok_dir, &summary, extra)
}

/// The SFT data source: tokenised examples in a seeded order per epoch.
pub struct SftData {
    pub examples: Vec<Example>,
    pub seed: u64,
    /// Examples consumed (across epochs).
    pub cursor: u64,
    /// Examples the run consumes in total.
    pub limit: u64,
    perm: Option<(u64, Vec<u32>)>,
    pub batch: usize,
    pub accum: usize,
    pub packing: bool,
    pub seq_len: usize,
    pub pad: i64,
}

impl SftData {
    /// Examples in seeded epoch order, `limit` consumed in all, `(batch, accum)` per step.
    pub fn new(
        examples: Vec<Example>,
        seed: u64,
        limit: u64,
        (batch, accum): (usize, usize),
        packing: bool,
        seq_len: usize,
        pad: i64,
    ) -> SftData {
        SftData {
            examples,
            seed,
            cursor: 0,
            limit,
            perm: None,
            batch: batch.max(1),
            accum: accum.max(1),
            packing,
            seq_len,
            pad,
        }
    }

    fn at(&mut self, g: u64) -> &Example {
        let n = self.examples.len() as u64;
        let (epoch, i) = (g / n, (g % n) as usize);
        if self.perm.as_ref().map(|p| p.0) != Some(epoch) {
            let p = SplitMix64::derived(self.seed, ORDER, epoch).permutation(n as usize);
            self.perm = Some((epoch, p));
        }
        let idx = self.perm.as_ref().map_or(i, |p| p.1[i] as usize);
        &self.examples[idx]
    }

    /// One micro-batch of `exs`: packed or padded, all-padding columns trimmed.
    pub fn batch_of(&self, exs: &[Example]) -> anyhow::Result<Batch> {
        let b = if self.packing {
            pack_rows(exs, self.seq_len, self.pad)?
        } else {
            pad_batch(exs, self.pad, None)
        };
        Ok(trim(b))
    }
}

/// Drops trailing columns that are padding in every row.
fn trim(mut b: Batch) -> Batch {
    let used = (0..b.rows)
        .map(|r| {
            let s = &b.segment_ids[r * b.cols..(r + 1) * b.cols];
            s.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    if used >= b.cols {
        return b;
    }
    let cut = |v: &[i64]| -> Vec<i64> {
        v.chunks(b.cols)
            .flat_map(|row| row[..used].to_vec())
            .collect()
    };
    b.input_ids = cut(&b.input_ids);
    b.labels = cut(&b.labels);
    b.position_ids = cut(&b.position_ids);
    b.segment_ids = cut(&b.segment_ids);
    b.cols = used;
    b
}

impl Objective for SftData {
    type Batch = Batch;

    fn micro_batches(&mut self, _step: u64) -> anyhow::Result<Option<Vec<Batch>>> {
        let end = (self.cursor + (self.batch * self.accum) as u64).min(self.limit);
        if end <= self.cursor {
            return Ok(None);
        }
        let exs: Vec<Example> = (self.cursor..end).map(|g| self.at(g).clone()).collect();
        self.cursor = end;
        exs.chunks(self.batch)
            .map(|c| self.batch_of(c))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some)
    }
    fn n_targets(&self, b: &Batch) -> usize {
        b.n_target_tokens
    }
    fn n_tokens(&self, b: &Batch) -> usize {
        b.n_tokens()
    }
    fn loss(&mut self, model: &crate::arch::HfModel, b: &Batch) -> anyhow::Result<LossOut> {
        Ok(LossOut {
            sum: lm::sum_loss(model, b)?,
            extra: Vec::new(),
        })
    }
    fn state(&self) -> J {
        json!({"examples_consumed": self.cursor})
    }
    fn restore(&mut self, s: &J) -> anyhow::Result<()> {
        self.cursor = s
            .get("examples_consumed")
            .and_then(J::as_u64)
            .context("no `examples_consumed` in the data position")?;
        Ok(())
    }
    fn epoch(&self) -> f64 {
        self.cursor as f64 / self.examples.len().max(1) as f64
    }
}
