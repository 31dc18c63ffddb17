//! Rebuild when bpf-linker changes (aya-template does the same): a new linker can change the object.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
