//! Recipe-wide defaults for the non-semantic parameters every kind accepts:
//!
//! ```kdl
//! defaults { device cuda; threads 4; log-every 20 }
//! ```
//!
//! A `defaults` block sets `device`, `threads` or `log-every` for every node that does not set
//! it itself (as a property or a child). Only these common, non-semantic parameters may be
//! defaulted recipe-wide, so a `defaults` block never changes a key. It is applied to the parsed
//! nodes before validation, so the values are type-checked like any other parameter. Later
//! blocks (and blocks in the including file after an `include`) override earlier ones.

use crate::diag::Diag;
use crate::parse::Sources;
use crate::suggest;
use kdl::{KdlEntry, KdlIdentifier, KdlNode};

/// Parameters a `defaults` block may set.
pub(crate) const DEFAULTABLE: &[&str] = &["device", "threads", "log-every"];

impl Sources {
    /// Records the entries of a `defaults` block (one child `name value` per parameter).
    pub(crate) fn defaults(&mut self, file: usize, node: &KdlNode) {
        let src = self.srcs[file].clone();
        if !node.entries().is_empty() {
            self.diags.push(
                Diag::at(
                    &src,
                    node.name().span(),
                    "`defaults` takes no arguments",
                    "here",
                )
                .help("write the parameters as children: `defaults { device cuda; threads 4 }`"),
            );
        }
        let Some(children) = node.children() else {
            return;
        };
        for child in children.nodes() {
            let name = child.name().value();
            if !DEFAULTABLE.contains(&name) {
                self.diags.push(
                    Diag::at(&src, child.name().span(), format!("`defaults` cannot set `{name}`"), "not a recipe-wide parameter")
                        .help(format!(
                            "{}only {} can be set for every node; semantic parameters belong to each node",
                            suggest::hint(name, DEFAULTABLE)
                                .map(|s| format!("{s} "))
                                .unwrap_or_default(),
                            suggest::list(DEFAULTABLE)
                        )),
                );
                continue;
            }
            match child.entries() {
                [e] if e.name().is_none() && child.children().is_none() => {
                    let mut prop = e.clone();
                    prop.set_name(Some(KdlIdentifier::from(name)));
                    self.recipe_defaults.retain(|(n, _)| n != name);
                    self.recipe_defaults.push((name.to_string(), prop));
                }
                _ => self.diags.push(
                    Diag::at(
                        &src,
                        child.name().span(),
                        format!("`{name}` in `defaults` takes exactly one value"),
                        "here",
                    )
                    .help(format!("write `{name} VALUE`")),
                ),
            }
        }
    }

    /// Adds each recipe-wide default as a property to every node that does not set it.
    pub(crate) fn apply_defaults(&mut self) {
        if self.recipe_defaults.is_empty() {
            return;
        }
        for (_, node) in self.nodes.iter_mut() {
            for (name, prop) in &self.recipe_defaults {
                let as_prop = node
                    .entries()
                    .iter()
                    .any(|e| e.name().is_some_and(|n| n.value() == name));
                let as_child = node
                    .children()
                    .is_some_and(|c| c.nodes().iter().any(|n| n.name().value() == name));
                if !as_prop && !as_child {
                    node.entries_mut().push(KdlEntry::clone(prop));
                }
            }
        }
    }
}
