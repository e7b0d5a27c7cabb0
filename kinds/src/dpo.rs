//! (being moved here from recipes/src/kinds/dpo.rs)
