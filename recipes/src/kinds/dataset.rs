//! The `dataset` node kind (parameters: `kinds::dataset`): reads local JSON-lines or Parquet
//! files (a file, a directory or a glob), validates every record for its `format`, and
//! publishes a normalised copy:
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

use crate::data::sources::{self, FileKind, SourceFile};
use crate::data::validate::{self, FieldMap, Invalid};
use crate::data::{jsonl, parquet, Format, DATA_FILE, STATS_FILE};
use crate::stage::{Kind, StageCtx, StageError};
use ::kinds::dataset::Params;
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The `dataset` kind.
pub struct Dataset;

/// How many skipped records are listed by location in `stats.json`.
const SKIP_EXAMPLES: usize = 5;

impl Kind for Dataset {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::dataset::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let format = Format::from(p.format);
        let fields = FieldMap::new(p.fields.0.clone());
        let files = sources::resolve(&ctx.root_dir, &p.path.0)?;
        let out_path = ctx.out_dir.join(DATA_FILE);
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let mut c = Collector::new(format, &fields, BufWriter::new(out));
        let per_file = read_files(ctx, &files, &mut c)?;
        c.finish(&out_path)?;
        c.verdict(ctx, &p, &files)?;
        write_stats(ctx, &c, per_file, files.len())
    }
}

/// Reads every file into the collector, in order: `[{name, records}]` per file.
fn read_files(
    ctx: &StageCtx,
    files: &[SourceFile],
    c: &mut Collector,
) -> Result<Vec<J>, StageError> {
    ctx.progress.set_length(files.len() as u64);
    let mut per_file = Vec::new();
    for file in files {
        ctx.check_cancel()?;
        ctx.progress.set_message(&file.name);
        let before = c.records;
        match file.kind {
            FileKind::JsonLines => jsonl::read(file, |loc, r| c.push(loc, r))?,
            FileKind::Parquet => parquet::read(file, c.format, c.fields, |loc, r| c.push(loc, r))?,
        }
        per_file.push(json!({"name": file.name, "records": c.records - before}));
        ctx.progress.inc(1);
    }
    Ok(per_file)
}

/// Writes `stats.json`; returns the node's summary.
fn write_stats(
    ctx: &StageCtx,
    c: &Collector,
    per_file: Vec<J>,
    nfiles: usize,
) -> Result<J, StageError> {
    let content_hash = c.hasher.finalize().to_hex().to_string();
    let stats = json!({
        "format": c.format.name(),
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
        "format": c.format.name(),
        "records": c.records,
        "skipped": c.invalid,
        "skipped_by_reason": c.skipped,
        "files": nfiles,
        "content_hash": content_hash,
    }))
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

impl<'a> Collector<'a> {
    fn new(format: Format, fields: &'a FieldMap, out: BufWriter<File>) -> Self {
        Collector {
            format,
            fields,
            out,
            hasher: blake3::Hasher::new(),
            records: 0,
            seen: 0,
            invalid: 0,
            first: None,
            skipped: BTreeMap::new(),
            examples: Vec::new(),
        }
    }

    /// Flushes and syncs `data.jsonl`.
    fn finish(&mut self, out_path: &Path) -> Result<(), StageError> {
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_all())
            .with_context(|| format!("writing {}", out_path.display()))?;
        Ok(())
    }

    /// Whether the dataset stands: at least one record read; no invalid record unless
    /// `skip-invalid` (and then at least one valid). Logs the skipped counts.
    fn verdict(&self, ctx: &StageCtx, p: &Params, files: &[SourceFile]) -> Result<(), StageError> {
        if self.seen == 0 {
            let what = if files.len() == 1 {
                format!("{}: no records (the file is empty)", files[0].name)
            } else {
                format!("path \"{}\": no records in {} files", p.path.0, files.len())
            };
            return Err(StageError::user(
                what,
                Some("a dataset needs at least one record".to_string()),
            ));
        }
        if let Some((loc, inv)) = &self.first {
            if !p.skip_invalid || self.records == 0 {
                return Err(first_error(self, loc, inv, p.skip_invalid));
            }
        }
        if self.invalid > 0 {
            tracing::warn!(
                node = %ctx.node,
                "skipped {} invalid records of {} ({})",
                self.invalid,
                self.seen,
                self.skipped
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    fn push(&mut self, loc: String, parsed: Result<J, Invalid>) -> Result<(), StageError> {
        self.seen += 1;
        match parsed.and_then(|v| validate::validate(self.format, &v, self.fields)) {
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
