//! Per-node log files: what a user reads after a run (`temper show`), kept small and honest.
//!
//! - **Level and filter**: the node log records temper's own events (targets `runner`,
//!   `recipes`, `store`, `dsl`, `temper`) at the run's level (INFO by default, `-v` DEBUG,
//!   `-vv` TRACE) and every dependency's events at WARN only (`-vvv` lets everything through).
//!   [`directives`] is the one place that rule is written; the terminal uses it too.
//!   `RUST_LOG` overrides it for both.
//! - **Attempts**: each attempt starts with a separator line
//!   (`==== attempt · run R · <time> ====`), so a rerun appends without mixing attempts;
//!   [`last_attempt`] cuts a log back to its last attempt for `show`.
//! - **Bounded**: one attempt writes at most [`ATTEMPT_CAP`] bytes; a line longer than
//!   [`LINE_CAP`] is cut with a count of what was elided; when the cap is hit one note says so
//!   and the attempt's last line counts the dropped lines. A file that grew past
//!   [`FILE_CAP`] over earlier attempts is started afresh, with a note.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Most bytes one attempt writes into a node's log.
pub const ATTEMPT_CAP: u64 = 4 << 20;
/// Longest line kept whole (bytes); longer ones are cut.
pub const LINE_CAP: usize = 2048;
/// A log file larger than this when an attempt starts is replaced by a fresh one.
pub const FILE_CAP: u64 = 16 << 20;
/// The marker that starts every attempt's first line.
pub const ATTEMPT_MARK: &str = "==== attempt";

/// The crates whose events are temper's own (tracing targets start with the crate name).
const OWN_TARGETS: [&str; 5] = ["temper", "runner", "recipes", "store", "dsl"];

/// The `EnvFilter` directives for a verbosity (-1 quiet, 0 info, 1 debug, 2 trace, 3+ all):
/// temper's own targets at that level, dependencies at WARN (ERROR when quiet).
pub fn directives(verbosity: i8) -> String {
    let (own, deps) = match verbosity {
        i8::MIN..=-1 => ("error", "error"),
        0 => ("info", "warn"),
        1 => ("debug", "warn"),
        2 => ("trace", "warn"),
        _ => ("trace", "trace"),
    };
    let mut d = deps.to_string();
    for t in OWN_TARGETS {
        d += &format!(",{t}={own}");
    }
    d
}

/// An open node log and what this attempt has written to it.
struct NodeLog {
    file: File,
    written: u64,
    dropped: u64,
    capped: bool,
}

/// Open log files by instance id.
fn logs() -> &'static Mutex<HashMap<String, NodeLog>> {
    static LOGS: OnceLock<Mutex<HashMap<String, NodeLog>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Opens the log file of node `id` for a new attempt (appending after earlier attempts, or
/// afresh when the file passed [`FILE_CAP`]) and writes the attempt separator. Events inside
/// the node's span go there until [`close`].
pub fn open(id: &str, path: &Path, run_id: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let old = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let fresh = old > FILE_CAP;
    let file = if fresh {
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?
    } else {
        OpenOptions::new().create(true).append(true).open(path)?
    };
    let mut log = NodeLog {
        file,
        written: 0,
        dropped: 0,
        capped: false,
    };
    let now = store::now_secs();
    let mut head = format!(
        "{ATTEMPT_MARK} · run {run_id} · {} ====\n",
        crate::text::human_time(now)
    );
    if fresh {
        head += &format!(
            "(earlier attempts' log, {} bytes, was removed: it passed {} MiB)\n",
            old,
            FILE_CAP >> 20
        );
    }
    log.file.write_all(head.as_bytes())?;
    logs()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string(), log);
    Ok(())
}

/// Closes the log file of node `id`, noting how many lines the cap dropped.
pub fn close(id: &str) {
    let mut map = logs().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mut log) = map.remove(id) {
        if log.dropped > 0 {
            let _ = writeln!(
                log.file,
                "(log cap reached: {} more lines of this attempt were not written)",
                log.dropped
            );
        }
    }
}

/// Appends one timestamped line to node `id`'s log (if open), within the caps.
pub fn line(id: &str, level: &str, text: &str) {
    let mut map = logs().lock().unwrap_or_else(|e| e.into_inner());
    let Some(log) = map.get_mut(id) else {
        return;
    };
    if log.capped {
        log.dropped += 1;
        return;
    }
    let now = store::now_secs();
    let ms = (now.fract() * 1000.0) as u32;
    let mut out = format!(
        "{}.{ms:03} {level:>5} {}\n",
        crate::text::human_time(now),
        clip(text)
    );
    if log.written + out.len() as u64 > ATTEMPT_CAP {
        log.capped = true;
        log.dropped += 1;
        out = format!(
            "(log cap of {} MiB reached for this attempt: further lines are dropped; run with \
             RUST_LOG or fewer -v for less output)\n",
            ATTEMPT_CAP >> 20
        );
    }
    if log.file.write_all(out.as_bytes()).is_ok() {
        log.written += out.len() as u64;
    }
}

/// `text` cut to [`LINE_CAP`] bytes (at a character boundary) with a note of what was elided.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LINE_CAP {
        return text.into();
    }
    let mut end = LINE_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

/// The lines of the last attempt in a node log's text (all of it when it has no separator).
pub fn last_attempt(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with(ATTEMPT_MARK))
        .unwrap_or(0);
    lines[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_lines_and_cuts_long_ones_at_a_char_boundary() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(LINE_CAP);
        let c = clip(&long);
        assert!(c.len() < LINE_CAP + 40, "{}", c.len());
        assert!(c.ends_with(&format!("({} more bytes)", long.len() - LINE_CAP)));
    }

    #[test]
    fn last_attempt_starts_at_the_last_separator() {
        let t = "==== attempt · run 1\na\n==== attempt · run 2\nb\nc\n";
        assert_eq!(last_attempt(t), vec!["==== attempt · run 2", "b", "c"]);
        assert_eq!(last_attempt("x\ny\n"), vec!["x", "y"]);
    }

    #[test]
    fn dependencies_stay_at_warn_unless_everything_is_asked_for() {
        assert!(directives(0).starts_with("warn,"));
        assert!(directives(0).contains("recipes=info"));
        assert!(directives(1).contains("runner=debug"));
        assert!(directives(2).starts_with("warn,"));
        assert!(directives(3).starts_with("trace,"));
        assert!(directives(-1).starts_with("error,"));
    }

    #[test]
    fn an_attempt_is_capped_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.log");
        open("cap-test", &p, 7).unwrap();
        let big = "x".repeat(LINE_CAP);
        for _ in 0..(ATTEMPT_CAP as usize / LINE_CAP + 100) {
            line("cap-test", "INFO", &big);
        }
        close("cap-test");
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len < ATTEMPT_CAP + 4096, "{len}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("==== attempt · run 7"));
        assert!(text.contains("log cap of 4 MiB reached"));
        assert!(
            text.trim_end().ends_with("were not written)"),
            "{}",
            &text[text.len() - 200..]
        );
    }
}
