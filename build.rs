//! Build script. The CPU backend needs nothing here. With `--features cuda`, this is where every
//! `kernels/*.cu` is compiled to PTX and sm_80/sm_90 cubin (see ../shared/docs/CUDA-TOOLCHAIN.md);
//! that backend is not written yet, so the feature fails the build with a clear message instead of
//! producing a binary that pretends to have one.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=JOBX_CUDA_ARCHS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        panic!(
            "the `cuda` feature is not implemented yet: kernels/ holds no CUDA kernels so far. \
             Build without `--features cuda` for the CPU backend."
        );
    }
}
