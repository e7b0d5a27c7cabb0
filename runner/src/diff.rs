//! Field-level difference of two JSON key trees, used by `plan` (to say why a node runs) and
//! `why` (to print what changed since the last build).
//!
//! Paths are written `params.lr`, `params.sources[1].weight`: object fields joined with `.`,
//! array items as `[i]`. Objects are compared field by field (a field present on one side only is
//! an addition or removal); arrays of different lengths are compared item by item with the
//! missing side reported as absent; any other difference is reported at the deepest path where
//! the two values stop being both objects or both arrays.

use serde_json::Value as J;

/// One changed field: `old` is `None` when the field was added, `new` is `None` when removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: Option<J>,
    pub new: Option<J>,
}

impl Change {
    /// `params.lr: 0.1 → 0.2` (values shown with [`show`]).
    pub fn describe(&self) -> String {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => format!("{}: {} → {}", self.path, show(o), show(n)),
            (None, Some(n)) => format!("{}: added ({})", self.path, show(n)),
            (Some(o), None) => format!("{}: removed (was {})", self.path, show(o)),
            (None, None) => format!("{}: unchanged", self.path),
        }
    }
}

/// All differences between `old` and `new`, in a deterministic order (object fields sorted).
pub fn diff(old: &J, new: &J) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn walk(path: &str, old: &J, new: &J, out: &mut Vec<Change>) {
    match (old, new) {
        (J::Object(a), J::Object(b)) => {
            let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
            fields.sort();
            fields.dedup();
            for f in fields {
                let p = join(path, f);
                match (a.get(f), b.get(f)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(Change {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (J::Array(a), J::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(Change {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change {
            path: path.to_string(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

/// Human form of a key-tree value: canonical floats `"f:0.1"` lose their tag, strings are
/// unquoted, long digests (64 hex) are shortened to 12 characters, everything else is JSON.
pub fn show(v: &J) -> String {
    match v {
        J::String(s) => {
            if let Some(f) = s.strip_prefix("f:") {
                f.to_string()
            } else if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                s[..12].to_string()
            } else {
                s.clone()
            }
        }
        J::Null => "unset".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_changes_have_dotted_paths() {
        let a = json!({"kind": "x", "params": {"lr": "f:0.1", "s": [{"w": 1}, {"w": 2}]}});
        let b =
            json!({"kind": "x", "params": {"lr": "f:0.2", "s": [{"w": 1}, {"w": 3}], "new": 1}});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].path, "params.lr");
        assert_eq!(d[0].describe(), "params.lr: 0.1 → 0.2");
        assert_eq!(d[1].path, "params.new");
        assert_eq!(d[1].old, None);
        assert_eq!(d[2].path, "params.s[1].w");
        assert!(diff(&a, &a).is_empty());
    }
}
