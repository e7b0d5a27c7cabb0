//! Parquet reading through the `parquet` crate's arrow reader. Only the columns the format needs
//! are read. Columns are checked against the format *before* any row is read: a missing column
//! or a column of the wrong type is one error naming the file, the column and what is there.
//! Rows become JSON objects (source column names) and go through the same validation as JSON
//! lines; locations are `file: row N` with N the 0-based row index (as pandas/pyarrow show it).
//!
//! Accepted column types: strings (`utf8`, `large_utf8`, `utf8_view`) for text fields; for
//! message lists a `list<struct<role: string, content: string>>` column or a string column
//! holding the messages as JSON text.

use super::sources::SourceFile;
use super::validate::{FieldMap, Invalid};
use super::Format;
use crate::stage::StageError;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{self as dt, DataType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::{Map, Value as J};
use std::fs::File;

/// What a canonical field accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Str,
    Messages,
    StrOrMessages,
}

fn wants(format: Format) -> &'static [(&'static str, Want)] {
    match format {
        Format::Text => &[("text", Want::Str)],
        Format::Messages => &[("messages", Want::Messages)],
        Format::PromptCompletion => &[("prompt", Want::Str), ("completion", Want::Str)],
        Format::Preference => &[
            ("prompt", Want::StrOrMessages),
            ("chosen", Want::StrOrMessages),
            ("rejected", Want::StrOrMessages),
        ],
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_message_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) => matches!(f.data_type(), DataType::Struct(_)),
        _ => false,
    }
}

fn accepts(w: Want, t: &DataType) -> bool {
    match w {
        Want::Str => is_string(t),
        Want::Messages => is_message_list(t) || is_string(t),
        Want::StrOrMessages => is_string(t) || is_message_list(t),
    }
}

fn want_desc(w: Want) -> &'static str {
    match w {
        Want::Str => "a string column",
        Want::Messages => {
            "a list<struct<role: string, content: string>> column (or a string column of JSON)"
        }
        Want::StrOrMessages => "a string column or a list<struct<role, content>> column",
    }
}

/// Calls `f(location, parsed)` for every row of `file`, in order.
pub fn read(
    file: &SourceFile,
    format: Format,
    fields: &FieldMap,
    mut f: impl FnMut(String, Result<J, Invalid>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let name = &file.name;
    let fh = File::open(&file.path)
        .map_err(|e| StageError::Other(anyhow::anyhow!("opening {name}: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(fh).map_err(|e| {
        StageError::user(
            format!("{name}: not a readable Parquet file: {e}"),
            Some(
                "is it a Parquet file? (supported compressions: uncompressed, snappy, zstd)"
                    .to_string(),
            ),
        )
    })?;
    let schema = builder.schema().clone();
    let available: Vec<String> = schema
        .fields()
        .iter()
        .map(|fd| format!("\"{}\"", fd.name()))
        .collect();
    let mut indices = Vec::new();
    let mut columns: Vec<(String, Want)> = Vec::new();
    for (canonical, want) in wants(format) {
        let col = fields.source(canonical);
        let Some((idx, field)) = schema.column_with_name(col) else {
            let hint = if fields.is_mapped(canonical) {
                format!("`fields {canonical}=\"{col}\"` names a column the file does not have")
            } else {
                format!(
                    "format {} reads column \"{canonical}\"; map another column with a child node: `fields {canonical}=\"column_name\"`",
                    format.name()
                )
            };
            return Err(StageError::user(
                format!(
                    "{name}: column \"{col}\" not found (columns: {})",
                    available.join(", ")
                ),
                Some(hint),
            ));
        };
        if !accepts(*want, field.data_type()) {
            return Err(StageError::user(
                format!(
                    "{name}: column \"{col}\" has type {}; format {} needs {}",
                    field.data_type(),
                    format.name(),
                    want_desc(*want)
                ),
                Some(
                    "convert the column (e.g. cast it to string) or map another one with `fields`"
                        .to_string(),
                ),
            ));
        }
        indices.push(idx);
        columns.push((col.to_string(), *want));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(|e| StageError::user(format!("{name}: cannot read Parquet data: {e}"), None))?;
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| {
            StageError::user(format!("{name}: row {row}: cannot decode: {e}"), None)
        })?;
        let cols: Vec<_> = columns
            .iter()
            .map(|(c, w)| (c.as_str(), *w, batch.column_by_name(c)))
            .collect();
        for i in 0..batch.num_rows() {
            let loc = format!("{name}: row {row}");
            let mut obj = Map::new();
            let mut bad = None;
            for (c, want, arr) in &cols {
                let Some(arr) = arr else { continue };
                match cell(arr.as_ref(), i) {
                    Ok(J::String(s)) if *want == Want::Messages => {
                        match serde_json::from_str::<J>(&s) {
                            Ok(v) => {
                                obj.insert(c.to_string(), v);
                            }
                            Err(e) => {
                                bad = Some(Invalid::new(
                                    "invalid-json",
                                    format!("field \"{c}\": the string column does not hold JSON messages: {e}"),
                                ));
                                break;
                            }
                        }
                    }
                    Ok(J::Null) => {} // a null cell is a missing field
                    Ok(v) => {
                        obj.insert(c.to_string(), v);
                    }
                    Err(t) => {
                        bad = Some(Invalid::new(
                            "wrong-type",
                            format!("field \"{c}\": unsupported Parquet type {t}"),
                        ));
                        break;
                    }
                }
            }
            f(loc, bad.map_or(Ok(J::Object(obj)), Err))?;
            row += 1;
        }
    }
    Ok(())
}

/// Converts one cell to JSON (strings, numbers, booleans, lists and structs); `Err` names an
/// unsupported type.
fn cell(arr: &dyn Array, i: usize) -> Result<J, String> {
    if arr.is_null(i) {
        return Ok(J::Null);
    }
    let t = arr.data_type();
    let v = match t {
        DataType::Null => J::Null,
        DataType::Utf8 => J::from(arr.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => J::from(arr.as_string::<i64>().value(i)),
        DataType::Utf8View => J::from(arr.as_string_view().value(i)),
        DataType::Boolean => J::from(arr.as_boolean().value(i)),
        DataType::Int8 => J::from(arr.as_primitive::<dt::Int8Type>().value(i)),
        DataType::Int16 => J::from(arr.as_primitive::<dt::Int16Type>().value(i)),
        DataType::Int32 => J::from(arr.as_primitive::<dt::Int32Type>().value(i)),
        DataType::Int64 => J::from(arr.as_primitive::<dt::Int64Type>().value(i)),
        DataType::UInt8 => J::from(arr.as_primitive::<dt::UInt8Type>().value(i)),
        DataType::UInt16 => J::from(arr.as_primitive::<dt::UInt16Type>().value(i)),
        DataType::UInt32 => J::from(arr.as_primitive::<dt::UInt32Type>().value(i)),
        DataType::UInt64 => J::from(arr.as_primitive::<dt::UInt64Type>().value(i)),
        DataType::Float32 => J::from(arr.as_primitive::<dt::Float32Type>().value(i) as f64),
        DataType::Float64 => J::from(arr.as_primitive::<dt::Float64Type>().value(i)),
        DataType::List(_) => list(arr.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(arr.as_list::<i64>().value(i).as_ref())?,
        DataType::Struct(_) => {
            let s = arr.as_struct();
            let mut m = Map::new();
            for (fd, col) in s.fields().iter().zip(s.columns()) {
                m.insert(fd.name().clone(), cell(col.as_ref(), i)?);
            }
            J::Object(m)
        }
        other => return Err(other.to_string()),
    };
    Ok(v)
}

fn list(values: &dyn Array) -> Result<J, String> {
    (0..values.len())
        .map(|j| cell(values, j))
        .collect::<Result<Vec<_>, _>>()
        .map(J::Array)
}
