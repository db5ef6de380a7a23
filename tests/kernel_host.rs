//! Device helpers whose logic is pure bit and integer arithmetic, compiled as host C++ (their
//! headers carry shims for the few intrinsics they use) and checked here against their
//! definitions, so a mistake in them fails CI instead of waiting for a GPU run. Needs a C++
//! compiler (`$CXX`, else `c++`), as the machines building this crate have.

mod common;

/// Compiles tests/host_kernels/`name`.cpp with kernels/ on the include path and runs it: its
/// stdout, after asserting it exited 0.
fn run_host_check(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = common::repo().join(format!("tests/host_kernels/{name}.cpp"));
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(common::repo().join("kernels"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cxx} (a C++ compiler, for the host checks): {e}"));
    assert!(
        out.status.success(),
        "{cxx} {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::process::Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{name}: {stdout}");
    stdout
}

/// kernels/int8_bf16.cuh (every int8 weight and int8 K/V element the kernels widen goes
/// through it): bit for bit the bf16 of (float)(signed char)b, for every byte value in every
/// position of a word, every pair of positions over all their values, and random words.
#[test]
fn int8_to_bf16_bit_arithmetic_is_exact() {
    let out = run_host_check("int8_bf16_check");
    // 6 pairs x 5 fills x 65536 words + 1e6 random words, 4 bytes each
    assert_eq!(out.trim(), "ok 11864320", "{out}");
}
