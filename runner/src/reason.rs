//! Why an instance will run: the reasons `plan`, `run` and `why` print, and how they are read
//! off the difference between the key tree last built for an identity and the current one.

use crate::diff::{self, Change};
use serde_json::Value as J;
use std::fmt;

/// Why an instance will run.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    New,
    /// Built before under this identity, but its artifact is gone (gc'd).
    ArtifactMissing,
    ParamChanged {
        param: String,
        old: Option<J>,
        new: Option<J>,
    },
    InputChanged {
        input: String,
    },
    FileChanged {
        param: String,
    },
    VersionChanged {
        old: String,
        new: String,
    },
    PreviousFailed {
        error: String,
    },
    PreviousIncomplete {
        why: String,
    },
    /// Built, but its artifact's files changed since it was published (or `temper verify`
    /// found them changed): a run moves the copy aside and rebuilds it under the same key.
    Damaged {
        what: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: &Option<J>| v.as_ref().map(diff::show).unwrap_or_else(|| "unset".into());
        match self {
            Reason::New => write!(f, "new"),
            Reason::ArtifactMissing => write!(f, "artifact missing (built before, since removed)"),
            Reason::ParamChanged { param, old, new } => {
                write!(
                    f,
                    "parameter {param} changed from {} to {}",
                    opt(old),
                    opt(new)
                )
            }
            Reason::InputChanged { input } => write!(f, "input {input} changed"),
            Reason::FileChanged { param } => write!(f, "file of param {param} changed"),
            Reason::VersionChanged { old, new } => {
                write!(f, "kind version changed {old} → {new}")
            }
            Reason::PreviousFailed { error } => write!(f, "previous attempt failed: {error}"),
            Reason::PreviousIncomplete { why } => write!(f, "previous attempt incomplete ({why})"),
            Reason::Damaged { what } => f.write_str(what),
        }
    }
}

/// Reasons derived from the difference between the last built tree and the current one.
pub fn reasons_from_diff(old: &J, new: &J, inputs: &[(String, String)]) -> Vec<Reason> {
    let mut out: Vec<Reason> = Vec::new();
    let mut push = |r: Reason| {
        if !out.contains(&r) {
            out.push(r)
        }
    };
    for Change {
        path,
        old: o,
        new: n,
    } in diff::diff(old, new)
    {
        if path == "version" {
            push(Reason::VersionChanged {
                old: o.as_ref().map(diff::show).unwrap_or_default(),
                new: n.as_ref().map(diff::show).unwrap_or_default(),
            });
            continue;
        }
        let Some(rest) = path.strip_prefix("params.") else {
            push(Reason::ParamChanged {
                param: path,
                old: o,
                new: n,
            });
            continue;
        };
        if let Some(p) = rest.strip_suffix(".key") {
            if let Some((_, id)) = inputs.iter().find(|(ip, _)| ip == p) {
                push(Reason::InputChanged { input: id.clone() });
                continue;
            }
        }
        if let Some(pos) = rest.find(".content") {
            push(Reason::FileChanged {
                param: rest[..pos].to_string(),
            });
            continue;
        }
        push(Reason::ParamChanged {
            param: rest.to_string(),
            old: o,
            new: n,
        });
    }
    out
}
