use sonde::config::{Command, ConfigCommand};

fn main() -> std::process::ExitCode {
    sonde::heap::single_arena();
    let cli = match sonde::config::load::cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("sonde: error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => sonde::run::run(args),
        Command::NullProbe(args) => sonde::run::null_probe(args),
        Command::Demo(args) => sonde::demo::demo(args),
        Command::DemoService(args) => sonde::demo::service::run(args),
        Command::CheckKernel => sonde::run::check_kernel(),
        Command::CheckBinary { path } => sonde::run::check_binary(&path),
        Command::Config(ConfigCommand::Check { file }) => {
            sonde::config::load::check(&file).map(|effective| print!("{effective}"))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
