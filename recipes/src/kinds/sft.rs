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

use crate::batching::examples::{tokens_text, Encoded, Encoder, Example, LossOn};
use crate::batching::pack::{pack_rows, pad_batch, Batch};
use crate::data::{read_normalized, Format, Record};
use crate::prologue::{self, Start, Tok};
use crate::rng::SplitMix64;
use crate::stage::{InputArtifact, Kind, StageCtx, StageError};
use crate::trainer::output::write_output;
use crate::trainer::params;
use crate::trainer::{lm, train, LossOut, Objective};
use anyhow::Context;
use dsl::KindSchema;
use kinds::sft::Params;
use serde_json::{json, Value as J};

/// The `sft` kind.
pub struct Sft;

/// Stream key of the epoch permutations.
const ORDER: u64 = 0x5F7_0DE4;

/// `max-len` when neither the node nor the model's config gives one.
const FALLBACK_MAX_LEN: usize = 2048;

impl Kind for Sft {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::sft::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let Start {
            mut model,
            tok,
            eos,
            pad,
        } = prologue::start(
            ctx,
            &p.model,
            p.optim.load_dtype(),
            p.tokenizer.as_ref(),
            Some("SFT appends and trains EOS"),
        )?;
        let maxp = model.hf.config.max_position;
        let max_len = prologue::max_len(p.max_len, maxp, FALLBACK_MAX_LEN, "the model")?;
        let seq_len = p.seq_len.map_or(max_len, |s| s.max(max_len));
        let template = tok.chat_template()?;
        let enc = Encoder {
            tokenizer: &tok.dir.tokenizer,
            template: template.as_ref(),
            eos_id: eos.expect("asked for"),
            loss_on: loss_on(p.loss_on),
            use_chat_template: p.use_chat_template,
            max_len: Some(max_len),
        };
        let data = ctx.input(&p.data.param)?;
        let (examples, skipped) = read_examples(ctx, &p, &tok, &enc, data)?;
        if skipped > 0 {
            tracing::warn!(node = %ctx.node, "{skipped} examples longer than max-len {max_len} skipped");
        }
        let (batch, accum) = (p.batch_size.max(1), p.optim.grad_accum.max(1));
        let n = examples.len() as u64;
        let mut spec = params::train_spec(&p.optim, &p.common);
        let (total_steps, limit) = params::item_budget(&p.optim, n, (batch * accum) as u64);
        spec.total_steps = total_steps;
        let mut obj = SftData::new(
            examples,
            spec.seed,
            limit,
            (batch, accum),
            p.packing,
            seq_len,
            pad,
        );
        let summary = train(ctx, &mut model.hf, &spec, &mut obj)?;
        let extra = json!({
            "kind": "sft",
            "examples": n,
            "skipped_long": skipped,
            "max_len": max_len,
            "packing": obj.packing,
            "batch_size": batch,
            "grad_accum": accum,
        });
        write_output(ctx, &model, &tok.path, &summary, extra)
    }
}

/// The encoder's loss mask of a `loss-on` value.
fn loss_on(l: kinds::sft::LossOn) -> LossOn {
    match l {
        kinds::sft::LossOn::Assistant | kinds::sft::LossOn::Completion => LossOn::Assistant,
        kinds::sft::LossOn::All => LossOn::All,
    }
}

/// The examples of `data=` and how many were skipped as too long (`skip-long`).
fn read_examples(
    ctx: &StageCtx,
    p: &Params,
    tok: &Tok,
    enc: &Encoder,
    data: &InputArtifact,
) -> Result<(Vec<Example>, u64), StageError> {
    let (format, records) =
        read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
    if format == Format::Preference {
        return Err(StageError::user(
            format!(
                "dataset {}: SFT trains on prompt-completion or messages data, this one is `preference`",
                data.node
            ),
            Some("use a preference stage (dpo …) for preference data".into()),
        ));
    }
    if format == Format::Messages && enc.template.is_none() {
        return Err(StageError::user(
            format!("{}: messages data needs a chat template, and this tokenizer has none", tok.shown),
            Some("use a tokenizer with `chat_template.jinja` (or `chat_template` in tokenizer_config.json)".into()),
        ));
    }
    let mut examples = Vec::with_capacity(records.len());
    let mut skipped = 0u64;
    for (i, r) in records.iter().enumerate() {
        ctx.check_cancel()?;
        match encode(p, enc, &data.node, i, r)? {
            Some(ex) => examples.push(ex),
            None => skipped += 1,
        }
    }
    if examples.is_empty() {
        return Err(StageError::user(
            format!("dataset {}: no example to train on", data.node),
            None,
        ));
    }
    Ok((examples, skipped))
}

/// Record `i` of dataset `node` as an example; `None` when too long and `skip-long` is set.
fn encode(
    p: &Params,
    enc: &Encoder,
    node: &str,
    i: usize,
    r: &Record,
) -> Result<Option<Example>, StageError> {
    let at = format!(
        "dataset {node}: record {} (line {} of data.jsonl)",
        i + 1,
        i + 1
    );
    match enc.example(r).with_context(|| at.clone())? {
        Encoded::Ok(ex) => Ok(Some(ex)),
        Encoded::TooLong { len, max, .. } if p.skip_long => {
            tracing::debug!("{at}: {len} tokens > max-len {max}, skipped");
            Ok(None)
        }
        Encoded::TooLong { len, max, exact } => Err(StageError::user(
            format!("{at}: {}, longer than max-len {max}", tokens_text(len, exact)),
            Some("raise `max-len` (up to the model's limit) or set `skip-long=#true` to skip and count such examples".into()),
        )),
        Encoded::NoTarget => Err(StageError::user(
            format!("{at}: nothing to train on (every token is masked by loss-on {})", p.loss_on.name()),
            Some("check that the record has an assistant turn / a non-empty completion".into()),
        )),
    }
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
