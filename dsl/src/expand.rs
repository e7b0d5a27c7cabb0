//! Sweep expansion: recipe → instances shared between variants.
//!
//! An axis *reaches* a node if it has a member on that node or reaches any node the node
//! references (for a swept reference, every possible target). A node gets one instance per
//! combination of the axes that reach it (first axis outermost); nodes no axis reaches appear
//! once. Instance `i` of a node reached by axes `a_1..a_r` (lengths `L_j`) has axis indices
//! given by the mixed-radix digits of `i` (`i = Σ k_j · Π_{l>j} L_l`), so a variant finds its
//! instance of each node by arithmetic, without search. Instance ids are `name` or
//! `name[p=v,up.q=w]`: own parameters unqualified, members on upstream nodes as `node.param`,
//! in axis declaration order.

use crate::diag::{Diag, Diagnostics};
use crate::limits::{self, LoadOptions};
use crate::recipe::{Expanded, Instance, Recipe, Variant};
use crate::value::Value;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

/// Most variants `expand` will produce, whatever [`LoadOptions::max_variants`] allows (a load
/// refuses more, at the sweep).
pub const MAX_VARIANTS: usize = 1_000_000;

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Ref(r) => out.push(r.clone()),
        Value::List(l) => l.iter().for_each(|x| collect_refs(x, out)),
        Value::Record(r) => r.values().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Value shown in ids: a one-item list (a swept repeated parameter) shows its item.
fn show(v: &Value) -> String {
    match v {
        Value::List(l) if l.len() == 1 => l[0].display(),
        other => other.display(),
    }
}

/// Per-node expansion data.
struct NodeInfo {
    /// Axes reaching the node, ascending.
    reach: Vec<usize>,
    /// Stride of each reaching axis (same order as `reach`).
    strides: Vec<usize>,
    /// Instance ids, by instance index.
    ids: Vec<String>,
}

/// Index of a node's instance for full axis indices `ks` (one per axis of the recipe).
fn instance_index(info: &NodeInfo, ks: &[usize]) -> usize {
    info.reach
        .iter()
        .zip(&info.strides)
        .map(|(a, s)| ks[*a] * s)
        .sum()
}

/// The dependency graph of a recipe and the axes that reach each node.
pub(crate) struct Graph<'r> {
    pub(crate) index: HashMap<&'r str, usize>,
    /// Topological order, ties by declaration.
    order: Vec<usize>,
    axis_len: Vec<usize>,
    /// Axes reaching each node.
    pub(crate) reach: Vec<BTreeSet<usize>>,
    /// Ancestors of each node that own an axis member (the only ancestors ids mention), so
    /// the sets stay small on long chains.
    anc: Vec<BTreeSet<usize>>,
    /// For a `select` node: its `from` node, its score (eval) node when it names one that
    /// exists, and the axes it collapses (they reach its inputs but not it).
    pub(crate) select: Vec<Option<SelectInfo>>,
}

/// How a `select` node expands (see [`crate::select`]).
#[derive(Clone, Debug)]
pub(crate) struct SelectInfo {
    pub(crate) from: usize,
    pub(crate) eval: Option<usize>,
    pub(crate) collapsed: BTreeSet<usize>,
}

pub(crate) fn graph(recipe: &Recipe) -> Result<Graph<'_>, Diagnostics> {
    let n = recipe.nodes.len();
    let index: HashMap<&str, usize> = recipe
        .nodes
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    let axes = &recipe.axes;
    // Dependencies: declared references plus every target of a swept reference.
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut own: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut swept_refs: Vec<Vec<String>> = vec![Vec::new(); n];
    for ax in axes {
        for m in &ax.members {
            let Some(&i) = index.get(m.node.as_str()) else {
                return Err(Diagnostics::from_message(format!(
                    "sweep axis `{}.{}` names unknown node",
                    m.node, m.param
                )));
            };
            m.values
                .iter()
                .for_each(|v| collect_refs(v, &mut swept_refs[i]));
        }
    }
    for (a, ax) in axes.iter().enumerate() {
        for m in &ax.members {
            own[index[m.node.as_str()]].insert(a);
        }
    }
    for (i, d) in recipe.nodes.iter().enumerate() {
        let mut names = std::mem::take(&mut swept_refs[i]);
        d.params.values().for_each(|v| collect_refs(v, &mut names));
        // A select node waits for its scores: the eval node named by `by=`.
        if let Some(e) = crate::select::eval_of(d).filter(|e| index.contains_key(e)) {
            names.push(e.to_string());
        }
        for t in names {
            let Some(&j) = index.get(t.as_str()) else {
                return Err(Diagnostics::from_message(format!(
                    "node `{}` refers to unknown node `{t}`",
                    d.name
                )));
            };
            deps[i].insert(j);
        }
    }
    let order = topo_order(&deps)
        .ok_or_else(|| Diagnostics::from_message("the recipe's references form a cycle"))?;
    let axis_len: Vec<usize> = axes
        .iter()
        .map(|a| a.members.first().map_or(1, |m| m.values.len().max(1)))
        .collect();
    // Reach and swept ancestors, in topological order.
    let mut reach: Vec<BTreeSet<usize>> = own.clone();
    let mut anc: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut select: Vec<Option<SelectInfo>> = vec![None; n];
    for &i in &order {
        let mut r = reach[i].clone();
        let mut an = BTreeSet::new();
        for &j in &deps[i] {
            r.extend(reach[j].iter().copied());
            if !own[j].is_empty() {
                an.insert(j);
            }
            an.extend(anc[j].iter().copied());
        }
        let d = &recipe.nodes[i];
        if let Some(from) = crate::select::from_of(d).and_then(|f| index.get(f)) {
            let collapsed = crate::select::collapsed(d, axes, &reach[*from]);
            r.retain(|a| !collapsed.contains(a));
            select[i] = Some(SelectInfo {
                from: *from,
                eval: crate::select::eval_of(d).and_then(|e| index.get(e).copied()),
                collapsed,
            });
        }
        reach[i] = r;
        anc[i] = an;
    }
    Ok(Graph {
        index,
        order,
        axis_len,
        reach,
        anc,
        select,
    })
}

/// Checks, before anything is expanded, that the expansion fits the limits of `opts`: at most
/// `max_variants` variants, and at most `max_instances` instance ids (the instances, plus one
/// per node per variant, as each variant lists its instance of every node). The error points at
/// the first sweep axis.
pub(crate) fn check_size(
    recipe: &Recipe,
    opts: &LoadOptions,
    srcs: &[crate::diag::Src],
) -> Result<(), Diag> {
    let Some(first) = recipe.axes.first() else {
        return Ok(());
    };
    let Ok(g) = graph(recipe) else {
        return Ok(()); // `expand` reports it
    };
    let variants = g
        .axis_len
        .iter()
        .fold(1u128, |acc, l| acc.saturating_mul(*l as u128));
    let instances = g.reach.iter().fold(0u128, |acc, r| {
        let c = r
            .iter()
            .fold(1u128, |p, a| p.saturating_mul(g.axis_len[*a] as u128));
        acc.saturating_add(c)
    });
    let ids = instances.saturating_add(variants.saturating_mul(recipe.nodes.len() as u128));
    if variants <= opts.max_variants.min(MAX_VARIANTS) as u128 && ids <= opts.max_instances as u128
    {
        return Ok(());
    }
    let shown = |x: u128| limits::count(x.min(usize::MAX as u128) as usize);
    let Some(src) = srcs.get(first.loc.file) else {
        return Err(Diag::bare("the sweep is too large"));
    };
    if variants > MAX_VARIANTS as u128 {
        return Err(Diag::at(
            src,
            first.loc.span,
            format!(
                "the sweep has {} variants, more than temper expands ({})",
                shown(variants),
                limits::count(MAX_VARIANTS)
            ),
            "this sweep",
        )
        .help("split the study into several recipes"));
    }
    let need = (ids.saturating_mul(limits::DEFAULT_MAX_VARIANTS as u128)
        / limits::DEFAULT_MAX_INSTANCES as u128)
        .max(variants)
        .saturating_add(1);
    Err(Diag::at(
        src,
        first.loc.span,
        format!(
            "the sweep expands to {} instances and {} variants of {} nodes: {} instance ids, \
             more than the limit of {}",
            shown(instances),
            shown(variants),
            recipe.nodes.len(),
            shown(ids),
            limits::count(opts.max_instances)
        ),
        "this sweep",
    )
    .help(format!(
        "each variant lists its instance of every node; sweep fewer values or split the \
         recipe, or raise the limits with `--max-variants {}` if you mean it",
        shown(need)
    )))
}

/// Expands the recipe's sweep into instances (topological order) and variants (the full grid).
pub fn expand(recipe: &Recipe) -> Result<Expanded, Diagnostics> {
    let n = recipe.nodes.len();
    let axes = &recipe.axes;
    let Graph {
        index,
        order,
        axis_len,
        reach,
        anc,
        select,
    } = graph(recipe)?;
    let total: usize = axis_len
        .iter()
        .try_fold(1usize, |acc, len| {
            acc.checked_mul(*len).filter(|t| *t <= MAX_VARIANTS)
        })
        .ok_or_else(|| {
            Diagnostics::from_message(format!("the sweep has more than {MAX_VARIANTS} variants"))
        })?;
    let mut infos: Vec<Option<NodeInfo>> = (0..n).map(|_| None).collect();
    let mut instances = Vec::new();
    for &i in &order {
        let d = &recipe.nodes[i];
        let r: Vec<usize> = reach[i].iter().copied().collect();
        let mut strides = vec![1usize; r.len()];
        for k in (0..r.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * axis_len[r[k + 1]];
        }
        let count: usize = r.iter().map(|a| axis_len[*a]).product();
        // Members shown in this node's ids: own ones and those on upstream nodes.
        let (index, anc) = (&index, &anc);
        let shown: Vec<(usize, usize, String)> = r
            .iter()
            .flat_map(|&a| {
                axes[a]
                    .members
                    .iter()
                    .enumerate()
                    .filter_map(move |(mi, m)| {
                        let j = index[m.node.as_str()];
                        if j == i {
                            Some((a, mi, m.param.clone()))
                        } else if anc[i].contains(&j) {
                            Some((a, mi, format!("{}.{}", m.node, m.param)))
                        } else {
                            None
                        }
                    })
            })
            .collect();
        let mut ids = Vec::with_capacity(count);
        let mut ks = vec![0usize; axes.len()];
        for idx in 0..count {
            for (pos, &a) in r.iter().enumerate() {
                ks[a] = (idx / strides[pos]) % axis_len[a];
            }
            let mut params = d.params.clone();
            let mut assignments = Vec::new();
            let mut parts = Vec::new();
            for (a, mi, label) in &shown {
                let m = &axes[*a].members[*mi];
                let v = &m.values[ks[*a]];
                if m.node == d.name {
                    set_param(&mut params, &m.param, v);
                }
                parts.push(format!("{label}={}", show(v)));
                assignments.push((format!("{}.{}", m.node, m.param), v.clone()));
            }
            let id = if parts.is_empty() {
                d.name.clone()
            } else {
                format!("{}[{}]", d.name, parts.join(","))
            };
            let mut inputs = Vec::new();
            // A select instance's references are its candidates' and scores' instances.
            if let Some(sel) = &select[i] {
                let cands = candidates(sel, &infos, axes, &axis_len, &mut ks.clone());
                crate::select::set_candidates(&mut params, &mut inputs, cands);
            }
            for (p, v) in params.iter_mut().filter(|_| select[i].is_none()) {
                rewrite(v, p.clone(), &mut inputs, &|t: &str| {
                    // Inputs come first in topological order, so their ids exist.
                    index.get(t).and_then(|j| infos[*j].as_ref()).map_or_else(
                        || t.to_string(),
                        |info| info.ids[instance_index(info, &ks)].clone(),
                    )
                });
            }
            ids.push(id.clone());
            instances.push(Instance {
                id,
                node: d.name.clone(),
                kind: d.kind.clone(),
                params,
                inputs,
                assignments,
            });
        }
        infos[i] = Some(NodeInfo {
            reach: r,
            strides,
            ids,
        });
    }
    let variants = variants(recipe, &order, &infos, &axis_len, total);
    Ok(Expanded {
        instances,
        variants,
    })
}

/// The candidates of a select instance whose other axes are at `ks`: for every combination of
/// the collapsed axes (first axis outermost), (label, `from` instance id, eval instance id).
fn candidates(
    sel: &SelectInfo,
    infos: &[Option<NodeInfo>],
    axes: &[crate::recipe::Axis],
    axis_len: &[usize],
    ks: &mut [usize],
) -> Vec<(String, String, Option<String>)> {
    let c: Vec<usize> = sel.collapsed.iter().copied().collect();
    let total: usize = c.iter().map(|a| axis_len[*a]).product();
    let id_of = |node: usize, ks: &[usize]| {
        infos[node]
            .as_ref()
            .map(|info| info.ids[instance_index(info, ks)].clone())
    };
    let mut out = Vec::with_capacity(total);
    for k in 0..total {
        let mut rest = k;
        for &a in c.iter().rev() {
            ks[a] = rest % axis_len[a];
            rest /= axis_len[a];
        }
        let label = c
            .iter()
            .flat_map(|&a| {
                axes[a]
                    .members
                    .iter()
                    .map(|m| format!("{}.{}={}", m.node, m.param, show(&m.values[ks[a]])))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join(",");
        let from = id_of(sel.from, ks).unwrap_or_default();
        out.push((label, from, sel.eval.and_then(|e| id_of(e, ks))));
    }
    out
}

/// Rewrites references to instance ids, recording (param path, id) in order.
fn rewrite(
    v: &mut Value,
    path: String,
    inputs: &mut Vec<(String, String)>,
    id_of: &dyn Fn(&str) -> String,
) {
    match v {
        Value::Ref(t) => {
            let id = id_of(t);
            inputs.push((path, id.clone()));
            *t = id;
        }
        Value::List(l) => {
            for (k, x) in l.iter_mut().enumerate() {
                rewrite(x, format!("{path}[{k}]"), inputs, id_of);
            }
        }
        Value::Record(r) => {
            for (k, x) in r.iter_mut() {
                rewrite(x, format!("{path}.{k}"), inputs, id_of);
            }
        }
        _ => {}
    }
}

/// Kahn's algorithm, ties broken by declaration order. None on a cycle.
fn topo_order(deps: &[BTreeSet<usize>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut indeg: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &j in ds {
            users[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|i| indeg[*i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// The full grid: one variant per combination of axis values, first axis outermost.
fn variants(
    recipe: &Recipe,
    order: &[usize],
    infos: &[Option<NodeInfo>],
    axis_len: &[usize],
    total: usize,
) -> Vec<Variant> {
    let axes = &recipe.axes;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in axes.iter().flat_map(|a| &a.members) {
        *count.entry(m.param.as_str()).or_default() += 1;
    }
    let label = |node: &str, param: &str| {
        if count.get(param).copied().unwrap_or(0) > 1 {
            format!("{node}.{param}")
        } else {
            param.to_string()
        }
    };
    let mut out = Vec::with_capacity(total);
    let mut ks = vec![0usize; axes.len()];
    for v in 0..total {
        let mut rest = v;
        for a in (0..axes.len()).rev() {
            ks[a] = rest % axis_len[a];
            rest /= axis_len[a];
        }
        let mut assignments = Vec::new();
        let mut parts = Vec::new();
        for (a, ax) in axes.iter().enumerate() {
            for m in &ax.members {
                let val = &m.values[ks[a]];
                parts.push(format!("{}={}", label(&m.node, &m.param), show(val)));
                assignments.push((format!("{}.{}", m.node, m.param), val.clone()));
            }
        }
        let instances = order
            .iter()
            .filter_map(|&i| infos[i].as_ref())
            .map(|info| info.ids[instance_index(info, &ks)].clone())
            .collect();
        out.push(Variant {
            name: parts.join(","),
            assignments,
            instances,
        });
    }
    out
}

/// Sets parameter `param` — or, for `record.field` (a sweep over one field of a record the node
/// sets), that field of the record — to `v`.
fn set_param(params: &mut std::collections::BTreeMap<String, Value>, param: &str, v: &Value) {
    if let Some((rec, field)) = param.split_once('.') {
        if let Some(Value::Record(r)) = params.get_mut(rec) {
            r.insert(field.to_string(), v.clone());
            return;
        }
    }
    params.insert(param.to_string(), v.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_breaks_ties_by_declaration() {
        let deps = vec![
            BTreeSet::from([2]),
            BTreeSet::new(),
            BTreeSet::new(),
            BTreeSet::from([0, 1]),
        ];
        assert_eq!(topo_order(&deps), Some(vec![1, 2, 0, 3]));
        let cyc = vec![BTreeSet::from([1]), BTreeSet::from([0])];
        assert_eq!(topo_order(&cyc), None);
    }
}
