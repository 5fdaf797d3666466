// Embeds an rpath to the LibTorch that torch-sys linked (so binaries and tests run without LD_LIBRARY_PATH),
// and with the `cuda` feature keeps libtorch.so (which pulls libtorch_cuda.so) as a needed library: rustc links
// with --as-needed and would otherwise drop it, leaving CUDA unavailable (tch-rs issue #980).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
