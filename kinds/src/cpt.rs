//! (being moved here from recipes/src/kinds/cpt.rs)
