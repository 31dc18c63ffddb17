//! The configuration file (`--config FILE`, or SONDE_CONFIG): YAML whose keys are `sonde run`'s
//! flags without their dashes, so every flag is documented once (`sonde run --help`) and means
//! the same in both places:
//!
//! ```yaml
//! otlp-endpoint: http://collector:4317
//! otlp-protocol: grpc
//! port: [80, 8080]        # a repeatable flag takes a list (or one value)
//! capture-query: false    # a switch takes true or false
//! metrics-interval: 30s
//! ```
//!
//! Precedence, highest first: flags; environment variables (each flag's `SONDE_*`, and the
//! standard `OTEL_*` variables a key stands for, e.g. OTEL_EXPORTER_OTLP_ENDPOINT for
//! `otlp-endpoint`); the file; built-in defaults. A repeatable flag given on the command line
//! replaces the file's list rather than adding to it.
//!
//! The file is checked whole before sonde starts: an unknown key, a value of the wrong shape or a
//! value the flag would refuse is an error naming the file and the key.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, ArgMatches, Command, parser::ValueSource};
use serde_yaml_ng::Value;

/// The OTEL_* variables that stand for a key: when one is set, it wins over the file.
pub(crate) const OTEL_ENV: &[(&str, &[&str])] = &[
    ("otlp-endpoint", &["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]),
    ("otlp-protocol", &["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]),
    ("otlp-metrics", &["OTEL_METRICS_EXPORTER"]),
    ("metrics-interval", &["OTEL_METRIC_EXPORT_INTERVAL"]),
    ("traces-sampler", &["OTEL_TRACES_SAMPLER"]),
    ("traces-sampler-arg", &["OTEL_TRACES_SAMPLER_ARG"]),
];

/// Flags that are not configuration.
pub(crate) const NOT_KEYS: &[&str] = &["config", "help"];

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("config file {path}: cannot read it")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("config file {path}: expected a mapping of keys to values at the top level")]
    NotAMapping { path: PathBuf },
    #[error(
        "config file {path}: key {key}: unknown key (keys are `sonde run` flags without the dashes: {known})"
    )]
    UnknownKey { path: PathBuf, key: String, known: String },
    #[error("config file {path}: key {key}: {message}")]
    BadValue { path: PathBuf, key: String, message: String },
}

/// One key of the file and its values as text, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub values: Vec<String>,
}

/// Reads and parses `path` into entries (shape only; [`args_for`] checks them against the flags).
pub fn read(path: &Path) -> Result<Vec<Entry>, FileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, FileError> {
    let yaml = |message: String| FileError::Yaml { path: path.to_owned(), message };
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml(e.to_string()))?;
    let mapping = match value {
        // An empty file, or one of comments only: nothing configured.
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => return Err(FileError::NotAMapping { path: path.to_owned() }),
    };
    let mut entries = Vec::with_capacity(mapping.len());
    for (key, value) in mapping {
        let key = match key {
            Value::String(k) => k,
            other => return Err(yaml(format!("key {} is not a string", scalar(&other).unwrap_or_default()))),
        };
        let bad = |message: &str| FileError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        let values = match &value {
            // `key:` with nothing after it: left unset.
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .iter()
                .map(|item| scalar(item).ok_or_else(|| bad("a list may hold only plain values")))
                .collect::<Result<_, _>>()?,
            other => vec![scalar(other).ok_or_else(|| bad("expected a value or a list of values"))?],
        };
        entries.push(Entry { key, values });
    }
    Ok(entries)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The command-line arguments `entries` stand for, for the `run` command `run`, leaving out keys
/// that `given` says came from the command line or the environment (and keys whose OTEL_*
/// variable `env` has). Every key and value is checked, also those left out.
pub fn args_for(
    path: &Path,
    run: &Command,
    entries: &[Entry],
    given: impl Fn(&str) -> bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, FileError> {
    let mut out = Vec::new();
    for Entry { key, values } in entries {
        let bad = |message: String| FileError::BadValue { path: path.to_owned(), key: key.clone(), message };
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_KEYS.contains(&key.as_str()))
            .ok_or_else(|| FileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                known: keys(run),
            })?;
        let flags: Vec<String> = match arg.get_action() {
            ArgAction::SetTrue => match values.as_slice() {
                [] => Vec::new(),
                [v] if v == "true" => vec![format!("--{key}")],
                [v] if v == "false" => Vec::new(),
                _ => return Err(bad(format!("expected true or false, not {values:?}"))),
            },
            ArgAction::Append => values.iter().map(|v| format!("--{key}={v}")).collect(),
            _ => match values.as_slice() {
                [] => Vec::new(),
                [v] => vec![format!("--{key}={v}")],
                _ => return Err(bad(format!("takes one value, not a list ({values:?})"))),
            },
        };
        // What the flag itself would say of these values, without its dashes and usage lines.
        let mut probe = vec!["run".to_owned()];
        probe.extend(flags.iter().cloned());
        if let Err(e) = run.clone().try_get_matches_from(&probe) {
            return Err(bad(clap_message(&e)));
        }
        let id = arg.get_id().as_str();
        let otel = OTEL_ENV.iter().find(|(k, _)| k == key).is_some_and(|(_, vars)| {
            vars.iter().any(|v| env(v).is_some_and(|value| !value.trim().is_empty()))
        });
        if !given(id) && !otel {
            out.extend(flags.into_iter().map(OsString::from));
        }
    }
    Ok(out)
}

/// The keys a file may have, for an error message.
fn keys(run: &Command) -> String {
    let mut keys: Vec<&str> = run
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|k| !NOT_KEYS.contains(k))
        .collect();
    keys.sort_unstable();
    keys.join(", ")
}

/// What a clap error says of a value, without naming the flag (the caller names where the value
/// came from): `invalid value 'X': why`, or the values it may take; else the error's first line
/// without its `error: ` prefix.
pub(crate) fn clap_message(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) {
        match (e.kind(), e.get(ContextKind::ValidValue)) {
            (ErrorKind::ValueValidation, _) => {
                let why = std::error::Error::source(e).map(|why| format!(": {why}")).unwrap_or_default();
                return format!("invalid value '{value}'{why}");
            }
            (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
                return format!("invalid value '{value}' (expected one of: {})", valid.join(", "));
            }
            _ => {}
        }
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Whether the value of `id` in `matches` came from the command line or the environment.
pub fn given_outside_file(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::config::Cli;

    fn run_command() -> Command {
        Cli::command().find_subcommand("run").expect("a run subcommand").clone()
    }

    fn args(text: &str) -> Result<Vec<String>, FileError> {
        let path = Path::new("test.yaml");
        let entries = parse(path, text)?;
        let args = args_for(path, &run_command(), &entries, |_| false, |_| None)?;
        Ok(args.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn keys_become_flags() {
        let got = args(
            "otlp-endpoint: http://c:4317\nport: [80, 8080]\npid: 7\ncapture-query: true\n\
             opt-in-attributes: false\nmetrics-interval: 30s\nprint:\n",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "--otlp-endpoint=http://c:4317",
                "--port=80",
                "--port=8080",
                "--pid=7",
                "--capture-query",
                "--metrics-interval=30s"
            ]
        );
        assert_eq!(args("").unwrap(), Vec::<String>::new());
        assert_eq!(args("# only a comment\n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let message = |text: &str| args(text).unwrap_err().to_string();
        let unknown = message("otlp-endpoint: http://c\nportz: 80\n");
        assert!(unknown.starts_with("config file test.yaml: key portz: unknown key"), "{unknown}");
        assert!(unknown.contains("port,"), "lists the keys: {unknown}");
        let bad = message("capture-bytes: lots\n");
        assert!(bad.starts_with("config file test.yaml: key capture-bytes: invalid value 'lots'"), "{bad}");
        let enum_value = message("hooks: kprobes\n");
        assert!(enum_value.contains("key hooks: invalid value 'kprobes'"), "{enum_value}");
        assert!(message("port: 70000\n").contains("key port:"));
        assert!(message("otlp-endpoint: [a, b]\n").contains("key otlp-endpoint: takes one value"));
        assert!(message("capture-query: yes please\n").contains("key capture-query: expected true or false"));
        assert!(message("tls-exclude: {a: b}\n").contains("key tls-exclude: expected a value"));
        assert!(message("route: ['no-slash']\n").contains("key route:"));
        assert!(message("config: other.yaml\n").contains("key config: unknown key"));
        assert!(message("- a\n- b\n").contains("expected a mapping"));
        assert!(message("port: [80\n").contains("not valid YAML"));
    }

    /// Every value `sonde run` would refuse is refused here, when the file is read, naming the
    /// file and the key (and the value), not a flag.
    #[test]
    fn bad_values_are_refused_naming_the_file_and_the_key() {
        #[rustfmt::skip]
        let cases = [
            ("print: fancy\n", "print", "fancy"),
            ("otlp-protocol: grpcc\n", "otlp-protocol", "grpcc"),
            ("otlp-protocol: http/json\n", "otlp-protocol", "http/json"),
            ("otlp-endpoint: \"not a url\"\n", "otlp-endpoint", "not a url"),
            ("otlp-endpoint: collector:4317\n", "otlp-endpoint", "collector:4317"),
            ("otlp-endpoint: ftp://collector\n", "otlp-endpoint", "ftp://collector"),
            ("exe: \"[\"\n", "exe", "["),
            ("exclude-exe: [nginx, \"a[\"]\n", "exclude-exe", "a["),
            ("tls-exclude: \"/opt/[vendor\"\n", "tls-exclude", "/opt/[vendor"),
            ("k8s-pod-label: novalue\n", "k8s-pod-label", "novalue"),
            ("exclude-k8s-pod-label: [a=b, \"=v\"]\n", "exclude-k8s-pod-label", "=v"),
            ("exclude-pid: 0\n", "exclude-pid", "0"),
            ("exclude-pid: [1, 4194304]\n", "exclude-pid", "4194304"),
            ("pid: 0\n", "pid", "0"),
            ("kube-api: \"not a url\"\n", "kube-api", "not a url"),
        ];
        for (text, key, value) in cases {
            let message = match args(text) {
                Ok(args) => panic!("{text:?} was accepted as {args:?}"),
                Err(e) => e.to_string(),
            };
            let prefix = format!("config file test.yaml: key {key}: invalid value '{value}'");
            assert!(message.starts_with(&prefix), "{text:?}: {message}");
            assert!(!message.contains(&format!("--{key}")), "names the key, not the flag: {message}");
        }
        // What the value should be is part of the message.
        let print = args("print: fancy\n").unwrap_err().to_string();
        assert!(print.contains("tree, json, none"), "{print}");
        let protocol = args("otlp-protocol: grpcc\n").unwrap_err().to_string();
        assert!(protocol.contains("grpc, http/protobuf"), "{protocol}");
        // And the good values still pass.
        args(
            "print: json\notlp-protocol: http/protobuf\notlp-endpoint: https://c:4318/base\n\
              exe: [nginx, \"/usr/sbin/*\"]\nk8s-pod-label: [\"app=web\", \"empty=\"]\n\
              exclude-pid: [1, 4194303]\nkube-api: http://127.0.0.1:8001\n",
        )
        .unwrap();
    }

    #[test]
    fn given_keys_and_otel_variables_win_over_the_file() {
        let path = Path::new("test.yaml");
        let entries = parse(path, "port: 80\notlp-endpoint: http://file\nlog: debug\n").unwrap();
        let run = run_command();
        let otel = |var: &str| (var == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://env".to_owned());
        let got = args_for(path, &run, &entries, |id| id == "ports", otel).unwrap();
        assert_eq!(got, [OsString::from("--log=debug")]);
        // Still checked even when left out.
        let entries = parse(path, "port: not-a-port\n").unwrap();
        assert!(args_for(path, &run, &entries, |_| true, |_| None).is_err());
    }

    #[test]
    fn the_reference_file_names_every_key_and_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sonde.yaml"));
        let text = std::fs::read_to_string(path).expect("deploy/sonde.yaml");
        let run = run_command();
        // Every key is in the file, commented out (`# key:`) with its default.
        for key in keys(&run).split(", ") {
            assert!(text.contains(&format!("\n# {key}:")), "deploy/sonde.yaml does not document {key}");
        }
        // Uncommented, the examples are a valid configuration.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|rest| rest.contains(':') && !rest.starts_with(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        let entries = parse(path, &uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(entries.len(), keys(&run).split(", ").count(), "{uncommented}");
        args_for(path, &run, &entries, |_| false, |_| None).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    }
}
