//! The `dataset` node kind: reads local JSON-lines or Parquet files (a file, a directory or a
//! glob), validates every record for its `format`, and publishes a normalised copy:
//!
//! - `data.jsonl`: canonical field names only, one record per line, in input order (files sorted
//!   by path, records in file order);
//! - `stats.json`: `{format, records, skipped: {reason: count}, skipped_examples: [...],
//!   files: [{name, records}], content_hash}` with `content_hash = blake3(data.jsonl)`.
//!
//! A bad record is an error naming `file:line` (JSON lines) or `file: row N` (Parquet, 0-based)
//! and the source field. With `skip-invalid=#true` bad records are counted per reason instead,
//! reported in the stats and logged as a warning; a dataset left with no record is an error.
//! Later stages read the result with [`crate::data::read_normalized`].

use crate::data::records::{self, FieldMap, Invalid};
use crate::data::sources::{self, FileKind};
use crate::data::{jsonl, parquet, Format, DATA_FILE, STATS_FILE};
use crate::stage::{Stage, StageCtx, StageError};
use anyhow::Context;
use dsl::{KindSchema, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};

/// The `dataset` kind.
pub struct Dataset;

/// How many skipped records are listed by location in `stats.json`.
const SKIP_EXAMPLES: usize = 5;

impl Stage for Dataset {
    fn schema(&self) -> KindSchema {
        let field =
            |n: &'static str, d: &'static str| ParamSpec::new(n, ParamType::Str).optional().doc(d);
        KindSchema::new("dataset", 1, "dataset")
            .doc("A local JSON-lines or Parquet dataset (file, directory or glob), validated and normalised.")
            .param(
                ParamSpec::new("path", ParamType::Path)
                    .doc("file, directory of .jsonl/.json/.parquet files, or glob; relative to the recipe"),
            )
            .param(
                ParamSpec::new("format", ParamType::Enum(Format::NAMES))
                    .doc("text | messages | prompt-completion | preference"),
            )
            .param(
                ParamSpec::new(
                    "fields",
                    ParamType::Record {
                        positional: &[],
                        fields: vec![
                            field("text", "source column of `text`"),
                            field("messages", "source column of `messages`"),
                            field("prompt", "source column of `prompt`"),
                            field("completion", "source column of `completion`"),
                            field("chosen", "source column of `chosen`"),
                            field("rejected", "source column of `rejected`"),
                        ],
                    },
                )
                .optional()
                .doc("maps canonical field names to the source's column names: `fields prompt=\"question\"`"),
            )
            .param(
                ParamSpec::new("skip-invalid", ParamType::Bool)
                    .default(Value::Bool(false))
                    .doc("skip invalid records (counted per reason in stats.json) instead of failing"),
            )
    }

    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        let path = ctx
            .param("path")
            .as_str()
            .ok_or_else(|| StageError::user("parameter `path` is required", None))?
            .to_string();
        let format_name = ctx.param("format").as_str().unwrap_or("");
        let format = Format::parse(format_name).ok_or_else(|| {
            StageError::user(
                format!("unknown format \"{format_name}\""),
                Some(format!("formats: {}", Format::NAMES.join(", "))),
            )
        })?;
        let fields = field_map(ctx.param("fields"));
        let skip_invalid = ctx.param("skip-invalid").as_bool().unwrap_or(false);

        let files = sources::resolve(&ctx.root_dir, &path)?;
        ctx.progress.set_length(files.len() as u64);
        let out_path = ctx.out_dir.join(DATA_FILE);
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let mut c = Collector {
            format,
            fields: &fields,
            out: BufWriter::new(out),
            hasher: blake3::Hasher::new(),
            records: 0,
            seen: 0,
            invalid: 0,
            first: None,
            skipped: BTreeMap::new(),
            examples: Vec::new(),
        };
        let mut per_file = Vec::new();
        for file in &files {
            ctx.check_cancel()?;
            ctx.progress.set_message(&file.name);
            let before = c.records;
            match file.kind {
                FileKind::JsonLines => jsonl::read(file, |loc, r| c.push(loc, r))?,
                FileKind::Parquet => parquet::read(file, format, &fields, |loc, r| c.push(loc, r))?,
            }
            per_file.push(json!({"name": file.name, "records": c.records - before}));
            ctx.progress.inc(1);
        }
        c.out
            .flush()
            .and_then(|_| c.out.get_ref().sync_all())
            .with_context(|| format!("writing {}", out_path.display()))?;

        if c.seen == 0 {
            let what = if files.len() == 1 {
                format!("{}: no records (the file is empty)", files[0].name)
            } else {
                format!("path \"{path}\": no records in {} files", files.len())
            };
            return Err(StageError::user(
                what,
                Some("a dataset needs at least one record".to_string()),
            ));
        }
        if let Some((loc, inv)) = &c.first {
            if !skip_invalid || c.records == 0 {
                return Err(first_error(&c, loc, inv, skip_invalid));
            }
        }
        if c.invalid > 0 {
            tracing::warn!(
                node = %ctx.node,
                "skipped {} invalid records of {} ({})",
                c.invalid,
                c.seen,
                c.skipped
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let content_hash = c.hasher.finalize().to_hex().to_string();
        let stats = json!({
            "format": format.name(),
            "records": c.records,
            "skipped": c.skipped,
            "skipped_examples": c.examples,
            "files": per_file,
            "content_hash": content_hash,
        });
        let stats_path = ctx.out_dir.join(STATS_FILE);
        let text = serde_json::to_string_pretty(&stats).context("serialising stats")?;
        std::fs::write(&stats_path, text + "\n")
            .with_context(|| format!("writing {}", stats_path.display()))?;
        Ok(json!({
            "format": format.name(),
            "records": c.records,
            "skipped": c.invalid,
            "skipped_by_reason": c.skipped,
            "files": files.len(),
            "content_hash": content_hash,
        }))
    }
}

/// The `fields` record as a canonical → source map (unset fields are `Null` and ignored).
fn field_map(v: &Value) -> FieldMap {
    let mut m = BTreeMap::new();
    if let Some(r) = v.as_record() {
        for (k, v) in r {
            if let Some(s) = v.as_str() {
                m.insert(k.clone(), s.to_string());
            }
        }
    }
    FieldMap::new(m)
}

/// Validates records and writes the valid ones, counting the rest.
struct Collector<'a> {
    format: Format,
    fields: &'a FieldMap,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    records: usize,
    seen: usize,
    invalid: usize,
    first: Option<(String, Invalid)>,
    skipped: BTreeMap<&'static str, usize>,
    examples: Vec<J>,
}

impl Collector<'_> {
    fn push(&mut self, loc: String, parsed: Result<J, Invalid>) -> Result<(), StageError> {
        self.seen += 1;
        match parsed.and_then(|v| records::validate(self.format, &v, self.fields)) {
            Ok(rec) => {
                let mut line = rec.to_json_line();
                line.push('\n');
                self.hasher.update(line.as_bytes());
                self.out
                    .write_all(line.as_bytes())
                    .context("writing data.jsonl")?;
                self.records += 1;
            }
            Err(inv) => {
                self.invalid += 1;
                *self.skipped.entry(inv.reason).or_insert(0) += 1;
                if self.examples.len() < SKIP_EXAMPLES {
                    self.examples.push(json!({
                        "location": loc,
                        "reason": inv.reason,
                        "message": inv.message,
                    }));
                }
                if self.first.is_none() {
                    self.first = Some((loc, inv));
                }
            }
        }
        Ok(())
    }
}

/// The error for the first invalid record, with the count of the others in the hint.
fn first_error(c: &Collector, loc: &str, inv: &Invalid, skip_invalid: bool) -> StageError {
    let mut hint = inv.hint.clone().unwrap_or_default();
    let more = c.invalid - 1;
    let extra = if skip_invalid {
        format!(
            "all {} records are invalid (skip-invalid leaves nothing)",
            c.invalid
        )
    } else if more > 0 {
        let others: Vec<&str> = c
            .examples
            .iter()
            .skip(1)
            .filter_map(|e| e.get("location").and_then(|l| l.as_str()))
            .collect();
        format!(
            "{more} more invalid record{} (e.g. {}); skip-invalid=#true skips and counts them",
            if more == 1 { "" } else { "s" },
            others.join(", ")
        )
    } else {
        String::new()
    };
    if !extra.is_empty() {
        if !hint.is_empty() {
            hint.push_str("; ");
        }
        hint.push_str(&extra);
    }
    StageError::user(
        format!("{loc}: {}", inv.message),
        if hint.is_empty() { None } else { Some(hint) },
    )
}
