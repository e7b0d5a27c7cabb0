//! Hugging Face chat templates rendered with minijinja, the way `transformers`'
//! `apply_chat_template` renders them with Jinja2.
//!
//! Compatibility rules (each one mirrors transformers' Jinja environment):
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template dropped,
//!   `{% break %}` / `{% continue %}` available (`loopcontrols`);
//! - Python string/dict methods (`.strip()`, `.startswith()`, `.items()` …) through
//!   minijinja-contrib's `pycompat`;
//! - `raise_exception(msg)` fails the render with `msg`; `strftime_now(fmt)` formats the
//!   template's clock ([`ChatTemplate::set_now`]: fixed for reproducible training data, the
//!   current UTC time by default);
//! - `tojson` is Python's `json.dumps(x, ensure_ascii=False)` (separators `", "` / `": "`,
//!   `indent`, `sort_keys`, `ensure_ascii` keywords), *not* minijinja's HTML-safe variant that
//!   escapes `<`, `>`, `&`;
//! - `{% generation %}` / `{% endgeneration %}` markers (transformers' assistant-mask extension)
//!   are removed: temper finds assistant spans by rendering prefixes instead
//!   (see [`crate::batching::examples`]);
//! - the context holds `messages`, `add_generation_prompt`, `tools`/`documents` (none) and every
//!   special token of `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`,
//!   `unk_token`, other `*_token` strings, `additional_special_tokens`).
//!
//! A template is checked against its tokenizer when it is built: every special token it spells
//! out (`<|im_start|>`-style literals) or names through a variable (`bos_token`, `eos_token` …)
//! must exist in the tokenizer's vocabulary, else the template would silently be tokenised into
//! pieces. That is an error naming the token.

use crate::data::Message;
use anyhow::{anyhow, bail, Context};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{json, Map, Value as J};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// A compiled chat template with its special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template source as loaded (before `{% generation %}` markers are removed).
    source: String,
    /// Special tokens exposed to the template (`bos_token` → `<s>` …).
    specials: Map<String, J>,
    /// The clock of `strftime_now` (Unix seconds); [`NOW_UNSET`] = the current time.
    now: Arc<AtomicI64>,
}

/// `now` value meaning "read the system clock".
const NOW_UNSET: i64 = i64::MIN;

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`, exposing the special tokens found in `config` (the parsed
    /// `tokenizer_config.json`), and checks every special token the template uses against
    /// `tokenizer`'s vocabulary.
    pub fn new(source: &str, config: &J, tokenizer: &Tokenizer) -> anyhow::Result<ChatTemplate> {
        let specials = special_tokens(config);
        check_tokens(source, &specials, tokenizer)?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson_filter);
        let now = Arc::new(AtomicI64::new(NOW_UNSET));
        let clock = now.clone();
        env.add_function(
            "strftime_now",
            move |fmt: String| -> Result<String, Error> {
                let t = match clock.load(Ordering::Relaxed) {
                    NOW_UNSET => unix_now(),
                    t => t,
                };
                strftime(&fmt, t)
            },
        );
        let clean = strip_generation_tags(source);
        env.add_template_owned(NAME, clean)
            .map_err(|e| anyhow!("the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            specials,
            now,
        })
    }

    /// Loads the template of a tokenizer or model directory: `chat_template.jinja`, else
    /// `tokenizer_config.json["chat_template"]` (a string, or a list of `{name, template}` of
    /// which `default` is used). `Ok(None)` when the directory has no template.
    pub fn load(dir: &Path, tokenizer: &Tokenizer) -> anyhow::Result<Option<ChatTemplate>> {
        let cpath = dir.join("tokenizer_config.json");
        let config: J = if cpath.is_file() {
            let text = fs::read_to_string(&cpath)
                .with_context(|| format!("reading {}", cpath.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", cpath.display()))?
        } else {
            json!({})
        };
        let Some(source) = template_source(dir, &config)? else {
            return Ok(None);
        };
        ChatTemplate::new(&source, &config, tokenizer)
            .with_context(|| format!("chat template of {}", dir.display()))
            .map(Some)
    }

    /// Fixes the clock `strftime_now` reads (Unix seconds, UTC). Training data rendered with a
    /// date must not change between a run and its resume, so stages pin it.
    pub fn set_now(&mut self, unix_seconds: i64) {
        self.now.store(unix_seconds, Ordering::Relaxed);
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the opening of an assistant turn is
    /// appended (what a model continues from at inference).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> anyhow::Result<String> {
        let msgs: Vec<J> = messages
            .iter()
            .map(|m| json!({"role": m.role.name(), "content": m.content}))
            .collect();
        let mut ctx = self.specials.clone();
        ctx.insert("messages".into(), J::Array(msgs));
        ctx.insert(
            "add_generation_prompt".into(),
            J::Bool(add_generation_prompt),
        );
        ctx.insert("tools".into(), J::Null);
        ctx.insert("documents".into(), J::Null);
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| anyhow!("chat template: {e:#}"))?;
        tmpl.render(Value::from_serialize(J::Object(ctx)))
            .map_err(|e| anyhow!("rendering the chat template: {}", render_error(&e)))
    }
}

/// The template text of a directory (see [`ChatTemplate::load`]).
pub fn template_source(dir: &Path, config: &J) -> anyhow::Result<Option<String>> {
    let tpath = dir.join("chat_template.jinja");
    if tpath.is_file() {
        return fs::read_to_string(&tpath)
            .with_context(|| format!("reading {}", tpath.display()))
            .map(Some);
    }
    match config.get("chat_template") {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(J::Array(list)) => {
            let mut names = Vec::new();
            for t in list {
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("");
                if name == "default" {
                    if let Some(s) = t.get("template").and_then(|s| s.as_str()) {
                        return Ok(Some(s.to_string()));
                    }
                }
                names.push(name.to_string());
            }
            bail!(
                "{}: `chat_template` is a list of named templates without a \"default\" one (it has: {})",
                dir.join("tokenizer_config.json").display(),
                names.join(", ")
            )
        }
        Some(_) => bail!(
            "{}: `chat_template` must be a string or a list of {{name, template}}",
            dir.join("tokenizer_config.json").display()
        ),
    }
}

/// The special tokens of a `tokenizer_config.json`: every `*_token` whose value is a string
/// or `{"content": …}`, plus `additional_special_tokens`.
fn special_tokens(config: &J) -> Map<String, J> {
    let mut m = Map::new();
    for k in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        m.insert(k.into(), J::Null);
    }
    if let Some(obj) = config.as_object() {
        for (k, v) in obj {
            if k.ends_with("_token") {
                if let Some(s) = crate::tok::token_str(Some(v)) {
                    m.insert(k.clone(), J::String(s));
                }
            }
        }
        if let Some(J::Array(a)) = obj.get("additional_special_tokens") {
            let list: Vec<J> = a
                .iter()
                .filter_map(|t| crate::tok::token_str(Some(t)).map(J::String))
                .collect();
            m.insert("additional_special_tokens".into(), J::Array(list));
        }
    }
    m
}

/// Checks that the special tokens the template uses exist in the vocabulary.
fn check_tokens(source: &str, specials: &Map<String, J>, tok: &Tokenizer) -> anyhow::Result<()> {
    for (var, v) in specials {
        if !uses_variable(source, var) {
            continue;
        }
        match v {
            J::String(t) if tok.token_to_id(t).is_none() => bail!(
                "the chat template uses `{var}` = {t:?}, which is not a token of the tokenizer \
                 (it would be split into pieces); add it as a special token or fix tokenizer_config.json"
            ),
            J::Null => bail!(
                "the chat template uses `{var}`, but tokenizer_config.json does not define it"
            ),
            _ => {}
        }
    }
    for t in literal_special_tokens(source) {
        if tok.token_to_id(&t).is_none() {
            bail!(
                "the chat template writes the special token {t:?}, which the tokenizer does not have \
                 (it would be split into pieces); use a tokenizer that defines it, or a template for this tokenizer"
            );
        }
    }
    Ok(())
}

/// Whether identifier `var` occurs in the template as a whole word.
fn uses_variable(source: &str, var: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source.match_indices(var).any(|(i, _)| {
        let before = source[..i].chars().next_back();
        let after = source[i + var.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// `<|…|>` literals in the template (the usual spelling of special tokens).
pub fn literal_special_tokens(source: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("<|") {
        let after = &rest[i + 2..];
        match after.find("|>") {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)) =>
            {
                let t = format!("<|{}|>", &after[..j]);
                if !out.contains(&t) {
                    out.push(t);
                }
                rest = &after[j + 2..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Removes `{% generation %}` / `{% endgeneration %}` tags (with any `-`/`+` modifiers).
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        let tail = &rest[i + 2..];
        if let Some(j) = tail.find("%}") {
            let inner = tail[..j].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
            if inner == "generation" || inner == "endgeneration" {
                out.push_str(&rest[..i]);
                rest = &tail[j + 2..];
                continue;
            }
        }
        out.push_str(&rest[..i + 2]);
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// The message of a render error, with `raise_exception`'s text kept verbatim.
fn render_error(e: &Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => format!("the template raised: {d}"),
        _ => format!("{e:#}"),
    }
}

/// `tojson` as `json.dumps(v, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson_filter(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get::<Option<usize>>("indent")?;
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let opts = JsonOpts {
        indent,
        ensure_ascii,
        sort_keys,
        item,
        key,
    };
    let mut out = String::new();
    py_json(&v, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    item: String,
    key: String,
}

fn newline(o: &JsonOpts, level: usize, out: &mut String) {
    if let Some(n) = o.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

/// Serialises a template value as Python's `json.dumps` does.
fn py_json(v: &Value, o: &JsonOpts, level: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
                return Ok(());
            }
            let f = f64::try_from(v.clone())?;
            out.push_str(&py_float(f));
        }
        ValueKind::String => py_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item);
                }
                newline(o, level + 1, out);
                py_json(it, o, level + 1, out)?;
            }
            newline(o, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item);
                }
                newline(o, level + 1, out);
                let ks = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => {
                        let mut s = String::new();
                        py_json(k, o, level + 1, &mut s)?;
                        s.trim_matches('"').to_string()
                    }
                };
                py_string(&ks, o.ensure_ascii, out);
                out.push_str(&o.key);
                py_json(&v.get_item(k)?, o, level + 1, out)?;
            }
            newline(o, level, out);
            out.push('}');
        }
        _ => py_string(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation when the decimal
/// exponent is < -4 or >= 16 (`1e-05`, `1e+16`), `.0` on integral values; `NaN`/`Infinity`.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f:?}");
    if s.contains('.') || s.contains("inf") {
        s
    } else {
        format!("{s}.0")
    }
}

/// A JSON string literal as Python writes it.
fn py_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `strftime` over a UTC Unix time, for the directives chat templates use:
/// `%d %m %Y %y %B %b %A %a %H %M %S %j %e %%`.
pub fn strftime(fmt: &str, unix: i64) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = store::human::civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - store::human::days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}
