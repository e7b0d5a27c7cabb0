//! KDL 2.0's character classes and number syntax, as the recogniser ([`crate::recognize`])
//! checks them: whitespace, newlines, code points a document may not hold, identifier
//! characters, and the numbers the `kdl` crate parses without error recovery.

/// The 18 KDL whitespace characters.
pub(crate) fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

pub(crate) fn is_newline_char(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{85}' | '\u{B}' | '\u{C}' | '\u{2028}' | '\u{2029}'
    )
}

/// Code points KDL forbids in a document (DEL included, which is stricter than the crate).
pub(crate) fn is_disallowed(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{E}'..='\u{1F}' | '\u{7F}' | '\u{200E}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

pub(crate) fn is_ident_char(c: char) -> bool {
    !is_space(c)
        && !is_newline_char(c)
        && !is_disallowed(c)
        && !matches!(
            c,
            '\\' | '/' | '(' | ')' | '{' | '}' | '[' | ']' | ';' | '"' | '#' | '='
        )
}

/// A KDL number the crate accepts: decimal, hex, octal or binary, where the crate parses every
/// digit run (integer, fraction and exponent of a float too) as an `i128`.
pub(crate) fn valid_number(w: &str) -> bool {
    let u = w.strip_prefix(['+', '-']).unwrap_or(w);
    let run = |s: &str, radix: u32| {
        let clean: String = s.chars().filter(|c| *c != '_').collect();
        s.starts_with(|c: char| c.is_digit(radix))
            && s.chars().all(|c| c == '_' || c.is_digit(radix))
            && i128::from_str_radix(&clean, radix).is_ok()
    };
    for (p, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = u.strip_prefix(p) {
            return run(rest, radix);
        }
    }
    let (mantissa, exp) = match u.find(['e', 'E']) {
        Some(k) => (&u[..k], Some(&u[k + 1..])),
        None => (u, None),
    };
    if let Some(e) = exp {
        if !run(e.strip_prefix(['+', '-']).unwrap_or(e), 10) {
            return false;
        }
    }
    match mantissa.split_once('.') {
        Some((int, frac)) => run(int, 10) && run(frac, 10),
        None => run(mantissa, 10),
    }
}
