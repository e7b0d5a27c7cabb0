//! `temper report`'s page: one self-contained HTML file (inline CSS, SVG and a few lines of
//! script; nothing fetched) describing a recipe's plan against the store as it is now — built,
//! running or not yet run.
//!
//! Sections: the DAG ([`dag`]); a panel per instance (parameters from its key tree, inputs,
//! summary, error, log tail, artifact files), shown by clicking its box; curves from every
//! training node's `metrics.jsonl` ([`chart`]), one chart per (node, metric), the variants of a
//! sweep overlaid with their swept values as the legend; the `temper results` table (sortable);
//! every eval node's table; reweight nodes' mixture weights per phase. The page works without
//! script (everything is drawn); the script only toggles panels and sorts tables, and records
//! any error of its own in `data-errors` on `<body>` (what the browser test reads).

pub mod chart;
pub mod dag;
pub mod serve;

use crate::cmd::results;
use crate::plan::{Plan, State};
use anyhow::Result;
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use store::{Status, Store};

/// What the page shows of one instance.
pub struct NodeView {
    pub id: String,
    pub node: String,
    pub kind: String,
    pub key: String,
    /// `done`, `to run`, `running`, `failed`, …
    pub state: String,
    /// CSS class of the state: `done`, `todo`, `running`, `failed`.
    pub state_class: &'static str,
    pub duration: Option<String>,
    pub inputs: Vec<(String, String)>,
    tree: J,
    summary: J,
    error: Option<String>,
    reason: String,
    log_tail: Vec<String>,
    files: Vec<(String, u64)>,
    /// Numeric metric lines (`metrics.jsonl`), from the artifact or, while it runs, the work dir.
    metrics: Vec<BTreeMap<String, f64>>,
    results: Option<J>,
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The instances of `plan` with what the store holds for them.
pub fn views(store: &Store, plan: &Plan, log_lines: usize) -> Result<Vec<NodeView>> {
    let keys: Vec<String> = plan.entries.iter().map(|e| e.key.clone()).collect();
    let records = store.records_many(&keys)?;
    let mut out = Vec::with_capacity(plan.entries.len());
    for e in &plan.entries {
        let rec = records.get(&e.key).cloned();
        let (state, class) = match (&e.state, rec.as_ref().map(|r| r.status)) {
            (State::Cached, _) => ("done".to_string(), "done"),
            (State::RunningElsewhere { .. }, _) => ("running".into(), "running"),
            (State::OnSlurm { what, .. }, _) => (format!("on slurm: {what}"), "running"),
            (State::FailedBefore { .. }, _) | (_, Some(Status::Failed)) => {
                ("failed".into(), "failed")
            }
            (State::Incomplete { .. }, _) => ("incomplete".into(), "todo"),
            (State::Damaged { damage }, _) => (format!("damaged: {damage}"), "failed"),
            (State::Waiting { stuck: true, .. }, _) => ("cannot select".into(), "failed"),
            (State::Waiting { .. }, _) => ("waiting for scores".into(), "todo"),
            (_, Some(Status::Cancelled)) => ("cancelled".into(), "todo"),
            _ => ("to run".into(), "todo"),
        };
        let built = matches!(e.state, State::Cached);
        let dir = store.artifact_dir(&e.key);
        let metrics_file = if built {
            Some(dir.join("metrics.jsonl"))
        } else {
            find_file(&store.work_dir(&e.key), "metrics.jsonl")
        };
        let results = built
            .then(|| std::fs::read_to_string(dir.join("results.json")).ok())
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok());
        out.push(NodeView {
            id: e.id.clone(),
            node: e.node.clone(),
            kind: e.kind.clone(),
            key: e.key.clone(),
            state,
            state_class: class,
            duration: rec.as_ref().and_then(|r| r.duration_s).map(duration),
            inputs: e.inputs.clone(),
            tree: e.tree.clone(),
            summary: rec.as_ref().map_or(J::Null, |r| r.summary.clone()),
            error: rec.as_ref().and_then(|r| r.error.clone()),
            reason: e.reason_text(),
            log_tail: tail(&store.log_path(&e.key), log_lines),
            files: if built { files(&dir) } else { Vec::new() },
            metrics: metrics_file.map(|p| metric_lines(&p)).unwrap_or_default(),
            results,
        });
    }
    Ok(out)
}

/// A duration: `0.42 s`, `12.3 s`, `4 min 05 s`, `2 h 07 min`.
pub fn duration(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.2} s")
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// The first file named `name` under `dir` (two levels at most).
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir)
        .max_depth(2)
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file() && e.file_name() == name)
        .map(|e| e.into_path())
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let rel = e
                .path()
                .strip_prefix(dir)
                .ok()?
                .to_string_lossy()
                .into_owned();
            Some((rel, e.metadata().ok()?.len()))
        })
        .collect();
    v.sort();
    v
}

/// The numeric fields of every parsable line of a `metrics.jsonl` (a torn last line is skipped).
fn metric_lines(path: &Path) -> Vec<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<J>(l).ok())
        .filter_map(|v| {
            let o = v.as_object()?;
            Some(
                o.iter()
                    .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                    .collect(),
            )
        })
        .collect()
}

/// The variant part of an instance id (`aligned[beta=0.1]` → `beta=0.1`), else the id.
fn variant_label(id: &str) -> String {
    match id.split_once('[') {
        Some((_, rest)) => rest.trim_end_matches(']').to_string(),
        None => id.to_string(),
    }
}

/// The whole page; with `refresh`, it reloads itself every that many seconds (`--serve`).
pub fn page(store: &Store, plan: &Plan, log_lines: usize, refresh: Option<u32>) -> Result<String> {
    let nodes = views(store, plan, log_lines)?;
    let mut body = String::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &nodes {
        *counts.entry(n.state.as_str()).or_default() += 1;
    }
    let _ = write!(
        body,
        "<header><h1>{}</h1><p>{} instances, {} variant(s): {}. Click a node for its parameters, \
         summary, log and files.</p></header>",
        esc(&plan.loaded.path.display().to_string()),
        nodes.len(),
        plan.variants,
        esc(&counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", "))
    );
    let _ = write!(
        body,
        r#"<section><h2>Graph</h2><div class="scroll">{}</div><div id="panels">"#,
        dag::svg(&nodes)
    );
    for n in &nodes {
        body.push_str(&panel(n));
    }
    body.push_str("</div></section>");
    body.push_str(&curves(&nodes));
    body.push_str(&results_table(store, plan)?);
    body.push_str(&eval_tables(&nodes));
    body.push_str(&selections(&nodes));
    body.push_str(&reweight_chart(&nodes));
    Ok(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{}<title>temper report: {}</title><style>{CSS}</style></head><body data-errors=\"\">{body}<script>{JS}</script></body></html>\n",
        refresh
            .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
            .unwrap_or_default(),
        esc(&plan.loaded.stem)
    ))
}

fn panel(n: &NodeView) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<div class="panel" data-panel="{}" hidden><h3>{} <small>{} · {}</small></h3><p>key <code>{}</code> · {}{}</p>"#,
        esc(&n.id),
        esc(&n.id),
        esc(&n.kind),
        esc(&n.state),
        esc(&n.key),
        n.duration
            .as_deref()
            .map(|d| format!("took {}", esc(d)))
            .unwrap_or_default(),
        if n.reason.is_empty() {
            String::new()
        } else {
            format!(" · would run: {}", esc(&n.reason))
        }
    );
    if !n.inputs.is_empty() {
        s.push_str("<h4>Inputs</h4><ul>");
        for (p, id) in &n.inputs {
            let _ = write!(
                s,
                r##"<li><code>{}</code> ← <a href="#" data-show="{}">{}</a></li>"##,
                esc(p),
                esc(id),
                esc(id)
            );
        }
        s.push_str("</ul>");
    }
    let pretty = |v: &J| serde_json::to_string_pretty(v).unwrap_or_default();
    let params = n.tree.get("params").unwrap_or(&n.tree);
    let _ = write!(
        s,
        "<h4>Parameters (key tree)</h4><pre>{}</pre>",
        esc(&pretty(params))
    );
    if let Some(e) = &n.error {
        let _ = write!(s, r#"<h4>Error</h4><pre class="err">{}</pre>"#, esc(e));
    }
    if n.kind == dsl::schema::SELECT_KIND && n.summary["candidates"].is_array() {
        let _ = write!(
            s,
            "<h4>Choice</h4>{}",
            choice(n, &format!("panel-select-{}", n.id))
        );
    } else if !n.summary.is_null() {
        let _ = write!(s, "<h4>Summary</h4><pre>{}</pre>", esc(&pretty(&n.summary)));
    }
    if !n.log_tail.is_empty() {
        let _ = write!(
            s,
            "<h4>Log (last {} lines)</h4><pre>{}</pre>",
            n.log_tail.len(),
            esc(&n.log_tail.join("\n"))
        );
    }
    if !n.files.is_empty() {
        s.push_str("<h4>Artifact files</h4><table><tbody>");
        for (f, size) in &n.files {
            let _ = write!(
                s,
                r#"<tr><td><code>{}</code></td><td class="num">{}</td></tr>"#,
                esc(f),
                esc(&crate::text::human_bytes(*size))
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</div>");
    s
}

/// Metrics lines' bookkeeping fields, not drawn.
const COUNTERS: [&str; 4] = ["step", "epoch", "tokens_seen", "targets"];

/// One chart per (declared training node, metric): a series per instance.
fn curves(nodes: &[NodeView]) -> String {
    let mut by_node: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for n in nodes.iter().filter(|n| n.results.is_none()) {
        if n.metrics.iter().any(|m| m.contains_key("step")) {
            if !by_node.contains_key(n.node.as_str()) {
                order.push(&n.node);
            }
            by_node.entry(&n.node).or_default().push(n);
        }
    }
    let mut s = String::from("<section><h2>Curves</h2>");
    if order.is_empty() {
        s.push_str(r#"<p class="muted">No training node has metrics yet.</p>"#);
    }
    for node in order {
        let members = &by_node[node];
        // Loss first, then the rest by name; counters that only grow are left out.
        let mut names: Vec<&str> = Vec::new();
        for m in members.iter().flat_map(|n| n.metrics.iter()) {
            for k in m.keys() {
                if !COUNTERS.contains(&k.as_str()) && !names.contains(&k.as_str()) {
                    names.push(k);
                }
            }
        }
        names.sort_by_key(|n| (*n != "loss", *n));
        let _ = write!(
            s,
            r#"<h3>{} <small>{}</small></h3><div class="charts" data-node="{}">"#,
            esc(node),
            esc(&members[0].kind),
            esc(node)
        );
        for name in names {
            let series: Vec<chart::Series> = members
                .iter()
                .map(|n| chart::Series {
                    label: variant_label(&n.id),
                    points: n
                        .metrics
                        .iter()
                        .filter_map(|m| Some((*m.get("step")?, *m.get(name)?)))
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            s.push_str(&chart::line_chart(
                name,
                "step",
                &series,
                &format!(r#"data-node="{}" data-metric="{}""#, esc(node), esc(name)),
            ));
        }
        s.push_str("</div>");
    }
    s.push_str("</section>");
    s
}

fn html_table(id: &str, cols: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!(r#"<table class="sortable" id="{}"><thead><tr>"#, esc(id));
    for c in cols {
        let _ = write!(s, "<th>{}</th>", esc(c));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let num = c.parse::<f64>().is_ok();
            let _ = write!(
                s,
                "<td{}>{}</td>",
                if num { r#" class="num""# } else { "" },
                esc(c)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// `temper results`' table: a row per variant, click a header to sort.
fn results_table(store: &Store, plan: &Plan) -> Result<String> {
    let (cols, rows) = results::collect(store, plan)?;
    let grid: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| results::cell(r.get(c))).collect())
        .collect();
    Ok(format!(
        "<section><h2>Results <small>(a row per variant; click a header to sort)</small></h2><div class=\"scroll\">{}</div></section>",
        html_table("results", &cols, &grid)
    ))
}

/// Every eval node's `results.json` as a table.
fn eval_tables(nodes: &[NodeView]) -> String {
    let evals: Vec<&NodeView> = nodes.iter().filter(|n| n.results.is_some()).collect();
    if evals.is_empty() {
        return String::new();
    }
    let mut s = String::from("<section><h2>Evaluations</h2>");
    let cols: Vec<String> = [
        "model",
        "data",
        "metric",
        "n",
        "loss",
        "perplexity",
        "exact_match",
        "preference_accuracy",
        "margin",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    for n in evals {
        let rows: Vec<Vec<String>> = n
            .results
            .as_ref()
            .and_then(|r| r["results"].as_array())
            .into_iter()
            .flatten()
            .map(|r| cols.iter().map(|c| results::cell(r.get(c))).collect())
            .collect();
        let _ = write!(s, "<h3>{}</h3>", esc(&n.id));
        s.push_str(&html_table(&format!("eval-{}", n.id), &cols, &rows));
    }
    s.push_str("</section>");
    s
}

/// A select node's choice: the winner, then its candidates with their scores (sortable).
fn choice(n: &NodeView, table_id: &str) -> String {
    let sel = &n.summary;
    let lines = crate::select::describe(sel);
    let cols: Vec<String> = ["", "candidate", "score", "instance"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rows: Vec<Vec<String>> = sel["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let won = c["id"] == sel["winner"];
            vec![
                if won { "winner" } else { "" }.to_string(),
                results::cell(c.get("label")),
                results::cell(c.get("score")),
                results::cell(c.get("id")),
            ]
        })
        .collect();
    format!(
        "<p class=\"choice\">{}</p>{}",
        esc(lines.first().map_or("", String::as_str)),
        html_table(table_id, &cols, &rows)
    )
}

/// Every resolved select node's choice.
fn selections(nodes: &[NodeView]) -> String {
    let sel: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.kind == dsl::schema::SELECT_KIND && n.summary["candidates"].is_array())
        .collect();
    if sel.is_empty() {
        return String::new();
    }
    let mut s = String::from("<section><h2>Selections</h2>");
    for n in sel {
        let table = choice(n, &format!("select-{}", n.id));
        let _ = write!(s, "<h3>{}</h3>{table}", esc(&n.id));
    }
    s.push_str("</section>");
    s
}

/// The mixture weights of the reweight nodes in plan order (a phase each; phase 0 = the first
/// node's starting weights), one series per domain.
fn reweight_chart(nodes: &[NodeView]) -> String {
    let phases: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.kind == "reweight" && n.summary["domains"].is_array())
        .collect();
    if phases.is_empty() {
        return String::new();
    }
    let mut series: Vec<chart::Series> = Vec::new();
    for (i, n) in phases.iter().enumerate() {
        for d in n.summary["domains"].as_array().into_iter().flatten() {
            let name = d["name"].as_str().unwrap_or("?").to_string();
            let k = match series.iter().position(|s| s.label == name) {
                Some(k) => k,
                None => {
                    series.push(chart::Series {
                        label: name,
                        points: Vec::new(),
                    });
                    series.len() - 1
                }
            };
            if i == 0 {
                if let Some(w0) = d["w0"].as_f64() {
                    series[k].points.push((0.0, w0));
                }
            }
            if let Some(w) = d["w"].as_f64() {
                series[k].points.push(((i + 1) as f64, w));
            }
        }
    }
    let names: Vec<String> = phases.iter().map(|n| esc(&n.id)).collect();
    format!(
        "<section><h2>Mixture weights per phase</h2><p>phases: {}</p>{}</section>",
        names.join(" → "),
        chart::line_chart(
            "mixture weight",
            "phase",
            &series,
            r#"data-node="reweight""#
        )
    )
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222}h1{font-size:20px}\
h2{font-size:17px;border-bottom:1px solid #ddd;margin-top:28px}small{color:#777;font-weight:normal}\
.scroll{overflow:auto;max-width:100%}.muted{color:#888}code,pre{font:12px ui-monospace,monospace}\
pre{background:#f6f6f8;padding:8px;overflow:auto;max-height:320px}pre.err{background:#fdecec}\
#dag .node rect{stroke:#555;stroke-width:1;fill:#eee}#dag .node{cursor:pointer}\
#dag .node.done rect{fill:#dff3e0}#dag .node.todo rect{fill:#f1f1f1;stroke-dasharray:4 3}\
#dag .node.running rect{fill:#dcebfb}#dag .node.failed rect{fill:#f9d6d5}\
#dag .node.sel rect{stroke:#000;stroke-width:2.5}#dag text{font-size:11px}#dag .nid{font-weight:600;font-size:12px}#dag .nv{fill:#335;font-style:italic}\
#dag .edge{fill:none;stroke:#889;stroke-width:1.2}#dag .group{fill:none;stroke:#99a;stroke-dasharray:5 4}\
#dag .glabel{font-size:11px;fill:#667}.panel{border:1px solid #ccd;padding:4px 14px;margin:10px 0;background:#fcfcfe}\
.charts{display:flex;flex-wrap:wrap;gap:10px}.curve .frame{fill:none;stroke:#aaa}.curve .grid{stroke:#eee}\
.curve .tick{font-size:10px;fill:#555}.curve .ct{font-size:12px;font-weight:600}.curve .legend{font-size:11px}\
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f6;cursor:pointer}";

const JS: &str = r#"(function(){
var errs=[];window.addEventListener('error',function(e){errs.push(String(e.message));document.body.setAttribute('data-errors',errs.join('; '));});
function show(id){document.querySelectorAll('.panel').forEach(function(p){p.hidden=p.getAttribute('data-panel')!==id;});
document.querySelectorAll('#dag .node').forEach(function(g){g.classList.toggle('sel',g.getAttribute('data-id')===id);});
var p=document.querySelector('.panel:not([hidden])');if(p){p.scrollIntoView({block:'nearest'});}}
if(location.hash.indexOf('#node=')===0){show(decodeURIComponent(location.hash.slice(6)));}
document.querySelectorAll('#dag .node').forEach(function(g){g.addEventListener('click',function(){show(g.getAttribute('data-id'));});
g.addEventListener('keydown',function(e){if(e.key==='Enter'){show(g.getAttribute('data-id'));}});});
document.querySelectorAll('[data-show]').forEach(function(a){a.addEventListener('click',function(e){e.preventDefault();show(a.getAttribute('data-show'));});});
document.querySelectorAll('table.sortable').forEach(function(t){var ths=t.querySelectorAll('th');ths.forEach(function(th,i){var asc=true;
th.addEventListener('click',function(){var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,p=parseFloat(x),q=parseFloat(y);
if(x===''&&y!==''){return 1;}if(y===''&&x!==''){return -1;}var c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?c:-c;});
asc=!asc;rows.forEach(function(r){body.appendChild(r);});});});});
})();"#;
