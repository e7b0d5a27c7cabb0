//! (being moved here from recipes/src/kinds/tokenizer.rs)
