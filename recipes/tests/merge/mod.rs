//! Tests of model merging (`recipes::merge` and the `merge` kind).
//! Golden values: `golden.json`, made by `gen_golden.py` (torch float64, the formulas of
//! shared/reference/merging.md).

mod bench;
mod common;
mod golden;
mod kind;
mod props;
