//! (being moved here from recipes/src/kinds/losses.rs)
