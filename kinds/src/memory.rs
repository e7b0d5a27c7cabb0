//! The memory a training node needs per rank, estimated at check time from the shapes of the
//! model it trains ([`crate::shapes`]) and its parameters: what `temper plan` shows under the
//! node, and the warning when it exceeds the device's memory.
//!
//! Bytes per trained parameter by precision (the trainer's layout, ARCHITECTURE.md):
//! `f32` weights 4, gradients 4, AdamW moments 8; `bf16-mixed` weights 4 + 2 (f32 master, bf16
//! working copy), gradients 4 + 2, moments 8; `bf16` 2, 2 and 4. A LoRA node trains its adapter
//! in f32 (`r·(in + out)` per targeted layer) and holds the frozen base in the compute dtype.
//! `shard optimizer` divides the moments by the ranks R; `gradients` also the f32 masters and the
//! summed gradients (one decoder block's gradients are whole at a time); `full` also the working
//! weights, of which one block is whole at a time, and its blocks are recomputed in backward (the
//! activations are those of `activation-checkpointing`). A LoRA node shards its adapter only.
//!
//! Activations, per token of a micro-batch and per decoder layer, in the compute dtype of `b`
//! bytes: about `17·hidden·b` kept for backward (the projections, the MLP's intermediate
//! tensors, norms, residuals), plus, off CUDA where attention is not flash, the attention
//! probabilities `2·heads·T·4`. With `activation-checkpointing` each layer keeps only its input
//! (`hidden·b`) and one layer's full activations exist at a time. The LM head adds one chunk of
//! 2048 rows of f32 logits and their gradient. These are estimates (allocator slack, libtorch's
//! own memory and temporaries come on top), good to a few tens of percent.

use crate::precision::Precision;
use crate::shapes::Shapes;
use dsl::{CheckContext, NodeDecl, Value};
use std::path::Path;

/// Rows of the LM head per chunk (the trainer's `CHUNK_TOKENS`).
const HEAD_CHUNK: f64 = 2048.0;

/// A model's dimensions beyond its layers' shapes.
#[derive(Clone, Copy, Debug)]
pub struct ModelDims {
    pub shapes: Shapes,
    /// Vocabulary size, when known.
    pub vocab: Option<usize>,
    /// Whether the LM head is the embedding.
    pub tied: bool,
}

impl ModelDims {
    /// All parameters: embeddings (and an untied head), each layer's seven projections and two
    /// norms, the final norm (biases left out).
    pub fn parameters(&self) -> f64 {
        let s = &self.shapes;
        let per_layer: usize = crate::lora::LINEAR_MODULES
            .iter()
            .filter_map(|m| s.linear(m))
            .map(|(i, o)| i * o)
            .sum::<usize>()
            + 2 * s.hidden;
        let v = self.vocab.unwrap_or(0) * s.hidden;
        (per_layer * s.layers + v * if self.tied { 1 } else { 2 } + s.hidden) as f64
    }
}

/// The dimensions of the model node `name` produces (see [`crate::shapes::of_node`]); the
/// vocabulary from its `config.json` or, for a model initialised here, its tokenizer node's
/// `vocab-size`.
pub fn model_dims(cx: &CheckContext<'_>, name: &str) -> Option<ModelDims> {
    let shapes = crate::shapes::of_node(cx, name)?;
    let n = crate::shapes::model_node(cx, name)?;
    let (vocab, tied) = match n.params.get("path") {
        Some(Value::Path(p)) => {
            let j = cx.json_file(&Path::new(p).join("config.json"))?;
            let vocab = j
                .get("vocab_size")
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize);
            let tied = j
                .get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            (vocab, tied)
        }
        _ => {
            let vocab = match n.params.get("tokenizer") {
                Some(Value::Ref(t)) => cx
                    .node(t)
                    .and_then(|t| t.params.get("vocab-size"))
                    .and_then(Value::as_i64)
                    .map(|v| v as usize),
                _ => None,
            };
            let tied = matches!(n.params.get("tie-embeddings"), Some(Value::Bool(true)));
            (vocab, tied)
        }
    };
    Some(ModelDims {
        shapes,
        vocab,
        tied,
    })
}

/// A training node's estimate per rank, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// Activations without / with `activation-checkpointing`.
    pub activations: f64,
    pub activations_checkpointed: f64,
    /// Whether the node checkpoints (which of the two counts).
    pub checkpointing: bool,
    /// Tokens of one micro-batch.
    pub tokens: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        let act = match self.checkpointing {
            true => self.activations_checkpointed,
            false => self.activations,
        };
        self.weights + self.gradients + self.optimizer + act
    }

    /// One line for `temper plan`: `memory per rank ≈ T GiB: ` and [`Estimate::parts`].
    pub fn line(&self) -> String {
        format!(
            "memory per rank ≈ {} GiB: {}",
            gib(self.total()),
            self.parts()
        )
    }

    /// What the total is made of: weights, gradients, optimizer state, activations (and the
    /// activations the other way of `activation-checkpointing`).
    pub fn parts(&self) -> String {
        let (act, other, other_word) = match self.checkpointing {
            true => (self.activations_checkpointed, self.activations, "without"),
            false => (self.activations, self.activations_checkpointed, "with"),
        };
        format!(
            "weights {}, gradients {}, optimizer state {}, activations {} at {:.0} tokens per \
             micro-batch ({} {other_word} activation-checkpointing)",
            gib(self.weights),
            gib(self.gradients),
            gib(self.optimizer),
            gib(act),
            self.tokens,
            gib(other)
        )
    }
}

/// Bytes as GiB with one decimal (two below 1).
pub fn gib(bytes: f64) -> String {
    let x = bytes / (1u64 << 30) as f64;
    if x < 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

/// The estimate of training node `n` on `model`, on CUDA or not (see the module docs).
pub fn estimate(n: &NodeDecl, model: &ModelDims, on_cuda: bool) -> Estimate {
    let int = |k: &str| {
        n.params
            .get(k)
            .and_then(Value::as_i64)
            .map(|v| v.max(0) as f64)
    };
    let word = |k: &str| n.params.get(k).and_then(Value::as_str);
    let dtype = word("dtype")
        .and_then(dsl::device::Dtype::parse)
        .unwrap_or(dsl::device::Dtype::Auto);
    let precision = word("precision")
        .and_then(Precision::parse)
        .unwrap_or(Precision::Auto)
        .resolve(dtype, on_cuda);
    // Bytes per trained parameter: working weight, f32 master, moments; the compute dtype's b.
    let (work, master, o, b) = match precision {
        Precision::Bf16 => (2.0, 0.0, 4.0, 2.0),
        Precision::Bf16Mixed => (2.0, 4.0, 8.0, 2.0),
        _ => (4.0, 0.0, 8.0, 4.0),
    };
    let ranks = int("ranks").unwrap_or(1.0).max(1.0);
    let shard = word("shard").unwrap_or("none");
    let all = model.parameters();
    let s = &model.shapes;
    let lora = n.params.get("lora").and_then(Value::as_record);
    // The trained parameters, the frozen ones held in the compute dtype, and one block's share.
    let (n_trained, frozen) = match lora {
        Some(r) => {
            let rank = r.get("rank").and_then(Value::as_i64).unwrap_or(8).max(0) as f64;
            let per_layer: f64 = crate::lora::targeted_modules(&crate::lora::targets_of(r))
                .into_iter()
                .filter_map(|m| s.linear(m))
                .map(|(i, o)| rank * (i + o) as f64)
                .sum();
            (per_layer * s.layers as f64, all * b)
        }
        None => (all, 0.0),
    };
    // A LoRA adapter is f32, its own master.
    let (work, master) = if lora.is_some() {
        (4.0, 0.0)
    } else {
        (work, master)
    };
    let block = n_trained / (s.layers.max(1) as f64);
    let r = |on: bool| if on { ranks } else { 1.0 };
    let (split_master, split_grads, split_work) = match shard {
        "gradients" => (true, true, false),
        "full" => (true, true, true),
        _ => (false, false, false),
    };
    let weights = frozen
        + n_trained * work / r(split_work)
        + if split_work { block * work } else { 0.0 }
        + n_trained * master / r(split_master);
    // Summed gradients in the master dtype (f32), plus the working copy's while they exist:
    // whole through the backward unless sharded, one block at a time when sharded.
    let summed = if master > 0.0 { 4.0 } else { work };
    let gradients = match split_grads {
        true => n_trained * summed / ranks + block * work,
        false => n_trained * (summed + if master > 0.0 { work } else { 0.0 }),
    };
    let optimizer = n_trained * o / r(shard != "none");
    let len = int("seq-len").or_else(|| int("max-len")).unwrap_or(1024.0);
    let pairs = if n.kind == "dpo" { 2.0 } else { 1.0 };
    let tokens = int("batch-size").unwrap_or(8.0) * len * pairs;
    let h = s.hidden as f64;
    let attn = if on_cuda {
        0.0
    } else {
        2.0 * s.heads as f64 * len * 4.0
    };
    let per_layer = 17.0 * h * b + attn;
    let head = tokens.min(HEAD_CHUNK) * model.vocab.unwrap_or(0) as f64 * 4.0 * 2.0;
    let layers = s.layers as f64;
    Estimate {
        weights,
        gradients,
        optimizer,
        activations: tokens * per_layer * layers + head,
        activations_checkpointed: tokens * (h * b * layers + per_layer) + head,
        // `shard full` recomputes every block in backward, checkpointing or not.
        checkpointing: split_work
            || matches!(
                n.params.get("activation-checkpointing"),
                Some(Value::Bool(true))
            ),
        tokens,
    }
}

/// The estimate of training node `n` as a note for `plan`, and a warning when it exceeds the
/// CUDA devices' memory the load was told of (`--cuda-memory`, or the device's own); nothing
/// when the model's shapes are unknown.
pub fn check(n: &NodeDecl, cx: &CheckContext<'_>, f: &mut dsl::Findings) {
    let Some(Value::Ref(model)) = n.params.get("model") else {
        return;
    };
    let Some(dims) = model_dims(cx, model) else {
        return;
    };
    let on_cuda = crate::common::runs_on_cuda(n, cx.machine).unwrap_or(false);
    let e = estimate(n, &dims, on_cuda);
    f.notes.push(e.line());
    let Some(mib) = cx.machine.cuda_memory_mib.filter(|_| on_cuda) else {
        return;
    };
    let have = mib as f64 * (1u64 << 20) as f64;
    if e.total() > have {
        f.warnings.push(dsl::ParamIssue::new(
            None,
            format!(
                "this node needs about {} GiB per rank, more than the {} GiB of a CUDA device \
                 ({})",
                gib(e.total()),
                gib(have),
                e.parts()
            ),
            Some(
                "more `ranks` with `shard gradients` or `shard full`, \
                 `activation-checkpointing #true`, a smaller `batch-size` (`grad-accum` keeps \
                 the global batch), or `lora`",
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> ModelDims {
        // SmolLM2-135M: 576 hidden, 1536 intermediate, 9 heads of 64, 3 kv heads, 30 layers.
        let cfg = serde_json::json!({"hidden_size": 576, "intermediate_size": 1536,
            "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30});
        ModelDims {
            shapes: crate::shapes::from_config(&cfg).unwrap(),
            vocab: Some(49152),
            tied: true,
        }
    }

    #[test]
    fn smollm2_has_its_parameter_count() {
        // 134.5M (transformers' count for SmolLM2-135M, biases none).
        let p = dims().parameters();
        assert!((p - 134_515_008.0).abs() < 1.0, "{p}");
    }

    fn node(params: &[(&str, Value)]) -> NodeDecl {
        let loc = dsl::Loc {
            file: 0,
            span: (0, 0).into(),
        };
        NodeDecl {
            name: "tuned".into(),
            kind: "sft".into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            param_locs: Default::default(),
            loc,
            resources: Vec::new(),
        }
    }

    #[test]
    fn precision_shard_lora_and_checkpointing_move_the_estimate() {
        let d = dims();
        let p = d.parameters();
        let base = [
            ("batch-size", Value::Int(8)),
            ("seq-len", Value::Int(2048)),
            ("ranks", Value::Int(2)),
        ];
        let f32_cpu = estimate(&node(&base), &d, false);
        assert_eq!(f32_cpu.weights, 4.0 * p);
        assert_eq!(f32_cpu.optimizer, 8.0 * p);
        let mixed = estimate(&node(&base), &d, true);
        assert_eq!((mixed.weights, mixed.gradients), (6.0 * p, 6.0 * p));
        let mut sharded = base.to_vec();
        sharded.push(("shard", Value::Str("optimizer".into())));
        assert_eq!(estimate(&node(&sharded), &d, true).optimizer, 4.0 * p);
        // ZeRO-2 halves the masters and summed gradients at 2 ranks; ZeRO-3 the weights too.
        let layers = 30.0;
        let zero = |mode: &str| {
            let mut v = base.to_vec();
            v.push(("shard", Value::Str(mode.into())));
            estimate(&node(&v), &d, true)
        };
        let (g, f) = (zero("gradients"), zero("full"));
        let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
        close(g.weights, 2.0 * p + 2.0 * p);
        close(g.gradients, 2.0 * p + 2.0 * p / layers);
        close(f.weights, p + 2.0 * p / layers + 2.0 * p);
        assert!(f.total() < g.total() && g.total() < mixed.total());
        // Checkpointing keeps a small fraction of the activations.
        assert!(mixed.activations_checkpointed < mixed.activations / 5.0);
        let mut ck = base.to_vec();
        ck.push(("activation-checkpointing", Value::Bool(true)));
        let with = estimate(&node(&ck), &d, true);
        assert!(with.total() < mixed.total());
        // LoRA: the optimizer state is the adapter's, far below the model's.
        let mut lora = base.to_vec();
        let mut r = std::collections::BTreeMap::new();
        r.insert("rank".into(), Value::Int(16));
        r.insert(
            "target".into(),
            Value::List(vec![Value::Str("all-linear".into())]),
        );
        lora.push(("lora", Value::Record(r)));
        let l = estimate(&node(&lora), &d, true);
        assert!(l.optimizer < 0.05 * mixed.optimizer, "{l:?}");
        assert!(mixed.line().starts_with("memory per rank ≈ "));
    }
}
