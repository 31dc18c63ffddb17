//! `cargo xtask <task>`: sonde's developer tasks. Each task sets up what it needs first, so that a
//! fresh machine goes from clone to tracing (or to a full test run) with one command.

mod bench;
mod build;
mod fuzz;
mod kernels;
mod run;
mod setup;
mod sh;
mod soak;
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
    /// Fuzz the HTTP and traceparent parsers for a while, then merge what was found into the kept
    /// corpus (agent/fuzz/corpus/, minimised; commit it). A crash stops with libFuzzer's report.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Only this target (default: all of them).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Set up, build, and measure sonde's overhead on nginx (root needed); see docs/performance.md.
    Bench(bench::Options),
    /// Set up, build, and trace nginx under steady mixed traffic for a long time (30 min by
    /// default), sampling sonde's RSS, kernel map sizes and own metrics; fails when they grow
    /// (root needed). See docs/reliability.md.
    Soak(soak::Options),
    /// Set up and run the kernel matrix: the matrix tests on Debian's 5.10, 6.1 and 6.12 kernels
    /// under QEMU and on the running kernel, printed as a table (root needed). See docs/kernels.md.
    Kernels(kernels::Options),
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
        Task::Kernels(options) => kernels::run(&options),
        Task::Test { fuzz_seconds } => test::all(fuzz_seconds),
        Task::Fuzz { minutes, target } => {
            setup::all()?;
            let targets: Vec<&str> = match &target {
                Some(t) => vec![t.as_str()],
                None => fuzz::TARGETS.to_vec(),
            };
            fuzz::long(&targets, std::time::Duration::from_secs_f64(minutes.max(0.0) * 60.0))
        }
        Task::Bench(opts) => bench::main(&opts),
        Task::Soak(opts) => soak::main(&opts),
    }
}
