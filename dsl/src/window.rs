//! Long source lines in diagnostics. A line longer than [`MAX_LINE`] characters is drawn as a
//! window of at most [`MAX_LINE`] characters, with `…` standing for the text left out on either
//! side: around the labels that start on it (the primary one first, [`BEFORE`] characters of
//! context before it), else its head. A 12 KB one-line recipe thus prints a line of ~200
//! characters, not the whole file.
//!
//! Invariants: only text inside a line is removed, never a line break, so line numbers stay
//! those of the file; the `[file:line:col]` header gives the column of the original text
//! ([`Windowed`] answers miette's header query with it); labels are moved onto the cut text
//! (a label outside the window shrinks to the `…` that stands for it).

use miette::{LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};
use std::sync::Arc;

/// A named source text (what `diag` labels point into).
type Src = Arc<miette::NamedSource<String>>;

/// Longest line drawn whole, in characters.
pub(crate) const MAX_LINE: usize = 200;

/// Characters kept before the first label of a cut line.
pub(crate) const BEFORE: usize = 60;

const ELLIPSIS: &str = "…";

/// A source with its long lines cut (module docs), and the way back to original offsets.
#[derive(Debug)]
pub(crate) struct Windowed {
    name: String,
    /// The cut text.
    text: String,
    /// The original text.
    orig: Src,
    /// Kept pieces of the original: (start, end, start in `text`), in order.
    kept: Vec<(usize, usize, usize)>,
    /// The labels' starts: (in `text`, in the original).
    starts: Vec<(usize, usize)>,
}

impl Windowed {
    /// The cut text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Offset in the cut text of original offset `o` (one removed maps to the `…` for it).
    fn map(&self, o: usize) -> usize {
        let k = self.kept.partition_point(|p| p.0 <= o);
        let Some(&(s, e, n)) = k.checked_sub(1).and_then(|k| self.kept.get(k)) else {
            return 0;
        };
        n + o.min(e) - s
    }

    /// Original offset of offset `n` of the cut text (inside a `…`: where it starts).
    fn unmap(&self, n: usize) -> usize {
        if let Some(&(_, o)) = self.starts.iter().find(|(c, _)| *c == n) {
            return o;
        }
        let k = self.kept.partition_point(|p| p.2 <= n);
        let Some(&(s, e, c)) = k.checked_sub(1).and_then(|k| self.kept.get(k)) else {
            return 0;
        };
        (s + (n - c)).min(e)
    }
}

impl SourceCode for Windowed {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let c = self
            .text
            .as_str()
            .read_span(span, context_lines_before, context_lines_after)?;
        // Without context lines the contents start at the span, and their column is what the
        // header prints: give the original text's (in bytes, as miette counts).
        let column = if context_lines_before == 0 {
            let o = self.unmap(c.span().offset());
            let text = self.orig.inner().as_bytes();
            let o = o.min(text.len());
            o - text[..o]
                .iter()
                .rposition(|b| matches!(b, b'\n' | b'\r'))
                .map_or(0, |i| i + 1)
        } else {
            c.column()
        };
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            c.data(),
            *c.span(),
            c.line(),
            column,
            c.line_count(),
        )))
    }
}

/// `src` with its long lines cut around `labels` (module docs), and the labels moved onto the
/// cut text; `None` when no line of `src` is longer than [`MAX_LINE`] characters.
pub(crate) fn cut(src: &Src, labels: &[LabeledSpan]) -> Option<(Arc<Windowed>, Vec<LabeledSpan>)> {
    let text = src.inner().as_str();
    let lines = line_ranges(text);
    if !lines.iter().any(|&(a, b)| is_long(&text[a..b])) {
        return None;
    }
    let mut out = String::with_capacity(text.len().min(1 << 16));
    let mut kept = Vec::new();
    let mut from = 0; // start of the piece being kept
    for &(a, b) in &lines {
        let line = &text[a..b];
        if !is_long(line) {
            continue;
        }
        let (ws, we) = window(line, a, labels);
        // Keep up to the line; `…` for what is left out before and after the window.
        push_piece(&mut out, &mut kept, text, from, a);
        if ws > a {
            out.push_str(ELLIPSIS);
        }
        kept.push((ws, we, out.len()));
        out.push_str(&text[ws..we]);
        if we < b {
            out.push_str(ELLIPSIS);
        }
        from = b;
    }
    push_piece(&mut out, &mut kept, text, from, text.len());
    let mut w = Windowed {
        name: src.name().to_string(),
        text: out,
        orig: src.clone(),
        kept,
        starts: Vec::new(),
    };
    let moved: Vec<LabeledSpan> = labels
        .iter()
        .map(|l| {
            let start = w.map(l.offset());
            let end = w.map(l.offset() + l.len()).max(start);
            w.starts.push((start, l.offset()));
            let span = SourceSpan::new(start.into(), end - start);
            let label = l.label().map(str::to_string);
            if l.primary() {
                LabeledSpan::new_primary_with_span(label, span)
            } else {
                LabeledSpan::new_with_span(label, span)
            }
        })
        .collect();
    Some((Arc::new(w), moved))
}

/// Appends `text[from..to]` as a kept piece.
fn push_piece(
    out: &mut String,
    kept: &mut Vec<(usize, usize, usize)>,
    text: &str,
    from: usize,
    to: usize,
) {
    if from < to {
        kept.push((from, to, out.len()));
        out.push_str(&text[from..to]);
    }
}

/// The lines of `text` as byte ranges without their terminators (`\n`, `\r`, `\r\n`; miette
/// breaks lines at each of them).
fn line_ranges(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if matches!(b, b'\n' | b'\r') {
            out.push((start, i));
            start = i + 1;
        }
    }
    out.push((start, text.len()));
    out
}

fn is_long(line: &str) -> bool {
    line.len() > MAX_LINE && line.chars().count() > MAX_LINE
}

/// The window of the long line `line` (which starts at `at` in the text): [`MAX_LINE`]
/// characters from [`BEFORE`] characters before the first label starting on it (the primary
/// one when it does), else its head; as byte offsets of the text.
fn window(line: &str, at: usize, labels: &[LabeledSpan]) -> (usize, usize) {
    let on = |l: &&LabeledSpan| (at..=at + line.len()).contains(&l.offset());
    let anchor = labels
        .iter()
        .filter(on)
        .find(|l| l.primary())
        .or_else(|| labels.iter().filter(on).min_by_key(|l| l.offset()))
        .map_or(0, |l| l.offset() - at);
    let start = chars_back(line, anchor, BEFORE);
    let end = chars_forward(line, start, MAX_LINE);
    (at + start, at + end)
}

/// The byte offset `n` characters before byte offset `i` of `s` (or 0).
fn chars_back(s: &str, i: usize, n: usize) -> usize {
    s[..i]
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(j, _)| j)
}

/// The byte offset `n` characters after byte offset `i` of `s` (or its end).
fn chars_forward(s: &str, i: usize, n: usize) -> usize {
    s[i..].char_indices().nth(n).map_or(s.len(), |(j, _)| i + j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::NamedSource;

    fn src(text: &str) -> Src {
        Arc::new(NamedSource::new("r.kdl", text.to_string()))
    }

    #[test]
    fn short_sources_are_left_alone() {
        let s = src("a {\n  b 1\n}\n");
        let l = LabeledSpan::new_primary_with_span(None, SourceSpan::new(6.into(), 1));
        assert!(cut(&s, &[l]).is_none());
    }

    #[test]
    fn a_long_line_is_cut_around_its_label() {
        let long = format!("x {}BAD{}", "a ".repeat(3000), "b ".repeat(3000));
        let text = format!("first\n{long}\nlast\n");
        let at = text.find("BAD").unwrap();
        let l =
            LabeledSpan::new_primary_with_span(Some("here".into()), SourceSpan::new(at.into(), 3));
        let (w, moved) = cut(&src(&text), &[l]).unwrap();
        let lines: Vec<&str> = w.text().lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "first");
        assert_eq!(lines[2], "last");
        assert!(
            lines[1].starts_with('…') && lines[1].ends_with('…'),
            "{}",
            lines[1]
        );
        assert_eq!(lines[1].chars().count(), MAX_LINE + 2);
        // The label points at the same text, BEFORE characters into the window.
        let m = &moved[0];
        assert_eq!(&w.text()[m.offset()..m.offset() + m.len()], "BAD");
        let line_start = w.text().find('…').unwrap() + ELLIPSIS.len();
        assert_eq!(w.text()[line_start..m.offset()].chars().count(), BEFORE);
        // The header's column is the original one.
        let c = w.read_span(m.inner(), 0, 0).unwrap();
        assert_eq!(c.line(), 1);
        assert_eq!(c.column(), at - "first\n".len());
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let text = format!("{}é{}", "名".repeat(500), "前".repeat(500));
        let at = text.find('é').unwrap();
        let l = LabeledSpan::new_primary_with_span(None, SourceSpan::new(at.into(), 2));
        let (w, moved) = cut(&src(&text), &[l]).unwrap();
        assert_eq!(&w.text()[moved[0].offset()..moved[0].offset() + 2], "é");
        // A long line without a label keeps its head.
        let (w, _) = cut(&src(&format!("{}\nx", "a".repeat(500))), &[]).unwrap();
        assert_eq!(w.text(), format!("{}…\nx", "a".repeat(MAX_LINE)));
    }
}
