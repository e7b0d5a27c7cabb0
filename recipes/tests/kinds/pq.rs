//! Writes small Parquet files for the tests and the bad-input corpus.

use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, StructBuilder};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use std::path::Path;
use std::sync::Arc;

/// Writes one batch with the given columns.
pub fn write(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch =
        RecordBatch::try_from_iter(cols.into_iter().map(|(n, a)| (n.to_string(), a))).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

pub fn strings(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

pub fn ints(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// A list<struct<role: string, content: string>> column.
pub fn messages(rows: &[&[(&str, &str)]]) -> ArrayRef {
    let fields = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    let sb = StructBuilder::new(
        fields,
        vec![
            Box::new(StringBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    );
    let mut lb = ListBuilder::new(sb);
    for row in rows {
        for (role, content) in row.iter() {
            let st = lb.values();
            st.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(role);
            st.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(content);
            st.append(true);
        }
        lb.append(true);
    }
    Arc::new(lb.finish())
}
