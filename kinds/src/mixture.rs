//! (being moved here from recipes/src/kinds/mixture.rs)
