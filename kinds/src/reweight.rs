//! (being moved here from recipes/src/kinds/reweight.rs)
