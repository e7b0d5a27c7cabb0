//! Long source lines in rendered diagnostics: every diagnostic draws a line longer than 200
//! characters as a window around its label, with `…` for what is left out, and keeps
//! `file:line:col` of the original text.
use crate::common;

use std::fs;

/// The rendered diagnostics of `text` loaded as `main.kdl` from a fresh directory, with the
/// directory's path replaced by `<dir>`.
fn render(text: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("main.kdl");
    fs::write(&path, text).unwrap();
    let e = dsl::load(&path, &common::registry(), &[]).expect_err("the recipe has an error");
    e.render().replace(&d.path().display().to_string(), "<dir>")
}

/// Every drawn line is short: no line of the file is echoed whole.
#[track_caller]
fn all_lines_short(r: &str) {
    for l in r.lines() {
        assert!(l.chars().count() < 300, "a line of {} chars:\n{r}", l.len());
    }
}

#[test]
fn the_nesting_depth_error_on_a_12_kb_line_prints_a_window() {
    // 2,000 nested blocks on one line: 12,000 bytes.
    let deep = format!("{}{}", "a { ".repeat(2000), "} ".repeat(2000));
    assert_eq!(deep.len(), 12_000);
    let r = render(&deep);
    all_lines_short(&r);
    assert!(r.len() < 1500, "{} bytes:\n{r}", r.len());
    // The 65th `{` is the one too deep: column 259 of line 1.
    assert!(r.contains("[<dir>/main.kdl:1:259]"), "{r}");
    assert!(r.contains("nested more than 64 levels"), "{r}");
    // The drawn line: `…`, 60 characters of context, the brace, and `…` for the rest.
    let drawn = r
        .lines()
        .find(|l| l.trim_start().starts_with("1 │"))
        .unwrap_or_else(|| panic!("no source line drawn:\n{r}"));
    let code = drawn.split_once("│ ").unwrap().1;
    assert!(code.starts_with('…') && code.ends_with('…'), "{drawn}");
    assert_eq!(code.chars().count(), 202, "{drawn}");
    // The label's caret sits under the brace it names.
    let caret = r.lines().find(|l| l.contains("┬")).unwrap();
    let col = |s: &str, pat: char| s.chars().position(|c| c == pat).unwrap();
    assert_eq!(
        drawn.chars().nth(col(caret, '┬')),
        Some('{'),
        "{drawn}\n{caret}"
    );
}

#[test]
fn any_diagnostic_far_into_a_long_line_is_windowed_at_its_column() {
    // An unknown parameter 5,000 characters into a line (a long string value before it).
    let text = format!(
        "// a comment\ntokenizer tok eos-token=\"{}\" vocab-sze=512\n",
        "x".repeat(5000)
    );
    let at = text.find("vocab-sze").unwrap() - "// a comment\n".len() + 1;
    let r = render(&text);
    all_lines_short(&r);
    assert!(r.contains(&format!("[<dir>/main.kdl:2:{at}]")), "{r}");
    assert!(r.contains("unknown parameter `vocab-sze`"), "{r}");
    assert!(r.contains("vocab-sze=512"), "{r}");
    assert!(r.contains('…'), "{r}");
}

#[test]
fn long_context_lines_keep_their_head_and_short_recipes_are_unchanged() {
    // The error is on line 2; line 1, drawn as context, is 3,000 characters long.
    let text = format!("// {}\ndatset corpus\n", "y".repeat(3000));
    let r = render(&text);
    all_lines_short(&r);
    assert!(r.contains("[<dir>/main.kdl:2:1]"), "{r}");
    assert!(r.contains(&format!("// {}…", "y".repeat(197))), "{r}");
    // A recipe without long lines renders as it always did: no `…` added.
    let r = render("// short\ndatset corpus\n");
    assert!(!r.contains('…'), "{r}");
    assert!(r.contains("// short"), "{r}");
}
