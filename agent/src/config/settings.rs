//! The settings `sonde run` works with, resolved once. clap has already checked each value on its
//! own, wherever it came from (flag, SONDE_* variable or file key); what is left to resolve needs
//! the OTEL_* variables an OpenTelemetry SDK would read, whose errors name the variable.
//! `sonde run` and `sonde config check` both resolve through here, so `check` refuses whatever
//! `run` would.

use std::time::Duration;

use clap::ValueEnum as _;

use super::{OnOff, RunArgs, values};
use crate::{
    conn::select::{Criteria, Selector},
    export::{
        ConfigError, OtlpConfig, PrintMode, Signal,
        config::{metrics_interval, otlp_metrics_enabled},
    },
    link::sampler::{Sampler, SamplerName},
};

pub struct Settings {
    /// Where spans are exported; `None`: they are only printed.
    pub otlp: Option<OtlpConfig>,
    /// Where metrics are exported; `None`: not over OTLP (Prometheus may still serve them).
    pub otlp_metrics: Option<OtlpConfig>,
    /// How often OTLP metrics are sent.
    pub metrics_interval: Duration,
    pub print: PrintMode,
    /// Which connections are traced (the selection flags and their exclusions).
    pub selector: Selector,
    /// Which traces are exported.
    pub sampler: Sampler,
}

impl Settings {
    /// `env` reads a variable (`std::env::var` but for tests).
    pub fn resolve(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let endpoint = args.otlp_endpoint.as_deref();
        let otlp = OtlpConfig::resolve(endpoint, args.otlp_protocol, &env)?;
        let otlp_metrics = match otlp_metrics_enabled(args.otlp_metrics.map(|m| m == OnOff::On), &env)? {
            true => OtlpConfig::resolve_for(Signal::Metrics, endpoint, args.otlp_protocol, &env)?,
            false => None,
        };
        Ok(Settings {
            print: args.print.unwrap_or_else(|| PrintMode::default_for(otlp.as_ref())),
            otlp,
            otlp_metrics,
            metrics_interval: metrics_interval(args.metrics_interval, &env)?,
            selector: Selector::new(&include(args), &exclude(args)),
            sampler: sampler(args, &env)?,
        })
    }
}

/// The flags, else OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as an SDK reads them (names in
/// any case; unset or empty means the default). A value an SDK would refuse is an error here
/// rather than a silent fallback: sampling every trace by mistake can overload a collector.
fn sampler(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<Sampler, ConfigError> {
    let set = |key: &str| env(key).filter(|v| !v.trim().is_empty());
    let name = match (args.traces_sampler, set("OTEL_TRACES_SAMPLER")) {
        (Some(name), _) => Some(name),
        (None, Some(value)) => {
            Some(SamplerName::from_str(value.trim(), true).map_err(|_| ConfigError::BadSampler { value })?)
        }
        (None, None) => None,
    };
    let ratio = match (args.traces_sampler_arg, set("OTEL_TRACES_SAMPLER_ARG")) {
        (Some(ratio), _) => Some(ratio),
        (None, Some(value)) => Some(values::ratio(&value).map_err(|_| ConfigError::BadSamplerArg { value })?),
        (None, None) => None,
    };
    Ok(name.map_or_else(Sampler::default, |name| Sampler::new(name, ratio)))
}

fn include(args: &RunArgs) -> Criteria {
    Criteria {
        pids: args.pids.clone(),
        ports: args.ports.clone(),
        exes: args.exes.clone(),
        containers: args.containers.clone(),
        namespaces: args.k8s_namespaces.clone(),
        pod_labels: args.k8s_pod_labels.clone(),
        workloads: args.k8s_workloads.clone(),
    }
}

fn exclude(args: &RunArgs) -> Criteria {
    Criteria {
        pids: args.exclude_pids.clone(),
        ports: args.exclude_ports.clone(),
        exes: args.exclude_exes.clone(),
        containers: args.exclude_containers.clone(),
        namespaces: args.exclude_k8s_namespaces.clone(),
        pod_labels: args.exclude_k8s_pod_labels.clone(),
        workloads: args.exclude_k8s_workloads.clone(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        config::{Cli, Command},
        export::Protocol,
    };

    fn resolve(flags: &[&str], vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let cli = Cli::try_parse_from(["sonde", "run"].iter().chain(flags)).expect("valid flags");
        let Command::Run(args) = cli.command else { unreachable!() };
        let env = |key: &str| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
        Settings::resolve(&args, env)
    }

    #[test]
    fn sampler_from_flags_then_otel_variables() {
        use crate::link::sampler::Rule;
        assert_eq!(resolve(&[], &[]).unwrap().sampler, Sampler::default());
        let vars = [("OTEL_TRACES_SAMPLER", "TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", " 0.25 ")];
        let from_env = resolve(&[], &vars).unwrap().sampler;
        assert_eq!(from_env, Sampler { parent_based: false, rule: Rule::Ratio(0.25) });
        let flags = ["--traces-sampler", "parentbased_traceidratio", "--traces-sampler-arg", "0.5"];
        let from_flags = resolve(&flags, &vars).unwrap().sampler;
        assert_eq!(from_flags, Sampler { parent_based: true, rule: Rule::Ratio(0.5) });
        let no_arg = resolve(&["--traces-sampler", "traceidratio"], &[]).unwrap().sampler;
        assert_eq!(no_arg.rule, Rule::Ratio(1.0), "the spec's default ratio");

        for (vars, named) in [
            (vec![("OTEL_TRACES_SAMPLER", "jaeger_remote")], "OTEL_TRACES_SAMPLER"),
            (
                vec![("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![("OTEL_TRACES_SAMPLER_ARG", "one")], "OTEL_TRACES_SAMPLER_ARG"),
        ] {
            let error = resolve(&[], &vars).err().expect("refused").to_string();
            assert!(error.starts_with(named), "{error}");
        }
        assert!(crate::config::Cli::try_parse_from(["sonde", "run", "--traces-sampler-arg", "2"]).is_err());
    }

    #[test]
    fn print_and_metrics_follow_the_endpoint() {
        let alone = resolve(&[], &[]).unwrap();
        assert!(alone.otlp.is_none() && alone.otlp_metrics.is_none());
        assert_eq!(alone.print, PrintMode::Tree);

        let vars =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "1500")];
        let exporting = resolve(&[], &vars).unwrap();
        assert_eq!(exporting.print, PrintMode::None);
        assert_eq!(exporting.otlp.unwrap().endpoint, "http://c:4318/v1/traces");
        assert_eq!(exporting.otlp_metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
        assert_eq!(exporting.metrics_interval, Duration::from_millis(1500));

        let flags = ["--otlp-endpoint", "http://f:4317", "--otlp-protocol", "grpc", "--print", "json"];
        let grpc = resolve(&flags, &[("OTEL_METRICS_EXPORTER", "none")]).unwrap();
        assert_eq!(grpc.print, PrintMode::Json);
        assert_eq!(
            grpc.otlp.map(|o| (o.endpoint, o.protocol)),
            Some(("http://f:4317".into(), Protocol::Grpc))
        );
        assert!(grpc.otlp_metrics.is_none());
    }

    /// What is checked only here comes from the environment: each error names its variable.
    #[test]
    fn bad_otel_variables_are_named() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        #[rustfmt::skip]
        let cases = [
            (vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpcc")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (vec![endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")], "OTEL_EXPORTER_OTLP_HEADERS"),
            (vec![endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")], "OTEL_EXPORTER_OTLP_TIMEOUT"),
            (vec![endpoint, ("OTEL_METRICS_EXPORTER", "zipkin")], "OTEL_METRICS_EXPORTER"),
            (vec![endpoint, ("OTEL_METRIC_EXPORT_INTERVAL", "soon")], "OTEL_METRIC_EXPORT_INTERVAL"),
            (vec![endpoint, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp")], "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
        ];
        for (vars, named) in cases {
            let message = match resolve(&[], &vars) {
                Ok(_) => panic!("{vars:?} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(message.starts_with(named), "{vars:?}: {message}");
        }
    }
}
