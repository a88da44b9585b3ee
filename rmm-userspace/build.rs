//! Embeds the eBPF object built by `cargo xtask build-ebpf`. When it has not been built (plain
//! `cargo check`/`clippy`/unit tests without bpf-linker), an empty placeholder is embedded and
//! the daemon refuses to start with a message saying how to build it.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = match env::var_os("RMM_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => manifest.join("../target/ebpf/bpfel-unknown-none/release/rmm-ebpf"),
    };
    println!("cargo::rerun-if-env-changed=RMM_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("rmm-ebpf");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write eBPF object to OUT_DIR"),
        Err(_) => {
            println!(
                "cargo::warning=eBPF object {} not found: embedding an empty placeholder (run `cargo xtask build`)",
                object.display()
            );
            fs::write(&out, []).expect("write placeholder to OUT_DIR");
        }
    }
}
