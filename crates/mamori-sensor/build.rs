//! Compiles the BPF programs (CO-RE C) and generates their Rust skeletons.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let (multiarch, target_arch) = match arch.as_str() {
        "aarch64" => ("aarch64-linux-gnu", "arm64"),
        _ => ("x86_64-linux-gnu", "x86"),
    };
    if std::process::Command::new("clang")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "building the Mamori sensor needs clang and libelf: \
             apt-get install -y clang libelf-dev zlib1g-dev pkg-config make"
        );
    }
    let src = "src/bpf/sensor.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    libbpf_cargo::SkeletonBuilder::new()
        .source(src)
        .clang_args([
            format!("-I/usr/include/{multiarch}"),
            format!("-D__TARGET_ARCH_{target_arch}"),
            "-O2".into(),
            "-g".into(),
            "-Wall".into(),
        ])
        .build_and_generate(out.join("sensor.skel.rs"))
        .unwrap_or_else(|e| panic!("compiling {src}: {e:#}"));
}
