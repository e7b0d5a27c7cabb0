//! What `select` may rank an `eval` node's rows by ([`dsl::schema::Scores`] of the `eval` kind):
//! `by="EVAL:DATA.METRIC"` names one of the node's datasets (a `data` line's `name`) and a metric
//! its rows carry there — `loss` and `perplexity` always; `exact_match` where the eval computes
//! exact-match, `preference_accuracy` and `margin` where it computes preference accuracy, as the
//! `data` line asks (`metric=`) or else by the dataset's format (`prompt-completion` →
//! exact-match, `preference` → preference accuracy, any other → loss only; a dataset another
//! kind produces is checked when the scores are read). The variants are the node's `model`s.

use dsl::schema::Scores;
use dsl::{NodeDecl, Recipe, Value};

/// The metrics an eval row may carry (the numeric fields of `results.json` rows).
pub const METRICS: &[&str] = &[
    "loss",
    "perplexity",
    "exact_match",
    "preference_accuracy",
    "margin",
];

/// The `eval` kind's answer to `select`.
pub fn scores() -> Scores {
    Scores {
        check: check_by,
        models,
    }
}

/// The `model` list of an eval node.
fn models(n: &NodeDecl) -> Vec<String> {
    n.params
        .get("model")
        .and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Eval node `eval` scores dataset `data` with rows carrying `metric` (module docs).
fn check_by(
    eval: &NodeDecl,
    data: &str,
    metric: &str,
    recipe: &Recipe,
) -> Result<(), (String, String)> {
    let asked = dataset_of(eval, data)?;
    metric_carried(eval, data, metric, asked, recipe)
}

/// The `metric=` the eval's `data` line for `data` asks for (`None`: by format).
fn dataset_of<'e>(eval: &'e NodeDecl, data: &str) -> Result<Option<&'e str>, (String, String)> {
    let lines: Vec<(&str, Option<&str>)> = eval
        .params
        .get("data")
        .and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| {
            let r = v.as_record()?;
            Some((
                r.get("name")?.as_str()?,
                r.get("metric").and_then(Value::as_str),
            ))
        })
        .collect();
    if let Some(&(_, asked)) = lines.iter().find(|x| x.0 == data) {
        return Ok(asked);
    }
    let names: Vec<&str> = lines.iter().map(|x| x.0).collect();
    Err((
        format!("eval `{}` scores no dataset `{data}`", eval.name),
        dsl::suggest::hint_then(
            data,
            &names,
            &format!("its datasets: {}", dsl::suggest::list(&names)),
        ),
    ))
}

/// The metric is known and the eval's rows on `data` carry it (module docs).
fn metric_carried(
    eval: &NodeDecl,
    data: &str,
    metric: &str,
    asked: Option<&str>,
    recipe: &Recipe,
) -> Result<(), (String, String)> {
    if !METRICS.contains(&metric) {
        return Err((
            format!("unknown metric `{metric}`"),
            dsl::suggest::hint_then(
                metric,
                METRICS,
                &format!("metrics: {}", dsl::suggest::list(METRICS)),
            ),
        ));
    }
    let format = recipe
        .node(data)
        .filter(|n| n.kind == "dataset")
        .and_then(|n| n.params.get("format").and_then(Value::as_str));
    let computed = asked.or(match format {
        Some("prompt-completion") => Some("exact-match"),
        Some("preference") => Some("preference-accuracy"),
        Some(_) => Some("loss"),
        None => None,
    });
    let carried: &[&str] = match computed {
        Some("exact-match") => &["loss", "perplexity", "exact_match"],
        Some("preference-accuracy") => &["loss", "perplexity", "preference_accuracy", "margin"],
        Some(_) => &["loss", "perplexity"],
        None => METRICS,
    };
    if carried.contains(&metric) {
        return Ok(());
    }
    let help = if computed == Some("preference-accuracy") {
        format!("choose one of {}", dsl::suggest::list(carried))
    } else {
        format!(
            "choose one of {}, or set `metric=` on `data {data}` of `{}`",
            dsl::suggest::list(carried),
            eval.name
        )
    };
    Err((
        format!(
            "eval `{}` computes {} on `{data}`, so its rows have no `{metric}`",
            eval.name,
            computed.unwrap_or("?"),
        ),
        help,
    ))
}
