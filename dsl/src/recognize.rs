//! A recogniser for KDL 2.0 that never recurses deeper than the block limit, used by
//! [`crate::scan`] to decide how much stack the `kdl` crate may need for a text.
//!
//! It is deliberately at least as strict as the crate: whatever it accepts, the crate parses
//! without entering error recovery (checked by unit tests here and by the fuzzer). Where the
//! two differ it rejects — extra spaces are never required by it where the crate allows none,
//! but adjacency the crate would recover from (`a"b"`, `1=2`, `{}{}`, a stray `}`) and anything
//! ambiguous (a `/-` right after `/-`, whitespace escapes in multi-line strings, DEL) is refused.

use crate::lexical::{is_disallowed, is_ident_char, is_newline_char, is_space, valid_number};

/// Why the recogniser stopped.
#[derive(Debug, PartialEq)]
pub(crate) enum Stop {
    /// A `{` at this offset opens a block deeper than the limit.
    TooDeep(usize),
    /// The text is not (conservatively) valid KDL from this offset on.
    Invalid(usize, &'static str),
}

/// What the recogniser measured (up to where it stopped).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    /// Deepest block nesting.
    pub depth: usize,
    /// Block nesting at the stop offset.
    pub depth_at_stop: usize,
    /// Most items (`*`, `/`, runs of other text, nested comments) in one block comment.
    pub comment_items: usize,
    /// Where that comment starts.
    pub comment_at: usize,
}

/// What a token was.
#[derive(Clone, Copy, PartialEq)]
enum Tok {
    /// An identifier or a quoted/raw string: may be a name, a key or a type.
    Str,
    /// A number or a `#keyword`: a value only.
    Value,
}

type R<T> = Result<T, Stop>;

struct Rec<'a> {
    s: &'a str,
    i: usize,
    depth: usize,
    max_depth: usize,
    stats: Stats,
}

/// Checks `text` against the KDL 2.0 grammar (module docs). On a stop, also returns what was
/// measured up to it.
pub(crate) fn recognize(text: &str, max_depth: usize) -> Result<Stats, (Stats, Stop)> {
    let mut r = Rec {
        s: text,
        i: 0,
        depth: 0,
        max_depth,
        stats: Stats::default(),
    };
    if text.starts_with('\u{FEFF}') {
        r.i = 3;
    }
    match r.nodes(false) {
        Ok(()) => Ok(r.stats),
        Err(stop) => {
            r.stats.depth_at_stop = r.depth;
            Err((r.stats, stop))
        }
    }
}

impl<'a> Rec<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }
    fn peek2(&self) -> Option<char> {
        self.s[self.i..].chars().nth(1)
    }
    fn at(&self, p: &str) -> bool {
        self.s[self.i..].starts_with(p)
    }
    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.i += c.len_utf8();
        }
    }
    fn bad<T>(&self, why: &'static str) -> R<T> {
        Err(Stop::Invalid(self.i, why))
    }
    fn eat_newline(&mut self) -> bool {
        if self.at("\r\n") {
            self.i += 2;
            true
        } else if self.peek().is_some_and(is_newline_char) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// `nodes`: until EOF (top level) or `}` (in a block, not consumed).
    fn nodes(&mut self, in_block: bool) -> R<()> {
        loop {
            self.line_space_and_dashed_nodes(in_block)?;
            match self.peek() {
                None if in_block => return self.bad("unclosed `{`"),
                None => return Ok(()),
                Some('}') if in_block => return Ok(()),
                Some('}') => return self.bad("`}` without a matching `{`"),
                _ => {}
            }
            self.base_node()?;
            match self.peek() {
                None => {}
                Some(';') => self.bump(),
                Some('}') if in_block => {}
                _ if self.eat_newline() => {}
                _ if self.at("//") => self.line_comment(),
                _ => return self.bad("expected the end of the node"),
            }
        }
    }

    /// `line-space*` interleaved with `/-`-commented nodes.
    fn line_space_and_dashed_nodes(&mut self, in_block: bool) -> R<()> {
        loop {
            self.line_space()?;
            if !self.at("/-") {
                return Ok(());
            }
            self.slashdash()?;
            if matches!(self.peek(), None | Some('}' | '{')) {
                return self.bad("`/-` must be followed by a node here");
            }
            self.base_node()?;
            // Only line space, another `/-` node or the end may follow a commented-out node.
            match self.peek() {
                None => return Ok(()),
                Some('}') if in_block => return Ok(()),
                Some(c) if is_newline_char(c) || self.at("//") || self.at("/-") => {}
                _ => return self.bad("unexpected text after a `/-` node"),
            }
        }
    }

    /// `base-node`: type? name entries children; ends after trailing node space.
    fn base_node(&mut self) -> R<()> {
        if self.peek() == Some('(') {
            self.type_annotation()?;
            self.node_space()?;
        }
        if self.token()? != Tok::Str {
            return self.bad("a node name must be a string");
        }
        self.after_token()?;
        // Arguments only before any block; one real block, any number of `/-` ones.
        let (mut any_block, mut real_block) = (false, false);
        loop {
            let spaced = self.node_space()?;
            match self.peek() {
                Some('{') => {
                    if real_block {
                        return self.bad("a node has one children block");
                    }
                    self.block()?;
                    (any_block, real_block) = (true, true);
                }
                Some('/') if self.at("/-") => {
                    if !spaced && !any_block {
                        return self.bad("`/-` must follow a space");
                    }
                    self.slashdash()?;
                    if self.peek() == Some('{') {
                        self.block()?;
                        any_block = true;
                    } else if any_block {
                        return self.bad("only a children block may be commented out here");
                    } else {
                        self.entry()?;
                    }
                }
                None | Some(';' | '}') => return Ok(()),
                Some(c) if is_newline_char(c) || self.at("//") => return Ok(()),
                Some(_) if !spaced => return self.bad("expected a space"),
                Some(_) if any_block => return self.bad("arguments must come before the block"),
                Some(_) => self.entry()?,
            }
        }
    }

    /// `{ nodes }`, counting depth.
    fn block(&mut self) -> R<()> {
        if self.depth >= self.max_depth {
            return Err(Stop::TooDeep(self.i));
        }
        self.bump();
        self.depth += 1;
        self.stats.depth = self.stats.depth.max(self.depth);
        self.nodes(true)?;
        self.bump(); // the `}`
        self.depth -= 1;
        Ok(())
    }

    /// An argument or a property.
    fn entry(&mut self) -> R<()> {
        if self.peek() == Some('(') {
            self.type_annotation()?;
            self.node_space()?;
            self.token()?;
            return self.after_token();
        }
        let tok = self.token()?;
        if tok == Tok::Str {
            let save = self.i;
            self.node_space()?;
            if self.peek() == Some('=') {
                self.bump();
                self.node_space()?;
                if self.peek() == Some('(') {
                    self.type_annotation()?;
                    self.node_space()?;
                }
                self.token()?;
                return self.after_token();
            }
            self.i = save;
        }
        self.after_token()
    }

    /// A value, name or key must be followed by space, a terminator, a block or a comment.
    fn after_token(&self) -> R<()> {
        match self.peek() {
            None | Some(';' | '{' | '}' | '\\') => Ok(()),
            Some(c) if is_space(c) || is_newline_char(c) => Ok(()),
            Some('/') if matches!(self.peek2(), Some('/' | '*')) => Ok(()),
            Some('=') => self.bad("`=` must follow a property name"),
            _ => self.bad("expected a space after this value"),
        }
    }

    /// `(type)`.
    fn type_annotation(&mut self) -> R<()> {
        self.bump();
        self.node_space()?;
        if self.token()? != Tok::Str {
            return self.bad("a type annotation must be a string");
        }
        self.node_space()?;
        if self.peek() != Some(')') {
            return self.bad("expected `)`");
        }
        self.bump();
        Ok(())
    }

    /// One string, number or keyword.
    fn token(&mut self) -> R<Tok> {
        match self.peek() {
            Some('"') => self.quoted().map(|_| Tok::Str),
            Some('#') => {
                let hashes = self.s[self.i..].bytes().take_while(|b| *b == b'#').count();
                if self.s[self.i + hashes..].starts_with('"') {
                    return self.raw(hashes).map(|_| Tok::Str);
                }
                for k in ["#true", "#false", "#null", "#nan", "#inf", "#-inf"] {
                    if self.at(k) && !self.s[self.i + k.len()..].starts_with(is_ident_char) {
                        self.i += k.len();
                        return Ok(Tok::Value);
                    }
                }
                self.bad("unknown keyword")
            }
            Some(c) if is_ident_char(c) => self.word(),
            _ => self.bad("expected a value"),
        }
    }

    /// An identifier or a number (a run of identifier characters).
    fn word(&mut self) -> R<Tok> {
        let start = self.i;
        while self.peek().is_some_and(is_ident_char) {
            self.bump();
        }
        let w = &self.s[start..self.i];
        let unsigned = w.strip_prefix(['+', '-']).unwrap_or(w);
        if unsigned.starts_with(|c: char| c.is_ascii_digit()) {
            return if valid_number(w) {
                Ok(Tok::Value)
            } else {
                Err(Stop::Invalid(start, "invalid number"))
            };
        }
        if unsigned.starts_with('.') && unsigned[1..].starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Stop::Invalid(start, "invalid number"));
        }
        if matches!(w, "true" | "false" | "null" | "inf" | "-inf" | "nan") {
            return Err(Stop::Invalid(start, "KDL 2.0 keywords start with `#`"));
        }
        Ok(Tok::Str)
    }

    /// `"…"` or a multi-line `"""`.
    fn quoted(&mut self) -> R<()> {
        if self.at("\"\"\"") {
            self.i += 3;
            if !self.eat_newline() {
                return self.bad("`\"\"\"` must be followed by a newline");
            }
            return self.multiline(None);
        }
        self.bump();
        loop {
            match self.peek() {
                None => return self.bad("unterminated string"),
                Some('"') => {
                    self.bump();
                    return Ok(());
                }
                Some('\\') => self.escape(true)?,
                Some(c) if is_newline_char(c) => return self.bad("newline in a string"),
                Some(c) if is_disallowed(c) => return self.bad("forbidden character"),
                Some(_) => self.bump(),
            }
        }
    }

    /// After a backslash in a quoted string.
    fn escape(&mut self, allow_ws: bool) -> R<()> {
        self.bump();
        match self.peek() {
            Some('\\' | '"' | 'b' | 'f' | 'n' | 'r' | 't' | 's') => {
                self.bump();
                Ok(())
            }
            Some('u') => {
                let rest = &self.s[self.i + 1..];
                let hex: String = rest
                    .strip_prefix('{')
                    .map(|r| r.chars().take_while(|c| c.is_ascii_hexdigit()).collect())
                    .unwrap_or_default();
                let ok = (1..=6).contains(&hex.len())
                    && rest[1 + hex.len()..].starts_with('}')
                    && u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .is_some();
                if !ok {
                    return self.bad("invalid unicode escape");
                }
                self.i += 1 + 1 + hex.len() + 1;
                Ok(())
            }
            Some(c) if allow_ws && (is_space(c) || is_newline_char(c)) => {
                while self
                    .peek()
                    .is_some_and(|c| is_space(c) || is_newline_char(c))
                {
                    self.bump();
                }
                Ok(())
            }
            _ => self.bad("invalid escape"),
        }
    }

    /// The body of a multi-line string (after the opening newline), raw with `hashes`.
    fn multiline(&mut self, hashes: Option<usize>) -> R<()> {
        let close = match hashes {
            Some(n) => format!("\"\"\"{}", "#".repeat(n)),
            None => "\"\"\"".to_string(),
        };
        let mut lines: Vec<(usize, usize)> = Vec::new();
        loop {
            let line_start = self.i;
            while self.peek().is_some_and(is_space) {
                self.bump();
            }
            if self.at(&close) {
                let prefix = &self.s[line_start..self.i];
                for &(a, b) in &lines {
                    let l = &self.s[a..b];
                    if !l.chars().all(is_space) && !l.starts_with(prefix) {
                        return Err(Stop::Invalid(
                            a,
                            "multi-line string line without the indent of its closing quotes",
                        ));
                    }
                }
                self.i += close.len();
                return Ok(());
            }
            loop {
                match self.peek() {
                    None => return self.bad("unterminated multi-line string"),
                    Some(c) if is_newline_char(c) => break,
                    Some(c) if is_disallowed(c) => return self.bad("forbidden character"),
                    Some('\\') if hashes.is_none() => self.escape(false)?,
                    Some('"') if self.at(&close) => {
                        return self.bad("closing quotes must be on their own line")
                    }
                    Some(_) => self.bump(),
                }
            }
            lines.push((line_start, self.i));
            self.eat_newline();
        }
    }

    /// `#…#"…"#…#` with `hashes` hashes (single- or multi-line).
    fn raw(&mut self, hashes: usize) -> R<()> {
        self.i += hashes;
        if self.at("\"\"\"") {
            let save = self.i;
            self.i += 3;
            if self.eat_newline() {
                return self.multiline(Some(hashes));
            }
            self.i = save;
        }
        self.bump();
        let close = format!("\"{}", "#".repeat(hashes));
        let body = self.i;
        loop {
            match self.peek() {
                None => return self.bad("unterminated raw string"),
                Some(c) if is_newline_char(c) => return self.bad("newline in a raw string"),
                Some(c) if is_disallowed(c) => return self.bad("forbidden character"),
                Some('"') if self.at(&close) => {
                    if &self.s[body..self.i] == "\"" {
                        return self.bad("raw string looks like a multi-line one");
                    }
                    self.i += close.len();
                    return Ok(());
                }
                Some(_) => self.bump(),
            }
        }
    }

    /// `node-space*` (whitespace, block comments, escaped newlines); true if any.
    fn node_space(&mut self) -> R<bool> {
        let start = self.i;
        loop {
            match self.peek() {
                Some(c) if is_space(c) => self.bump(),
                Some('/') if self.peek2() == Some('*') => self.block_comment()?,
                Some('\\') => {
                    self.bump();
                    while self.peek().is_some_and(is_space) || self.at("/*") {
                        if self.at("/*") {
                            self.block_comment()?;
                        } else {
                            self.bump();
                        }
                    }
                    if self.at("//") {
                        self.line_comment();
                    } else if !self.eat_newline() && self.peek().is_some() {
                        return self.bad("`\\` must end the line");
                    }
                }
                _ => return Ok(self.i > start),
            }
        }
    }

    /// `line-space*`: node space, newlines and line comments.
    fn line_space(&mut self) -> R<()> {
        loop {
            self.node_space()?;
            if self.at("//") {
                self.line_comment();
            } else if !self.eat_newline() {
                return Ok(());
            }
        }
    }

    /// `/-` and the line space after it.
    fn slashdash(&mut self) -> R<()> {
        self.i += 2;
        self.line_space()?;
        if self.at("/-") {
            return self.bad("`/-` twice in a row");
        }
        Ok(())
    }

    /// `// …` up to and including the newline.
    fn line_comment(&mut self) {
        while let Some(c) = self.peek() {
            if is_newline_char(c) {
                self.eat_newline();
                return;
            }
            self.bump();
        }
    }

    /// `/* … */` (nested), counting the crate's recursion items.
    fn block_comment(&mut self) -> R<()> {
        let start = self.i;
        let mut open = 0usize;
        let mut items = 0usize;
        let mut in_run = false;
        loop {
            if self.at("/*") {
                self.i += 2;
                open += 1;
                items += 1;
                in_run = false;
            } else if self.at("*/") {
                self.i += 2;
                open -= 1;
                in_run = false;
                if open == 0 {
                    if items > self.stats.comment_items {
                        self.stats.comment_items = items;
                        self.stats.comment_at = start;
                    }
                    return Ok(());
                }
            } else {
                match self.peek() {
                    None => return Err(Stop::Invalid(start, "unterminated comment")),
                    Some(c) if is_disallowed(c) => return self.bad("forbidden character"),
                    Some('*' | '/') => {
                        items += 1;
                        in_run = false;
                    }
                    Some(_) if !in_run => {
                        items += 1;
                        in_run = true;
                    }
                    Some(_) => {}
                }
                self.bump();
            }
        }
    }
}
