//! Tokenizers in Hugging Face layout: loading (`tokenizer.json` + `tokenizer_config.json` +
//! `chat_template.jinja`), byte-level BPE training, and writing the HF companion files.
//!
//! A tokenizer directory written by temper holds `tokenizer.json`, `tokenizer_config.json`
//! (`tokenizer_class: PreTrainedTokenizerFast`, special tokens, `added_tokens_decoder`,
//! `chat_template`), `special_tokens_map.json` and, when there is a template,
//! `chat_template.jinja` (same text as the config's `chat_template`).

use crate::stage::StageError;
use anyhow::Context;
use serde_json::{json, Map, Value as J};
use std::fs;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerImpl};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_MAP_FILE: &str = "special_tokens_map.json";
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// Files copied along with `tokenizer.json` when present.
pub const COMPANION_FILES: &[&str] = &[CONFIG_FILE, SPECIAL_MAP_FILE, TEMPLATE_FILE];

/// `model_max_length` written when nothing bounds it (transformers' "very large integer" is
/// 1e30; a plain integer is kept readable by every JSON parser). The `model` node rewrites it
/// to the model's `max_position_embeddings`.
pub const DEFAULT_MAX_LENGTH: u64 = 1 << 20;

/// ChatML, used when the vocabulary has `<|im_start|>` and `<|im_end|>` and no template is given.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Loads a `tokenizer.json`; `shown` names it in errors.
pub fn load_tokenizer_json(path: &Path, shown: &str) -> Result<Tokenizer, StageError> {
    let bytes =
        fs::read(path).map_err(|e| StageError::user(format!("{shown}: cannot read: {e}"), None))?;
    Tokenizer::from_bytes(&bytes).map_err(|e| {
        StageError::user(
            format!("{shown}: not a loadable tokenizer: {e}"),
            Some("expected a Hugging Face `tokenizers` file (tokenizer.json as saved by save_pretrained)".into()),
        )
    })
}

/// Trains a byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer, decoder and post-processor,
/// no prefix space, the 256-byte alphabet always present) of `vocab_size` tokens, special
/// tokens first (ids 0..n). Deterministic: the trainer breaks count ties by token ids, which
/// are fixed by the sorted alphabet.
pub fn train_bpe<I>(
    texts: I,
    vocab_size: usize,
    min_frequency: u64,
    special_tokens: &[String],
) -> anyhow::Result<Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let mut trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(
            special_tokens
                .iter()
                .map(|s| AddedToken::from(s.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)));
    tok.train(&mut trainer, texts)
        .map_err(|e| anyhow::anyhow!("training the BPE: {e}"))?;
    let text = tok
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serialising the BPE: {e}"))?;
    Tokenizer::from_bytes(text.as_bytes()).map_err(|e| anyhow::anyhow!("reloading the BPE: {e}"))
}

/// Vocabulary size including added tokens, large enough for every id in use.
pub fn full_vocab_size(tok: &Tokenizer) -> usize {
    let max_added = tok
        .get_added_tokens_decoder()
        .keys()
        .max()
        .map(|m| *m as usize + 1)
        .unwrap_or(0);
    tok.get_vocab_size(true).max(max_added)
}

/// `added_tokens_decoder` as transformers writes it: id (as a string) → token flags, by id.
pub fn added_tokens_decoder(tok: &Tokenizer) -> Map<String, J> {
    let mut added: Vec<_> = tok.get_added_tokens_decoder().into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    let mut m = Map::new();
    for (id, t) in added {
        m.insert(
            id.to_string(),
            json!({
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }),
        );
    }
    m
}

/// The special tokens of a tokenizer directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// Builds `tokenizer_config.json` (keys sorted, as transformers writes them).
pub fn tokenizer_config(
    tok: &Tokenizer,
    special: &SpecialTokens,
    chat_template: Option<&str>,
    model_max_length: u64,
) -> J {
    let s = |t: &Option<String>| t.clone().map(J::String).unwrap_or(J::Null);
    let mut m = Map::new();
    m.insert("add_bos_token".into(), J::Bool(false));
    m.insert("add_prefix_space".into(), J::Bool(false));
    m.insert(
        "added_tokens_decoder".into(),
        J::Object(added_tokens_decoder(tok)),
    );
    m.insert("bos_token".into(), s(&special.bos));
    if let Some(t) = chat_template {
        m.insert("chat_template".into(), J::String(t.to_string()));
    }
    m.insert("clean_up_tokenization_spaces".into(), J::Bool(false));
    m.insert("eos_token".into(), s(&special.eos));
    m.insert("errors".into(), J::String("replace".into()));
    m.insert("model_max_length".into(), J::from(model_max_length));
    m.insert("pad_token".into(), s(&special.pad));
    m.insert(
        "tokenizer_class".into(),
        J::String("PreTrainedTokenizerFast".into()),
    );
    m.insert("unk_token".into(), s(&special.unk));
    J::Object(m)
}

/// Builds `special_tokens_map.json`: the named special tokens plus the other special added
/// tokens as `additional_special_tokens`.
pub fn special_tokens_map(tok: &Tokenizer, special: &SpecialTokens) -> J {
    let named = [
        ("bos_token", &special.bos),
        ("eos_token", &special.eos),
        ("pad_token", &special.pad),
        ("unk_token", &special.unk),
    ];
    let mut added: Vec<_> = tok.get_added_tokens_decoder().into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    let additional: Vec<J> = added
        .into_iter()
        .filter(|(_, t)| t.special && !named.iter().any(|(_, n)| n.as_deref() == Some(&t.content)))
        .map(|(_, t)| J::String(t.content))
        .collect();
    let mut m = Map::new();
    if !additional.is_empty() {
        m.insert("additional_special_tokens".into(), J::Array(additional));
    }
    for (k, v) in named {
        if let Some(v) = v {
            m.insert(k.into(), J::String(v.clone()));
        }
    }
    J::Object(m)
}

/// A token entry of tokenizer_config.json: a string, or `{"content": …}` (older files).
pub fn token_str(v: Option<&J>) -> Option<String> {
    match v? {
        J::String(s) => Some(s.clone()),
        J::Object(o) => o.get("content")?.as_str().map(|s| s.to_string()),
        _ => None,
    }
}

/// A tokenizer directory loaded for use by later stages.
pub struct TokenizerDir {
    pub tokenizer: Tokenizer,
    /// `tokenizer_config.json` (an empty object when absent).
    pub config: J,
    /// `chat_template.jinja`, else the config's `chat_template` (when a string).
    pub chat_template: Option<String>,
    pub special: SpecialTokens,
}

impl TokenizerDir {
    /// Loads `dir` (a tokenizer or model directory); `shown` names it in errors.
    pub fn load(dir: &Path, shown: &str) -> Result<TokenizerDir, StageError> {
        let shown = shown.trim_end_matches('/');
        let tokenizer = load_tokenizer_json(
            &dir.join(TOKENIZER_FILE),
            &format!("{shown}/{TOKENIZER_FILE}"),
        )?;
        let cpath = dir.join(CONFIG_FILE);
        let config: J = if cpath.is_file() {
            let text = fs::read_to_string(&cpath)
                .with_context(|| format!("reading {}", cpath.display()))?;
            serde_json::from_str(&text).map_err(|e| {
                StageError::user(format!("{shown}/{CONFIG_FILE}:{}: {e}", e.line()), None)
            })?
        } else {
            json!({})
        };
        let tpath = dir.join(TEMPLATE_FILE);
        let chat_template = if tpath.is_file() {
            Some(
                fs::read_to_string(&tpath)
                    .with_context(|| format!("reading {}", tpath.display()))?,
            )
        } else {
            config
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(|s| s.to_string())
        };
        let special = SpecialTokens {
            bos: token_str(config.get("bos_token")),
            eos: token_str(config.get("eos_token")),
            pad: token_str(config.get("pad_token")),
            unk: token_str(config.get("unk_token")),
        };
        Ok(TokenizerDir {
            tokenizer,
            config,
            chat_template,
            special,
        })
    }

    pub fn id(&self, token: &Option<String>) -> Option<u32> {
        token.as_deref().and_then(|t| self.tokenizer.token_to_id(t))
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.id(&self.special.eos)
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.id(&self.special.bos)
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.id(&self.special.pad)
    }
    pub fn vocab_size(&self) -> usize {
        full_vocab_size(&self.tokenizer)
    }
}
