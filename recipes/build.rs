//! Makes this package's binaries — the `temper-worker` process and the test executables — find
//! libtorch without LD_LIBRARY_PATH (an rpath to the libtorch torch-sys built against) and keeps
//! `libtorch_cuda` linked despite `--as-needed`, so CUDA is available whenever the libtorch has
//! it. (`rustc-link-arg` covers every linked target of the package, `-bins` only would leave the
//! tests without the rpath.)
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let dir = std::path::Path::new(&lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        for name in ["torch", "torch_cuda", "c10_cuda"] {
            if dir.join(format!("lib{name}.so")).exists() {
                println!("cargo:rustc-link-arg=-l{name}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
