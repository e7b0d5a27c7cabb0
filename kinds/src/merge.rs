//! (being moved here from recipes/src/kinds/merge.rs)
