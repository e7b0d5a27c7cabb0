//! End to end: `temper report` on `examples/merge.kdl` (a β sweep of DPO, merges and evals), half
//! built and then built, loaded in a real browser — headless Chromium (Debian's `chromium`,
//! installed by `scripts/browser-setup.sh`; without it the test says so and skips). Each page
//! must load with no console message and no script error, draw one DAG box per planned instance
//! with its state, a curve per built training node (the swept node's variants overlaid), the
//! results table with a row per variant, and open a node's panel from the URL (`#node=ID`, the
//! same code a click runs). Screenshots go to `target/tmp/report-*.png`. `--serve` answers `GET /`
//! with the same page (reloading itself) and anything else with 404.

use super::serve::{get, serving_address};
use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use temper_e2e::Project;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|c| {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
    })
}

/// Loads `page` (with `hash`) in headless Chromium: (the DOM after its script ran, the
/// browser's stderr). Writes a screenshot of the page (without `hash`) to `shot`.
fn browse(chrome: &Path, profile: &Path, page: &Path, hash: &str, shot: &Path) -> (String, String) {
    // The DOM with `hash`; the screenshot of the page as it opens (a panel shown by the hash
    // would scroll it).
    let url = format!("file://{}{hash}", page.display());
    let plain = format!("file://{}", page.display());
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut c = Command::new(chrome);
    base(&mut c);
    let dom = c
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium");
    assert!(dom.status.success(), "chromium --dump-dom failed: {dom:?}");
    let mut c = Command::new(chrome);
    base(&mut c);
    let s = c
        .arg("--window-size=1500,2200")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&plain)
        .output()
        .expect("run chromium");
    assert!(s.status.success(), "chromium --screenshot failed: {s:?}");
    let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    let mut err = String::from_utf8_lossy(&dom.stderr).into_owned();
    err += &String::from_utf8_lossy(&s.stderr);
    (String::from_utf8_lossy(&dom.stdout).into_owned(), err)
}

/// The planned instances: (id, node, kind, state).
fn plan(p: &Project) -> Vec<(String, String, String, String)> {
    let v: J = serde_json::from_str(&p.ok(&["plan", "merge.kdl", "--json"])).expect("plan --json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("node"), s("kind"), s("state"))
        })
        .collect()
}

const TRAINING: [&str; 4] = ["cpt", "sft", "dpo", "npo"];

/// Everything the browser test checks on one report; `built` = instances done.
fn check_page(dom: &str, stderr: &str, instances: &[(String, String, String, String)]) {
    assert!(
        dom.contains(r#"data-errors="""#),
        "script error: {dom:.600}"
    );
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(
        dom.matches(r#"<g class="node "#).count(),
        instances.len(),
        "one DAG box per instance"
    );
    for (id, node, kind, state) in instances {
        let class = if state == "cached" { "done" } else { "todo" };
        let at = dom
            .find(&format!(r#"" data-id="{}""#, esc(id)))
            .unwrap_or_else(|| panic!("no box of {id}"));
        let open = &dom[dom[..at].rfind("<g class=\"").expect("box") + 10..at];
        assert!(
            open.split(' ').any(|c| c == class),
            "box of {id} has classes `{open}`, expected {class}"
        );
        let charts = format!(r#"<div class="charts" data-node="{node}">"#);
        if TRAINING.contains(&kind.as_str()) && state == "cached" {
            let at = dom
                .find(&charts)
                .unwrap_or_else(|| panic!("no curves of {node}"));
            let rest = &dom[at..];
            let block = &rest[..rest.find("</div>").unwrap_or(rest.len())];
            assert!(
                block.contains(r#"data-metric="loss""#),
                "no loss curve of {node}"
            );
        } else if TRAINING.contains(&kind.as_str()) {
            assert!(!dom.contains(&charts), "curves of unbuilt {node}");
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;")
}

/// Runs `temper report --serve` on a free port and checks what it answers.
fn check_serve(p: &Project, instances: usize) {
    let mut child = p
        .cmd(&[
            "report",
            "merge.kdl",
            "--serve",
            "127.0.0.1:0",
            "--refresh",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn temper report --serve");
    let addr = serving_address(&mut child);
    let (status, page) = get(&addr, "/");
    let (missing, _) = get(&addr, "/favicon.ico");
    child.kill().ok();
    child.wait().ok();
    assert!(status.contains("200"), "{status}");
    assert!(page.contains(r#"<meta http-equiv="refresh" content="3">"#));
    assert_eq!(page.matches(r#"<g class="node "#).count(), instances);
    assert!(missing.contains("404"), "{missing}");
}

#[test]
fn report_of_the_merge_example_half_built_and_built_passes_the_browser_test() {
    let Some(chrome) = chromium() else {
        eprintln!(
            "SKIPPED: no chromium (scripts/browser-setup.sh installs it; `make test` runs it)"
        );
        return;
    };
    let p = Project::new();
    for f in ["merge.kdl", "preference.kdl"] {
        p.copy_from_repo(&format!("examples/{f}"), f);
    }
    p.copy_from_repo("examples/data", "data");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let profile = p.path().join("chrome-profile");

    // Half built: up to the SFT model; everything downstream waits.
    p.ok(&["run", "merge.kdl", "--only", "tuned"]);
    let half = plan(&p);
    assert!(half.iter().any(|e| e.3 == "cached") && half.iter().any(|e| e.3 != "cached"));
    let out = p.ok(&["report", "merge.kdl", "-o", "half.html"]);
    assert!(out.contains("wrote half.html"), "{out}");
    let (dom, err) = browse(
        &chrome,
        &profile,
        &p.path().join("half.html"),
        "",
        &shots.join("report-half.png"),
    );
    check_page(&dom, &err, &half);
    assert!(dom.contains(r#"<g class="node todo" data-id="aligned[beta=0.1]""#));

    // Built: every curve, the sweep overlaid, the results and eval tables, a panel by URL.
    p.ok(&["run", "merge.kdl"]);
    let full = plan(&p);
    assert!(full.iter().all(|e| e.3 == "cached"), "{full:?}");
    p.ok(&["report", "merge.kdl", "-o", "full.html"]);
    let (dom, err) = browse(
        &chrome,
        &profile,
        &p.path().join("full.html"),
        "#node=tuned-ref",
        &shots.join("report-merge.png"),
    );
    check_page(&dom, &err, &full);
    // The β sweep: the loss chart of `aligned` has one line and one legend entry per variant.
    let at = dom
        .find(r#"data-node="aligned" data-metric="loss""#)
        .expect("aligned loss chart");
    let chart = &dom[at..at + dom[at..].find("</svg>").expect("end of chart")];
    assert_eq!(chart.matches("<polyline").count(), 3, "{chart}");
    for b in ["beta=0.05", "beta=0.1", "beta=0.3"] {
        assert!(chart.contains(b), "legend lacks {b}");
    }
    // The URL opened tuned-ref's panel (and only it), with its summary and files.
    assert!(dom.contains(r#"<div class="panel" data-panel="tuned-ref">"#));
    assert_eq!(
        dom.matches(r#"<div class="panel" data-panel"#).count(),
        full.len()
    );
    assert_eq!(
        dom.matches(r#"hidden="">"#).count(),
        full.len() - 1,
        "every other panel hidden"
    );
    let results = &dom[dom
        .find(r#"<table class="sortable" id="results">"#)
        .expect("results")..];
    let results = &results[..results.find("</table>").expect("end")];
    assert_eq!(
        results.matches("<tr>").count(),
        1 + 3,
        "header + a row per variant"
    );
    assert!(dom.contains(r#"id="eval-merge-scores[aligned.beta=0.1]""#));
    // The select: which β won, with the three candidates and their scores.
    let sel = &dom[dom
        .find(r#"<table class="sortable" id="select-best-aligned">"#)
        .expect("the selection table")..];
    let sel = &sel[..sel.find("</table>").expect("end")];
    assert_eq!(sel.matches("<tr>").count(), 1 + 3, "{sel}");
    assert_eq!(sel.matches(">winner<").count(), 1, "{sel}");
    assert!(
        dom.contains("selected aligned[beta="),
        "the winner is named"
    );
    assert!(dom.contains("preference_accuracy"));

    check_serve(&p, full.len());
}
