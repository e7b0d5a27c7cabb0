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

/// Resolves the `path` parameter (`param`, as written, relative to `root`) through
/// [`dsl::files::list`] — the enumeration the key hashes — keeping the data files: a directory
/// contributes its files with a supported extension, while a file or a glob match of another
/// type is an error (it would be hashed but not read).
pub fn resolve(root: &Path, param: &str) -> Result<Vec<SourceFile>, StageError> {
    let listing = dsl::files::list(root, param).map_err(|e| StageError::user(e.message, e.hint))?;
    let mut files = Vec::new();
    match listing {
        dsl::files::Listing::File(path) => {
            let kind = kind_of(&path).ok_or_else(|| {
                StageError::user(
                    format!("path \"{param}\": not a supported data file"),
                    Some(format!("supported extensions: {EXTENSIONS}")),
                )
            })?;
            files.push(SourceFile {
                name: display_name(root, &path),
                path,
                kind,
            });
        }
        dsl::files::Listing::Many(listed) => {
            let globbed = dsl::files::is_glob(param) && !root.join(param).is_dir();
            for l in listed {
                match kind_of(&l.path) {
                    Some(kind) => files.push(SourceFile {
                        name: display_name(root, &l.path),
                        path: l.path,
                        kind,
                    }),
                    None if globbed => {
                        return Err(StageError::user(
                            format!(
                                "path \"{param}\" matches {}, which is not a supported data file",
                                display_name(root, &l.path)
                            ),
                            Some(format!(
                                "supported extensions: {EXTENSIONS}; narrow the glob"
                            )),
                        ))
                    }
                    None => {}
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
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}
