//! `temper results recipe.kdl [--sort METRIC] [--desc] [--format table|csv|json]`: one row per
//! sweep variant with its swept values and final metrics, for comparing variants side by side
//! or feeding other tools.
//!
//! Columns: `variant`, then the swept parameters (`node.param`), then for every built instance
//! of the variant: the last line of its `metrics.jsonl` as `node.metric` (training nodes), and
//! the rows of an eval node's `results.json` as
//! `node.model.data.loss|perplexity|exact_match|preference_accuracy|margin` (the metrics that
//! apply to the row's dataset; `margin` is the mean `logπ(yc) − logπ(yr)` of preference data),
//! `model` and `data` named by node without the variant suffix, so a column means the same in
//! every row.
//! A built `select` node adds `node.selected` (whether the variant is the one it chose).
//! Cells of instances not built yet are empty. Rows sort by `--sort` (ascending; `--desc` for
//! descending; rows without the value last), else in sweep order.
use super::{Global, RecipeArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value as J};
use std::path::Path;
use std::process::ExitCode;

/// One variant's cells by column name.
pub type Row = Map<String, J>;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Sort rows by this column (e.g. `aligned.rewards/accuracies`, or a unique suffix such as
    /// `rewards/accuracies`).
    #[arg(long)]
    pub sort: Option<String>,
    /// Sort descending.
    #[arg(long)]
    pub desc: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(g: &Global, a: ResultsArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let (cols, mut rows) = collect(&store, &plan)?;
    if let Some(s) = &a.sort {
        let col = resolve_column(&cols, s)?;
        rows.sort_by(|x, y| {
            let (vx, vy) = (
                x.get(&col).and_then(J::as_f64),
                y.get(&col).and_then(J::as_f64),
            );
            match (vx, vy) {
                (Some(p), Some(q)) => {
                    let o = p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal);
                    if a.desc {
                        o.reverse()
                    } else {
                        o
                    }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }
    print!("{}", render(&cols, &rows, a.format)?);
    Ok(ExitCode::SUCCESS)
}

/// The column a `--sort` argument names: exact, else the one column ending in `.NAME`.
pub fn resolve_column(cols: &[String], name: &str) -> Result<String> {
    if cols.iter().any(|c| c == name) {
        return Ok(name.to_string());
    }
    let hits: Vec<&String> = cols
        .iter()
        .filter(|c| c.ends_with(&format!(".{name}")))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(crate::text::UsageError(format!(
            "no column `{name}`; columns: {}",
            cols.join(", ")
        ))),
        many => bail!(crate::text::UsageError(format!(
            "`{name}` matches several columns: {}",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// (columns in first-seen order, one object per variant).
pub fn collect(store: &store::Store, plan: &crate::plan::Plan) -> Result<(Vec<String>, Vec<Row>)> {
    let mut cols: Vec<String> = vec!["variant".into()];
    let mut rows = Vec::new();
    let push = |cols: &mut Vec<String>, row: &mut Map<String, J>, k: String, v: J| {
        if !cols.contains(&k) {
            cols.push(k.clone());
        }
        row.insert(k, v);
    };
    for v in &plan.loaded.expanded.variants {
        let mut row = Map::new();
        let name = if v.name.is_empty() {
            "-".to_string()
        } else {
            v.name.clone()
        };
        row.insert("variant".into(), J::String(name));
        for (k, val) in &v.assignments {
            let j = match val.as_f64() {
                Some(x) if !matches!(val, dsl::Value::Str(_)) => serde_json::json!(x),
                _ => J::String(val.display()),
            };
            push(&mut cols, &mut row, k.clone(), j);
        }
        for id in &v.instances {
            let Some(e) = plan.entry(id) else { continue };
            let Some(rec) = store
                .record(&e.key)?
                .filter(|r| r.status == store::Status::Done)
            else {
                continue;
            };
            // A select: whether this variant is the one it chose.
            if let Some(w) = rec.summary["winner"]
                .as_str()
                .filter(|_| e.kind == dsl::schema::SELECT_KIND)
            {
                let chosen = J::Bool(v.instances.iter().any(|i| i == w));
                push(&mut cols, &mut row, format!("{}.selected", e.node), chosen);
                continue;
            }
            let dir = store.artifact_dir(&e.key);
            for (k, x) in
                artifact_metrics(&dir).with_context(|| format!("reading the results of {id}"))?
            {
                push(&mut cols, &mut row, format!("{}.{k}", e.node), x);
            }
        }
        rows.push(row);
    }
    Ok((cols, rows))
}

/// The last metrics line (numbers only, without `step`-independent noise such as tokens/s) of a
/// training artifact, or the rows of an eval artifact (`results.json`).
pub fn artifact_metrics(dir: &Path) -> Result<Vec<(String, J)>> {
    let mut out = Vec::new();
    // An eval node's metrics lines repeat its result rows: its results.json is read instead.
    let eval = dir.join("results.json").is_file();
    if let Some(text) = (!eval)
        .then(|| std::fs::read_to_string(dir.join("metrics.jsonl")).ok())
        .flatten()
    {
        if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            let v: J = serde_json::from_str(last).context("metrics.jsonl: last line")?;
            for (k, x) in v.as_object().into_iter().flatten() {
                if x.is_number() && k != "tokens_per_s" {
                    out.push((k.clone(), x.clone()));
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("results.json")) {
        let v: J = serde_json::from_str(&text).context("results.json")?;
        for r in v["results"].as_array().into_iter().flatten() {
            // Instance ids without the variant suffix (`aligned[beta=0.1]` → `aligned`): the
            // row already names the variant, and the column stays the same across rows.
            let base = |k: &str| {
                let s = r[k].as_str().unwrap_or("?");
                s.split_once('[').map_or(s, |(b, _)| b).to_string()
            };
            let (m, d) = (base("model"), base("data"));
            for k in [
                "loss",
                "perplexity",
                "exact_match",
                "preference_accuracy",
                "margin",
            ] {
                if r[k].is_number() {
                    out.push((format!("{m}.{d}.{k}"), r[k].clone()));
                }
            }
        }
    }
    Ok(out)
}

/// A cell as `temper results` prints it (floats to 6 decimals, trailing zeros cut).
pub fn cell(v: Option<&J>) -> String {
    match v {
        None | Some(J::Null) => String::new(),
        Some(J::String(s)) => s.clone(),
        Some(J::Number(n)) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.6}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as a table, CSV or a JSON array.
pub fn render(cols: &[String], rows: &[Row], f: Format) -> Result<String> {
    let grid: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(r.get(c))).collect())
        .collect();
    Ok(match f {
        Format::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Format::Csv => {
            let mut s = cols
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",")
                + "\n";
            for g in &grid {
                s += &(g.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n");
            }
            s
        }
        Format::Table => {
            let w: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    grid.iter()
                        .map(|g| g[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<&str>| {
                cells
                    .iter()
                    .zip(&w)
                    .map(|(c, n)| format!("{c:<n$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
                    + "\n"
            };
            let mut s = line(cols.iter().map(|c| c.as_str()).collect());
            for g in &grid {
                s += &line(g.iter().map(|c| c.as_str()).collect());
            }
            s
        }
    })
}
