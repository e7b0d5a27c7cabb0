//! The `model` node kind (stub, being written).
use crate::stage::{Stage, StageCtx, StageError};
use dsl::KindSchema;

pub struct Model;

impl Stage for Model {
    fn schema(&self) -> KindSchema {
        KindSchema::new("model", 1, "model")
    }
    fn run(&self, _ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        Err(StageError::user("not implemented yet", None))
    }
}
