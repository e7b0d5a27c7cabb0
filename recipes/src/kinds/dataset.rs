//! The `dataset` node kind (stub, being written).
use crate::stage::{Stage, StageCtx, StageError};
use dsl::KindSchema;

pub struct Dataset;

impl Stage for Dataset {
    fn schema(&self) -> KindSchema {
        KindSchema::new("dataset", 1, "dataset")
    }
    fn run(&self, _ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        Err(StageError::user("not implemented yet", None))
    }
}
