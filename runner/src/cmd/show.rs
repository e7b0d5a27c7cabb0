//! `temper show recipe.kdl [NODE]` or `temper show KEY`: a node's record, artifact directory,
//! manifest files, summary, timings and the tail of its log. With just the recipe, every node.
use super::{human_bytes, human_time, Global};
use crate::plan::{Entry, Plan};
use anyhow::{anyhow, Result};
use clap::Args;
use std::path::Path;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A recipe file, or a node key (a unique prefix is enough).
    pub target: String,
    /// Node name or instance id (with a recipe).
    pub node: Option<String>,
    /// `--set` overrides (with a recipe).
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Log lines to show.
    #[arg(long, default_value_t = 10)]
    pub log_lines: usize,
}

pub fn run(g: &Global, a: ShowArgs) -> Result<ExitCode> {
    let store = g.open_store()?;
    let as_recipe = a.target.ends_with(".kdl") || Path::new(&a.target).is_file();
    if !as_recipe {
        let key = resolve_key(&store, &a.target)?;
        print!("{}", show_key(&store, &key, None, a.log_lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    let kinds = crate::Kinds::builtin();
    let loaded = crate::plan::load(Path::new(&a.target), &kinds.registry, &a.set)?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let entries: Vec<&Entry> = match &a.node {
        Some(n) => {
            let v: Vec<&Entry> = plan
                .entries
                .iter()
                .filter(|e| e.id == *n || e.node == *n)
                .collect();
            if v.is_empty() {
                pick_one(&plan, n)?;
            }
            v
        }
        None => plan.entries.iter().collect(),
    };
    for e in entries {
        println!("== {} ({}, {})", e.id, e.kind, e.state.word());
        if let crate::plan::State::Damaged { damage } = &e.state {
            println!("damaged    {damage}; a run moves it aside and rebuilds it");
        }
        // A node a queued job builds has no record yet: its Slurm side says where it stands.
        let on_slurm = matches!(e.state, crate::plan::State::OnSlurm { .. });
        if e.state == crate::plan::State::Cached || on_slurm || store.record(&e.key)?.is_some() {
            print!("{}", show_key(&store, &e.key, Some(&e.id), a.log_lines)?);
        } else {
            let why = match &e.state {
                crate::plan::State::Waiting { why, .. } => format!("{why} (key provisional)"),
                _ => e.reason_text(),
            };
            println!("key        {}\nnot built: {why}", e.key);
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// The one instance `name` denotes: an instance id, or a declared node with one instance.
pub fn pick_one<'p>(plan: &'p Plan, name: &str) -> Result<&'p Entry> {
    if let Some(e) = plan.entry(name) {
        return Ok(e);
    }
    let hits: Vec<&Entry> = plan.entries.iter().filter(|e| e.node == name).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(crate::text::UsageError(format!(
            "no node or instance `{name}` in {}",
            plan.loaded.path.display()
        ))
        .into()),
        many => Err(crate::text::UsageError(format!(
            "node `{name}` has {} instances; name one of: {}",
            many.len(),
            many.iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

/// A full key from a unique prefix of a recorded key.
pub fn resolve_key(store: &store::Store, prefix: &str) -> Result<String> {
    let recs = store.all_records()?;
    let hits: Vec<&str> = recs
        .iter()
        .map(|r| r.key.as_str())
        .filter(|k| k.starts_with(prefix))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(anyhow!(
            "no node with key {prefix} in {}",
            store.root().display()
        )),
        many => Err(anyhow!(
            "key prefix {prefix} is ambiguous ({} matches)",
            many.len()
        )),
    }
}

/// Everything known about `key`. `as_id`: the instance the user asked about, when it may
/// differ from the one that built the key (two instances with equal keys share one artifact).
pub fn show_key(
    store: &store::Store,
    key: &str,
    as_id: Option<&str>,
    log_lines: usize,
) -> Result<String> {
    let mut s = format!("key        {key}\n");
    let submission = crate::slurm::Ledger::new(store).get(key)?;
    let Some(r) = store.record(key)? else {
        match &submission {
            Some(sub) => s += &slurm_lines(store, sub, log_lines)?,
            None => s += "no record\n",
        }
        return Ok(s);
    };
    let node = match as_id {
        Some(id) if id != r.node => format!(
            "{id} (kind {}; same key as {} of recipe {}, which built it)",
            r.kind, r.node, r.recipe
        ),
        _ => format!("{} (kind {}, recipe {})", r.node, r.kind, r.recipe),
    };
    s += &format!(
        "node       {node}\nstatus     {}\n",
        store.effective_status(&r)
    );
    if let Some(e) = &r.error {
        s += &format!("error      {e}\n");
    }
    if let Some(t) = r.started_at {
        s += &format!("started    {}\n", human_time(t));
    }
    if let Some(t) = r.finished_at {
        let word = match r.status {
            store::Status::Failed => "failed    ",
            store::Status::Cancelled => "cancelled ",
            _ => "finished  ",
        };
        s += &format!(
            "{word} {}{}\n",
            human_time(t),
            r.duration_s
                .map(|d| format!(" ({d:.2} s)"))
                .unwrap_or_default()
        );
    }
    if let Some(run) = r.run_id {
        s += &format!("run        {run}\n");
    }
    if let Some(job) = &r.scheduler_job {
        let on = r
            .host
            .as_ref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        s += &format!("job        {job}{on}\n");
    }
    if let Some(sub) = &submission {
        if r.status != store::Status::Done {
            s += &slurm_lines(store, sub, log_lines)?;
        }
    }
    if let Some(m) = store.read_manifest(key)? {
        s += &format!(
            "artifact   {} ({})\n",
            store.artifact_dir(key).display(),
            human_bytes(m.total_bytes())
        );
        for f in &m.files {
            s += &format!("  {:>10}  {}\n", human_bytes(f.size), f.path);
        }
    }
    for w in r.summary["warnings"].as_array().into_iter().flatten() {
        s += &format!("warning    {}\n", w.as_str().unwrap_or_default());
    }
    if r.kind == dsl::schema::SELECT_KIND && r.status == store::Status::Done {
        let lines = crate::select::describe(&r.summary);
        s += &format!("choice     {}\n", lines.first().map_or("", String::as_str));
        s += "candidates (score, instance; * the winner)\n";
        for l in lines.iter().skip(1) {
            s += &format!("  {l}\n");
        }
    } else if !r.summary.is_null() {
        s += &format!(
            "summary    {}\n",
            serde_json::to_string_pretty(&r.summary)?.replace('\n', "\n           ")
        );
    }
    let log = store.log_path(key);
    if let Ok(text) = std::fs::read_to_string(&log) {
        let lines = crate::nodelog::last_attempt(&text);
        s += &format!(
            "log        {} (last attempt, last {} lines)\n",
            log.display(),
            log_lines.min(lines.len())
        );
        for l in &lines[lines.len().saturating_sub(log_lines)..] {
            s += &format!("  {l}\n");
        }
    }
    Ok(s)
}

/// A submitted node's Slurm side: its job, phase and (when it did not end well) its job log.
fn slurm_lines(
    store: &store::Store,
    sub: &crate::slurm::Submission,
    log_lines: usize,
) -> Result<String> {
    let views = crate::slurm::observe::views(store, &[(sub.node.clone(), sub.key.clone())])
        .unwrap_or_default();
    let mut s = String::new();
    if let Some(v) = views.first() {
        s += &format!("slurm      {}\n", v.phase.describe(v.job()));
    }
    // The view's submission: with the job found by its name when the id was never recorded.
    let log = views
        .first()
        .and_then(|v| v.sub.as_ref())
        .and_then(|s| s.log.clone())
        .or_else(|| sub.log.clone());
    if let Some(log) = &log {
        s += &format!("slurm log  {}\n", log.display());
        let bad = views
            .first()
            .is_some_and(|v| !matches!(v.phase, crate::slurm::Phase::Done));
        if let (true, Ok(text)) = (bad, std::fs::read_to_string(log)) {
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(log_lines)..] {
                s += &format!("  {l}\n");
            }
        }
    }
    Ok(s)
}
