//! What a process's executable says about how it uses its threads. A Go program runs goroutines
//! on a few threads it shares between them: the thread that read a request is not the one that
//! works for it, so "the request this thread read" names nobody's parent there (`link/`).

use std::{fs::File, path::Path};

use object::{Object as _, ReadCache};

/// Whether the executable at `path` is a Go program: it has the `.go.buildinfo` section, which the
/// Go linker writes into every binary since Go 1.13, stripped (`-s -w`) or not. Only the ELF
/// headers and the section names are read, not the whole file.
pub fn is_go(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return false;
    };
    elf.section_by_name(".go.buildinfo").is_some()
}

#[cfg(test)]
mod tests {
    use super::is_go;

    #[test]
    fn a_rust_binary_and_a_missing_file_are_not_go() {
        assert!(!is_go(&std::env::current_exe().expect("the test binary")));
        assert!(!is_go(std::path::Path::new("/nonexistent/binary")));
    }

    #[test]
    fn the_go_toolchain_is_go() {
        // Installed by `cargo xtask setup` (the Go services of the integration tests).
        let go = std::path::Path::new("/usr/lib/go-1.19/bin/go");
        if !go.exists() {
            eprintln!("SKIPPED: {} is not installed (cargo xtask setup installs it)", go.display());
            return;
        }
        assert!(is_go(go));
    }
}
