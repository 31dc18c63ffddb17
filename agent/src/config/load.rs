//! Flags, environment and configuration file, put together (precedence in `file`'s doc), and
//! `sonde config check`.

use std::{ffi::OsString, fmt::Write as _, path::Path};

use anyhow::Context as _;
use clap::{
    ArgAction, ArgMatches, CommandFactory as _, FromArgMatches as _, ValueEnum as _, parser::ValueSource,
};

use super::{Cli, RunArgs, Settings, file};

/// The command line of this process, with the configuration file of `run` or `demo` (if one is
/// named) filled in under flags and environment. Command-line errors print clap's usage and exit,
/// as `Cli::parse` does; a bad value of a SONDE_* variable is an error naming the variable.
pub fn cli() -> anyhow::Result<Cli> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = match Cli::command().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(e) => match from_variable(&e, &argv) {
            Some(message) => anyhow::bail!(message),
            None => e.exit(),
        },
    };
    let extra = match matches.subcommand() {
        Some(("run" | "demo", sub)) => file_args(sub)?,
        _ => Vec::new(),
    };
    let matches = if extra.is_empty() {
        matches
    } else {
        // The file's values were each checked on their own; together with the command line they
        // parse, since keys given there were left out.
        Cli::command()
            .try_get_matches_from(argv.into_iter().chain(extra))
            .context("applying the config file")?
    };
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The arguments the configuration file named in `matches` (`--config`/SONDE_CONFIG) adds.
fn file_args(matches: &ArgMatches) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else { return Ok(Vec::new()) };
    let run = Cli::command().find_subcommand("run").expect("a run subcommand").clone();
    let entries = file::read(path)?;
    let env = |key: &str| std::env::var(key).ok();
    Ok(file::args_for(path, &run, &entries, |id| file::given_outside_file(matches, id), env)?)
}

/// A clap error about a value that came from a SONDE_* variable, not from the command line, said
/// of that variable (clap names the flag, which the user did not write).
fn from_variable(e: &clap::Error, argv: &[OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    // `--print <MODE>`
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let on_command_line = argv
        .iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')));
    if on_command_line {
        return None;
    }
    let command = Cli::command();
    let var = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_owned();
    std::env::var_os(&var)?;
    Some(format!("environment variable {var}: {}", file::clap_message(e)))
}

/// `sonde config check FILE`: the effective configuration of `sonde run --config FILE` in this
/// environment, as YAML with each value's source in a comment. Resolved as `sonde run` resolves
/// it ([`Settings::resolve`]), so that it fails on whatever `run` would.
pub fn check(path: &Path) -> anyhow::Result<String> {
    let run = Cli::command().find_subcommand("run").expect("a run subcommand").clone();
    let base: Vec<OsString> = vec!["run".into()];
    // The environment applies as it would to `sonde run`; SONDE_CONFIG does not, FILE is named.
    let matches = match run.clone().try_get_matches_from(&base) {
        Ok(matches) => matches,
        Err(e) => match from_variable(&e, &base) {
            Some(message) => anyhow::bail!(message),
            None => return Err(anyhow::Error::from(e).context("reading SONDE_* variables")),
        },
    };
    let entries = file::read(path)?;
    let env = |key: &str| std::env::var(key).ok();
    let extra = file::args_for(path, &run, &entries, |id| file::given_outside_file(&matches, id), env)?;
    let from_file: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let matches = run.clone().try_get_matches_from(base.into_iter().chain(extra))?;
    let settings = Settings::resolve(&RunArgs::from_arg_matches(&matches)?, env)?;

    let mut out = format!("# sonde run --config {}: the configuration in effect\n", path.display());
    for arg in run.get_arguments().filter(|a| !a.is_hide_set()) {
        let (Some(key), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if file::NOT_KEYS.contains(&key) {
            continue;
        }
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => {
                format!("environment {}", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default())
            }
            Some(ValueSource::CommandLine) if from_file.contains(&key) => "file".to_owned(),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => "unset".to_owned(),
        };
        let shown = match (arg.get_action(), values.as_slice()) {
            (ArgAction::Append, values) => {
                format!("[{}]", values.iter().map(|v| quoted(v)).collect::<Vec<_>>().join(", "))
            }
            (ArgAction::SetTrue, [v]) => v.clone(),
            (_, [v]) => quoted(v),
            _ => String::new(),
        };
        let _ = writeln!(out, "{key}: {shown}  # {source}");
    }
    let otel: Vec<String> = file::OTEL_ENV
        .iter()
        .flat_map(|(_, vars)| vars.iter())
        .filter_map(|var| std::env::var(var).ok().map(|v| format!("{var}={v}")))
        .collect();
    if !otel.is_empty() {
        let _ = writeln!(out, "# also in effect from the environment: {}", otel.join(" "));
    }
    let otlp = |config: Option<&crate::export::OtlpConfig>| {
        config.map_or_else(|| "none".to_owned(), |c| format!("{} {}", c.protocol, c.endpoint))
    };
    let print = settings.print.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    let _ = writeln!(
        out,
        "# resolved: spans to {}; metrics to {} every {}; print {print}",
        otlp(settings.otlp.as_ref()),
        otlp(settings.otlp_metrics.as_ref()),
        humantime::format_duration(settings.metrics_interval),
    );
    Ok(out)
}

/// A YAML scalar that reads back as the same string.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c))
        && !value.starts_with(['-', ':'])
        && !matches!(value, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~");
    if plain { value.to_owned() } else { format!("{value:?}") }
}
