//! Dataset records: the four formats temper understands, their validation, and the normalised
//! copy (`data.jsonl` + `stats.json`) that a `dataset` node publishes and later stages read with
//! [`read_normalized`].
//!
//! Formats (see `shared/reference/losses.md`):
//! - `text`: `{"text": str}`
//! - `messages`: `{"messages": [{"role": system|user|assistant|tool, "content": str}, …]}` with at
//!   least one assistant turn
//! - `prompt-completion`: `{"prompt": str, "completion": str}`
//! - `preference`: `{"prompt": str|messages, "chosen": str|messages, "rejected": str|messages}`
//!   with `chosen != rejected`
//!
//! The normalised file holds canonical field names only, one record per line, in input order.

pub mod jsonl;
pub mod parquet;
pub mod sources;
pub mod validate;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

/// Name of the normalised records file inside a dataset artifact.
pub const DATA_FILE: &str = "data.jsonl";
/// Name of the statistics file inside a dataset artifact.
pub const STATS_FILE: &str = "stats.json";

/// A dataset format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Text,
    Messages,
    PromptCompletion,
    Preference,
}

impl From<kinds::dataset::Format> for Format {
    fn from(f: kinds::dataset::Format) -> Self {
        use kinds::dataset::Format as F;
        match f {
            F::Text => Format::Text,
            F::Messages => Format::Messages,
            F::PromptCompletion => Format::PromptCompletion,
            F::Preference => Format::Preference,
        }
    }
}

impl Format {
    /// Every format's name as written in recipes (declared by `kinds::dataset::Format`).
    pub const NAMES: &'static [&'static str] = kinds::dataset::Format::NAMES;

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "text" => Format::Text,
            "messages" => Format::Messages,
            "prompt-completion" => Format::PromptCompletion,
            "preference" => Format::Preference,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Messages => "messages",
            Format::PromptCompletion => "prompt-completion",
            Format::Preference => "preference",
        }
    }
    /// The canonical fields a record of this format has, in output order.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Format::Text => &["text"],
            Format::Messages => &["messages"],
            Format::PromptCompletion => &["prompt", "completion"],
            Format::Preference => &["prompt", "chosen", "rejected"],
        }
    }
}

/// A chat role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub const NAMES: &'static [&'static str] = &["system", "user", "assistant", "tool"];
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
    /// The role's name in records and chat templates.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A preference side (or prompt): plain text or a list of chat turns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

/// A validated record, typed by format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Text {
        text: String,
    },
    Messages {
        messages: Vec<Message>,
    },
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    Preference {
        prompt: Turns,
        chosen: Turns,
        rejected: Turns,
    },
}

#[derive(Serialize, Deserialize)]
struct TextRec {
    text: String,
}
#[derive(Serialize, Deserialize)]
struct MessagesRec {
    messages: Vec<Message>,
}
#[derive(Serialize, Deserialize)]
struct PcRec {
    prompt: String,
    completion: String,
}
#[derive(Serialize, Deserialize)]
struct PrefRec {
    prompt: Turns,
    chosen: Turns,
    rejected: Turns,
}

impl Record {
    pub fn format(&self) -> Format {
        match self {
            Record::Text { .. } => Format::Text,
            Record::Messages { .. } => Format::Messages,
            Record::PromptCompletion { .. } => Format::PromptCompletion,
            Record::Preference { .. } => Format::Preference,
        }
    }

    /// The canonical one-line JSON form written to `data.jsonl`.
    pub fn to_json_line(&self) -> String {
        let r = match self {
            Record::Text { text } => serde_json::to_string(&TextRec { text: text.clone() }),
            Record::Messages { messages } => serde_json::to_string(&MessagesRec {
                messages: messages.clone(),
            }),
            Record::PromptCompletion { prompt, completion } => serde_json::to_string(&PcRec {
                prompt: prompt.clone(),
                completion: completion.clone(),
            }),
            Record::Preference {
                prompt,
                chosen,
                rejected,
            } => serde_json::to_string(&PrefRec {
                prompt: prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
            }),
        };
        // Serialising plain strings and enums into JSON cannot fail.
        r.unwrap_or_default()
    }

    /// Parses one line of a normalised file of format `format`.
    pub fn from_json_line(format: Format, line: &str) -> serde_json::Result<Record> {
        Ok(match format {
            Format::Text => {
                let r: TextRec = serde_json::from_str(line)?;
                Record::Text { text: r.text }
            }
            Format::Messages => {
                let r: MessagesRec = serde_json::from_str(line)?;
                Record::Messages {
                    messages: r.messages,
                }
            }
            Format::PromptCompletion => {
                let r: PcRec = serde_json::from_str(line)?;
                Record::PromptCompletion {
                    prompt: r.prompt,
                    completion: r.completion,
                }
            }
            Format::Preference => {
                let r: PrefRec = serde_json::from_str(line)?;
                Record::Preference {
                    prompt: r.prompt,
                    chosen: r.chosen,
                    rejected: r.rejected,
                }
            }
        })
    }

    /// Every piece of text in the record (tokenizer training reads these).
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Record::Text { text } => vec![text.as_str()],
            Record::Messages { messages } => messages.iter().map(|m| m.content.as_str()).collect(),
            Record::PromptCompletion { prompt, completion } => {
                vec![prompt.as_str(), completion.as_str()]
            }
            Record::Preference {
                prompt,
                chosen,
                rejected,
            } => {
                let mut v = Vec::new();
                for t in [prompt, chosen, rejected] {
                    match t {
                        Turns::Text(s) => v.push(s.as_str()),
                        Turns::Messages(ms) => v.extend(ms.iter().map(|m| m.content.as_str())),
                    }
                }
                v
            }
        }
    }
}

/// Publishes `records` (all of `format`) as a dataset artifact in `dir`, as a `dataset` node
/// does: `data.jsonl` (one canonical line per record) and `stats.json` (`format`, `records`,
/// `content_hash` = blake3 of `data.jsonl`, plus the fields of `extra`, an object). Nodes that
/// produce data (`generate`, `pairs`) publish through it, so every node reading a dataset reads
/// their output the same way. Returns the stats.
pub fn write_normalized(
    dir: &Path,
    format: Format,
    records: &[Record],
    extra: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut text = String::new();
    for r in records {
        if r.format() != format {
            anyhow::bail!(
                "internal: a {} record in a {} dataset",
                r.format().name(),
                format.name()
            );
        }
        text.push_str(&r.to_json_line());
        text.push('\n');
    }
    let p = dir.join(DATA_FILE);
    fs::write(&p, &text).with_context(|| format!("writing {}", p.display()))?;
    let mut stats = serde_json::json!({
        "format": format.name(),
        "records": records.len(),
        "content_hash": blake3::hash(text.as_bytes()).to_hex().to_string(),
    });
    if let (Some(s), serde_json::Value::Object(e)) = (stats.as_object_mut(), extra) {
        s.extend(e);
    }
    let p = dir.join(STATS_FILE);
    let body = serde_json::to_string_pretty(&stats).context("serialising stats")? + "\n";
    fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
    Ok(stats)
}

/// Reads the statistics of a dataset artifact.
pub fn read_stats(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let p = dir.join(STATS_FILE);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Reads a dataset artifact written by the `dataset` node: its format and every record, in order.
pub fn read_normalized(dir: &Path) -> anyhow::Result<(Format, Vec<Record>)> {
    let stats = read_stats(dir)?;
    let fname = stats
        .get("format")
        .and_then(|f| f.as_str())
        .with_context(|| format!("{}: no \"format\"", dir.join(STATS_FILE).display()))?;
    let format = Format::parse(fname).with_context(|| {
        format!(
            "{}: unknown format {fname:?}",
            dir.join(STATS_FILE).display()
        )
    })?;
    let p = dir.join(DATA_FILE);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let r = Record::from_json_line(format, line).with_context(|| {
            format!("{}:{}: not a {} record", p.display(), i + 1, format.name())
        })?;
        out.push(r);
    }
    Ok((format, out))
}
