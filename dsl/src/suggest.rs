//! "Did you mean …" suggestions by edit distance.

/// The candidate closest to `word` (Jaro-Winkler ≥ 0.8, or Levenshtein ≤ 2 for short
/// words), if any. Ties keep the earliest candidate, so the result is deterministic.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let jw = strsim::jaro_winkler(word, c);
        let lev = strsim::levenshtein(word, c);
        let ok = jw >= 0.8 || (lev <= 2 && c.len() > 2) || c.starts_with(word) && word.len() >= 3;
        if ok && best.is_none_or(|(s, _)| jw > s) {
            best = Some((jw, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// `did you mean `x`?` or nothing.
pub fn hint(word: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(word, candidates.iter().copied()).map(|c| format!("did you mean `{c}`?"))
}

/// [`hint`] (when there is one) followed by `then`: `did you mean `x`? then`.
pub fn hint_then(word: &str, candidates: &[&str], then: &str) -> String {
    match hint(word, candidates) {
        Some(h) => format!("{h} {then}"),
        None => then.to_string(),
    }
}

/// Most items [`list`] shows.
pub const LIST_MAX: usize = 20;

/// `a, b, c` with backticks; past [`LIST_MAX`] items, `… (N more)`.
pub fn list(items: &[&str]) -> String {
    let mut out = items
        .iter()
        .take(LIST_MAX)
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_MAX {
        out.push_str(&format!(" … ({} more)", items.len() - LIST_MAX));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let c = ["dataset", "tokenizer", "model"];
        assert_eq!(did_you_mean("datset", c).as_deref(), Some("dataset"));
        assert_eq!(did_you_mean("modle", c).as_deref(), Some("model"));
        assert_eq!(did_you_mean("tokeniser", c).as_deref(), Some("tokenizer"));
        assert_eq!(did_you_mean("zzz", c), None);
    }
}
