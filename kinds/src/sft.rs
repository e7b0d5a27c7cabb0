//! (being moved here from recipes/src/kinds/sft.rs)
