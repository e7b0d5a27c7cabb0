//! Reading recipe files: KDL 2.0 parsing (on a stack sized for the text, see `scan`),
//! `include` resolution (`include.rs`) and collection of the top-level items (node declarations
//! and `sweep` blocks; `repeat` blocks are expanded into node declarations by
//! [`crate::repeat`]; `executor` blocks are read by [`crate::executor`]) with the file they
//! came from. Counts the nodes against the limit.

use crate::diag::{Diag, Src};
use crate::limits::{self, LoadOptions};
use crate::recipe::{ExecutorBlock, SourceFile};
use crate::scan::{self, Parsed};
use crate::untrusted::Repo;
use kdl::{KdlEntry, KdlNode};
use miette::{NamedSource, SourceSpan};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The sources of one load and everything parsed from them.
pub(crate) struct Sources {
    pub files: Vec<SourceFile>,
    pub srcs: Vec<Src>,
    /// Directory of each file relative to the root recipe's directory (lexical), so paths
    /// written in an include can be rebased onto the root directory.
    pub rel_dirs: Vec<PathBuf>,
    /// Canonical path per file (cycle and include-once detection); None for pseudo-sources.
    pub canon: Vec<Option<PathBuf>>,
    /// Top-level node declarations, with their file.
    pub nodes: Vec<(usize, KdlNode)>,
    /// `sweep` blocks, with their file.
    pub sweeps: Vec<(usize, KdlNode)>,
    /// Recipe-wide defaults from `defaults` blocks, as properties to add (see `defaults.rs`).
    pub recipe_defaults: Vec<(String, KdlEntry)>,
    /// `executor` blocks, in declaration order (see `executor.rs`).
    pub executors: Vec<ExecutorBlock>,
    pub diags: Vec<Diag>,
    /// A file failed to parse or a limit was hit: later stages would only report cascades
    /// (or spend what the limit protects), so they are skipped.
    pub syntax_failed: bool,
    pub opts: LoadOptions,
    /// The recipe's repository (see [`LoadOptions`]).
    pub repo: Repo,
    /// Bytes of all files read so far.
    pub total_bytes: usize,
    /// KDL nodes (any depth) parsed or produced by `repeat` so far.
    pub total_nodes: usize,
}

/// Lexical normalisation: drops `.`, resolves `a/..`, keeps leading `..`.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

/// Path as shown to users: forward slashes, `.` for empty.
pub(crate) fn show_path(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

/// The span of a whole entry (`key=value` for a property), trimmed of surrounding whitespace.
pub(crate) fn entry_span(text: &str, e: &KdlEntry) -> SourceSpan {
    let sp = e.span();
    let (start, end) = (sp.offset(), sp.offset() + sp.len());
    let Some(slice) = text.get(start..end) else {
        return sp;
    };
    let lead = slice.len() - slice.trim_start().len();
    let trimmed = slice.trim();
    if trimmed.is_empty() {
        return sp;
    }
    SourceSpan::new((start + lead).into(), trimmed.len())
}

/// The exact span of an entry's value (its text representation ends the entry).
pub(crate) fn value_span(text: &str, e: &KdlEntry) -> SourceSpan {
    let core = entry_span(text, e);
    let Some(fmt) = e.format() else { return core };
    let end = core.offset() + core.len();
    let start = end.saturating_sub(fmt.value_repr.len());
    if start >= core.offset() && text.get(start..end) == Some(fmt.value_repr.as_str()) {
        SourceSpan::new(start.into(), fmt.value_repr.len())
    } else {
        core
    }
}

/// The parser reports some errors with a span from the start of the enclosing construct (often
/// the document) to the failure; a span over several lines is narrowed to its last character.
fn point_at_end(text: &str, span: SourceSpan) -> SourceSpan {
    let (start, end) = (span.offset(), (span.offset() + span.len()).min(text.len()));
    match text.get(start..end) {
        Some(s) if s.contains('\n') => {
            let trimmed = s.trim_end();
            let last = trimmed.chars().last().map_or(0, char::len_utf8);
            SourceSpan::new((start + trimmed.len() - last).into(), last)
        }
        _ => span,
    }
}

impl Sources {
    pub fn new(opts: LoadOptions, repo: Repo) -> Self {
        Sources {
            opts,
            repo,
            total_bytes: 0,
            total_nodes: 0,
            files: Vec::new(),
            srcs: Vec::new(),
            rel_dirs: Vec::new(),
            canon: Vec::new(),
            nodes: Vec::new(),
            sweeps: Vec::new(),
            recipe_defaults: Vec::new(),
            executors: Vec::new(),
            diags: Vec::new(),
            syntax_failed: false,
        }
    }

    /// Registers a source text; returns its index.
    pub fn add(&mut self, name: String, path: PathBuf, text: String, rel_dir: PathBuf) -> usize {
        let canon = if path.as_os_str().is_empty() {
            None
        } else {
            Some(path.canonicalize().unwrap_or_else(|_| normalize(&path)))
        };
        self.srcs
            .push(Arc::new(NamedSource::new(name.clone(), text.clone())));
        self.files.push(SourceFile { name, path, text });
        self.rel_dirs.push(rel_dir);
        self.canon.push(canon);
        self.files.len() - 1
    }

    pub fn text(&self, file: usize) -> &str {
        &self.files[file].text
    }

    /// Whether diagnostics may show file `file`'s text: the root, `--set` sources and files
    /// inside the recipe's repository (an include outside it that fails to parse might be any
    /// file, e.g. one holding secrets).
    fn may_show(&self, file: usize) -> bool {
        file == 0
            || self.canon[file]
                .as_ref()
                .is_none_or(|c| self.repo.contains(c))
    }

    /// Pushes a diagnostic about file `file`'s own text, without its snippet when it may not be
    /// shown.
    pub(crate) fn push_in(&mut self, file: usize, d: Diag) {
        let d = if self.may_show(file) {
            d
        } else {
            d.without_snippet()
        };
        self.diags.push(d);
    }

    /// Parses file `file`, follows its includes (depth first, in order) and collects items.
    /// `chain` holds the files currently being included (for cycle reports).
    pub fn load_file(&mut self, file: usize, chain: &mut Vec<usize>) {
        let src = self.srcs[file].clone();
        let doc = match scan::parse(src.inner(), self.opts.max_depth) {
            Parsed::Doc(Ok(doc), count) => {
                let left = self.opts.max_nodes.saturating_sub(self.total_nodes);
                if count > left {
                    self.syntax_failed = true;
                    let span = scan::nth_node(&doc, left).unwrap_or_else(|| (0, 0).into());
                    let d = Diag::at(
                        &src,
                        span,
                        format!(
                            "the recipe has more than {} nodes",
                            limits::count(self.opts.max_nodes)
                        ),
                        "the limit is reached here",
                    )
                    .help("split the work into several recipes");
                    self.push_in(file, d);
                    return;
                }
                self.total_nodes += count;
                doc
            }
            Parsed::Doc(Err(e), _) => {
                self.syntax_failed = true;
                for d in &e.diagnostics {
                    let diag = self.syntax_diag(file, d);
                    self.push_in(file, diag);
                }
                return;
            }
            Parsed::Refused(r) => {
                self.syntax_failed = true;
                let d = Diag::at(&src, r.span, r.message, r.label).help(r.hint);
                self.push_in(file, d);
                return;
            }
        };
        chain.push(file);
        for node in doc.nodes() {
            match node.name().value() {
                "include" => self.include(file, node, chain),
                "sweep" => self.sweeps.push((file, node.clone())),
                "repeat" => self.repeat(file, node),
                "defaults" => self.defaults(file, node),
                "executor" => self.executor(file, node),
                _ => self.nodes.push((file, node.clone())),
            }
        }
        chain.pop();
    }

    fn syntax_diag(&self, file: usize, d: &kdl::KdlDiagnostic) -> Diag {
        let text = self.text(file);
        let span = point_at_end(text, d.span);
        let at = span.offset().min(text.len());
        let word: String = text[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let msg = d.message.clone().unwrap_or_else(|| "syntax error".into());
        let mut diag = Diag::at(
            &self.srcs[file],
            span,
            format!("KDL syntax error: {}", msg.trim_end_matches('.')),
            d.label.clone().unwrap_or_else(|| "here".into()),
        );
        let help = match word.as_str() {
            "true" | "false" | "null" => Some(format!(
                "KDL 2.0 keywords start with `#`: write `#{word}` (or quote it for a string)"
            )),
            _ => d.help.clone(),
        };
        diag = diag.help_opt(help);
        diag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdl::KdlDocument;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(
            normalize(Path::new("../x/../../y")),
            PathBuf::from("../../y")
        );
        assert_eq!(normalize(Path::new("/a/../../b")), PathBuf::from("/b"));
    }

    #[test]
    fn value_span_is_exact() {
        let text = "n a=1   b=\"x y\" /* c */ d=3 // c\n";
        let doc = KdlDocument::parse_v2(text).unwrap();
        let node = &doc.nodes()[0];
        let spans: Vec<&str> = node
            .entries()
            .iter()
            .map(|e| {
                let s = value_span(text, e);
                &text[s.offset()..s.offset() + s.len()]
            })
            .collect();
        assert_eq!(spans, vec!["1", "\"x y\"", "3"]);
        let e = entry_span(text, &node.entries()[1]);
        assert_eq!(&text[e.offset()..e.offset() + e.len()], "b=\"x y\"");
    }
}
