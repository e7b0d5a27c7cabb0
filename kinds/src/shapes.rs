//! The shapes of a model's linear layers, known without loading it: what `check` can say about
//! the model a node reads (e.g. whether a LoRA rank exceeds a layer's dimensions).
//!
//! Known when the model a node reads comes, through at most [`MAX_HOPS`] training nodes
//! (`cpt`, `sft`, `dpo`, `npo`: they keep shapes, adapters included) and `select` nodes (the
//! chosen variant of `from`), from a `model` node that either initialises a model (its size
//! parameters) or loads a local Hugging Face directory whose `config.json` (read within the
//! bounds of `dsl::CheckContext::json_file`) has `hidden_size`, `intermediate_size`,
//! `num_attention_heads` and `num_hidden_layers` (`num_key_value_heads` defaults to the heads,
//! `head_dim` to `hidden_size / heads`). Anything else (a `merge`, an unreadable config, a
//! longer chain) is unknown: `None`, never an error — the stage sees the real model.

use dsl::{CheckContext, NodeDecl, Value};
use std::path::Path;

/// Kinds whose output model has their `model` input's shapes.
const SHAPE_KEEPING: &[&str] = &["cpt", "sft", "dpo", "npo"];

/// References followed from a node to the `model` node (bounds the work a recipe of many
/// chained nodes costs; a cycle is an error of its own).
pub const MAX_HOPS: usize = 1000;

/// The dimensions of a Llama-family decoder that fix its linear layers' shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shapes {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Decoder blocks.
    pub layers: usize,
}

impl Shapes {
    /// `(in, out)` of the block's linear layer `module` (`q_proj` … `down_proj`).
    pub fn linear(&self, module: &str) -> Option<(usize, usize)> {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        Some(match module {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, self.intermediate),
            "down_proj" => (self.intermediate, h),
            _ => return None,
        })
    }

    /// From the dimensions, completing the optional ones; `None` when one is zero or
    /// `head_dim` is missing and `hidden` does not divide evenly.
    fn new(
        hidden: usize,
        intermediate: usize,
        heads: usize,
        kv_heads: Option<usize>,
        head_dim: Option<usize>,
        layers: usize,
    ) -> Option<Shapes> {
        let head_dim = match head_dim {
            Some(d) => d,
            None if heads > 0 && hidden.is_multiple_of(heads) => hidden / heads,
            None => return None,
        };
        let s = Shapes {
            hidden,
            intermediate,
            heads,
            kv_heads: kv_heads.unwrap_or(heads),
            head_dim,
            layers,
        };
        let dims = [s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim];
        dims.iter().all(|d| *d > 0).then_some(s)
    }
}

/// The shapes of the model node `name` produces, if the recipe tells them (module docs).
pub fn of_node(cx: &CheckContext<'_>, name: &str) -> Option<Shapes> {
    of_model_node(cx, model_node(cx, name)?)
}

/// The `model` node whose model node `name` produces (through training and `select` nodes;
/// module docs).
pub fn model_node<'a>(cx: &CheckContext<'a>, name: &str) -> Option<&'a NodeDecl> {
    let mut n = cx.node(name)?;
    for _ in 0..MAX_HOPS {
        let next = match n.kind.as_str() {
            "model" => return Some(n),
            k if SHAPE_KEEPING.contains(&k) => n.params.get("model"),
            dsl::schema::SELECT_KIND => n.params.get("from"),
            _ => None,
        };
        match next {
            Some(Value::Ref(r)) => n = cx.node(r)?,
            _ => return None,
        }
    }
    None
}

/// A `model` node's shapes: its size parameters when it initialises, its `config.json` when
/// it loads a directory.
fn of_model_node(cx: &CheckContext<'_>, n: &NodeDecl) -> Option<Shapes> {
    let int = |k: &str| {
        n.params
            .get(k)
            .and_then(Value::as_i64)
            .and_then(|v| usize::try_from(v).ok())
    };
    match n.params.get("path") {
        Some(Value::Path(p)) => from_config(&*cx.json_file(&Path::new(p).join("config.json"))?),
        _ => Shapes::new(
            int("hidden-size")?,
            int("intermediate-size")?,
            int("heads")?,
            int("kv-heads"),
            int("head-dim"),
            int("layers")?,
        ),
    }
}

/// The shapes a Hugging Face `config.json` describes (module docs for what is read).
pub fn from_config(j: &serde_json::Value) -> Option<Shapes> {
    let int = |k: &str| {
        j.get(k)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    };
    Shapes::new(
        int("hidden_size")?,
        int("intermediate_size")?,
        int("num_attention_heads")?,
        int("num_key_value_heads"),
        int("head_dim"),
        int("num_hidden_layers")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_shapes_follow_the_config() {
        let cfg: serde_json::Value = serde_json::from_str(
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "head_dim": null}"#,
        )
        .unwrap();
        let s = from_config(&cfg).unwrap();
        assert_eq!(s.head_dim, 16);
        assert_eq!(s.linear("q_proj"), Some((64, 64)));
        assert_eq!(s.linear("v_proj"), Some((64, 32)));
        assert_eq!(s.linear("o_proj"), Some((64, 64)));
        assert_eq!(s.linear("down_proj"), Some((128, 64)));
        assert_eq!(s.linear("lm_head"), None);
        // A config without the dimensions (another architecture) is unknown, not an error.
        assert_eq!(from_config(&serde_json::json!({"n_embd": 64})), None);
        let zero = serde_json::json!({"hidden_size": 64, "intermediate_size": 0,
            "num_attention_heads": 4, "num_hidden_layers": 2});
        assert_eq!(from_config(&zero), None);
    }
}
