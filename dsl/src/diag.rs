//! Diagnostics: every problem a load finds, each pointing at `file:line:col` with a label and,
//! where possible, a hint. Rendering is deterministic (no colours, fixed width 100) so the
//! output can be snapshot-tested, never writes a control character of the recipe, and draws a
//! source line longer than 200 characters as a window around its labels (module `window`).

use crate::window::Windowed;
use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
    SourceSpan,
};
use std::fmt;
use std::sync::Arc;

/// A source text shared by the diagnostics that point into it.
pub(crate) type Src = Arc<NamedSource<String>>;

/// One problem: a message, where (a source and labelled spans), a hint, and notes that point
/// into other files (e.g. "first defined here" in an included file).
#[derive(Clone, Debug)]
pub struct Diag {
    message: String,
    src: Option<Src>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    related: Vec<Diag>,
    severity: Severity,
    /// Located (for ordering and [`Diag::location`]) but rendered without the source text.
    hidden: bool,
    /// What is drawn instead of `src` when its long lines are cut ([`Diag::windowed`]; the
    /// labels then point into it).
    view: Option<Arc<Windowed>>,
}

impl Diag {
    /// An error with no location (e.g. an unreadable root file).
    pub fn bare(message: impl Into<String>) -> Self {
        Diag {
            message: message.into(),
            src: None,
            labels: Vec::new(),
            help: None,
            related: Vec::new(),
            severity: Severity::Error,
            hidden: false,
            view: None,
        }
    }

    /// Keeps the location but never shows the source text: the message starts with
    /// `file:line:col` and the snippet is left out (for files that may not be echoed).
    pub(crate) fn without_snippet(mut self) -> Self {
        if let Some(loc) = self.location() {
            self.message = format!("{loc}: {}", self.message);
        }
        self.hidden = true;
        self.related.clear();
        self
    }

    /// An error at `span` of `src`, labelled `label`.
    pub(crate) fn at(
        src: &Src,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let mut d = Diag::bare(message);
        d.src = Some(src.clone());
        d.labels
            .push(LabeledSpan::new_primary_with_span(Some(label.into()), span));
        d
    }

    /// The same diagnostic as a warning: drawn with a warning marker, never failing a load.
    pub(crate) fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// Adds a hint (`help:` line).
    pub(crate) fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }

    /// Adds a hint when there is one.
    pub(crate) fn help_opt(mut self, h: Option<String>) -> Self {
        if h.is_some() {
            self.help = h;
        }
        self
    }

    /// Adds a secondary label: in the same source it becomes a label, in another a nested note.
    pub(crate) fn also(mut self, src: &Src, span: SourceSpan, label: impl Into<String>) -> Self {
        let label = label.into();
        let same = self.src.as_ref().is_some_and(|s| Arc::ptr_eq(s, src));
        if same {
            self.labels
                .push(LabeledSpan::new_with_span(Some(label), span));
        } else {
            let mut note = Diag::at(src, span, label.clone(), label);
            note.severity = Severity::Advice;
            self.related.push(note);
        }
        self
    }

    /// Ordering key: (index of its source in `srcs`, byte offset); unlocated errors first.
    pub(crate) fn sort_key(&self, srcs: &[Src]) -> (usize, usize) {
        let Some(src) = &self.src else { return (0, 0) };
        let file = srcs.iter().position(|s| Arc::ptr_eq(s, src)).unwrap_or(0);
        let off = self.labels.first().map_or(0, |l| l.offset());
        (file + 1, off)
    }

    /// A copy to draw: the long lines of its sources cut around its labels (module `window`),
    /// its notes likewise. Only for rendering: its labels point into the cut text.
    fn windowed(&self) -> Diag {
        let mut d = self.clone();
        d.related = self.related.iter().map(Diag::windowed).collect();
        if let (false, Some(src)) = (self.hidden, &self.src) {
            if let Some((view, labels)) = crate::window::cut(src, &self.labels) {
                d.view = Some(view);
                d.labels = labels;
            }
        }
        d
    }

    /// The text the labels point into: the cut one when there is one.
    fn drawn_text(&self) -> Option<&str> {
        match (&self.view, &self.src) {
            (Some(v), _) => Some(v.text()),
            (None, Some(s)) => Some(s.inner().as_str()),
            (None, None) => None,
        }
    }

    /// Whether miette can draw the snippets: its formatter panics when it pads a label past
    /// column 65,535 (a label far into a very long line), so such a diagnostic is rendered
    /// without its snippet. Bytes × 4 bound the drawn width (tabs are 4 wide, wide
    /// characters 2). Once windowed, every label is drawable but one that spans thousands
    /// of characters across lines.
    fn drawable(&self) -> bool {
        let fits = |l: &LabeledSpan| {
            let Some(text) = self.drawn_text() else {
                return true;
            };
            let text = text.as_bytes();
            let start = l.offset().min(text.len());
            let line = text[..start]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            (start - line).saturating_add(l.len()).saturating_mul(4) < 60_000
        };
        self.labels.iter().all(fits) && self.related.iter().all(Diag::drawable)
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// `file:line:col` (1-based) of the primary label, if the diagnostic has a location.
    pub fn location(&self) -> Option<String> {
        let src = self.src.as_ref()?;
        let span = self.labels.first()?.inner();
        let text = src.inner();
        let upto = &text[..span.offset().min(text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some(format!("{}:{line}:{col}", src.name()))
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diag {}

impl Diagnostic for Diag {
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.hidden {
            return None;
        }
        if let Some(v) = &self.view {
            return Some(&**v as &dyn miette::SourceCode);
        }
        self.src.as_ref().map(|s| &**s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.hidden {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|d| d as &dyn Diagnostic)))
        }
    }
}

/// All errors found while loading or expanding a recipe (never empty when returned as `Err`).
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    errors: Vec<Diag>,
}

impl Diagnostics {
    pub(crate) fn new(errors: Vec<Diag>) -> Self {
        Diagnostics { errors }
    }

    /// A single located-nowhere error (for callers that wrap their own failures).
    pub fn from_message(message: impl Into<String>) -> Self {
        Diagnostics {
            errors: vec![Diag::bare(message)],
        }
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when there are no errors.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors, in the order found (source order within a file).
    pub fn errors(&self) -> &[Diag] {
        &self.errors
    }

    /// One-line messages of all errors.
    pub fn messages(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.message.clone()).collect()
    }

    /// Deterministic text rendering of every error: `[file:line:col]`, the source line with
    /// its label, and the hint. No colours; fixed width 100; ends with an error count.
    pub fn render(&self) -> String {
        let mut out = render_each(&self.errors);
        let n = self.errors.len();
        out.push_str(&format!(
            "{n} error{} found\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }

    /// [`Diagnostics::render`] for warnings ([`crate::Recipe::warnings`]): each drawn the same
    /// way, marked as a warning, the first [`crate::limits::MAX_SHOWN_ERRORS`] only (a count of
    /// the others follows); ends with a warning count. Empty when there are none.
    pub fn render_warnings(warnings: &[Diag]) -> String {
        if warnings.is_empty() {
            return String::new();
        }
        let shown = crate::limits::MAX_SHOWN_ERRORS;
        let mut out = render_each(&warnings[..warnings.len().min(shown)]);
        let n = warnings.len();
        if n > shown {
            out.push_str(&format!(
                "\n… and {} more warnings (only the first {shown} are shown)\n",
                crate::limits::count(n - shown)
            ));
        }
        out.push_str(&format!("{n} warning{}\n", if n == 1 { "" } else { "s" }));
        out
    }
}

/// Each diagnostic drawn by miette, separated by blank lines (see [`Diagnostics::render`]).
fn render_each(diags: &[Diag]) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false)
        .with_urls(false)
        .without_syntax_highlighting();
    let mut out = String::new();
    for (i, e) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut one = String::new();
        let windowed = e.windowed();
        let shown;
        let e = if windowed.drawable() {
            &windowed
        } else {
            shown = e.clone().without_snippet();
            &shown
        };
        if handler.render_report(&mut one, e).is_err() {
            one = format!("Error: {}\n", e.message);
        }
        // Strip trailing spaces so snapshots are stable across editors; escape control
        // characters (a hostile recipe's ESC sequences never reach the terminal).
        for line in one.lines() {
            for c in line.trim_end().chars() {
                if c != '\t' && crate::limits::is_forbidden_char(c) {
                    out.extend(c.escape_unicode());
                } else {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out
}

impl From<Diag> for Diagnostics {
    /// One error (e.g. from [`crate::Recipe::diag_at`]), to render with [`Diagnostics::render`].
    fn from(d: Diag) -> Self {
        Diagnostics { errors: vec![d] }
    }
}

impl From<Vec<Diag>> for Diagnostics {
    /// Several errors, kept in the given order.
    fn from(errors: Vec<Diag>) -> Self {
        Diagnostics { errors }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{}", one.message),
            many => write!(f, "{} errors in recipe", many.len()),
        }
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostic for Diagnostics {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|d| d as &dyn Diagnostic)))
    }
}
