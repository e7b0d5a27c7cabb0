//! (being moved here from recipes/src/kinds/eval.rs)
