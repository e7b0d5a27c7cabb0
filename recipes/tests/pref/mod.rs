//! Tests of the preference losses (`recipes::pref`: golden values from
//! `shared/reference/losses.md`, a finite-difference gradient check) and of the `ref-logps`,
//! `dpo` and `npo` kinds on a tiny Llama trained by the test on the committed synthetic task
//! (`examples/data/gen_prefs.py`).

use crate::common::lm as common;
mod losses;
mod stages;
