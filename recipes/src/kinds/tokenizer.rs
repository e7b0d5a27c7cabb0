//! The `tokenizer` node kind (stub, being written).
use crate::stage::{Stage, StageCtx, StageError};
use dsl::KindSchema;

pub struct Tokenizer;

impl Stage for Tokenizer {
    fn schema(&self) -> KindSchema {
        KindSchema { name: "tokenizer", version: 1, produces: "tokenizer", params: vec![], doc: "" }
    }
    fn run(&self, _ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        Err(StageError::user("not implemented yet", None))
    }
}
