//! `cargo xtask <task>`: sonde's developer tasks. Each task sets up what it needs first, so that a
//! fresh machine goes from clone to tracing (or to a full test run) with one command.

mod bench;
mod build;
mod run;
mod setup;
mod sh;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker, cargo-fuzz, Debian and PyPI packages.
    Setup,
    /// Build target/release/sonde with the eBPF object embedded.
    Build,
    /// Set up, build, and run `sonde run <ARGS>` (root needed).
    Run {
        /// Arguments for `sonde run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run `sonde demo <ARGS>`: four local services, one slow, traced (root needed).
    Demo {
        /// Arguments for `sonde demo`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every check: fmt, clippy, unit tests, privileged integration tests, fuzzing.
    Test {
        /// Seconds each fuzz target runs.
        #[arg(long, default_value_t = 15)]
        fuzz_seconds: u32,
    },
    /// Set up, build, and measure sonde's overhead on nginx (root needed); see docs/performance.md.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::toolchain()?;
            build::release().map(|_| ())
        }
        Task::Run { args } => run::run("run", &args),
        Task::Demo { args } => run::run("demo", &args),
        Task::Test { fuzz_seconds } => test::all(fuzz_seconds),
        Task::Bench(opts) => bench::main(&opts),
    }
}
