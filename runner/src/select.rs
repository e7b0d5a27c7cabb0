//! `select` nodes in the front: reading the candidates' scores from the store, choosing the
//! winner, and recording the choice (the kind and its expansion: `kinds::select`,
//! `dsl::select`).
//!
//! A select instance resolves when every score instance is built: the score of candidate `k` is
//! the `METRIC` field of the `results.json` row of its eval instance whose `data` is `DATA` and
//! whose `model` is candidate `k`'s instance of `from` (or the only model of the eval). The
//! winner is the candidate with the largest (`max`) or smallest (`min`) score, the first in
//! sweep order on a tie. A score missing from a built eval is an error naming the eval instance
//! and what its rows have.
//!
//! Its artifact is `select.json` — `{by, goal, winner, winner_key, tie, candidates: [{label,
//! id, key, score, score_node}]}` — and the same object is its summary; what nodes downstream
//! read is the winner's artifact (`Entry::output`), never a copy.

use crate::cmd::results::cell;
use crate::keys::{self, Chosen};
use anyhow::{anyhow, bail, Context, Result};
use dsl::{Instance, Value};
use serde_json::{json, Value as J};

/// Name of the file a select node publishes.
pub const SELECT_FILE: &str = "select.json";

/// The instance id without its sweep suffix (`aligned[beta=0.1]` → `aligned`).
fn base(id: &str) -> &str {
    id.split_once('[').map_or(id, |(b, _)| b)
}

/// The winner among `values` for `goal` (`max`/`min`): its index and whether another candidate
/// had the same score. The first best wins.
pub fn winner(values: &[f64], goal: &str) -> (usize, bool) {
    let better = |a: f64, b: f64| if goal == "min" { a < b } else { a > b };
    let mut best = 0;
    for (k, v) in values.iter().enumerate().skip(1) {
        if better(*v, values[best]) {
            best = k;
        }
    }
    let tie = values
        .iter()
        .enumerate()
        .any(|(k, v)| k != best && *v == values[best]);
    (best, tie)
}

/// Candidate `k`'s score from the rows of its eval instance `eval_id`.
fn score_of(rows: &J, by: &dsl::select::By, cand: &str, eval_id: &str) -> Result<f64> {
    let rows = rows["results"].as_array().cloned().unwrap_or_default();
    let on_data: Vec<&J> = rows
        .iter()
        .filter(|r| r["data"].as_str().map(base) == Some(by.data.as_str()))
        .collect();
    let row = on_data
        .iter()
        .find(|r| r["model"].as_str() == Some(cand))
        .or_else(|| (on_data.len() == 1).then(|| &on_data[0]));
    let Some(row) = row else {
        bail!(
            "{eval_id} has no row for model {cand} on dataset {} (its rows: {})",
            by.data,
            rows.iter()
                .map(|r| format!("{} on {}", cell(Some(&r["model"])), cell(Some(&r["data"]))))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    match row[by.metric.as_str()].as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        None if row.get(by.metric.as_str()).is_some_and(J::is_null) => bail!(
            "{eval_id} scored {} record(s) of {} for model {cand}, so its `{}` is undefined \
             (were they all skipped?); a select needs the score of every variant",
            row["n"]
                .as_u64()
                .map_or_else(|| "no".to_string(), |n| n.to_string()),
            by.data,
            by.metric
        ),
        _ => {
            let have: Vec<&str> = row
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| v.is_number() && kinds::eval_scores::METRICS.contains(&k.as_str()))
                .map(|(k, _)| k.as_str())
                .collect();
            bail!(
                "{eval_id} has no `{}` for model {cand} on {} (the row has {}); a select needs \
                 the score of every variant",
                by.metric,
                by.data,
                if have.is_empty() {
                    "no metric".to_string()
                } else {
                    have.join(", ")
                }
            )
        }
    }
}

/// Resolves a select instance against `store`: `None` while a score instance (key in
/// `score_keys`, same order as the candidates) is not built.
pub fn resolve(
    store: &store::Store,
    inst: &Instance,
    score_keys: &[String],
) -> Result<Option<Chosen>> {
    let by_s = inst.params.get("by").and_then(Value::as_str).unwrap_or("");
    let by = dsl::select::parse_by(by_s).map_err(|e| anyhow!("`by`: {e}"))?;
    let goal = inst
        .params
        .get("goal")
        .and_then(Value::as_str)
        .unwrap_or("max");
    let cands = keys::select_refs(inst, "from");
    let evals = keys::select_refs(inst, "scores");
    let done = store.lookup_done_many(score_keys)?;
    if score_keys.iter().any(|k| !done.contains_key(k)) {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(cands.len());
    for ((cand, eval_id), key) in cands.iter().zip(&evals).zip(score_keys) {
        let path = store.artifact_dir(key).join("results.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the scores of {eval_id}"))?;
        let rows: J =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        values.push(score_of(&rows, &by, cand, eval_id)?);
    }
    if values.is_empty() {
        bail!("no candidates to select from");
    }
    let (winner, tie) = winner(&values, goal);
    Ok(Some(Chosen {
        winner,
        values,
        tie,
    }))
}

/// The `select.json` of a resolved select instance (`from_keys`: its candidates' keys).
pub fn record(inst: &Instance, chosen: &Chosen, from_keys: &[String]) -> J {
    let list = |p: &str| keys::select_refs(inst, p);
    let (cands, evals) = (list("from"), list("scores"));
    let labels: Vec<String> = inst
        .params
        .get("candidates")
        .and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    let rows: Vec<J> = cands
        .iter()
        .enumerate()
        .map(|(k, id)| {
            json!({
                "label": labels.get(k).cloned().unwrap_or_default(),
                "id": id,
                "key": from_keys.get(k).cloned().unwrap_or_default(),
                "score": chosen.values.get(k),
                "score_node": evals.get(k),
            })
        })
        .collect();
    json!({
        "by": inst.params.get("by").and_then(Value::as_str),
        "goal": inst.params.get("goal").and_then(Value::as_str),
        "winner": cands.get(chosen.winner),
        "winner_label": labels.get(chosen.winner),
        "winner_key": from_keys.get(chosen.winner),
        "tie": chosen.tie,
        "candidates": rows,
    })
}

/// Human lines for a select's record (`show`, the run log): the winner, then one line per
/// candidate with its score, the winner marked.
pub fn describe(sel: &J) -> Vec<String> {
    let goal = if cell(Some(&sel["goal"])) == "min" {
        "lowest"
    } else {
        "highest"
    };
    let mut out = vec![format!(
        "selected {} ({}): the {goal} {}{}",
        cell(Some(&sel["winner"])),
        cell(Some(&sel["winner_label"])),
        cell(Some(&sel["by"])),
        if sel["tie"].as_bool() == Some(true) {
            " (a tie, broken by sweep order: the first wins)"
        } else {
            ""
        }
    )];
    let cands = sel["candidates"].as_array().cloned().unwrap_or_default();
    let score = |c: &J| cell(Some(&c["score"]));
    let w = cands
        .iter()
        .map(|c| cell(Some(&c["label"])).len())
        .max()
        .unwrap_or(0);
    let sw = cands.iter().map(|c| score(c).len()).max().unwrap_or(0);
    for c in &cands {
        let mark = if c["id"] == sel["winner"] { "*" } else { " " };
        out.push(format!(
            "{mark} {:<w$}  {:<sw$}  {}",
            cell(Some(&c["label"])),
            score(c),
            cell(Some(&c["id"])),
        ));
    }
    out
}

/// The keys listed under `params.PARAM` of a select's key tree.
fn tree_keys(tree: &J, param: &str) -> Vec<String> {
    tree["params"][param]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["key"].as_str().map(str::to_string))
        .collect()
}

/// Publishes the select node at plan position `i` (resolved: the plan put its scores in its key
/// tree, so nothing is read again) for run
/// `run_id`: a `Running` record, then its `select.json`, also its summary, published under its
/// key. Returns the lines describing the choice.
pub fn publish(
    store: &store::Store,
    plan: &crate::plan::Plan,
    i: usize,
    run_id: u64,
) -> Result<Vec<String>> {
    let e = &plan.entries[i];
    let running = store::NodeRecord::running(
        &e.key,
        &e.kind,
        &e.id,
        &plan.loaded.stem,
        e.tree.clone(),
        Some(run_id),
    );
    store
        .put_record(&running)
        .with_context(|| format!("node {}: recording its start", e.id))?;
    let inst = plan
        .loaded
        .expanded
        .instance(&e.id)
        .ok_or_else(|| anyhow!("internal: instance {} vanished from the plan", e.id))?;
    // The plan resolved it: the scores are in its key tree.
    let values: Vec<f64> = e.tree["values"]
        .as_array()
        .ok_or_else(|| anyhow!("its scores are not all built"))?
        .iter()
        .filter_map(J::as_f64)
        .collect();
    let goal = inst
        .params
        .get("goal")
        .and_then(Value::as_str)
        .unwrap_or("max");
    let (winner, tie) = winner(&values, goal);
    let chosen = Chosen {
        winner,
        values,
        tie,
    };
    let sel = record(inst, &chosen, &tree_keys(&e.tree, "from"));
    let out = store.prepare_staging(&e.key)?;
    let text = serde_json::to_string_pretty(&sel)? + "\n";
    store::write_atomic(&out.join(SELECT_FILE), text.as_bytes())
        .with_context(|| format!("writing {SELECT_FILE}"))?;
    store
        .complete(&e.key, &e.identity, &store.work_dir(&e.key), sel.clone())
        .context("publishing the choice")?;
    Ok(describe(&sel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winner_takes_the_first_best_and_reports_ties() {
        assert_eq!(winner(&[0.5, 0.9, 0.9], "max"), (1, true));
        assert_eq!(winner(&[0.5, 0.9, 0.7], "max"), (1, false));
        assert_eq!(winner(&[3.0, 1.0, 2.0], "min"), (1, false));
        assert_eq!(winner(&[1.0, 1.0], "min"), (0, true));
    }

    fn by(s: &str) -> dsl::select::By {
        dsl::select::parse_by(s).unwrap()
    }

    #[test]
    fn scores_come_from_the_candidates_row_and_missing_ones_are_errors() {
        let rows = json!({"results": [
            {"model": "tuned", "data": "held", "loss": 2.0, "preference_accuracy": 0.5},
            {"model": "aligned[beta=0.1]", "data": "held", "loss": 1.5, "preference_accuracy": 0.75},
            {"model": "aligned[beta=0.1]", "data": "other", "loss": 9.0, "preference_accuracy": null},
        ]});
        let b = by("scores:held.preference-accuracy");
        assert_eq!(b.metric, "preference_accuracy");
        assert_eq!(score_of(&rows, &b, "aligned[beta=0.1]", "s").unwrap(), 0.75);
        let e = score_of(
            &rows,
            &by("s:other.preference_accuracy"),
            "aligned[beta=0.1]",
            "s[x]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "s[x] scored no record(s) of other for model aligned[beta=0.1], so its \
                 `preference_accuracy` is undefined"
            ),
            "{e}"
        );
        let e = score_of(
            &rows,
            &by("s:held.exact_match"),
            "aligned[beta=0.1]",
            "s[x]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s[x] has no `exact_match` for model aligned[beta=0.1] on held")
                && e.contains("the row has loss, preference_accuracy"),
            "{e}"
        );
        let e = score_of(&rows, &by("s:held.loss"), "aligned[beta=0.3]", "s").unwrap_err();
        assert!(
            e.to_string().contains("no row for model aligned[beta=0.3]"),
            "{e}"
        );
        // An eval of one model: its row, whatever the model is called.
        let one = json!({"results": [{"model": "merged", "data": "held[x=1]", "loss": 1.25}]});
        assert_eq!(
            score_of(&one, &by("s:held.loss"), "aligned[beta=0.1]", "s").unwrap(),
            1.25
        );
    }

    #[test]
    fn by_must_name_eval_data_and_metric() {
        assert!(dsl::select::parse_by("scores-heldout.loss").is_err());
        assert!(dsl::select::parse_by("scores:heldout").is_err());
        assert!(dsl::select::parse_by(":heldout.loss").is_err());
        let b = by("scores:held.out.loss");
        assert_eq!((b.eval.as_str(), b.data.as_str()), ("scores", "held.out"));
    }
}
