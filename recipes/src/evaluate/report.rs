//! The result rows of the `eval` node as a side-by-side table: one line per model × dataset with
//! loss, perplexity, exact-match and preference accuracy / mean margin (`-` where the metric
//! does not apply). The node writes it to its log, so `temper show NODE` prints it.

use serde_json::{json, Value as J};

/// JSON number, or null for NaN / infinity.
pub fn finite(x: f64) -> J {
    if x.is_finite() {
        json!(x)
    } else {
        J::Null
    }
}

/// A result row without the example predictions.
pub fn summary_row(row: &J) -> J {
    let mut r = row.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("examples");
    }
    r
}

/// `"x%(correct)"` of a rate column with its `correct` count, else `-`.
fn rate(r: &J, k: &str) -> String {
    match (r.get(k).and_then(|v| v.as_f64()), r.get("correct")) {
        (Some(x), Some(c)) => format!("{:.1}% ({c})", 100.0 * x),
        _ => "-".into(),
    }
}

/// The human-readable table written to the log.
pub fn table(rows: &[J]) -> Vec<String> {
    let cell = |r: &J, k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let width = |k: &str, min: usize| {
        rows.iter()
            .map(|r| cell(r, k).len())
            .chain([min])
            .max()
            .unwrap_or(min)
    };
    let (wm, wd) = (width("model", 5), width("data", 4));
    let mut out = vec![format!(
        "{:<wm$}  {:<wd$}  {:>6}  {:>8}  {:>10}  {:>12}  {:>12}  {:>8}",
        "model", "data", "n", "loss", "perplexity", "exact-match", "pref-acc", "margin"
    )];
    for r in rows {
        let num = |k: &str, p: usize| {
            r.get(k)
                .and_then(|v| v.as_f64())
                .map_or("-".to_string(), |x| format!("{x:.p$}"))
        };
        out.push(format!(
            "{:<wm$}  {:<wd$}  {:>6}  {:>8}  {:>10}  {:>12}  {:>12}  {:>8}",
            cell(r, "model"),
            cell(r, "data"),
            r.get("n").and_then(|v| v.as_u64()).unwrap_or(0),
            num("loss", 4),
            num("perplexity", 3),
            rate(r, "exact_match"),
            rate(r, "preference_accuracy"),
            num("margin", 3),
        ));
    }
    out
}
