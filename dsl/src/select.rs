//! `select` nodes: the part of the language that picks one variant of a sweep.
//!
//! `select NAME from=NODE by="EVAL:DATA.METRIC" max|min [over="node.param"]` collapses sweep axes
//! that reach `from`: every axis that does (default), or only the one `over` names. The select
//! node depends on `from` and on the eval node of `by`; no collapsed axis reaches it (so it has
//! one instance per combination of the other axes), and each instance lists its candidates — for
//! every combination of the collapsed axes, the instance of `from` and of the eval node — as the
//! parameters `from` and `scores` (lists of references) and `candidates` (their labels,
//! `node.param=value,…`), in sweep order. A reference to a select node is checked against what
//! its `from` node produces.
//!
//! Checked at load, each error at the parameter it is about: `by` written `EVAL:DATA.METRIC`,
//! naming a node whose kind declares [`crate::schema::Scores`] (the "eval node"; the kind itself
//! checks that the node scores the dataset and that its rows there carry the metric —
//! `kinds::eval` for `eval`); the eval node scores `from` (or one model only, as its kind
//! says) and is reached by every collapsed axis; `from` is swept; `over` names a sweep axis that
//! reaches `from`.

use crate::diag::Diag;
use crate::recipe::{Axis, NodeDecl, Recipe};
use crate::schema::SELECT_KIND;
use crate::suggest;
use crate::validate::Validator;
use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A parsed `by="EVAL:DATA.METRIC"` (the metric with `-` read as `_`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct By {
    pub eval: String,
    pub data: String,
    pub metric: String,
}

/// Parses `EVAL:DATA.METRIC`; the error says what is missing.
pub fn parse_by(s: &str) -> Result<By, String> {
    let (eval, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` has no `:` between the eval node and the dataset"))?;
    let (data, metric) = rest
        .rsplit_once('.')
        .ok_or_else(|| format!("`{s}` has no `.` between the dataset and the metric"))?;
    if eval.is_empty() || data.is_empty() || metric.is_empty() {
        return Err(format!("`{s}` leaves a part empty"));
    }
    Ok(By {
        eval: eval.to_string(),
        data: data.to_string(),
        metric: metric.replace('-', "_"),
    })
}

fn is_select(d: &NodeDecl) -> bool {
    d.kind == SELECT_KIND
}

/// The `from` node of a select node.
pub(crate) fn from_of(d: &NodeDecl) -> Option<&str> {
    is_select(d).then(|| d.params.get("from")?.as_str())?
}

/// The eval node a select node's `by` names (if it parses).
pub(crate) fn eval_of(d: &NodeDecl) -> Option<&str> {
    let by = is_select(d).then(|| d.params.get("by")?.as_str())??;
    by.split_once(':').map(|(e, _)| e)
}

/// The axis `over="node.param"` names, by index.
fn over_axis(axes: &[Axis], over: &str) -> Option<usize> {
    axes.iter().position(|a| {
        a.members
            .iter()
            .any(|m| format!("{}.{}", m.node, m.param) == over)
    })
}

/// The axes a select node collapses: the one `over` names, else every axis reaching `from`.
pub(crate) fn collapsed(
    d: &NodeDecl,
    axes: &[Axis],
    reach_from: &BTreeSet<usize>,
) -> BTreeSet<usize> {
    match d.params.get("over").and_then(Value::as_str) {
        Some(o) => over_axis(axes, o).into_iter().collect(),
        None => reach_from.clone(),
    }
}

/// Sets a select instance's `from`, `scores` and `candidates` from its candidates (label, `from`
/// instance, eval instance) and records the inputs.
pub(crate) fn set_candidates(
    params: &mut BTreeMap<String, Value>,
    inputs: &mut Vec<(String, String)>,
    cands: Vec<(String, String, Option<String>)>,
) {
    let (mut from, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (label, f, e)) in cands.into_iter().enumerate() {
        inputs.push((format!("from[{k}]"), f.clone()));
        from.push(Value::Ref(f));
        if let Some(e) = e {
            inputs.push((format!("scores[{k}]"), e.clone()));
            scores.push(Value::Ref(e));
        }
        labels.push(Value::Str(label));
    }
    params.insert("from".into(), Value::List(from));
    params.insert("scores".into(), Value::List(scores));
    params.insert("candidates".into(), Value::List(labels));
}

impl Validator<'_> {
    /// A select node produces what its `from` node produces (followed through chains of selects),
    /// so references to it are checked against that.
    pub fn select_produces(&mut self) {
        for _ in 0..self.decls.len() {
            let mut changed = false;
            for d in self.decls.iter().filter(|d| is_select(d)) {
                let Some(from) = from_of(d) else { continue };
                let p = self.names.get(from).and_then(|i| i.produces);
                if let Some(info) = self.names.get_mut(&d.name) {
                    if p.is_some() && info.produces != p {
                        info.produces = p;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }
}

/// Checks every select node of a loaded recipe (see the module docs); one error per problem.
pub(crate) fn check(recipe: &Recipe, registry: &crate::Registry) -> Vec<Diag> {
    let selects: Vec<&NodeDecl> = recipe.nodes.iter().filter(|d| is_select(d)).collect();
    if selects.is_empty() {
        return Vec::new();
    }
    let Ok(g) = crate::expand::graph(recipe) else {
        return Vec::new(); // expansion reports it
    };
    let mut out = Vec::new();
    for d in selects {
        let at = |param: &str| d.param_locs.get(param).copied().unwrap_or(d.loc);
        let mut err = |param: &str, msg: String, label: &str, help: Option<String>| {
            out.push(recipe.diag_at(at(param), msg, label, help));
        };
        let Some(from) = from_of(d) else { continue };
        let Some(&fi) = g.index.get(from) else {
            continue;
        };
        if g.reach[fi].is_empty() {
            err(
                "from",
                format!("`{}` selects from `{from}`, which no sweep reaches", d.name),
                "nothing to choose from",
                Some(format!(
                    "sweep a parameter of `{from}` or of a node upstream of it \
                     (`sweep {{ {from}.PARAM v1 v2 }}`)"
                )),
            );
            continue;
        }
        if let Some(over) = d.params.get("over").and_then(Value::as_str) {
            let labels: Vec<String> = g.reach[fi]
                .iter()
                .flat_map(|a| recipe.axes[*a].members.iter())
                .map(|m| format!("{}.{}", m.node, m.param))
                .collect();
            let ok = over_axis(&recipe.axes, over).is_some_and(|a| g.reach[fi].contains(&a));
            if !ok {
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                err(
                    "over",
                    format!(
                        "`over` of `{}`: `{over}` is not a sweep axis that reaches `{from}`",
                        d.name
                    ),
                    "not an axis of `from`",
                    Some(suggest::hint_then(
                        over,
                        &l,
                        &format!("axes reaching `{from}`: {}", suggest::list(&l)),
                    )),
                );
                continue;
            }
        }
        let Some(by) = d.params.get("by").and_then(Value::as_str) else {
            continue;
        };
        if let Some((msg, help)) = check_by((recipe, registry), &g, d, fi, by) {
            err("by", msg, "in this score", Some(help));
        }
    }
    out
}

/// An error about `by`: (message, help).
type ByError = (String, String);

/// Checks `by` of select node `d` (whose `from` is node `fi`): it parses, names a node whose
/// kind declares [`crate::schema::Scores`] (an eval node), which scores the dataset with rows
/// that carry the metric (its kind's check), and scores the variants.
fn check_by(
    (recipe, registry): (&Recipe, &crate::Registry),
    g: &crate::expand::Graph<'_>,
    d: &NodeDecl,
    fi: usize,
    by: &str,
) -> Option<ByError> {
    let name = &d.name;
    let check = || -> Result<(), ByError> {
        let by = parse_by(by).map_err(|e| {
            (
                format!("`by` of `{name}`: {e}"),
                "write `by=\"EVAL:DATA.METRIC\"`, e.g. `by=\"scores:heldout.preference_accuracy\"`"
                    .to_string(),
            )
        })?;
        let (eval, scores) = eval_named((recipe, registry), name, &by)?;
        (scores.check)(eval, &by.data, &by.metric, recipe)
            .map_err(|(msg, help)| (format!("`by` of `{name}`: {msg}"), help))?;
        scores_variants(recipe, g, d, fi, (eval, scores), &by)
    };
    check().err()
}

/// The node `by` names, of a kind that declares [`crate::schema::Scores`].
fn eval_named<'r>(
    (recipe, registry): (&'r Recipe, &crate::Registry),
    name: &str,
    by: &By,
) -> Result<(&'r NodeDecl, crate::schema::Scores), ByError> {
    let scores_of = |n: &NodeDecl| registry.get(&n.kind).and_then(|k| k.scores);
    if let Some(found) = recipe
        .node(&by.eval)
        .and_then(|n| scores_of(n).map(|s| (n, s)))
    {
        return Ok(found);
    }
    let evals: Vec<&str> = recipe
        .nodes
        .iter()
        .filter(|n| scores_of(n).is_some())
        .map(|n| n.name.as_str())
        .collect();
    let what = match recipe.node(&by.eval) {
        Some(n) => format!("`{}` is a `{}` node, not an eval node", by.eval, n.kind),
        None => format!("no node `{}`", by.eval),
    };
    let list = if evals.is_empty() {
        "the recipe has no eval node: add one that scores the variants".to_string()
    } else {
        format!("eval nodes: {}", suggest::list(&evals))
    };
    Err((
        format!("`by` of `{name}`: {what}"),
        suggest::hint_then(&by.eval, &evals, &list),
    ))
}

/// The eval scores the variants: every collapsed axis reaches it, and it scores `from` itself
/// or a single model.
fn scores_variants(
    recipe: &Recipe,
    g: &crate::expand::Graph<'_>,
    d: &NodeDecl,
    fi: usize,
    (eval, scores): (&NodeDecl, crate::schema::Scores),
    by: &By,
) -> Result<(), ByError> {
    let ei = g.index[by.eval.as_str()];
    let collapsed = g.select[g.index[d.name.as_str()]]
        .as_ref()
        .map(|s| s.collapsed.clone())
        .unwrap_or_default();
    let from = &recipe.nodes[fi].name;
    let owned = (scores.models)(eval);
    let models: Vec<&str> = owned.iter().map(String::as_str).collect();
    if collapsed.iter().all(|a| g.reach[ei].contains(a))
        && (models.len() <= 1 || models.contains(&from.as_str()))
    {
        return Ok(());
    }
    Err((
        format!(
            "`by` of `{}`: eval `{}` does not score the variants of `{from}`",
            d.name, by.eval
        ),
        format!(
            "add `model {from}` to `{}` (it scores {}), or name an eval node that does",
            by.eval,
            suggest::list(&models)
        ),
    ))
}
