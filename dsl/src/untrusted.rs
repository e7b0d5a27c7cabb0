//! The recipe's repository and the checks of untrusted mode (see [`crate::LoadOptions`]):
//! every path a recipe names must stay inside the repository, decided on the written text
//! where that suffices and otherwise by resolving the path, never by opening what lies outside.

use crate::limits;
use crate::parse::normalize;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Most directory entries checked below one directory or glob prefix.
pub(crate) const MAX_WALK_ENTRIES: usize = 100_000;

/// The repository of a load (canonical), with a cache of checked directories.
#[derive(Debug)]
pub(crate) struct Repo {
    pub root: PathBuf,
    /// The root recipe's directory, canonical: what relative paths are rebased onto.
    pub root_dir: PathBuf,
    walked: RefCell<HashMap<PathBuf, Result<(), Refused>>>,
}

/// Why untrusted mode refuses a path.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Refused {
    /// Outside, as written (after rebasing and `..`).
    Outside,
    /// Inside as written, outside once symlinks are followed.
    Symlink,
    /// A symlink below the named directory (its path as shown) leads outside.
    LinkBelow(String),
    /// Too many entries below the named directory to check.
    TooMany,
}

/// An absolute, lexically normalised form of `p` (relative paths against the current directory).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize(p)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize(&cwd.join(p))
    }
}

/// The nearest ancestor of `root_dir` (the root recipe's directory) holding a `.git` directory
/// or file, else `root_dir` itself; canonical.
pub(crate) fn find_repo(root_dir: &Path) -> Repo {
    let start = root_dir
        .canonicalize()
        .unwrap_or_else(|_| absolute(root_dir));
    let root = start
        .ancestors()
        .find(|a| a.join(".git").symlink_metadata().is_ok())
        .unwrap_or(&start)
        .to_path_buf();
    Repo {
        root,
        root_dir: start,
        walked: RefCell::new(HashMap::new()),
    }
}

impl Repo {
    /// Whether `p` (absolute, normalised or canonical) is inside the repository.
    pub fn contains(&self, p: &Path) -> bool {
        p.starts_with(&self.root)
    }

    /// Whether `p` (relative to the canonical directory `base`, or absolute) is inside the
    /// repository as written (`..` resolved lexically, nothing touched).
    pub fn inside_as_written(&self, base: &Path, p: &Path) -> bool {
        let full = if p.is_absolute() {
            normalize(p)
        } else {
            normalize(&base.join(p))
        };
        self.contains(&full)
    }

    /// Checks a path parameter: `rebased` is relative to the root recipe's directory (or
    /// absolute), `glob` whether it is a pattern (then its non-glob prefix is checked), and a
    /// directory's symlinks are checked too. First as written, then resolved (symlinks
    /// followed); a path that does not exist passes (the caller reports it missing).
    pub fn check(&self, rebased: &Path, glob: bool) -> Result<(), Refused> {
        let target = if glob {
            crate::files::glob_prefix(rebased)
        } else {
            rebased.to_path_buf()
        };
        if !self.inside_as_written(&self.root_dir, &target) {
            return Err(Refused::Outside);
        }
        let Ok(canon) = self.root_dir.join(&target).canonicalize() else {
            return Ok(());
        };
        if !self.contains(&canon) {
            return Err(Refused::Symlink);
        }
        if canon.is_dir() {
            return self.walk(&canon);
        }
        Ok(())
    }

    /// Every symlink below `dir` (canonical, inside) must lead inside; memoised per directory.
    fn walk(&self, dir: &Path) -> Result<(), Refused> {
        if let Some(r) = self.walked.borrow().get(dir) {
            return r.clone();
        }
        let r = self.walk_uncached(dir);
        self.walked
            .borrow_mut()
            .insert(dir.to_path_buf(), r.clone());
        r
    }

    fn walk_uncached(&self, dir: &Path) -> Result<(), Refused> {
        let mut todo = vec![dir.to_path_buf()];
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut entries = 0usize;
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                entries += 1;
                if entries > MAX_WALK_ENTRIES {
                    return Err(Refused::TooMany);
                }
                let Ok(ft) = e.file_type() else { continue };
                let path = e.path();
                if ft.is_symlink() {
                    // Dangling links are reported when the files are listed.
                    let Ok(c) = path.canonicalize() else { continue };
                    if !self.contains(&c) {
                        let shown = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                        return Err(Refused::LinkBelow(crate::parse::show_path(&shown)));
                    }
                    if c.is_dir() {
                        todo.push(c);
                    }
                } else if ft.is_dir() && e.file_name() != ".git" {
                    todo.push(path);
                }
            }
        }
        Ok(())
    }

    /// The message, label and hint for a refusal of `written` (what the recipe wrote).
    pub fn explain(&self, what: &str, written: &str, r: &Refused) -> (String, String, String) {
        let w = limits::printable(written);
        let (message, label) = match r {
            Refused::Outside => (
                format!("{what}: `{w}` is outside the recipe's repository"),
                "outside the repository",
            ),
            Refused::Symlink => (
                format!("{what}: `{w}` leads outside the recipe's repository through a symlink"),
                "a symlink leads outside",
            ),
            Refused::LinkBelow(link) => (
                format!(
                    "{what}: `{w}` holds a symlink leading outside the recipe's repository: `{}`",
                    limits::printable(link)
                ),
                "a symlink below leads outside",
            ),
            Refused::TooMany => (
                format!(
                    "{what}: `{w}` has more than {} entries to check",
                    limits::count(MAX_WALK_ENTRIES)
                ),
                "too many files",
            ),
        };
        let hint = "--untrusted refuses every path outside the recipe's repository (the nearest \
                    directory above the recipe with a `.git`); keep the files inside it"
            .to_string();
        (message, label.to_string(), hint)
    }
}

/// Whether `canon` (canonical) lies on a kernel pseudo file system whose files are not recipes
/// and may block or leak (`/proc`, `/sys`, `/dev`).
pub(crate) fn is_special(canon: &Path) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| canon.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn paths_are_checked_lexically_then_resolved() {
        let d = tempfile::tempdir().unwrap();
        let repo_dir = d.path().join("repo");
        fs::create_dir_all(repo_dir.join(".git")).unwrap();
        fs::create_dir_all(repo_dir.join("sub/data")).unwrap();
        fs::write(repo_dir.join("sub/data/a.jsonl"), "{}").unwrap();
        fs::write(d.path().join("secret.txt"), "s").unwrap();
        // Reached through a symlinked directory: written paths still count as inside.
        std::os::unix::fs::symlink(&repo_dir, d.path().join("alias")).unwrap();
        let repo = find_repo(&d.path().join("alias/sub"));
        assert_eq!(repo.root, repo_dir.canonicalize().unwrap());
        let ok = |p: &str, g| repo.check(Path::new(p), g);
        assert_eq!(ok("data/a.jsonl", false), Ok(()));
        assert_eq!(ok("data/*.jsonl", true), Ok(()));
        assert_eq!(ok("../sub/data", false), Ok(()));
        assert_eq!(ok("../../secret.txt", false), Err(Refused::Outside));
        assert_eq!(ok("../../no-such-file", false), Err(Refused::Outside));
        assert_eq!(ok("/etc/passwd", false), Err(Refused::Outside));
        assert_eq!(ok("/etc/*", true), Err(Refused::Outside));
        std::os::unix::fs::symlink(d.path().join("secret.txt"), repo_dir.join("sub/s.jsonl"))
            .unwrap();
        assert_eq!(ok("s.jsonl", false), Err(Refused::Symlink));
        assert_eq!(ok(".", false), Err(Refused::LinkBelow("s.jsonl".into())));
        assert_eq!(
            ok("*.jsonl", true),
            Err(Refused::LinkBelow("s.jsonl".into()))
        );
        // A repository without `.git` is the recipe's directory.
        let lone = tempfile::tempdir().unwrap();
        assert_eq!(
            find_repo(lone.path()).root,
            lone.path().canonicalize().unwrap()
        );
        assert!(is_special(Path::new("/proc/self/environ")));
        assert!(!is_special(Path::new("/processes/x.kdl")));
    }
}
