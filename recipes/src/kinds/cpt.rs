//! The `cpt` node kind: continued pre-training of a `model` on text, producing a `model`.
//!
//! ```kdl
//! cpt domain model=base data=web-mix { seq-len 2048; lr 2e-5; schedule cosine warmup=0.03; tokens 20_000_000 }
//! ```
//!
//! Data: a `dataset` of format `text`, or a `mixture` whose sources are text datasets. Every
//! document is tokenised (with the tokenizer's own special tokens) and ends with EOS; the
//! deterministic example stream ([`crate::batching::stream`]) orders them; documents are
//! concatenated and cut into blocks of `seq-len` tokens, the remainder carried into the next
//! block ([`CptPacker`]), the last partial block right-padded. Attention crosses document
//! boundaries inside a block (standard pre-training). Every real token after the first of a
//! block is a target.
//!
//! Length of the run, in this order: `steps`; else the stream's end — a `tokens` budget, or
//! `epochs` passes over a dataset (default 1), or the mixture's own budget. The step count is
//! computed up front (the schedule needs it) by running the stream once without training.
//! Batch: `batch-size` sequences per micro-batch, or `batch-tokens` (`⌊batch-tokens / seq-len⌋`
//! sequences); `grad-accum` micro-batches per optimizer step.

use crate::batching::examples::Encoder;
use crate::batching::mixture::{read_domains, read_mixture, MIXTURE_FILE};
use crate::batching::pack::{cpt_batch, Batch, CptPacker, PackerState};
use crate::batching::stream::{Budget, MixtureStream, StreamSource, StreamState};
use crate::data::{read_normalized, Format, Record};
use crate::prologue::{self, Start};
use crate::stage::{InputArtifact, Kind, StageCtx, StageError};
use crate::trainer::output::write_output;
use crate::trainer::params::{self, DEFAULT_EPOCHS};
use crate::trainer::{lm, train, LossOut, Objective};
use anyhow::Context;
use dsl::KindSchema;
use kinds::cpt::Params;
use serde_json::{json, Value as J};

/// The `cpt` kind.
pub struct Cpt;

impl Kind for Cpt {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::cpt::schema()
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
            Some("CPT appends EOS to every document"),
        )?;
        let eos = eos.expect("asked for");
        model.check_len("seq-len", p.seq_len, "the model")?;
        let rows = match p.batch_tokens {
            Some(t) => (t / p.seq_len).max(1),
            None => p.batch_size.max(1),
        };
        let enc = Encoder::plain(&tok.dir.tokenizer, eos);
        let docs = read_docs(ctx, &p, &enc)?;
        let mut spec = params::train_spec(&p.optim, &p.common);
        let mut obj = CptData::new(docs, &p, rows, pad)?;
        spec.total_steps = match p.optim.steps {
            Some(s) => s,
            None => obj.steps_to_exhaust(),
        };
        let summary = train(ctx, &mut model.hf, &spec, &mut obj)?;
        let extra = json!({
            "kind": "cpt",
            "seq_len": p.seq_len,
            "batch_rows": rows,
            "grad_accum": obj.accum,
            "stream_position": obj.stream.position(),
        });
        write_output(ctx, &model, &tok.path, &summary, extra)
    }
}

/// The tokenised documents of every source, the stream's sources, budget and seed.
struct Docs {
    /// `docs[source][record]`: token ids ending with EOS.
    docs: Vec<Vec<Vec<i64>>>,
    sources: Vec<StreamSource>,
    budget: Budget,
    seed: u64,
    /// The `data=` node (for errors).
    node: String,
}

/// Tokenises the text records of one source (`name` in errors): every document ends with EOS.
fn encode(
    ctx: &StageCtx,
    enc: &Encoder,
    name: &str,
    format: Format,
    recs: &[Record],
) -> Result<Vec<Vec<i64>>, StageError> {
    if format != Format::Text {
        return Err(StageError::user(
            format!(
                "data {name}: CPT trains on `text` datasets, this one is `{}`",
                format.name()
            ),
            Some("use `sft` for chat or prompt-completion data".into()),
        ));
    }
    let mut out = Vec::with_capacity(recs.len());
    for (i, r) in recs.iter().enumerate() {
        ctx.check_cancel()?;
        let Record::Text { text } = r else { continue };
        out.push(
            enc.document(text)
                .with_context(|| format!("data {name}: record {}", i + 1))?,
        );
    }
    Ok(out)
}

fn source(name: &str, weight: f64, max_epochs: Option<f64>, ids: &[Vec<i64>]) -> StreamSource {
    StreamSource {
        name: name.to_string(),
        weight,
        max_epochs,
        lengths: ids.iter().map(|d| d.len() as u64).collect(),
    }
}

/// The documents of `data=`: a mixture's sources (its budget and seed) or one dataset (its
/// length from `steps`, `tokens` or `epochs`); a `tokens` budget replaces either's.
fn read_docs(ctx: &StageCtx, p: &Params, enc: &Encoder) -> Result<Docs, StageError> {
    let data = ctx.input(&p.data.param)?;
    let mut docs = if data.dir.join(MIXTURE_FILE).is_file() {
        mixture_docs(ctx, p, enc, data)?
    } else {
        dataset_docs(ctx, p, enc, data)?
    };
    if let Some(t) = p.tokens {
        docs.budget = Budget::Tokens(t);
    }
    if docs.docs.iter().all(|d| d.is_empty()) {
        return Err(StageError::user(
            format!("data {}: no documents", data.node),
            None,
        ));
    }
    Ok(docs)
}

fn mixture_docs(
    ctx: &StageCtx,
    p: &Params,
    enc: &Encoder,
    data: &InputArtifact,
) -> Result<Docs, StageError> {
    if p.optim.epochs.is_some() {
        return Err(StageError::user(
            format!(
                "`epochs` applies to a dataset; mixture {} has its own budget",
                data.node
            ),
            Some("set `tokens` or `steps`, or `max-epochs` on the mixture's sources".into()),
        ));
    }
    let spec = read_mixture(&data.dir).with_context(|| format!("mixture {}", data.node))?;
    let domains =
        read_domains(&data.dir, &spec).with_context(|| format!("mixture {}", data.node))?;
    let (mut docs, mut sources) = (Vec::new(), Vec::new());
    for (d, (format, recs)) in spec.domains.iter().zip(domains) {
        let name = format!("{} (source {} of mixture {})", d.dataset, d.name, data.node);
        let ids = encode(ctx, enc, &name, format, &recs)?;
        sources.push(source(&d.name, d.weight, d.max_epochs, &ids));
        docs.push(ids);
    }
    Ok(Docs {
        docs,
        sources,
        budget: spec.budget,
        seed: spec.seed,
        node: data.node.clone(),
    })
}

fn dataset_docs(
    ctx: &StageCtx,
    p: &Params,
    enc: &Encoder,
    data: &InputArtifact,
) -> Result<Docs, StageError> {
    let (format, recs) =
        read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
    let ids = encode(ctx, enc, &data.node, format, &recs)?;
    let (max_epochs, budget) = match (p.optim.steps, p.tokens) {
        (Some(_), _) => (None, Budget::Examples(u64::MAX)),
        (None, Some(_)) => (None, Budget::Exhaust),
        (None, None) => (
            Some(p.optim.epochs.unwrap_or(DEFAULT_EPOCHS)),
            Budget::Exhaust,
        ),
    };
    Ok(Docs {
        sources: vec![source(&data.node, 1.0, max_epochs, &ids)],
        docs: vec![ids],
        budget,
        seed: p.optim.seed,
        node: data.node.clone(),
    })
}

/// The CPT data source: the document stream and the block packer.
struct CptData {
    docs: Vec<Vec<Vec<i64>>>,
    sources: Vec<StreamSource>,
    budget: Budget,
    stream: MixtureStream,
    packer: CptPacker,
    /// The stream ended and the packer's tail was emitted.
    finished: bool,
    rows: usize,
    accum: usize,
    seq_len: usize,
    pad: i64,
    records: u64,
}

impl CptData {
    /// The stream of `docs` cut into blocks of `seq-len`, `rows` per micro-batch.
    fn new(d: Docs, p: &Params, rows: usize, pad: i64) -> Result<CptData, StageError> {
        let stream = MixtureStream::new(d.sources.clone(), d.budget, d.seed)
            .with_context(|| format!("data {}", d.node))?;
        Ok(CptData {
            records: d.docs.iter().map(|x| x.len() as u64).sum(),
            docs: d.docs,
            sources: d.sources,
            budget: d.budget,
            stream,
            packer: CptPacker::new(p.seq_len),
            finished: false,
            rows,
            accum: p.optim.grad_accum.max(1),
            seq_len: p.seq_len,
            pad,
        })
    }

    /// Optimizer steps until the stream ends: `⌈⌈tokens / seq-len⌉ / (rows · accum)⌉` (at
    /// least 1), counted by running the stream once without training.
    fn steps_to_exhaust(&self) -> u64 {
        let total: u64 = self
            .stream
            .clone()
            .map(|d| self.docs[d.source][d.record].len() as u64)
            .sum();
        let blocks = total.div_ceil(self.seq_len as u64);
        blocks.div_ceil((self.rows * self.accum) as u64).max(1)
    }

    fn next_block(&mut self) -> Option<Vec<i64>> {
        loop {
            if let Some(b) = self.packer.next_block() {
                return Some(b);
            }
            if self.finished {
                return None;
            }
            match self.stream.next() {
                Some(d) => self.packer.push(&self.docs[d.source][d.record]),
                None => {
                    self.finished = true;
                    return self.packer.finish();
                }
            }
        }
    }
}

impl Objective for CptData {
    type Batch = Batch;

    fn micro_batches(&mut self, _step: u64) -> anyhow::Result<Option<Vec<Batch>>> {
        let mut blocks = Vec::with_capacity(self.rows * self.accum);
        while blocks.len() < self.rows * self.accum {
            match self.next_block() {
                Some(b) => blocks.push(b),
                None => break,
            }
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            blocks
                .chunks(self.rows)
                .map(|c| cpt_batch(c, self.seq_len, self.pad))
                .collect(),
        ))
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
        json!({
            "stream": self.stream.state(),
            "packer": self.packer.state(),
            "finished": self.finished,
        })
    }
    fn restore(&mut self, s: &J) -> anyhow::Result<()> {
        let stream: StreamState =
            serde_json::from_value(s.get("stream").cloned().unwrap_or(J::Null))
                .context("`stream` of the data position")?;
        let packer: PackerState =
            serde_json::from_value(s.get("packer").cloned().unwrap_or(J::Null))
                .context("`packer` of the data position")?;
        if packer.seq_len != self.seq_len {
            anyhow::bail!(
                "the checkpoint packed blocks of {} tokens, this run {}",
                packer.seq_len,
                self.seq_len
            );
        }
        self.stream = MixtureStream::resume(self.sources.clone(), self.budget, stream)?;
        self.packer = CptPacker::from_state(packer);
        self.finished = s.get("finished").and_then(J::as_bool).unwrap_or(false);
        Ok(())
    }
    fn epoch(&self) -> f64 {
        self.stream.position() as f64 / self.records.max(1) as f64
    }
}
