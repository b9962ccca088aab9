//! Compiles the pod sandbox's `pause` program (src/node/pause.c) into a static
//! binary that the node agent embeds and turns into the rk/pause image, so a
//! node never pulls its sandbox image.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/node/pause.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("pause");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&compiler)
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler} to build the pause program: {e}"));
    assert!(status.success(), "{compiler} -static failed to build {source} (a static libc, e.g. libc6-dev, is required)");
}
