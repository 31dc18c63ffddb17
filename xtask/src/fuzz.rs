//! Fuzzing the HTTP and traceparent parsers (agent/fuzz, cargo-fuzz + libFuzzer).
//!
//! Three input folders per target, all under agent/fuzz/:
//! - `seeds/<target>/`: hand-made inputs named after what they hold (real wire captures, edge
//!   cases); never rewritten.
//! - `corpus/<target>/`: the kept corpus, what earlier long runs found, minimised (`cargo xtask
//!   fuzz` rewrites it; commit the change).
//! - `target/fuzz/<target>/` at the workspace root: scratch, where a run writes what it finds, so
//!   that `cargo xtask test` never dirties the kept corpus.
//!
//! A crash stops the run with libFuzzer's report; the input is saved under agent/fuzz/artifacts/.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::sh;

pub const TARGETS: &[&str] = &["http_connection", "traceparent", "http2"];

fn fuzz_dir() -> PathBuf {
    sh::root().join("agent/fuzz")
}

fn seeds(target: &str) -> PathBuf {
    fuzz_dir().join("seeds").join(target)
}

fn kept(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

fn scratch(target: &str) -> PathBuf {
    sh::root().join("target/fuzz").join(target)
}

fn cargo_fuzz(target: &str, corpora: &[&Path]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir()).args(["+nightly", "fuzz", "run", target]).args(corpora);
    cmd
}

/// Runs each target for `time`: new inputs go to scratch; the kept corpus and the seeds are read.
pub fn run(targets: &[&str], time: Duration) -> anyhow::Result<()> {
    for target in targets {
        let (scratch, kept) = (scratch(target), kept(target));
        for dir in [&scratch, &kept] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        sh::run(
            cargo_fuzz(target, &[&scratch, &kept, &seeds(target)])
                .arg("--")
                .arg(format!("-max_total_time={}", time.as_secs().max(1))),
        )?;
    }
    Ok(())
}

/// `cargo xtask fuzz`: a long run, then what it found is merged into the kept corpus, minimised
/// (libFuzzer's `-merge=1`: the fewest inputs that keep every feature reached).
pub fn long(targets: &[&str], time: Duration) -> anyhow::Result<()> {
    run(targets, time)?;
    for target in targets {
        let merged = sh::root().join("target/fuzz-merged").join(target);
        if merged.exists() {
            std::fs::remove_dir_all(&merged).with_context(|| format!("clearing {}", merged.display()))?;
        }
        std::fs::create_dir_all(&merged).with_context(|| format!("creating {}", merged.display()))?;
        let (kept, scratch) = (kept(target), scratch(target));
        sh::run(cargo_fuzz(target, &[&merged, &kept, &scratch]).args(["--", "-merge=1"]))?;
        let before = count(&kept)?;
        std::fs::remove_dir_all(&kept).with_context(|| format!("clearing {}", kept.display()))?;
        std::fs::rename(&merged, &kept).with_context(|| format!("moving {} into place", merged.display()))?;
        std::fs::remove_dir_all(&scratch).with_context(|| format!("clearing {}", scratch.display()))?;
        eprintln!("{target}: kept corpus {before} → {} inputs ({})", count(&kept)?, kept.display());
    }
    Ok(())
}

fn count(dir: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.count())
}
