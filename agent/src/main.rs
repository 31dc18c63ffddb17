use clap::Parser as _;
use sonde::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => sonde::run::run(args),
        Command::NullProbe(args) => sonde::run::null_probe(args),
        Command::Demo(args) => sonde::demo::demo(args),
        Command::DemoService(args) => sonde::demo::service::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
