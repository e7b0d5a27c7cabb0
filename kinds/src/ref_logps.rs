//! (being moved here from recipes/src/kinds/ref_logps.rs)
