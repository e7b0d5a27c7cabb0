//! The `tokenizer` node kind. Exactly one of three modes:
//!
//! - `path`: a `tokenizer.json` file or a directory holding one (HF layout);
//! - `from`: the tokenizer files of a `model` node's artifact;
//! - training: a byte-level BPE of `vocab-size` tokens on the texts of the `data` datasets
//!   (text; message contents; prompt + completion; prompt + chosen + rejected), with
//!   `min-frequency` and `special-tokens` (ids 0..n, in the order given). Deterministic: the
//!   same inputs give byte-identical files.
//!
//! The artifact is a tokenizer directory in HF layout (see [`crate::tok`]). `eos-token`
//! overrides the end-of-sequence token (default `<|endoftext|>` when trained with it);
//! `chat-template` sets the chat template (default in training mode: ChatML when the
//! vocabulary has `<|im_start|>`/`<|im_end|>`).

use crate::data::read_normalized;
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::{self, SpecialTokens, TokenizerDir};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use std::fs;
use std::path::{Path, PathBuf};

/// The `tokenizer` kind.
pub struct Tokenizer;

/// Special tokens of a trained tokenizer unless `special-tokens` says otherwise.
pub const DEFAULT_SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"];

/// Parameters that only apply when training.
const TRAIN_ONLY: &[&str] = &["min-frequency", "special-tokens"];

impl Stage for Tokenizer {
    fn schema(&self) -> KindSchema {
        KindSchema::new("tokenizer", 1, "tokenizer")
            .doc("A tokenizer in Hugging Face layout: loaded from `path`, taken `from` a model, or a byte-level BPE trained on datasets.")
            .param(ParamSpec::new("path", ParamType::Path).optional()
                .doc("a tokenizer.json file or a directory holding one (with tokenizer_config.json, chat_template.jinja)"))
            .param(ParamSpec::new("from", ParamType::Ref(&["model"])).optional()
                .doc("use the tokenizer files of this model node"))
            .param(ParamSpec::new("vocab-size", ParamType::Int { min: Some(1), max: Some(1 << 24) }).optional()
                .doc("train a byte-level BPE of this many tokens (with `data` children)"))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset"])).optional().repeated()
                .doc("a dataset to train on; repeat the child for several"))
            .param(ParamSpec::new("min-frequency", ParamType::Int { min: Some(0), max: None })
                .default(Value::Int(2))
                .doc("training: minimum pair frequency for a merge"))
            .param(ParamSpec::new("special-tokens", ParamType::List(Box::new(ParamType::Str)))
                .default(Value::List(DEFAULT_SPECIALS.iter().map(|s| Value::Str(s.to_string())).collect()))
                .doc("training: special tokens, ids 0..n in this order"))
            .param(ParamSpec::new("chat-template", ParamType::Path).optional()
                .doc("a .jinja file setting the chat template"))
            .param(ParamSpec::new("eos-token", ParamType::Str).optional()
                .doc("end-of-sequence token (default <|endoftext|> when present)"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        let out = &ctx.out_dir;
        if let Some(p) = ctx.param("path").as_str() {
            let full = ctx.resolve_path(p);
            let (file, dir) = if full.is_dir() {
                (full.join(tok::TOKENIZER_FILE), full.clone())
            } else {
                let parent = full.parent().map(Path::to_path_buf).unwrap_or_default();
                (full.clone(), parent)
            };
            if !file.is_file() {
                return Err(StageError::user(
                    format!("path \"{p}\": no {} there", if full.is_dir() { "tokenizer.json" } else { "such file" }),
                    Some("`path` names a tokenizer.json file or a directory holding one, relative to the recipe".into()),
                ));
            }
            let shown = if full.is_dir() {
                format!("{}/{}", p.trim_end_matches('/'), tok::TOKENIZER_FILE)
            } else {
                p.to_string()
            };
            copy_mode(ctx, &file, &dir, &shown, "path")
        } else if !matches!(ctx.param("from"), Value::Null) {
            let input = ctx.input("from")?;
            let shown = format!("model {}: {}", input.node, tok::TOKENIZER_FILE);
            let file = input.dir.join(tok::TOKENIZER_FILE);
            if !file.is_file() {
                return Err(StageError::user(
                    format!("model {} has no {}", input.node, tok::TOKENIZER_FILE),
                    Some(
                        "a model directory used with `from` must carry its tokenizer files".into(),
                    ),
                ));
            }
            copy_mode(ctx, &file, &input.dir.clone(), &shown, "from")
        } else {
            train_mode(ctx, out)
        }
    }
}

fn data_count(v: Option<&Value>) -> usize {
    match v {
        Some(Value::List(l)) => l.len(),
        Some(Value::Ref(_)) => 1,
        _ => 0,
    }
}

/// Exactly one mode: `path`, `from`, or `vocab-size` + at least one `data`.
fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let issue = |p: Option<&str>, m: String, h: Option<&str>| ParamIssue {
        param: p.map(str::to_string),
        message: m,
        hint: h.map(str::to_string),
    };
    let ndata = data_count(n.params.get("data"));
    let train = set("vocab-size") || ndata > 0;
    let mut issues = Vec::new();
    let modes: Vec<&str> = [
        ("path", set("path")),
        ("from", set("from")),
        ("vocab-size", train),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    const HINT: &str = "use one of: `path=\"dir/or/tokenizer.json\"`, `from=MODEL`, or `vocab-size=N { data DATASET }`";
    match modes.len() {
        0 => issues.push(issue(
            None,
            "a tokenizer needs a source: `path`, `from`, or `vocab-size` with `data` to train one"
                .into(),
            Some(HINT),
        )),
        1 => {}
        _ => {
            let p = if modes[1] == "vocab-size" && !set("vocab-size") {
                "data"
            } else {
                modes[1]
            };
            issues.push(issue(
                Some(p),
                format!(
                    "`{}` and `{}` are exclusive: a tokenizer has one source",
                    modes[0], modes[1]
                ),
                Some(HINT),
            ));
        }
    }
    if modes.len() == 1 && train {
        if !set("vocab-size") {
            issues.push(issue(
                Some("data"),
                "training a tokenizer needs `vocab-size`".into(),
                Some("e.g. `tokenizer tok vocab-size=8000 { data corpus }`"),
            ));
        } else if ndata == 0 {
            issues.push(issue(
                Some("vocab-size"),
                "training a tokenizer needs at least one `data` child".into(),
                Some("e.g. `tokenizer tok vocab-size=8000 { data corpus }`"),
            ));
        } else {
            let nspecial = n
                .params
                .get("special-tokens")
                .and_then(|v| v.as_list())
                .map_or(0, |l| l.len());
            let v = n
                .params
                .get("vocab-size")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            if v < 256 + nspecial as i64 {
                issues.push(issue(Some("vocab-size"), format!("vocab-size {v} is smaller than the 256 byte tokens plus {nspecial} special tokens"), Some("a byte-level BPE starts from all 256 bytes; use a larger vocab-size")));
            }
        }
    }
    if modes.len() == 1 && !train {
        for p in TRAIN_ONLY {
            if n.param_locs.contains_key(*p) {
                issues.push(issue(
                    Some(p),
                    format!("`{p}` applies only when training a tokenizer"),
                    Some("remove it, or train with `vocab-size` and `data`"),
                ));
            }
        }
    }
    issues
}

/// `path`/`from` mode: check `tokenizer.json` loads, copy it and its companions, apply
/// `eos-token`/`chat-template` and make sure `tokenizer_config.json` exists.
fn copy_mode(
    ctx: &StageCtx,
    file: &Path,
    dir: &Path,
    shown: &str,
    mode: &str,
) -> Result<J, StageError> {
    let out = &ctx.out_dir;
    let tokenizer = tok::load_tokenizer_json(file, shown)?;
    fs::copy(file, out.join(tok::TOKENIZER_FILE)).with_context(|| format!("copying {shown}"))?;
    for name in tok::COMPANION_FILES {
        let src = dir.join(name);
        if src.is_file() {
            fs::copy(&src, out.join(name)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    let cpath = out.join(tok::CONFIG_FILE);
    let had_config = cpath.is_file();
    let loaded = TokenizerDir::load(out, shown.rsplit_once('/').map_or(shown, |(d, _)| d))?;
    let mut config = loaded.config.clone();
    if !config.is_object() {
        return Err(StageError::user(
            format!("{}: not a JSON object", tok::CONFIG_FILE),
            None,
        ));
    }
    let mut changed = !had_config;
    if !had_config {
        let eos = tokenizer
            .token_to_id("<|endoftext|>")
            .map(|_| "<|endoftext|>".to_string());
        let special = SpecialTokens {
            eos: eos.clone(),
            pad: eos,
            ..Default::default()
        };
        config = tok::tokenizer_config(
            &tokenizer,
            &special,
            loaded.chat_template.as_deref(),
            tok::DEFAULT_MAX_LENGTH,
        );
    }
    if let Some(eos) = eos_param(ctx, &tokenizer)? {
        config["eos_token"] = J::String(eos);
        changed = true;
    }
    let mut template = loaded.chat_template.clone();
    if let Some(t) = template_param(ctx)? {
        template = Some(t.clone());
        if config.get("chat_template").is_some() {
            config["chat_template"] = J::String(t);
            changed = true;
        }
    }
    if changed {
        tok::write_json(&cpath, &config)?;
    }
    if let Some(t) = &template {
        fs::write(out.join(tok::TEMPLATE_FILE), t).context("writing chat_template.jinja")?;
    }
    let final_dir = TokenizerDir::load(out, "tokenizer")?;
    Ok(summary(&final_dir, mode))
}

/// The `eos-token` parameter, checked against the vocabulary.
fn eos_param(
    ctx: &StageCtx,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<Option<String>, StageError> {
    let Some(eos) = ctx.param("eos-token").as_str() else {
        return Ok(None);
    };
    if tokenizer.token_to_id(eos).is_none() {
        return Err(StageError::user(
            format!("eos-token \"{eos}\" is not in the vocabulary"),
            Some(
                "name a token the tokenizer has (when training, add it to `special-tokens`)".into(),
            ),
        ));
    }
    Ok(Some(eos.to_string()))
}

/// Largest chat template file accepted (real ones are a few KiB).
const TEMPLATE_MAX_BYTES: u64 = 256 << 10;

/// The `chat-template` file's text. Only a file that looks like a chat template is copied into
/// the artifact (which `export` ships): a regular UTF-8 file of at most 256 KiB with Jinja
/// syntax that refers to `messages`. Other files are refused without echoing their content.
fn template_param(ctx: &StageCtx) -> Result<Option<String>, StageError> {
    let Some(p) = ctx.param("chat-template").as_str() else {
        return Ok(None);
    };
    let refuse = |why: String| {
        StageError::user(
            format!("chat-template \"{p}\": {why}"),
            Some(
                "name a Jinja chat template file (e.g. chat_template.jinja) that renders \
                 `messages`; paths are relative to the recipe's directory"
                    .into(),
            ),
        )
    };
    let path = ctx.resolve_path(p);
    let meta = fs::metadata(&path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > TEMPLATE_MAX_BYTES {
        return Err(refuse(format!(
            "{} bytes: too large for a chat template (at most {} KiB)",
            meta.len(),
            TEMPLATE_MAX_BYTES >> 10
        )));
    }
    let bytes = fs::read(&path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| refuse("not UTF-8 text".into()))?;
    let jinja = text.contains("{{") || text.contains("{%");
    if !jinja || !text.contains("messages") {
        return Err(refuse(
            "not a chat template (no Jinja block that iterates over `messages`)".into(),
        ));
    }
    Ok(Some(text))
}

/// The dataset inputs in parameter order (`data[0]`, `data[1]`, …, or a single `data`).
fn data_inputs(ctx: &StageCtx) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(usize, String, PathBuf)> = ctx
        .inputs
        .iter()
        .filter_map(|(k, a)| {
            let i = if k == "data" {
                0
            } else {
                k.strip_prefix("data[")?.strip_suffix(']')?.parse().ok()?
            };
            Some((i, a.node.clone(), a.dir.clone()))
        })
        .collect();
    v.sort_by_key(|(i, _, _)| *i);
    v.into_iter().map(|(_, n, d)| (n, d)).collect()
}

fn train_mode(ctx: &StageCtx, out: &Path) -> Result<J, StageError> {
    let vocab = ctx.param("vocab-size").as_i64().unwrap_or(0);
    let min_freq = ctx.param("min-frequency").as_i64().unwrap_or(2).max(0) as u64;
    let specials: Vec<String> = ctx
        .param("special-tokens")
        .as_list()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect());
    let inputs = data_inputs(ctx);
    if inputs.is_empty() || vocab <= 0 {
        return Err(StageError::user(
            "training a tokenizer needs `vocab-size` and at least one `data` child",
            None,
        ));
    }
    let mut texts = Vec::new();
    for (node, dir) in &inputs {
        let (_, records) =
            read_normalized(dir).with_context(|| format!("reading dataset {node}"))?;
        for r in &records {
            texts.extend(r.texts().into_iter().map(str::to_string));
        }
    }
    ctx.check_cancel()?;
    ctx.progress.set_message("training BPE");
    let tokenizer = tok::train_bpe(texts.into_iter(), vocab as usize, min_freq, &specials)?;
    let has = |t: &str| specials.iter().any(|s| s == t);
    let eos = match eos_param(ctx, &tokenizer)? {
        Some(e) => Some(e),
        None => has("<|endoftext|>").then(|| "<|endoftext|>".to_string()),
    };
    let pad = if has("<|pad|>") {
        Some("<|pad|>".to_string())
    } else {
        eos.clone()
    };
    let special = SpecialTokens {
        bos: None,
        eos,
        pad,
        unk: None,
    };
    let template = match template_param(ctx)? {
        Some(t) => Some(t),
        None => {
            (has("<|im_start|>") && has("<|im_end|>")).then(|| tok::CHATML_TEMPLATE.to_string())
        }
    };
    let text = tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising tokenizer: {e}"))?;
    fs::write(out.join(tok::TOKENIZER_FILE), text + "\n").context("writing tokenizer.json")?;
    tok::write_json(
        &out.join(tok::CONFIG_FILE),
        &tok::tokenizer_config(
            &tokenizer,
            &special,
            template.as_deref(),
            tok::DEFAULT_MAX_LENGTH,
        ),
    )?;
    tok::write_json(
        &out.join(tok::SPECIAL_MAP_FILE),
        &tok::special_tokens_map(&tokenizer, &special),
    )?;
    if let Some(t) = &template {
        fs::write(out.join(tok::TEMPLATE_FILE), t).context("writing chat_template.jinja")?;
    }
    let dir = TokenizerDir::load(out, "tokenizer")?;
    Ok(summary(&dir, "train"))
}

fn summary(d: &TokenizerDir, mode: &str) -> J {
    let mut specials: Vec<_> = d
        .tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .collect();
    specials.sort_by_key(|(id, _)| *id);
    json!({
        "mode": mode,
        "vocab_size": d.vocab_size(),
        "special_tokens": specials.into_iter().map(|(_, t)| t.content).collect::<Vec<_>>(),
        "eos_token": d.special.eos,
        "pad_token": d.special.pad,
        "chat_template": d.chat_template.is_some(),
    })
}
