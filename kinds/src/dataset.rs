//! (being moved here from recipes/src/kinds/dataset.rs)
