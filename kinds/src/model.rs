//! (being moved here from recipes/src/kinds/model.rs)
