//! `temper kinds`: the registered node kinds with their parameters, types, defaults and docs,
//! generated from the schemas.
use super::Global;
use anyhow::Result;
use clap::Args;
use dsl::{Default, KindSchema, ParamSpec, ParamType};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct KindsArgs {
    /// Only this kind.
    pub kind: Option<String>,
}

pub fn run(_g: &Global, a: KindsArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let mut any = false;
    for k in kinds.registry.kinds() {
        if a.kind.as_deref().is_some_and(|n| n != k.name) {
            continue;
        }
        any = true;
        print!("{}", describe(k));
    }
    if !any {
        return Err(
            crate::text::UsageError(format!("no kind `{}`", a.kind.unwrap_or_default())).into(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Type as written in docs: `int >= 1`, `one of a|b`, `ref to model`, `list of str`.
pub fn type_name(t: &ParamType) -> String {
    let range = |lo: Option<String>, hi: Option<String>| match (lo, hi) {
        (Some(l), Some(h)) => format!(" in [{l}, {h}]"),
        (Some(l), None) => format!(" >= {l}"),
        (None, Some(h)) => format!(" <= {h}"),
        (None, None) => String::new(),
    };
    match t {
        ParamType::Bool => "bool".into(),
        ParamType::Int { min, max } => {
            format!(
                "int{}",
                range(min.map(|v| v.to_string()), max.map(|v| v.to_string()))
            )
        }
        ParamType::Float { min, max } => {
            format!(
                "float{}",
                range(min.map(|v| v.to_string()), max.map(|v| v.to_string()))
            )
        }
        ParamType::Str => "str".into(),
        ParamType::Enum(vs) => format!("one of {}", vs.join("|")),
        ParamType::Path => "path".into(),
        ParamType::Device => format!("device ({})", dsl::device::Device::SYNTAX),
        ParamType::Ref([]) => "ref".into(),
        ParamType::Ref(ks) => format!("ref to {}", ks.join("|")),
        ParamType::List(t) => format!("list of {}", type_name(t)),
        ParamType::Record { fields, .. } => format!(
            "record {{{}}}",
            fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn param_line(p: &ParamSpec) -> String {
    let default = match &p.default {
        Default::Required => "required".to_string(),
        Default::Optional => "optional".to_string(),
        Default::Value(v) => format!("default {}", v.display()),
    };
    let mut flags = Vec::new();
    if p.repeated {
        flags.push("repeated");
    }
    if !p.semantic {
        flags.push("not in key");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(", "))
    };
    format!(
        "  {:<18} {:<28} {}{}{}\n",
        p.name,
        type_name(&p.ty),
        default,
        flags,
        if p.doc.is_empty() {
            String::new()
        } else {
            format!(" — {}", p.doc)
        }
    )
}

/// The description of one kind.
pub fn describe(k: &KindSchema) -> String {
    let mut s = format!(
        "{} (version {}, produces {})\n",
        k.name, k.version, k.produces
    );
    if !k.doc.is_empty() {
        s += &format!("  {}\n", k.doc);
    }
    for p in &k.params {
        s += &param_line(p);
    }
    s.push('\n');
    s
}
