//! Resolution of a dataset `path` parameter into the list of files to read: a file, a directory
//! (every `.jsonl`/`.json`/`.parquet` file below it) or a glob. Always sorted by path, so the
//! record order — and the normalised output — does not depend on the file system.

use crate::stage::StageError;
use std::path::{Path, PathBuf};

/// How a file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// One JSON object per line (`.jsonl`, `.json`).
    JsonLines,
    Parquet,
}

/// One input file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    /// The name shown in messages and stats: relative to the recipe directory when inside it.
    pub name: String,
    pub kind: FileKind,
}

/// Supported extensions, as shown in hints.
pub const EXTENSIONS: &str = ".jsonl, .json, .parquet";

fn kind_of(p: &Path) -> Option<FileKind> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "jsonl" | "json" => Some(FileKind::JsonLines),
        "parquet" => Some(FileKind::Parquet),
        _ => None,
    }
}

/// The display name of `p`: relative to `root` when below it (keeps artifacts free of the
/// project's absolute location), else as is.
pub fn display_name(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Resolves the `path` parameter (`param`, as written, relative to `root`).
pub fn resolve(root: &Path, param: &str) -> Result<Vec<SourceFile>, StageError> {
    let full = if Path::new(param).is_absolute() {
        PathBuf::from(param)
    } else {
        root.join(param)
    };
    let mut files = Vec::new();
    if is_glob(param) && !full.exists() {
        let pattern = full.to_string_lossy().to_string();
        let paths = glob::glob(&pattern).map_err(|e| {
            StageError::user(
                format!("path \"{param}\": invalid glob pattern: {e}"),
                Some("globs use *, ? and [abc]; quote the path".to_string()),
            )
        })?;
        for p in paths {
            let p = p.map_err(|e| {
                StageError::user(format!("path \"{param}\": cannot read {e}"), None)
            })?;
            if p.is_dir() {
                continue;
            }
            let kind = kind_of(&p).ok_or_else(|| {
                StageError::user(
                    format!(
                        "path \"{param}\" matches {}, which is not a supported data file",
                        display_name(root, &p)
                    ),
                    Some(format!(
                        "supported extensions: {EXTENSIONS}; narrow the glob"
                    )),
                )
            })?;
            files.push(SourceFile {
                name: display_name(root, &p),
                path: p,
                kind,
            });
        }
        if files.is_empty() {
            return Err(StageError::user(
                format!("path \"{param}\": the glob matches no file"),
                Some("globs are relative to the recipe's directory; check the pattern".to_string()),
            ));
        }
    } else if full.is_dir() {
        for e in walkdir::WalkDir::new(&full)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
        {
            let p = e.path();
            let hidden = p
                .strip_prefix(&full)
                .map(|r| {
                    r.components()
                        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
                })
                .unwrap_or(false);
            if e.file_type().is_file() && !hidden {
                if let Some(kind) = kind_of(p) {
                    files.push(SourceFile {
                        name: display_name(root, p),
                        path: p.to_path_buf(),
                        kind,
                    });
                }
            }
        }
        if files.is_empty() {
            return Err(StageError::user(
                format!("path \"{param}\": the directory holds no data file"),
                Some(format!(
                    "a dataset directory is read for files ending in {EXTENSIONS}"
                )),
            ));
        }
    } else if full.is_file() {
        let kind = kind_of(&full).ok_or_else(|| {
            StageError::user(
                format!("path \"{param}\": not a supported data file"),
                Some(format!("supported extensions: {EXTENSIONS}")),
            )
        })?;
        files.push(SourceFile {
            name: display_name(root, &full),
            path: full,
            kind,
        });
    } else {
        return Err(StageError::user(
            format!("path \"{param}\": no such file or directory"),
            Some("paths are relative to the recipe's directory".to_string()),
        ));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}
