// Embeds an rpath to the LibTorch that torch-sys linked (so binaries and tests run without LD_LIBRARY_PATH),
// and with the `cuda` feature keeps libtorch.so (which pulls libtorch_cuda.so) as a needed library: rustc links
// with --as-needed and would otherwise drop it, leaving CUDA unavailable (tch-rs issue #980).
// Also records the LibTorch version and the CUDA it was built for (from the torch wheel's version.py beside
// the library folder) for `inspect3d --version`.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut libtorch = String::from("unknown");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        let version_py = std::path::Path::new(&dir).with_file_name("version.py");
        if let Ok(text) = std::fs::read_to_string(&version_py) {
            println!("cargo:rerun-if-changed={}", version_py.display());
            let value = |key: &str| {
                text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split('\'').nth(1)).map(str::to_string)
            };
            libtorch = match (value("__version__"), value("cuda")) {
                (Some(v), Some(cuda)) => format!("{v} (built for CUDA {cuda})"),
                (Some(v), None) => format!("{v} (CPU build)"),
                _ => libtorch,
            };
        }
    }
    println!("cargo:rustc-env=INSPECT3D_LIBTORCH={libtorch}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
