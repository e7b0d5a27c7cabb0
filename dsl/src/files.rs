//! The files a `Path` parameter denotes: the one enumeration that both the key (content
//! hashes) and the readers (datasets) use, so what is hashed is exactly what is read.
//!
//! Rules, in order:
//! 1. **An existing literal path wins**: `data/train[1].jsonl` that exists is that file, even
//!    though it contains glob characters.
//! 2. A **file** (a symlink to one counts) is itself. A **directory** is every regular file
//!    below it, symlinks followed, entries whose name starts with `.` skipped.
//! 3. Otherwise, a path with `*`, `?` or `[` is a **glob**; a directory it matches counts as its
//!    files (rule 2); matching nothing is an error.
//! 4. A **dangling symlink** anywhere in the listing is an error naming it and its target,
//!    never silently skipped; so is a symlink loop.
//!
//! Names ([`Listed::rel`]) are `/`-separated and relative to the directory (rule 2) or to the
//! glob's non-glob prefix (rule 3); the listing is sorted by name, so it does not depend on the
//! file system's order.

use std::fmt;
use std::path::{Path, PathBuf};

/// One file of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Name relative to the directory or glob base; empty for a single file.
    pub rel: String,
    /// The path to open (below the recipe directory as written, symlinks not resolved).
    pub path: PathBuf,
}

/// The files a path parameter denotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// The parameter names one file.
    File(PathBuf),
    /// A directory or a glob: its files, sorted by [`Listed::rel`].
    Many(Vec<Listed>),
}

impl Listing {
    /// Every file, in order.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            Listing::File(p) => vec![p.as_path()],
            Listing::Many(v) => v.iter().map(|l| l.path.as_path()).collect(),
        }
    }
}

/// Why a path parameter lists no usable files. `Display` is the message; `hint` what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for FilesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for FilesError {}

fn err(message: String, hint: &str) -> FilesError {
    FilesError {
        message,
        hint: (!hint.is_empty()).then(|| hint.to_string()),
    }
}

/// Whether `s` has glob characters.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The leading components of `p` without glob characters (the base a glob's names are
/// relative to).
pub fn glob_prefix(p: &Path) -> PathBuf {
    p.components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect()
}

fn rel_string(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// A clear error for a path whose `stat` failed: dangling symlinks say where they point.
fn unreadable(shown: &str, path: &Path, e: std::io::Error) -> FilesError {
    if let Ok(target) = std::fs::read_link(path) {
        return err(
            format!(
                "`{shown}` is a dangling symlink (to `{}`, which does not exist)",
                target.display()
            ),
            "fix or remove the link",
        );
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        return err(
            format!("`{shown}` does not exist"),
            "paths are relative to the recipe's directory",
        );
    }
    err(format!("`{shown}`: cannot read it: {e}"), "")
}

/// Lists the files of path parameter `p` (as written, relative to `root_dir` unless absolute)
/// by the rules of the module docs.
pub fn list(root_dir: &Path, p: &str) -> Result<Listing, FilesError> {
    let full = root_dir.join(p);
    let literal = std::fs::symlink_metadata(&full).is_ok();
    if literal || !is_glob(p) {
        let meta = std::fs::metadata(&full).map_err(|e| unreadable(p, &full, e))?;
        if meta.is_dir() {
            return Ok(Listing::Many(dir_files(&full, Path::new(""), p)?));
        }
        if !meta.is_file() {
            return Err(err(
                format!("`{p}` is not a regular file or a directory"),
                "name a file, a directory or a glob",
            ));
        }
        return Ok(Listing::File(full));
    }
    let base = root_dir.join(glob_prefix(Path::new(p)));
    let pattern = full.to_string_lossy().into_owned();
    let matches = glob::glob(&pattern).map_err(|e| {
        err(
            format!("`{p}`: invalid glob pattern: {e}"),
            "globs use *, ? and [abc]",
        )
    })?;
    let mut files = Vec::new();
    for m in matches {
        let f = m.map_err(|e| err(format!("`{p}`: cannot read a match: {e}"), ""))?;
        let rel = f.strip_prefix(&base).unwrap_or(&f).to_path_buf();
        let shown = rel_string(f.strip_prefix(root_dir).unwrap_or(&f));
        let meta = std::fs::metadata(&f).map_err(|e| unreadable(&shown, &f, e))?;
        if meta.is_dir() {
            files.extend(dir_files(&f, &rel, &shown)?);
        } else if meta.is_file() {
            files.push(Listed {
                rel: rel_string(&rel),
                path: f,
            });
        }
    }
    if files.is_empty() {
        return Err(err(
            format!("no file matches `{p}`"),
            "globs are relative to the recipe's directory; check the pattern",
        ));
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Listing::Many(files))
}

/// Every regular file below `dir` (symlinks followed, dot-entries skipped), named
/// `rel_base/<path below dir>`.
fn dir_files(dir: &Path, rel_base: &Path, shown: &str) -> Result<Vec<Listed>, FilesError> {
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let e = match entry {
            Ok(e) => e,
            Err(we) => {
                let at = we.path().map(Path::to_path_buf).unwrap_or_default();
                let below = rel_string(at.strip_prefix(dir).unwrap_or(&at));
                let name = format!("{}/{below}", shown.trim_end_matches('/'));
                if we.loop_ancestor().is_some() {
                    return Err(err(
                        format!("`{name}` is a symlink loop"),
                        "remove the link or point it elsewhere",
                    ));
                }
                let io = we
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk error"));
                return Err(unreadable(&name, &at, io));
            }
        };
        if !e.file_type().is_file() {
            continue;
        }
        let below = e.path().strip_prefix(dir).unwrap_or(e.path());
        out.push(Listed {
            rel: rel_string(&rel_base.join(below)),
            path: e.path().to_path_buf(),
        });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(l: &Listing) -> Vec<String> {
        match l {
            Listing::File(p) => vec![p.file_name().unwrap().to_string_lossy().into()],
            Listing::Many(v) => v.iter().map(|x| x.rel.clone()).collect(),
        }
    }

    #[test]
    fn symlinked_files_are_listed_and_dangling_ones_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        fs::create_dir_all(data.join("sub")).unwrap();
        fs::write(data.join("a.jsonl"), "{}\n").unwrap();
        fs::write(data.join(".hidden.jsonl"), "{}\n").unwrap();
        fs::write(d.path().join("outside.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside.jsonl"), data.join("sub/b.jsonl"))
            .unwrap();
        let l = list(d.path(), "data").unwrap();
        assert_eq!(names(&l), vec!["a.jsonl", "sub/b.jsonl"]);
        std::os::unix::fs::symlink(d.path().join("gone.jsonl"), data.join("c.jsonl")).unwrap();
        let e = list(d.path(), "data").unwrap_err();
        assert!(
            e.message.contains("data/c.jsonl` is a dangling symlink"),
            "{e}"
        );
        let e = list(d.path(), "data/c.jsonl").unwrap_err();
        assert!(e.message.contains("dangling symlink"), "{e}");
        let e = list(d.path(), "data/*.jsonl").unwrap_err();
        assert!(
            e.message.contains("data/c.jsonl` is a dangling symlink"),
            "{e}"
        );
    }

    #[test]
    fn an_existing_literal_path_wins_over_a_glob() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("train[1].jsonl"), "{}\n").unwrap();
        fs::write(d.path().join("train1.jsonl"), "{}\n").unwrap();
        let l = list(d.path(), "train[1].jsonl").unwrap();
        assert_eq!(l, Listing::File(d.path().join("train[1].jsonl")));
        let l = list(d.path(), "train[0-9].jsonl").unwrap();
        assert_eq!(names(&l), vec!["train1.jsonl"]);
        let e = list(d.path(), "nothing*.jsonl").unwrap_err();
        assert!(e.message.contains("no file matches"), "{e}");
        let e = list(d.path(), "missing.jsonl").unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");
    }

    #[test]
    fn glob_directories_count_as_their_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("shards/x")).unwrap();
        fs::write(d.path().join("shards/x/1.jsonl"), "{}\n").unwrap();
        fs::write(d.path().join("shards/2.jsonl"), "{}\n").unwrap();
        let l = list(d.path(), "shards/*").unwrap();
        assert_eq!(names(&l), vec!["2.jsonl", "x/1.jsonl"]);
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("data")).unwrap();
        std::os::unix::fs::symlink(d.path().join("data"), d.path().join("data/again")).unwrap();
        let e = list(d.path(), "data").unwrap_err();
        assert!(e.message.contains("symlink loop"), "{e}");
    }
}
