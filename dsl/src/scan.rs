//! Parsing KDL text without ever overflowing the stack.
//!
//! The `kdl` crate parses recursively: one level per `{` block, one per item of a `/* */`
//! comment, one per `/-` of a chain, and — on invalid input — one per character its error
//! recovery skips at the top level. Deep or adversarial text would overflow any fixed stack and
//! abort the process. So before the crate sees a text:
//!
//! 1. [`recognize`] checks it against the KDL 2.0 grammar with a recogniser that is iterative
//!    except for `{ }` blocks, whose recursion it cuts at `max_depth` (a located error: nothing
//!    is parsed). It is at least as strict as the crate: where it accepts, the crate parses the
//!    same structure without error recovery, so the crate's recursion is bounded by what the
//!    recogniser measured (block depth, comment items).
//! 2. Where it rejects (at offset `p`, the crate will report syntax errors), the rest of the text
//!    is costed per character as if every `{` opened a block and every other character cost one
//!    recovery step.
//! 3. The crate then runs on a thread whose stack is sized from that bound ([`parse`]); a bound
//!    above [`MAX_STACK`] is refused with a located error instead. The parsed document is
//!    measured (nodes, depth) on that thread, and dropped there when it is too deep.
//!
//! The `dsl` fuzzer (`dsl/tests/prop.rs`) checks that what the recogniser accepts the crate
//! parses without error, and runs every input through [`parse`].

use crate::recognize::{recognize, Stop};
use kdl::{KdlDocument, KdlError, KdlNode};
use miette::SourceSpan;

/// Stack every parse gets on top of the measured recursion.
const BASE_STACK: usize = 4 << 20;
/// Largest stack a parse may get; a text needing more is refused.
pub(crate) const MAX_STACK: usize = 64 << 20;
/// Stack per `{` level (measured ~7 KiB optimised, ~33 KiB unoptimised).
const PER_BLOCK: usize = 48 << 10;
/// Stack per item of a block comment and per character of unrecognised text (≤ 3.3 KiB
/// unoptimised).
const PER_ITEM: usize = 4 << 10;

/// The result of [`parse`].
pub(crate) enum Parsed {
    /// The crate's result, the number of nodes (any depth) and the span of the first node
    /// deeper than the limit (`None` when the document is within it, always for errors).
    Doc(Result<KdlDocument, KdlError>, usize),
    /// Refused before the crate ran, or the crate panicked: offset, message, label, hint.
    Refused(Refusal),
}

/// A text [`parse`] refused, located.
pub(crate) struct Refusal {
    pub span: SourceSpan,
    pub message: String,
    pub label: &'static str,
    pub hint: String,
}

/// Parses `text` with the `kdl` crate on a stack sized for it (module docs); never overflows.
pub(crate) fn parse(text: &str, max_depth: usize) -> Parsed {
    let (stats, stop) = match recognize(text, max_depth) {
        Ok(s) => (s, None),
        Err((s, stop)) => (s, Some(stop)),
    };
    let mut stack = BASE_STACK
        .saturating_add(stats.depth.saturating_mul(PER_BLOCK))
        .saturating_add(stats.comment_items.saturating_mul(PER_ITEM));
    match stop {
        None if stack > MAX_STACK => {
            return Parsed::Refused(Refusal {
                span: SourceSpan::new(stats.comment_at.into(), 2),
                message: "this block comment is too long to parse safely".into(),
                label: "comment starts here",
                hint: "split it, or comment lines out with `//`".into(),
            })
        }
        None => {}
        Some(Stop::TooDeep(at)) => {
            return Parsed::Refused(Refusal {
                span: SourceSpan::new(at.into(), 1),
                message: format!("blocks are nested more than {max_depth} levels deep"),
                label: "this block is too deep",
                hint: "a recipe needs two or three levels (`node { child … }`); \
                       check for a runaway or unbalanced `{`"
                    .into(),
            })
        }
        Some(Stop::Invalid(at, why)) => {
            let rest = &text[at..];
            let blocks = stats.depth_at_stop + rest.bytes().filter(|b| *b == b'{').count();
            let others = rest.chars().count();
            stack = stack
                .saturating_add(blocks.saturating_mul(PER_BLOCK))
                .saturating_add(others.saturating_mul(PER_ITEM));
            if stack > MAX_STACK {
                return Parsed::Refused(Refusal {
                    span: SourceSpan::new(at.into(), 0),
                    message: format!("KDL syntax error: {why}"),
                    label: "here",
                    hint: "the rest of the file is too large or too deeply nested to report \
                           every error in it; fix this one first"
                        .into(),
                });
            }
        }
    }
    let run = || {
        let result = KdlDocument::parse_v2(text);
        match result {
            Ok(doc) => {
                let (count, deep) = measure(&doc, max_depth);
                match deep {
                    // Dropped here, on the big stack.
                    Some(span) => Err((count, span)),
                    None => Ok((Ok(doc), count)),
                }
            }
            Err(e) => Ok((Err(e), 0)),
        }
    };
    let joined = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("kdl-parse".into())
            .stack_size(stack)
            .spawn_scoped(s, run)
            .map(|h| h.join())
    });
    match joined {
        Ok(Ok(Ok((doc, count)))) => Parsed::Doc(doc, count),
        Ok(Ok(Err((_, span)))) => Parsed::Refused(Refusal {
            span,
            message: format!("blocks are nested more than {max_depth} levels deep"),
            label: "this node is too deep",
            hint: "a recipe needs two or three levels (`node { child … }`)".into(),
        }),
        Ok(Err(_)) => Parsed::Refused(Refusal {
            span: SourceSpan::new(0.into(), 0),
            message: "internal error: the KDL parser failed on this file".into(),
            label: "in this file",
            hint: "please report this file; meanwhile look for unusual syntax in it".into(),
        }),
        Err(e) => Parsed::Refused(Refusal {
            span: SourceSpan::new(0.into(), 0),
            message: format!("cannot start the KDL parser: {e}"),
            label: "in this file",
            hint: format!("parsing this file needs {} MiB of stack", stack >> 20),
        }),
    }
}

/// Node count of `doc` (any depth) and the span of the first node nested deeper than
/// `max_depth` blocks, walking iteratively.
fn measure(doc: &KdlDocument, max_depth: usize) -> (usize, Option<SourceSpan>) {
    let mut count = 0;
    let mut stack: Vec<(&KdlNode, usize)> = doc.nodes().iter().rev().map(|n| (n, 0)).collect();
    while let Some((n, d)) = stack.pop() {
        count += 1;
        if d > max_depth {
            return (count, Some(n.name().span()));
        }
        if let Some(c) = n.children() {
            stack.extend(c.nodes().iter().rev().map(|c| (c, d + 1)));
        }
    }
    (count, None)
}

/// The pre-order index `k` (0-based) node's name span, for "limit reached here" errors.
pub(crate) fn nth_node(doc: &KdlDocument, k: usize) -> Option<SourceSpan> {
    let mut stack: Vec<&KdlNode> = doc.nodes().iter().rev().collect();
    let mut i = 0;
    while let Some(n) = stack.pop() {
        if i == k {
            return Some(n.name().span());
        }
        i += 1;
        if let Some(c) = n.children() {
            stack.extend(c.nodes().iter().rev());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recognize::recognize;

    fn ok(t: &str) -> bool {
        recognize(t, 64).is_ok()
    }

    #[test]
    fn accepts_the_grammar_the_crate_accepts() {
        for t in [
            "",
            "a",
            "a 1 2.5 -3 0x1F 0o7 0b1 1_000 1e5 1.5E-3 +4",
            "a key=value k2=\"s\" k3=#true k4=#null k5=#-inf",
            "a (t)1 k=(u)\"x\"\n(t)b",
            "a { b; c { d } }\ne {}\nf{ }",
            "a /-b c /-k=1 { x } /-{ y }\n/- z 1\nw",
            "a \\\n  b // c\n/* x /* y */ ** // */ n",
            "a \"\"\"\n  multi \"quoted\" \\n\n\n  lines\n  \"\"\"",
            "a #\"raw \" {\"# ##\"x\"#y\"##",
            "a #\"\"\"\n  raw ml\n  \"\"\"#",
            "\u{FEFF}a; b; c",
            "a \"esc \\\" \\u{1F600} \\   \n  ws\"",
            "a - + . -x .x +.x a*b",
        ] {
            assert!(ok(t), "rejected: {t:?} {:?}", recognize(t, 64));
            assert!(KdlDocument::parse_v2(t).is_ok(), "crate rejects {t:?}");
        }
    }

    #[test]
    fn rejects_what_the_crate_recovers_from() {
        for t in [
            "a {}\"{{\"",
            "a ={",
            "}}}",
            "a )",
            "a b\"c\"",
            "a b#true",
            "a 1=2",
            "a \"x",
            "a \"\\q\"",
            "a true",
            "a 1.2.3",
            "a 99999999999999999999999999999999999999999",
            "a /* x",
            "a { b",
            "a {} {}",
            "a {} b",
            "a b/-c",
            "/- a; b",
            "a \"\"\"\n x\n  \"\"\"",
            "a \"\"\"x\"\"\"",
            "a #\"\"\"#",
            "a #\"x\n\"#",
            "a \u{0}",
            "a; ;",
            "a /- /- b",
            // Every digit run of a number must fit an i128 (found by the fuzzer).
            "a 1.59999999999999999999999999999999999999999",
            "a 1e-2666666666666666666666666666666666666666666",
            "a 16161616161616161616161616161616161616161616e1",
            "a 0x1_0000_0000_0000_0000_0000_0000_0000_0000",
        ] {
            assert!(!ok(t), "accepted: {t:?}");
            assert!(KdlDocument::parse_v2(t).is_err(), "crate accepts {t:?}");
        }
    }

    #[test]
    fn depth_is_cut_at_the_limit() {
        let deep = format!("{}{}", "a { ".repeat(2000), "} ".repeat(2000));
        let (_, stop) = recognize(&deep, 64).unwrap_err();
        assert_eq!(stop, Stop::TooDeep(64 * 4 + 2));
        let fine = format!("{}{}", "a { ".repeat(64), "} ".repeat(64));
        assert_eq!(recognize(&fine, 64).unwrap().depth, 64);
        // Braces inside strings and comments do not count.
        let t = format!(
            "a \"{}\" /* {} */ #\"{}\"#",
            "{".repeat(99),
            "{".repeat(99),
            "{".repeat(99)
        );
        assert_eq!(recognize(&t, 64).unwrap().depth, 0);
    }

    #[test]
    fn adversarial_texts_parse_or_are_refused_without_overflow() {
        let texts = [
            "}".repeat(200_000),
            "=".repeat(200_000),
            format!("a {{}}\"{}\"", "{".repeat(100_000)),
            format!("a /* {} */", "*".repeat(200_000)),
            format!("{}a", "/- ".repeat(100_000)),
            format!("{}{}", "a { ".repeat(100_000), "} ".repeat(100_000)),
            "{".repeat(300),
        ];
        for t in &texts {
            let out = std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn({
                    let t = t.clone();
                    move || match parse(&t, 64) {
                        Parsed::Doc(Ok(_), _) => "ok",
                        Parsed::Doc(Err(_), _) => "syntax",
                        Parsed::Refused(_) => "refused",
                    }
                })
                .unwrap()
                .join()
                .unwrap();
            assert!(
                out == "syntax" || out == "refused",
                "{out} for {:?}",
                &t[..20]
            );
        }
    }
}
