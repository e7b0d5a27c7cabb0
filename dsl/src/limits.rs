//! Resource limits of one load, and the hygiene of names that end up in ids.
//!
//! A recipe is untrusted input (a CI may `temper check` a pull request), so every resource a load
//! spends is bounded *before* it is spent, and each limit that is hit is a located error with a
//! hint, never a crash, a hang or an out-of-memory kill:
//!
//! | limit | default | checked |
//! |---|---|---|
//! | [`LoadOptions::max_file_bytes`] | 1 MiB | before a file is read past it (root and includes) |
//! | [`LoadOptions::max_total_bytes`] | 1 MiB | the root plus every include |
//! | [`LoadOptions::max_depth`] | 64 | by [`crate::scan`] on the text, before the KDL parser runs |
//! | [`LoadOptions::max_nodes`] | 10,000 | KDL nodes at any depth, all files, after `repeat` |
//! | [`LoadOptions::max_variants`] | 10,000 | product of the sweep's axis lengths (a `zip` group counts once), before any value is checked |
//! | [`LoadOptions::max_instances`] | 1,000,000 | what the expansion would hold: its instances plus one instance id per node per variant, computed from the axes that reach each node before anything is expanded |
//! | [`MAX_AXIS_MEMBERS`] | 128 | `node.param` lines of all sweeps |
//!
//! Only the first [`MAX_SHOWN_ERRORS`] errors of a load are kept (a count of the rest follows).
//! Node names, `--set` targets, sweep axes and swept string values may not contain control
//! characters (NUL, escapes, bidi overrides …): they become instance ids, store identities and
//! terminal output.

/// Most `node.param` members all sweep blocks may name together.
pub const MAX_AXIS_MEMBERS: usize = 128;

/// Errors kept per load; the rest are counted in one last message.
pub const MAX_SHOWN_ERRORS: usize = 50;

/// Default of [`LoadOptions::max_variants`].
pub const DEFAULT_MAX_VARIANTS: usize = 10_000;

/// Default of [`LoadOptions::max_instances`].
pub const DEFAULT_MAX_INSTANCES: usize = 1_000_000;

/// How a recipe is loaded: resource limits and the untrusted mode.
///
/// **Untrusted mode** (`untrusted: true`, `temper check --untrusted`, for CI on pull requests):
/// the *recipe's repository* is the nearest ancestor directory of the root recipe that contains a
/// `.git` (directory or file), else the root recipe's own directory. Every path the recipe names
/// — each `include`, and each `Path` parameter after rebasing onto the root recipe's directory
/// (for a glob: its non-glob prefix) — must resolve, lexically and then with symlinks followed,
/// inside that repository; for a directory or a glob every symlink below it must too. Anything
/// else (an absolute path outside, `../..`, a symlink leading out) is a located error, and the
/// outside path is never opened, read or listed: it is decided on the written text where that
/// suffices, else by resolving the path (one `stat` per component), nothing more.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Most sweep variants (see the module table).
    pub max_variants: usize,
    /// Most instance ids the expansion may hold (see the module table).
    pub max_instances: usize,
    /// Deepest nesting of `{ }` blocks.
    pub max_depth: usize,
    /// Largest single recipe file, in bytes.
    pub max_file_bytes: usize,
    /// Largest total of the root file and its includes, in bytes.
    pub max_total_bytes: usize,
    /// Most KDL nodes (any depth, all files, after `repeat` expansion).
    pub max_nodes: usize,
    /// Refuse every path outside the recipe's repository (type docs).
    pub untrusted: bool,
    /// CUDA devices of the machine that will run the recipe, when the caller knows it: a
    /// `device "cuda:N"` it does not have is then a validation error with its location
    /// (`None`: only the syntax is checked).
    pub cuda_devices: Option<usize>,
    /// CPU cores of the machine that will run the recipe, when the caller knows it. With
    /// `cuda_devices`, what kinds' recipe-wide checks see as [`crate::Machine`] (e.g. `ranks`
    /// against the cores or GPUs a node's ranks would need).
    pub cpu_cores: Option<usize>,
    /// Memory of each of those CUDA devices in MiB, when known: a training node whose estimated
    /// memory per rank exceeds it gets a warning (`kinds::memory`).
    pub cuda_memory_mib: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_variants: DEFAULT_MAX_VARIANTS,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_depth: 64,
            max_file_bytes: 1 << 20,
            max_total_bytes: 1 << 20,
            max_nodes: 10_000,
            untrusted: false,
            cuda_devices: None,
            cpu_cores: None,
            cuda_memory_mib: None,
        }
    }
}

impl LoadOptions {
    /// What this load knows of the machine that will run the recipe.
    pub fn machine(&self) -> crate::Machine {
        crate::Machine {
            cpu_cores: self.cpu_cores,
            cuda_devices: self.cuda_devices,
            cuda_memory_mib: self.cuda_memory_mib,
        }
    }

    /// Sets the variant limit and scales the instance limit by the same factor (never below its
    /// default), so `--max-variants N` is the one knob a user needs for a bigger sweep.
    pub fn with_max_variants(mut self, n: usize) -> Self {
        self.max_variants = n;
        let scaled = (n as u128 * DEFAULT_MAX_INSTANCES as u128 / DEFAULT_MAX_VARIANTS as u128)
            .min(usize::MAX as u128) as usize;
        self.max_instances = scaled.max(DEFAULT_MAX_INSTANCES);
        self
    }
}

/// A byte count for messages: `1 MiB`, `1.5 MiB`, `512 KiB`, `100 B`.
pub(crate) fn bytes(n: usize) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    let (v, unit) = if f >= K * K {
        (f / (K * K), "MiB")
    } else if f >= K {
        (f / K, "KiB")
    } else {
        return format!("{n} B");
    };
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// A count with thousands separators: `1,000,000`.
pub fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Characters a name or id may not contain: Unicode control characters (C0, DEL, C1) and the
/// invisible formatting characters that reorder or hide text (bidi controls, zero-width marks,
/// BOM).
pub(crate) fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The first forbidden character of `s`, escaped for a message (`\u{0}`).
pub(crate) fn forbidden_char(s: &str) -> Option<String> {
    s.chars()
        .find(|c| is_forbidden_char(*c))
        .map(|c| c.escape_unicode().to_string())
}

/// `s` with forbidden characters escaped, for echoing user text in a message.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if is_forbidden_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_and_hygiene() {
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(count(999), "999");
        assert_eq!(forbidden_char("a\0b").as_deref(), Some("\\u{0}"));
        assert_eq!(forbidden_char("a\u{202e}b").as_deref(), Some("\\u{202e}"));
        assert_eq!(forbidden_char("naïve-名前"), None);
        assert_eq!(printable("a\u{1b}[31m"), "a\\u{1b}[31m");
        let o = LoadOptions::default().with_max_variants(100_000);
        assert_eq!(o.max_instances, 10_000_000);
        let o = LoadOptions::default().with_max_variants(5);
        assert_eq!(o.max_instances, DEFAULT_MAX_INSTANCES);
        let o = LoadOptions::default().with_max_variants(usize::MAX);
        assert_eq!(o.max_variants, usize::MAX);
    }
}
