//! The `cpt` node kind: continued pre-training of a `model` on text, producing a `model`.
//!
//! ```kdl
//! cpt domain model=base data=web-mix { seq-len 2048; lr 2e-5; schedule cosine warmup=0.03; tokens 20_000_000 }
//! ```
//!
//! Data: a `dataset` of format `text`, or a `mixture` whose sources are text datasets. Every
//! document is tokenised (with the tokenizer's own special tokens) and ends with EOS; the
//! deterministic example stream ([`crate::train::stream`]) orders them; documents are
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

use super::mixture::{read_domains, read_mixture, MIXTURE_FILE};
use crate::data::{read_normalized, Format, Record};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::examples::{Encoder, LossOn};
use crate::train::pack::{cpt_batch, Batch, CptPacker, PackerState};
use crate::train::stream::{Budget, MixtureStream, StreamSource, StreamState};
use crate::trainer::params::{self, int};
use crate::trainer::{lm, train, LossOut, Objective};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};

/// The `cpt` kind.
pub struct Cpt;

impl Stage for Cpt {
    fn schema(&self) -> KindSchema {
        KindSchema::new("cpt", 1, "model")
            .doc("Continued pre-training: documents packed into blocks of `seq-len` tokens, causal-LM loss on every token.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the model to train"))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset", "mixture"])).doc("a text dataset or a mixture of them"))
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional().doc("default: the model's tokenizer files"))
            .param(ParamSpec::new("seq-len", int(2)).default(Value::Int(1024)).doc("tokens per block"))
            .param(ParamSpec::new("tokens", int(1)).optional().doc("token budget (ends the stream)"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("sequences per micro-batch"))
            .param(ParamSpec::new("batch-tokens", int(1)).optional().doc("tokens per micro-batch (instead of batch-size)"))
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
    let issue = |p: &str, m: &str| ParamIssue {
        param: Some(p.into()),
        message: m.into(),
        hint: None,
    };
    if params::is_set(n, "batch-tokens") && params::is_set(n, "batch-size") {
        out.push(issue(
            "batch-tokens",
            "`batch-size` and `batch-tokens` are exclusive",
        ));
    }
    let set: Vec<&str> = ["steps", "epochs", "tokens"]
        .into_iter()
        .filter(|k| params::is_set(n, k))
        .collect();
    if set.len() > 1 {
        out.push(issue(
            set[1],
            &format!(
                "`{}` are exclusive: the run has one length",
                set.join("` and `")
            ),
        ));
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
            Some("CPT appends EOS to every document".into()),
        )
    })?;
    let pad = tdir.pad_id().unwrap_or(eos) as i64;
    let seq_len = params::get_u64(ctx, "seq-len").unwrap_or(1024) as usize;
    if let Some(maxp) = model.config.max_position {
        if seq_len > maxp {
            return Err(StageError::user(
                format!(
                    "seq-len {seq_len} is longer than the model's max_position_embeddings {maxp}"
                ),
                Some(format!("use seq-len {maxp} or less")),
            ));
        }
    }
    let rows = match params::get_u64(ctx, "batch-tokens") {
        Some(t) => (t as usize / seq_len).max(1),
        None => params::get_u64(ctx, "batch-size").unwrap_or(8).max(1) as usize,
    };
    let accum = params::get_u64(ctx, "grad-accum").unwrap_or(1).max(1) as usize;
    let enc = Encoder {
        tokenizer: &tdir.tokenizer,
        template: None,
        eos_id: eos,
        loss_on: LossOn::All,
        use_chat_template: false,
        max_len: None,
    };

    // Sources: (name, records) with their stream caps.
    let data = ctx.input("data")?;
    let is_mixture = data.dir.join(MIXTURE_FILE).is_file();
    let steps = params::get_u64(ctx, "steps");
    let tokens = params::get_u64(ctx, "tokens");
    let epochs = ctx.param("epochs").as_f64();
    let mut docs: Vec<Vec<Vec<i64>>> = Vec::new();
    let mut sources: Vec<StreamSource> = Vec::new();
    let mut budget;
    let mut seed = params::get_u64(ctx, "seed").unwrap_or(0);
    let encode =
        |name: &str, format: Format, recs: &[Record]| -> Result<Vec<Vec<i64>>, StageError> {
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
        };
    if is_mixture {
        if epochs.is_some() {
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
        for (d, (format, recs)) in spec.domains.iter().zip(domains) {
            let ids = encode(
                &format!("{} (source {} of mixture {})", d.dataset, d.name, data.node),
                format,
                &recs,
            )?;
            sources.push(StreamSource {
                name: d.name.clone(),
                weight: d.weight,
                max_epochs: d.max_epochs,
                lengths: ids.iter().map(|d| d.len() as u64).collect(),
            });
            docs.push(ids);
        }
        budget = spec.budget;
        seed = spec.seed;
    } else {
        let (format, recs) =
            read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
        let ids = encode(&data.node, format, &recs)?;
        let (max_epochs, b) = match (steps, tokens) {
            (Some(_), _) => (None, Budget::Examples(u64::MAX)),
            (None, Some(_)) => (None, Budget::Exhaust),
            (None, None) => (Some(epochs.unwrap_or(1.0)), Budget::Exhaust),
        };
        sources.push(StreamSource {
            name: data.node.clone(),
            weight: 1.0,
            max_epochs,
            lengths: ids.iter().map(|d| d.len() as u64).collect(),
        });
        docs.push(ids);
        budget = b;
    }
    if let Some(t) = tokens {
        budget = Budget::Tokens(t);
    }
    if docs.iter().all(|d| d.is_empty()) {
        return Err(StageError::user(
            format!("data {}: no documents", data.node),
            None,
        ));
    }
    let stream = MixtureStream::new(sources.clone(), budget, seed)
        .with_context(|| format!("data {}", data.node))?;
    let mut spec = params::train_spec(ctx);
    spec.total_steps = match steps {
        Some(s) => s,
        None => {
            let total: u64 = stream
                .clone()
                .map(|d| docs[d.source][d.record].len() as u64)
                .sum();
            let blocks = total.div_ceil(seq_len as u64);
            blocks.div_ceil((rows * accum) as u64).max(1)
        }
    };
    let records: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let mut obj = CptData {
        docs,
        sources,
        budget,
        stream,
        packer: CptPacker::new(seq_len),
        finished: false,
        rows,
        accum,
        seq_len,
        pad,
        records,
    };
    let summary = train(ctx, &mut model, &spec, &mut obj)?;
    let extra = json!({
        "kind": "cpt",
        "seq_len": seq_len,
        "batch_rows": rows,
        "grad_accum": accum,
        "dtype": params::dtype_name(model.kind()),
        "stream_position": obj.stream.position(),
    });
    params::write_output(ctx, &model, &tok_dir, &summary, extra)
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
