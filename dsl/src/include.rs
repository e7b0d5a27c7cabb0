//! `include "path.kdl"`: another recipe file merged into this one (relative to the including
//! file; each file once; cycles reported with the whole chain).
//!
//! An include names a KDL recipe and nothing else, so a recipe cannot make `temper check` echo
//! an arbitrary file (`/proc/self/environ`, `/etc/shadow`) in a diagnostic: the path as written
//! and the file it resolves to must end in `.kdl`; the file must be a regular file (never a
//! directory, device or fifo — checked before it is opened, and again on the open handle) and
//! not on `/proc`, `/sys` or `/dev`; it must be valid UTF-8 and within the size limits. Each
//! refusal is an error at the `include` line that never shows the file's content. In untrusted
//! mode the file must also be inside the recipe's repository (see [`crate::LoadOptions`]).

use crate::diag::Diag;
use crate::limits;
use crate::parse::{normalize, show_path, value_span, Sources};
use crate::untrusted::{absolute, is_special};
use kdl::{KdlEntry, KdlNode, KdlValue};
use std::io::Read;
use std::path::{Path, PathBuf};

fn is_kdl(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "kdl")
}

/// Why an included file was not read: message, label, hint.
struct Refusal(String, &'static str, String);

impl Sources {
    pub(crate) fn include(&mut self, file: usize, node: &KdlNode, chain: &mut Vec<usize>) {
        let src = self.srcs[file].clone();
        let text = src.inner().as_str();
        let name_span = node.name().span();
        let args: Vec<&KdlEntry> = node.entries().iter().collect();
        let arg = match args.as_slice() {
            [e] if e.name().is_none() => e,
            _ => {
                self.diags.push(
                    Diag::at(&src, name_span, "`include` takes exactly one path", "here")
                        .help("write `include \"relative/path.kdl\"`"),
                );
                return;
            }
        };
        let vspan = value_span(text, arg);
        let KdlValue::String(rel) = arg.value() else {
            self.diags.push(Diag::at(
                &src,
                vspan,
                "`include` expects a path string",
                "not a string",
            ));
            return;
        };
        if node.children().is_some() {
            self.diags.push(Diag::at(
                &src,
                name_span,
                "`include` takes no children block",
                "here",
            ));
        }
        let parent = &self.files[file];
        let real = parent
            .path
            .parent()
            .unwrap_or(Path::new(""))
            .join(rel.as_str());
        let shown = normalize(
            &Path::new(&parent.name)
                .parent()
                .unwrap_or(Path::new(""))
                .join(rel.as_str()),
        );
        let shown_s = limits::printable(&show_path(&shown));
        let rel_dir = normalize(&self.rel_dirs[file].join(rel.as_str()))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let refuse = |this: &mut Sources, r: Refusal| {
            this.diags.push(Diag::at(&src, vspan, r.0, r.1).help(r.2));
        };
        if !is_kdl(Path::new(rel.as_str())) {
            let r = Refusal(
                format!("`include` accepts only KDL recipe files (`.kdl`), not `{shown_s}`"),
                "not a .kdl file",
                "include other recipes only; data files are read by the nodes that use them".into(),
            );
            return refuse(self, r);
        }
        if self.opts.untrusted {
            // As written from the including file's (canonical) directory, then as opened.
            let base = self.canon[file]
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| absolute(real.parent().unwrap_or(Path::new(""))));
            let outside = if !self.repo.inside_as_written(&base, Path::new(rel.as_str())) {
                Some(crate::untrusted::Refused::Outside)
            } else {
                match real.canonicalize() {
                    Ok(c) if !self.repo.contains(&c) => Some(crate::untrusted::Refused::Symlink),
                    _ => None,
                }
            };
            if let Some(why) = outside {
                let (m, l, h) = self.repo.explain("include", rel, &why);
                self.diags.push(Diag::at(&src, vspan, m, l).help(h));
                return;
            }
        }
        let canon = real.canonicalize().ok();
        if let Some(c) = &canon {
            if let Some(pos) = chain
                .iter()
                .position(|f| self.canon[*f].as_ref() == Some(c))
            {
                let mut names: Vec<String> = chain[pos..]
                    .iter()
                    .map(|f| self.files[*f].name.clone())
                    .collect();
                names.push(self.files[chain[pos]].name.clone());
                self.diags.push(
                    Diag::at(
                        &src,
                        vspan,
                        format!("include cycle: {}", names.join(" → ")),
                        "this include closes the cycle",
                    )
                    .help("remove one of the includes; a file may not include itself, even indirectly"),
                );
                return;
            }
            if self.canon.iter().any(|x| x.as_ref() == Some(c)) {
                // Included already (diamond): each file's nodes are merged once.
                return;
            }
        }
        let body = match self.read_include(&real, canon.as_deref(), &shown_s) {
            Ok(t) => t,
            Err(r) => return refuse(self, r),
        };
        self.total_bytes += body.len();
        let idx = self.add(show_path(&shown), real, body, rel_dir);
        self.load_file(idx, chain);
    }

    /// Reads an included file after the checks of the module docs.
    fn read_include(
        &self,
        real: &Path,
        canon: Option<&Path>,
        shown: &str,
    ) -> Result<String, Refusal> {
        let unreadable = |e: std::io::Error| {
            Refusal(
                format!("cannot read included file `{shown}`: {e}"),
                "included here",
                "include paths are relative to the directory of the including file".into(),
            )
        };
        let not_recipe = |what: &str| {
            Refusal(
                format!("included `{shown}` is {what}, not a recipe file"),
                "not a recipe file",
                "`include` accepts regular `.kdl` files only".into(),
            )
        };
        let meta = std::fs::metadata(real).map_err(unreadable)?;
        if !meta.is_file() {
            return Err(not_recipe(if meta.is_dir() {
                "a directory"
            } else {
                "a special file"
            }));
        }
        let canon: PathBuf = canon.map(Path::to_path_buf).unwrap_or_else(|| real.into());
        if is_special(&canon) {
            return Err(not_recipe("on a kernel file system"));
        }
        if !is_kdl(&canon) {
            return Err(not_recipe("a link to a file without the `.kdl` extension"));
        }
        let limit = self.opts.max_file_bytes;
        let total_left = self.opts.max_total_bytes.saturating_sub(self.total_bytes);
        let too_big = |n: u64, what: &str, lim: usize| {
            Refusal(
                format!(
                    "included `{shown}` is {}, more than the {what} of {}",
                    limits::bytes(n as usize),
                    limits::bytes(lim)
                ),
                "too large",
                "split the recipe, or keep data in data files".into(),
            )
        };
        if meta.len() > limit as u64 {
            return Err(too_big(meta.len(), "limit per file", limit));
        }
        if meta.len() > total_left as u64 {
            return Err(too_big(
                meta.len(),
                "limit left for all files",
                self.opts.max_total_bytes,
            ));
        }
        let f = std::fs::File::open(real).map_err(unreadable)?;
        // Checked again on the handle: the file may have been swapped since the stat.
        if !f.metadata().map_err(unreadable)?.is_file() {
            return Err(not_recipe("a special file"));
        }
        let mut bytes = Vec::new();
        f.take(limit.min(total_left) as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() > limit.min(total_left) {
            return Err(too_big(bytes.len() as u64, "limit", limit.min(total_left)));
        }
        String::from_utf8(bytes).map_err(|_| {
            Refusal(
                format!("included `{shown}` is not valid UTF-8 text"),
                "not a text file",
                "recipe files are UTF-8 KDL".into(),
            )
        })
    }
}
