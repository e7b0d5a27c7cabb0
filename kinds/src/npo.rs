//! (being moved here from recipes/src/kinds/npo.rs)
