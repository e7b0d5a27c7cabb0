//! The `model` node kind (stub, being written).
use crate::stage::{Stage, StageCtx, StageError};
use dsl::KindSchema;

pub struct Model;

impl Stage for Model {
    fn schema(&self) -> KindSchema {
        KindSchema { name: "model", version: 1, produces: "model", params: vec![], doc: "" }
    }
    fn run(&self, _ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        Err(StageError::user("not implemented yet", None))
    }
}
