//! The recipe's instance DAG as inline SVG: one box per instance (`<g class="node">`: its node,
//! swept values, kind, short key, state and duration), edges input → dependent, top to bottom.
//!
//! Layout: an instance's layer is one more than its deepest input's, so every edge points down;
//! an instance without inputs (a dataset, a base model) sits just above its first dependent
//! rather than at the top. Within a layer, instances are ordered by the mean position of their
//! inputs (fewer crossings), then by declared node, so the variants of a swept node sit
//! together and get one dashed frame labelled `node × k`. An instance shared by every variant is
//! drawn once — the shared prefix is visibly shared.

use super::{esc, NodeView};
use std::collections::BTreeMap;
use std::fmt::Write;

const BOX_W: f64 = 196.0;
const BOX_H: f64 = 72.0;
const COL_W: f64 = 216.0;
const ROW_H: f64 = 110.0;
const PAD: f64 = 24.0;

/// Layer (row, from the top) and position in the layer (column) of every node, by index into
/// `nodes`.
pub fn layout(nodes: &[NodeView]) -> Vec<(usize, usize)> {
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let inputs: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut v: Vec<usize> = n
                .inputs
                .iter()
                .filter_map(|(_, id)| index.get(id.as_str()).copied())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    // Nodes come in topological order, so inputs have their column already.
    let mut col = vec![0usize; nodes.len()];
    for i in 0..nodes.len() {
        col[i] = inputs[i]
            .iter()
            .filter(|&&j| j < i)
            .map(|&j| col[j] + 1)
            .max()
            .unwrap_or(0);
    }
    // Sources move down to just above their first dependent.
    for i in 0..nodes.len() {
        if inputs[i].is_empty() {
            let first = (0..nodes.len())
                .filter(|&d| inputs[d].contains(&i))
                .map(|d| col[d])
                .min();
            if let Some(f) = first {
                col[i] = f.saturating_sub(1);
            }
        }
    }
    let ncols = col.iter().max().map_or(0, |m| m + 1);
    let mut row = vec![0usize; nodes.len()];
    for c in 0..ncols {
        let mut here: Vec<usize> = (0..nodes.len()).filter(|&i| col[i] == c).collect();
        let bary = |i: usize| -> f64 {
            let ins = &inputs[i];
            if ins.is_empty() {
                return i as f64;
            }
            ins.iter().map(|&j| row[j] as f64).sum::<f64>() / ins.len() as f64
        };
        // Group by declared node (its first member's barycentre), then by id within it.
        let mut first: BTreeMap<&str, f64> = BTreeMap::new();
        for &i in &here {
            let b = bary(i);
            first
                .entry(nodes[i].node.as_str())
                .and_modify(|v| *v = v.min(b))
                .or_insert(b);
        }
        here.sort_by(|&a, &b| {
            let (fa, fb) = (first[nodes[a].node.as_str()], first[nodes[b].node.as_str()]);
            fa.total_cmp(&fb)
                .then_with(|| nodes[a].node.cmp(&nodes[b].node))
                .then_with(|| a.cmp(&b))
        });
        for (r, &i) in here.iter().enumerate() {
            row[i] = r;
        }
    }
    col.into_iter().zip(row).collect()
}

/// Top-left corner of the box at (layer, position).
fn pos(layer: usize, r: usize) -> (f64, f64) {
    (PAD + r as f64 * COL_W, PAD + layer as f64 * ROW_H)
}

/// The DAG as an `<svg id="dag">`; each box is `<g class="node" data-id=ID>` (a click shows the
/// node's panel).
pub fn svg(nodes: &[NodeView]) -> String {
    let at = layout(nodes);
    let layers = at.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let across = at.iter().map(|p| p.1 + 1).max().unwrap_or(1);
    let (w, h) = (
        2.0 * PAD + (across - 1) as f64 * COL_W + BOX_W,
        2.0 * PAD + (layers - 1) as f64 * ROW_H + BOX_H + 16.0,
    );
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#889"/></marker></defs>"##
    );
    // Frames around the variants of one swept node that share a column.
    let mut groups: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        groups
            .entry((at[i].0, n.node.as_str()))
            .or_default()
            .push(i);
    }
    for ((c, node), members) in &groups {
        if members.len() < 2 {
            continue;
        }
        let r0 = members.iter().map(|&i| at[i].1).min().unwrap_or(0);
        let r1 = members.iter().map(|&i| at[i].1).max().unwrap_or(0);
        let (x, y) = pos(*c, r0);
        let ww = (r1 - r0) as f64 * COL_W + BOX_W;
        let _ = write!(
            s,
            r#"<rect class="group" x="{}" y="{}" width="{}" height="{}" rx="8"/><text class="glabel" x="{}" y="{}">{} × {}</text>"#,
            x - 7.0,
            y - 7.0,
            ww + 14.0,
            BOX_H + 22.0,
            x,
            y + BOX_H + 12.0,
            esc(node),
            members.len()
        );
    }
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let (x1, y1) = pos(at[i].0, at[i].1);
        let mut seen = Vec::new();
        for (_, input) in &n.inputs {
            let Some(&j) = index.get(input.as_str()) else {
                continue;
            };
            if seen.contains(&j) {
                continue;
            }
            seen.push(j);
            let (x0, y0) = pos(at[j].0, at[j].1);
            let (ax, ay, bx, by) = (x0 + BOX_W / 2.0, y0 + BOX_H, x1 + BOX_W / 2.0, y1);
            let mid = (ay + by) / 2.0;
            let _ = write!(
                s,
                r#"<path class="edge" d="M{ax},{ay} C{ax},{mid} {bx},{mid} {bx},{by}" marker-end="url(#arrow)"/>"#
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos(at[i].0, at[i].1);
        let dur = n.duration.as_deref().unwrap_or("");
        // Line 1 the declared node, line 2 its swept values (when a sweep made it) and, for a
        // resolved select, the variant it chose.
        let mut variant =
            n.id.split_once('[')
                .map(|(_, v)| v.trim_end_matches(']').to_string());
        if let Some(w) = n.summary["winner_label"]
            .as_str()
            .filter(|_| n.kind == dsl::schema::SELECT_KIND)
        {
            variant = Some(match variant {
                Some(v) => format!("{v}: chose {w}"),
                None => format!("chose {w}"),
            });
        }
        let _ = write!(
            s,
            r#"<g class="node {cls}" data-id="{id}" tabindex="0" transform="translate({x},{y})"><title>{id} ({kind}): {state}</title><rect width="{BOX_W}" height="{BOX_H}" rx="6"/><text x="8" y="17" class="nid">{name}</text><text x="8" y="32" class="nv">{variant}</text><text x="8" y="48" class="nk">{kind} · {key}</text><text x="8" y="64" class="ns">{state}{sep}{dur}</text></g>"#,
            cls = n.state_class,
            id = esc(&n.id),
            kind = esc(&n.kind),
            state = esc(&n.state),
            name = esc(&ellipsis(&n.node, 26)),
            variant = esc(&ellipsis(variant.as_deref().unwrap_or(""), 32)),
            key = &n.key[..12.min(n.key.len())],
            sep = if dur.is_empty() { "" } else { " · " },
            dur = esc(dur),
        );
    }
    s.push_str("</svg>");
    s
}

/// `s` cut to `n` characters with an ellipsis.
fn ellipsis(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}
