//! The `tokenizer` node kind (parameters and the one-source rule: `kinds::tokenizer`). Three
//! modes, each writing a tokenizer directory in HF layout (see [`crate::tok`]):
//!
//! - `path`: a `tokenizer.json` file or a directory holding one, checked to load, copied with
//!   its companion files;
//! - `from`: the same for the tokenizer files of a `model` node's artifact;
//! - training: a byte-level BPE of `vocab-size` tokens on the texts of the `data` datasets
//!   (text; message contents; prompt + completion; prompt + chosen + rejected). Deterministic:
//!   the same inputs give byte-identical files.
//!
//! `eos-token` must be in the vocabulary; `chat-template` must look like a chat template
//! (see [`template_param`]).

use crate::data::read_normalized;
use crate::stage::{Kind, StageCtx, StageError};
use crate::tok::{self, SpecialTokens, TokenizerDir};
use ::kinds::tokenizer::Params;
use ::kinds::PathParam;
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::fs;
use std::path::{Path, PathBuf};

/// The `tokenizer` kind.
pub struct Tokenizer;

impl Kind for Tokenizer {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::tokenizer::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        if let Some(path) = &p.path {
            let src = path_source(ctx, path)?;
            copy_mode(ctx, &p, &src, "path")
        } else if let Some(from) = &p.from {
            let src = model_source(ctx, from)?;
            copy_mode(ctx, &p, &src, "from")
        } else {
            train_mode(ctx, &p)
        }
    }
}

/// Where a copied tokenizer comes from: its `tokenizer.json`, the directory of its companion
/// files, and how errors name it.
struct CopySource {
    file: PathBuf,
    dir: PathBuf,
    shown: String,
}

/// `path`: a tokenizer.json file or a directory holding one.
fn path_source(ctx: &StageCtx, p: &PathParam) -> Result<CopySource, StageError> {
    let p = p.0.as_str();
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
    Ok(CopySource { file, dir, shown })
}

/// `from`: the tokenizer files of a model artifact.
fn model_source(ctx: &StageCtx, from: &::kinds::Input) -> Result<CopySource, StageError> {
    let input = ctx.input(&from.param)?;
    let file = input.dir.join(tok::TOKENIZER_FILE);
    if !file.is_file() {
        return Err(StageError::user(
            format!("model {} has no {}", input.node, tok::TOKENIZER_FILE),
            Some("a model directory used with `from` must carry its tokenizer files".into()),
        ));
    }
    Ok(CopySource {
        file,
        dir: input.dir.clone(),
        shown: format!("model {}: {}", input.node, tok::TOKENIZER_FILE),
    })
}

/// `path`/`from` mode: check `tokenizer.json` loads, copy it and its companions, apply
/// `eos-token`/`chat-template` and make sure `tokenizer_config.json` exists.
fn copy_mode(ctx: &StageCtx, p: &Params, src: &CopySource, mode: &str) -> Result<J, StageError> {
    let out = &ctx.out_dir;
    let tokenizer = tok::load_tokenizer_json(&src.file, &src.shown)?;
    copy_files(src, out)?;
    let cpath = out.join(tok::CONFIG_FILE);
    let had_config = cpath.is_file();
    let shown = src.shown.as_str();
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
        config = default_config(&tokenizer, loaded.chat_template.as_deref());
    }
    if let Some(eos) = eos_param(p, &tokenizer)? {
        config["eos_token"] = J::String(eos);
        changed = true;
    }
    let mut template = loaded.chat_template.clone();
    if let Some(t) = template_param(ctx, p)? {
        template = Some(t.clone());
        if config.get("chat_template").is_some() {
            config["chat_template"] = J::String(t);
            changed = true;
        }
    }
    if changed {
        crate::json::write_json(&cpath, &config)?;
    }
    if let Some(t) = &template {
        fs::write(out.join(tok::TEMPLATE_FILE), t).context("writing chat_template.jinja")?;
    }
    let final_dir = TokenizerDir::load(out, "tokenizer")?;
    Ok(summary(&final_dir, mode))
}

/// Copies `tokenizer.json` and the companion files present beside it into `out`.
fn copy_files(src: &CopySource, out: &Path) -> Result<(), StageError> {
    fs::copy(&src.file, out.join(tok::TOKENIZER_FILE))
        .with_context(|| format!("copying {}", src.shown))?;
    for name in tok::COMPANION_FILES {
        let from = src.dir.join(name);
        if from.is_file() {
            fs::copy(&from, out.join(name))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

/// The `tokenizer_config.json` of a copied tokenizer that has none: EOS and pad =
/// `<|endoftext|>` when the vocabulary has it.
fn default_config(tokenizer: &tokenizers::Tokenizer, template: Option<&str>) -> J {
    let eos = tokenizer
        .token_to_id("<|endoftext|>")
        .map(|_| "<|endoftext|>".to_string());
    let special = SpecialTokens {
        eos: eos.clone(),
        pad: eos,
        ..Default::default()
    };
    tok::tokenizer_config(tokenizer, &special, template, tok::DEFAULT_MAX_LENGTH)
}

/// The `eos-token` parameter, checked against the vocabulary.
fn eos_param(p: &Params, tokenizer: &tokenizers::Tokenizer) -> Result<Option<String>, StageError> {
    let Some(eos) = p.eos_token.as_deref() else {
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
fn template_param(ctx: &StageCtx, p: &Params) -> Result<Option<String>, StageError> {
    p.chat_template
        .as_ref()
        .map(|t| template_file(ctx, &t.0))
        .transpose()
}

/// The text of chat template file `p` (see [`template_param`]).
fn template_file(ctx: &StageCtx, p: &str) -> Result<String, StageError> {
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
    Ok(text)
}

/// Training mode: read the texts of the `data` datasets, train the BPE, then write the
/// tokenizer with its special tokens and chat template.
fn train_mode(ctx: &StageCtx, p: &Params) -> Result<J, StageError> {
    let Some(vocab) = p.vocab_size.filter(|_| !p.data.is_empty()) else {
        return Err(StageError::user(
            "training a tokenizer needs `vocab-size` and at least one `data` child",
            None,
        ));
    };
    let texts = training_texts(ctx, p)?;
    ctx.check_cancel()?;
    ctx.progress.set_message("training BPE");
    let specials = &p.special_tokens;
    let tokenizer = tok::train_bpe(texts.into_iter(), vocab, p.min_frequency, specials)?;
    let special = trained_specials(p, &tokenizer)?;
    let has = |t: &str| specials.iter().any(|s| s == t);
    let template = match template_param(ctx, p)? {
        Some(t) => Some(t),
        None => {
            (has("<|im_start|>") && has("<|im_end|>")).then(|| tok::CHATML_TEMPLATE.to_string())
        }
    };
    write_trained(&ctx.out_dir, &tokenizer, &special, template.as_deref())?;
    let dir = TokenizerDir::load(&ctx.out_dir, "tokenizer")?;
    Ok(summary(&dir, "train"))
}

/// Every text of the `data` datasets, in parameter order.
fn training_texts(ctx: &StageCtx, p: &Params) -> Result<Vec<String>, StageError> {
    let mut texts = Vec::new();
    for data in &p.data {
        let input = ctx.input(&data.param)?;
        let (_, records) = read_normalized(&input.dir)
            .with_context(|| format!("reading dataset {}", input.node))?;
        for r in &records {
            texts.extend(r.texts().into_iter().map(str::to_string));
        }
    }
    Ok(texts)
}

/// EOS = `eos-token`, else `<|endoftext|>` when special; pad = `<|pad|>` when special, else EOS.
fn trained_specials(
    p: &Params,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<SpecialTokens, StageError> {
    let has = |t: &str| p.special_tokens.iter().any(|s| s == t);
    let eos = match eos_param(p, tokenizer)? {
        Some(e) => Some(e),
        None => has("<|endoftext|>").then(|| "<|endoftext|>".to_string()),
    };
    let pad = if has("<|pad|>") {
        Some("<|pad|>".to_string())
    } else {
        eos.clone()
    };
    Ok(SpecialTokens {
        bos: None,
        eos,
        pad,
        unk: None,
    })
}

/// Writes a trained tokenizer's files: tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json and the chat template.
fn write_trained(
    out: &Path,
    tokenizer: &tokenizers::Tokenizer,
    special: &SpecialTokens,
    template: Option<&str>,
) -> Result<(), StageError> {
    let text = tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising tokenizer: {e}"))?;
    fs::write(out.join(tok::TOKENIZER_FILE), text + "\n").context("writing tokenizer.json")?;
    crate::json::write_json(
        &out.join(tok::CONFIG_FILE),
        &tok::tokenizer_config(tokenizer, special, template, tok::DEFAULT_MAX_LENGTH),
    )?;
    crate::json::write_json(
        &out.join(tok::SPECIAL_MAP_FILE),
        &tok::special_tokens_map(tokenizer, special),
    )?;
    if let Some(t) = template {
        fs::write(out.join(tok::TEMPLATE_FILE), t).context("writing chat_template.jinja")?;
    }
    Ok(())
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
