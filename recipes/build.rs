//! Makes this package's binaries — the `temper-worker` process and the test executables — find
//! libtorch without LD_LIBRARY_PATH (an rpath to the libtorch torch-sys built against) and keeps
//! `libtorch_cuda` linked despite `--as-needed`, so CUDA is available whenever the libtorch has
//! it. (`rustc-link-arg` covers every linked target of the package, `-bins` only would leave the
//! tests without the rpath.)
//!
//! Also compiles the C++ shim over libtorch ops tch does not bind — `csrc/fused.cpp` (the fused
//! optimizer, `src/trainer/fused.rs`), `csrc/checkpoint.cpp` (activation checkpointing,
//! `src/arch/checkpoint.rs`), `csrc/varlen.cpp` (varlen flash attention, `src/arch/varlen.rs`)
//! and `csrc/zero.cpp` (storages freed and reallocated, gradients assigned: `src/trainer/zero.rs`)
//! — against the headers of that same libtorch, with its `_GLIBCXX_USE_CXX11_ABI`: the headers are
//! `<root>/include` and `<root>/include/torch/csrc/api/include` where `<root>` is the parent of
//! torch-sys's `DEP_TCH_LIBTORCH_LIB` (a wheel's `torch/` or a libtorch directory; torch-sys's
//! own `LIBTORCH_INCLUDE` overrides `<root>` as it does there); the ABI is the wheel's
//! `torch._C._GLIBCXX_USE_CXX11_ABI` under `LIBTORCH_USE_PYTORCH`, else `LIBTORCH_CXX11_ABI`,
//! else 1 — the value torch-sys compiled its own C++ with.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (temper builds on Linux and macOS)");
    let dir = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for name in ["torch", "torch_cuda", "c10_cuda"] {
        if dir.join(format!("lib{name}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{name}");
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    compile_shim(dir);
}

/// The shim's sources.
const SHIM: [&str; 4] = [
    "csrc/fused.cpp",
    "csrc/checkpoint.cpp",
    "csrc/varlen.cpp",
    "csrc/zero.cpp",
];

fn compile_shim(lib: &Path) {
    for f in SHIM {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=csrc/shim.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    let root = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(p) => PathBuf::from(p),
        Err(_) => lib
            .parent()
            .unwrap_or_else(|| panic!("libtorch lib dir {} has no parent", lib.display()))
            .to_path_buf(),
    };
    let include = root.join("include");
    assert!(
        include.join("ATen/ops/_fused_adamw.h").exists(),
        "no libtorch headers with `_fused_adamw_` under {} (torch ≥ 2.4 is needed)",
        include.display()
    );
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi().as_str())
        .files(SHIM)
        .compile("temper_shim");
}

/// `"1"` or `"0"`, as torch-sys decides it (see the module docs).
fn cxx11_abi() -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_none() {
        return std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    }
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python} to read torch's C++ ABI: {e}"));
    let abi = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && (abi == "0" || abi == "1"),
        "{python} did not print torch._C._GLIBCXX_USE_CXX11_ABI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    abi
}
