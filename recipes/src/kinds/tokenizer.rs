//! The `tokenizer` node kind (stub, being written).
use crate::stage::{Stage, StageCtx, StageError};
use dsl::KindSchema;

pub struct Tokenizer;

impl Stage for Tokenizer {
    fn schema(&self) -> KindSchema {
        KindSchema::new("tokenizer", 1, "tokenizer")
    }
    fn run(&self, _ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        Err(StageError::user("not implemented yet", None))
    }
}
