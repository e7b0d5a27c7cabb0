//! Checking one KDL value against a [`ParamType`] and converting it to a [`Value`].
//!
//! Rules: `Int` rejects floats; `Float` accepts integers (→ `Value::Float`); `Bool` needs
//! `#true`/`#false`; `Enum` takes one of its words; ranges are inclusive; a relative `Path` is
//! rebased onto the root recipe's directory (`rel_dir/path`, lexically normalised; absolute
//! paths are kept) and, when it has no glob character (`*?[`), must exist; a `Ref` becomes
//! `Value::Ref(name)` and is resolved later (the caller records where it was written).

use crate::parse::{normalize, show_path};
use crate::schema::ParamType;
use crate::suggest;
use crate::untrusted::Repo;
use crate::value::Value;
use kdl::KdlValue;
use std::path::Path;

/// Why a value was rejected: message, label at the value, optional hint.
#[derive(Debug)]
pub(crate) struct TypeError {
    pub message: String,
    pub label: String,
    pub hint: Option<String>,
}

fn err(message: String, label: &str, hint: Option<String>) -> TypeError {
    TypeError {
        message,
        label: label.into(),
        hint,
    }
}

/// Human name of a type for messages.
pub(crate) fn type_name(ty: &ParamType) -> String {
    match ty {
        ParamType::Bool => "a boolean (#true or #false)".into(),
        ParamType::Int { .. } => "an integer".into(),
        ParamType::Float { .. } => "a number".into(),
        ParamType::Str => "a string".into(),
        ParamType::Enum(words) => format!("one of {}", suggest::list(words)),
        ParamType::Path => "a path".into(),
        ParamType::Device => format!("a device ({})", crate::device::Device::SYNTAX),
        ParamType::Ref([]) => "a node name".into(),
        ParamType::Ref(kinds) => format!("the name of a {} node", kinds.join(" or ")),
        ParamType::List(inner) => format!("a list of {}", type_name(inner)),
        ParamType::Record { .. } => "a child node".into(),
    }
}

fn found(v: &KdlValue) -> String {
    match v {
        KdlValue::String(s) => format!("string \"{s}\""),
        KdlValue::Integer(i) => format!("integer {i}"),
        KdlValue::Float(f) => format!("number {f:?}"),
        KdlValue::Bool(b) => format!("#{b}"),
        KdlValue::Null => "#null".into(),
    }
}

/// Where paths are resolved: the root recipe directory and the writing file's directory
/// relative to it.
pub(crate) struct PathCtx<'a> {
    pub root_dir: &'a Path,
    pub rel_dir: &'a Path,
    /// Name of the file that wrote the value (for hints).
    pub file_name: &'a str,
    /// In untrusted mode, the repository every path must stay in (checked before the path is
    /// touched; see [`crate::LoadOptions`]).
    pub untrusted: Option<&'a Repo>,
    /// CUDA devices on this machine, when known: `device "cuda:N"` beyond them is an error.
    pub cuda_devices: Option<usize>,
}

/// Converts a scalar value (any type but `List`/`Record`, which the caller unpacks).
/// `param` names the parameter for messages.
pub(crate) fn convert(
    param: &str,
    v: &KdlValue,
    ty: &ParamType,
    paths: &PathCtx<'_>,
) -> Result<Value, TypeError> {
    let mismatch = |hint: Option<String>| {
        Err(err(
            format!("`{param}` expects {}, found {}", type_name(ty), found(v)),
            "wrong type",
            hint,
        ))
    };
    match (ty, v) {
        (ParamType::Bool, KdlValue::Bool(b)) => Ok(Value::Bool(*b)),
        (ParamType::Bool, KdlValue::String(s)) => {
            let hint = match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Some("write `#true` (KDL 2.0 booleans start with `#`)"),
                "false" | "no" | "off" => Some("write `#false` (KDL 2.0 booleans start with `#`)"),
                _ => Some("write `#true` or `#false`"),
            };
            mismatch(hint.map(String::from))
        }
        (ParamType::Int { min, max }, KdlValue::Integer(i)) => {
            let Ok(i) = i64::try_from(*i) else {
                return Err(err(
                    format!("`{param}`: integer {i} is out of range"),
                    "too large",
                    None,
                ));
            };
            check_range(
                param,
                i as f64,
                min.map(|m| m as f64),
                max.map(|m| m as f64),
            )?;
            Ok(Value::Int(i))
        }
        (ParamType::Int { .. }, KdlValue::Float(f)) => mismatch(Some(if f.fract() == 0.0 {
            format!("write it without a decimal point: `{}`", *f as i64)
        } else {
            "this parameter takes whole numbers only".into()
        })),
        (ParamType::Float { min, max }, KdlValue::Integer(i)) => {
            let f = *i as f64;
            check_range(param, f, *min, *max)?;
            Ok(Value::Float(f))
        }
        (ParamType::Float { min, max }, KdlValue::Float(f)) => {
            if !f.is_finite() {
                return Err(err(
                    format!("`{param}` must be a finite number, found {f}"),
                    "not finite",
                    None,
                ));
            }
            check_range(param, *f, *min, *max)?;
            Ok(Value::Float(*f))
        }
        (ParamType::Str, KdlValue::String(s)) => Ok(Value::Str(s.clone())),
        (ParamType::Str, KdlValue::Integer(_) | KdlValue::Float(_)) => {
            mismatch(Some("quote it to make it a string".into()))
        }
        (ParamType::Enum(words), KdlValue::String(s)) => {
            if words.contains(&s.as_str()) {
                Ok(Value::Str(s.clone()))
            } else {
                let mut hint = suggest::hint(s, words).unwrap_or_default();
                if !hint.is_empty() {
                    hint.push(' ');
                }
                hint.push_str(&format!("allowed: {}", suggest::list(words)));
                Err(err(
                    format!("`{param}`: unknown value `{s}`"),
                    "not allowed here",
                    Some(hint),
                ))
            }
        }
        (ParamType::Path, KdlValue::String(s)) => path_value(param, s, paths),
        (ParamType::Device, KdlValue::String(s)) => device_value(param, s, paths.cuda_devices),
        (ParamType::Ref(_), KdlValue::String(s)) => Ok(Value::Ref(s.clone())),
        (ParamType::List(_) | ParamType::Record { .. }, _) => Err(err(
            format!("`{param}` expects {}", type_name(ty)),
            "wrong form",
            Some(format!("write it as a child node: `{param} …`")),
        )),
        (ParamType::Enum(words), _) => mismatch(Some(format!("allowed: {}", suggest::list(words)))),
        _ => mismatch(None),
    }
}

/// A `device` value: its syntax, then (when the machine is known) whether it exists here.
fn device_value(param: &str, s: &str, cuda_devices: Option<usize>) -> Result<Value, TypeError> {
    use crate::device::Device;
    let Some(d) = Device::parse(s) else {
        let words = ["auto", "cpu", "cuda"];
        let mut hint = suggest::hint(s, &words).unwrap_or_default();
        if !hint.is_empty() {
            hint.push(' ');
        }
        hint.push_str(&format!("allowed: {}", Device::SYNTAX));
        return Err(err(
            format!("`{param}`: unknown device `{s}`"),
            "not a device",
            Some(hint),
        ));
    };
    if let Some(why) = cuda_devices.and_then(|n| d.unavailable(n)) {
        return Err(err(
            format!("`{param}`: {why}"),
            "not on this machine",
            Some("use `device auto` (a free GPU when there is one, else the CPU) or `cpu`".into()),
        ));
    }
    Ok(Value::Str(d.to_string()))
}

fn check_range(param: &str, x: f64, min: Option<f64>, max: Option<f64>) -> Result<(), TypeError> {
    let below = min.is_some_and(|m| x < m);
    let above = max.is_some_and(|m| x > m);
    if below || above {
        let range = match (min, max) {
            (Some(a), Some(b)) => format!("between {a} and {b}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) => format!("at most {b}"),
            (None, None) => String::new(),
        };
        return Err(err(
            format!("`{param}` must be {range}, found {x}"),
            "out of range",
            None,
        ));
    }
    Ok(())
}

fn path_value(param: &str, s: &str, paths: &PathCtx<'_>) -> Result<Value, TypeError> {
    if s.is_empty() {
        return Err(err(format!("`{param}`: empty path"), "empty", None));
    }
    let p = Path::new(s);
    let rebased = if p.is_absolute() {
        p.to_path_buf()
    } else {
        normalize(&paths.rel_dir.join(p))
    };
    let on_disk = if rebased.is_absolute() {
        rebased.clone()
    } else {
        paths.root_dir.join(&rebased)
    };
    if let Some(repo) = paths.untrusted {
        if let Err(why) = repo.check(&rebased, crate::files::is_glob(s)) {
            let (message, label, hint) = repo.explain(&format!("`{param}`"), s, &why);
            return Err(TypeError {
                message,
                label,
                hint: Some(hint),
            });
        }
    }
    if !crate::files::is_glob(s) && !on_disk.exists() {
        return Err(err(
            format!("`{param}`: file not found: {s}"),
            "no such file or directory",
            Some(if paths.file_name == "--set" {
                "paths in --set are relative to the root recipe's directory".to_string()
            } else {
                format!(
                    "relative paths are resolved against `{}`, the directory of the file \
                     that writes them",
                    show_path(Path::new(paths.file_name).parent().unwrap_or(Path::new("")))
                )
            }),
        ));
    }
    let shown = show_path(&rebased);
    Ok(Value::Path(shown))
}
