//! Validation of one source record (a JSON object, from a JSONL line or a Parquet row) against a
//! format, through the `fields` mapping from canonical names to source names.
//!
//! Every rejection carries a stable `reason` (the key under which `skip-invalid` counts it), a
//! message naming the *source* field (`field "answer": expected a string, found a number`) and,
//! where useful, a hint.

use super::{Format, Message, Record, Role, Turns};
use serde_json::{Map, Value as J};
use std::collections::BTreeMap;

/// Canonical field name → source field (column) name. Unmapped fields keep their canonical name.
#[derive(Clone, Debug, Default)]
pub struct FieldMap {
    map: BTreeMap<String, String>,
}

impl FieldMap {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        FieldMap { map }
    }
    /// The source name of canonical field `canonical`.
    pub fn source<'a>(&'a self, canonical: &'a str) -> &'a str {
        self.map
            .get(canonical)
            .map(|s| s.as_str())
            .unwrap_or(canonical)
    }
    pub fn is_mapped(&self, canonical: &str) -> bool {
        self.map.contains_key(canonical)
    }
}

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Stable reason key: `invalid-json`, `not-an-object`, `missing-field`, `wrong-type`,
    /// `empty-content`, `unknown-role`, `no-assistant-turn`, `chosen-equals-rejected`.
    pub reason: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl Invalid {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

/// "a string", "a number", … as used in messages.
pub fn json_type(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "a list",
        J::Object(_) => "an object",
    }
}

/// Validates one source record for `format`.
pub fn validate(format: Format, v: &J, fields: &FieldMap) -> Result<Record, Invalid> {
    let obj = match v {
        J::Object(o) => o,
        other => {
            return Err(Invalid::new(
                "not-an-object",
                format!("expected a JSON object, found {}", json_type(other)),
            )
            .hint("each record must be one JSON object such as {\"text\": \"…\"}"))
        }
    };
    let v = Validator {
        format,
        obj,
        fields,
    };
    match format {
        Format::Text => Ok(Record::Text {
            text: v.string("text")?,
        }),
        Format::Messages => {
            let name = fields.source("messages");
            let messages = messages(name, v.get("messages")?, true)?;
            Ok(Record::Messages { messages })
        }
        Format::PromptCompletion => Ok(Record::PromptCompletion {
            prompt: v.string("prompt")?,
            completion: v.string("completion")?,
        }),
        Format::Preference => {
            let prompt = v.turns("prompt")?;
            let chosen = v.turns("chosen")?;
            let rejected = v.turns("rejected")?;
            if chosen == rejected {
                return Err(Invalid::new(
                    "chosen-equals-rejected",
                    format!(
                        "fields \"{}\" and \"{}\" are identical",
                        fields.source("chosen"),
                        fields.source("rejected")
                    ),
                )
                .hint("a preference pair needs two different responses; remove the record or use skip-invalid=#true"));
            }
            Ok(Record::Preference {
                prompt,
                chosen,
                rejected,
            })
        }
    }
}

struct Validator<'a> {
    format: Format,
    obj: &'a Map<String, J>,
    fields: &'a FieldMap,
}

impl Validator<'_> {
    fn get(&self, canonical: &str) -> Result<&J, Invalid> {
        let name = self.fields.source(canonical);
        self.obj.get(name).ok_or_else(|| {
            let keys: Vec<String> = self.obj.keys().map(|k| format!("\"{k}\"")).collect();
            let needed: Vec<String> = self
                .format
                .fields()
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect();
            let have = if keys.is_empty() {
                "the record has no fields".to_string()
            } else {
                format!("the record has {}", keys.join(", "))
            };
            let hint = if self.fields.is_mapped(canonical) {
                format!(
                    "`fields {canonical}=\"{name}\"` maps \"{canonical}\" to \"{name}\"; check the spelling"
                )
            } else {
                format!(
                    "format {} needs {}; if your data names it differently, map it: `fields {canonical}=\"your_name\"`",
                    self.format.name(),
                    needed.join(", ")
                )
            };
            Invalid::new("missing-field", format!("field \"{name}\": missing ({have})")).hint(hint)
        })
    }

    fn string(&self, canonical: &str) -> Result<String, Invalid> {
        let name = self.fields.source(canonical);
        nonempty_str(name, self.get(canonical)?)
    }

    fn turns(&self, canonical: &str) -> Result<Turns, Invalid> {
        let name = self.fields.source(canonical);
        match self.get(canonical)? {
            J::Array(_) => Ok(Turns::Messages(messages(
                name,
                self.get(canonical)?,
                false,
            )?)),
            other => match nonempty_str(name, other) {
                Ok(s) => Ok(Turns::Text(s)),
                Err(mut e) if e.reason == "wrong-type" => {
                    e.message = format!(
                        "field \"{name}\": expected a string or a list of messages, found {}",
                        json_type(other)
                    );
                    Err(e)
                }
                Err(e) => Err(e),
            },
        }
    }
}

fn nonempty_str(name: &str, v: &J) -> Result<String, Invalid> {
    match v {
        J::String(s) if s.trim().is_empty() => Err(Invalid::new(
            "empty-content",
            format!("field \"{name}\": empty string"),
        )
        .hint("records with empty text teach nothing; fix them or use skip-invalid=#true")),
        J::String(s) => Ok(s.clone()),
        other => Err(Invalid::new(
            "wrong-type",
            format!(
                "field \"{name}\": expected a string, found {}",
                json_type(other)
            ),
        )),
    }
}

/// Validates a list of chat messages in field `name`. `need_assistant`: at least one assistant
/// turn is required (the `messages` format; SFT trains on assistant turns).
pub fn messages(name: &str, v: &J, need_assistant: bool) -> Result<Vec<Message>, Invalid> {
    let items = match v {
        J::Array(a) => a,
        other => {
            return Err(Invalid::new(
                "wrong-type",
                format!(
                    "field \"{name}\": expected a list of messages, found {}",
                    json_type(other)
                ),
            )
            .hint("messages look like [{\"role\": \"user\", \"content\": \"…\"}, {\"role\": \"assistant\", \"content\": \"…\"}]"))
        }
    };
    if items.is_empty() {
        return Err(Invalid::new(
            "empty-content",
            format!("field \"{name}\": empty list of messages"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("{name}[{i}]");
        let o = match m {
            J::Object(o) => o,
            other => {
                return Err(Invalid::new(
                    "wrong-type",
                    format!(
                    "field \"{at}\": expected an object with \"role\" and \"content\", found {}",
                    json_type(other)
                ),
                ))
            }
        };
        let role = match o.get("role") {
            None => {
                return Err(Invalid::new(
                    "missing-field",
                    format!("field \"{at}.role\": missing"),
                ))
            }
            Some(J::String(r)) => Role::parse(r).ok_or_else(|| {
                Invalid::new(
                    "unknown-role",
                    format!("field \"{at}.role\": unknown role \"{r}\""),
                )
                .hint(format!("roles are {}", Role::NAMES.join(", ")))
            })?,
            Some(other) => {
                return Err(Invalid::new(
                    "wrong-type",
                    format!(
                        "field \"{at}.role\": expected a string, found {}",
                        json_type(other)
                    ),
                ))
            }
        };
        let content = match o.get("content") {
            None => {
                return Err(Invalid::new(
                    "missing-field",
                    format!("field \"{at}.content\": missing"),
                ))
            }
            Some(J::String(c)) => c.clone(),
            Some(other) => {
                let e = Invalid::new(
                    "wrong-type",
                    format!(
                        "field \"{at}.content\": expected a string, found {}",
                        json_type(other)
                    ),
                );
                return Err(if other.is_array() {
                    e.hint("content given as a list of parts is not supported; join the text parts into one string")
                } else {
                    e
                });
            }
        };
        // System and tool turns may be empty; an empty user or assistant turn is a broken record.
        if content.trim().is_empty() && matches!(role, Role::User | Role::Assistant) {
            return Err(Invalid::new(
                "empty-content",
                format!("field \"{at}.content\": empty {} turn", role.name()),
            ));
        }
        out.push(Message { role, content });
    }
    if need_assistant && !out.iter().any(|m| m.role == Role::Assistant) {
        return Err(Invalid::new(
            "no-assistant-turn",
            format!("field \"{name}\": no assistant turn"),
        )
        .hint("a chat record needs at least one {\"role\": \"assistant\"} message to train on"));
    }
    Ok(out)
}
