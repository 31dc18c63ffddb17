//! Where and how spans leave sonde: OTLP settings resolved from flags and the standard
//! `OTEL_EXPORTER_OTLP_*` variables the way an OpenTelemetry SDK resolves them, and the print
//! mode.
//!
//! Spec: <https://opentelemetry.io/docs/specs/otel/protocol/exporter/>.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// OTLP transport (`--otlp-protocol`, OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP over gRPC (`…TraceService/Export`), usually on port 4317.
    Grpc,
    /// Protobuf bodies POSTed to `…/v1/traces`, usually on port 4318; the OTLP default.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of the variables and the flag are the same (`ValueEnum`).
impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s.trim(), false)
            .map_err(|_| ConfigError::BadProtocol { key: "protocol", value: s.trim().to_owned() })
    }
}

/// What sonde prints to stdout, independently of OTLP (`--print`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrintMode {
    /// Each finished trace as a waterfall, for a person watching `sonde run`.
    Tree,
    /// One JSON object per span and line, for scripts.
    Json,
    /// Nothing.
    None,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key}: unknown OTLP protocol {value:?} (expected \"grpc\" or \"http/protobuf\")")]
    BadProtocol { key: &'static str, value: String },
    #[error("{key}: endpoint {value:?} must be an http:// or https:// URL")]
    BadEndpoint { key: &'static str, value: String },
    #[error("{key}: header entry {entry:?} is not key=value")]
    BadHeader { key: &'static str, entry: String },
    #[error("{key}: timeout {value:?} is not a whole number of milliseconds")]
    BadTimeout { key: &'static str, value: String },
    #[error("OTEL_METRIC_EXPORT_INTERVAL: {value:?} is not a positive whole number of milliseconds")]
    BadInterval { value: String },
    #[error(
        "OTEL_METRICS_EXPORTER: {value:?} is not an exporter sonde knows (\"otlp\", \"none\", \"prometheus\", \"console\", comma-separated; for a Prometheus endpoint use --prometheus-listen)"
    )]
    BadMetricsExporter { value: String },
    #[error(
        "OTEL_TRACES_SAMPLER: {value:?} is not a sampler sonde knows (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
    )]
    BadSampler { value: String },
    #[error("OTEL_TRACES_SAMPLER_ARG: {value:?} is not a ratio from 0 to 1")]
    BadSamplerArg { value: String },
}

/// The SDK's default for `OTEL_METRIC_EXPORT_INTERVAL`.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// Whether metrics go over OTLP (when an endpoint is configured): the flag, else
/// `OTEL_METRICS_EXPORTER`: OTLP metrics when its list holds `otlp` (or it is unset).
pub fn otlp_metrics_enabled(
    flag: Option<bool>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<bool, ConfigError> {
    if let Some(on) = flag {
        return Ok(on);
    }
    let Some(value) = env("OTEL_METRICS_EXPORTER").filter(|v| !v.trim().is_empty()) else {
        return Ok(true);
    };
    // A comma-separated list, as the SDKs take it. `prometheus` and `console` are other
    // exporters an SDK would add; sonde's Prometheus endpoint is `--prometheus-listen`.
    let mut otlp = false;
    for item in value.split(',').map(str::trim) {
        match item {
            "otlp" => otlp = true,
            "none" | "prometheus" | "console" | "" => {}
            _ => return Err(ConfigError::BadMetricsExporter { value: item.to_owned() }),
        }
    }
    Ok(otlp)
}

/// The OTLP metrics interval: the flag, else `OTEL_METRIC_EXPORT_INTERVAL` (ms), else 60 s.
pub fn metrics_interval(
    flag: Option<Duration>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Duration, ConfigError> {
    if let Some(interval) = flag {
        return Ok(interval);
    }
    match env("OTEL_METRIC_EXPORT_INTERVAL").filter(|v| !v.trim().is_empty()) {
        None => Ok(DEFAULT_METRICS_INTERVAL),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(ConfigError::BadInterval { value }),
        },
    }
}

/// The spec's default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--otlp-endpoint` flag, named in errors.
const FLAG_ENDPOINT: &str = "--otlp-endpoint";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

/// What an exporter sends: each signal has its own path and its own variant of every variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The path appended to a base endpoint for `http/protobuf`.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method that takes this signal's export requests.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// What it carries, for logs: "spans", "metric points".
    pub fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metric points",
        }
    }

    fn endpoint_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }

    fn protocol_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        }
    }

    fn headers_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        }
    }

    fn timeout_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        }
    }
}

/// Resolved OTLP trace exporter settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The URL requests go to: for `http/protobuf` the full `…/v1/traces` URL, for gRPC the
    /// server's origin (`http://host:4317`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every request (HTTP headers, or gRPC metadata with lower-cased keys).
    pub headers: Vec<(String, String)>,
    /// Per export request, connection included.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Flags win over the standard variables, which resolve as in an SDK: the `TRACES_` variant
    /// of each variable wins over the generic one, an empty value counts as unset.
    ///
    /// Endpoint rules (spec): for `http/protobuf` the generic `OTEL_EXPORTER_OTLP_ENDPOINT` is a
    /// base URL to which `/v1/traces` is appended, while `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
    /// used as is; gRPC uses either as is. The `--otlp-endpoint` flag follows the generic rule,
    /// so `--otlp-endpoint http://collector:4318` works for both protocols' usual ports.
    ///
    /// Returns `None` when neither the flag nor the environment names an endpoint: sonde then
    /// only prints.
    pub fn resolve(
        endpoint_flag: Option<&str>,
        protocol_flag: Option<Protocol>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        Self::resolve_for(Signal::Traces, endpoint_flag, protocol_flag, env)
    }

    /// `resolve` for `signal`: its own variables (`OTEL_EXPORTER_OTLP_METRICS_*`) win over the
    /// generic ones, and its own path is appended to a base URL.
    pub fn resolve_for(
        signal: Signal,
        endpoint_flag: Option<&str>,
        protocol_flag: Option<Protocol>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        // The spec treats an empty variable as unset.
        let var = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        // The signal-specific variable wins, and names itself in errors.
        let pick = |own: &'static str, generic: &'static str| {
            var(own).map(|v| (own, v)).or_else(|| var(generic).map(|v| (generic, v)))
        };

        let protocol = match protocol_flag {
            Some(p) => p,
            None => match pick(signal.protocol_var(), PROTOCOL) {
                Some((key, value)) => value
                    .parse()
                    .map_err(|_| ConfigError::BadProtocol { key, value: value.trim().to_owned() })?,
                None => Protocol::HttpProtobuf,
            },
        };

        // (key for errors, URL, whether it is a base URL that takes the signal path)
        let endpoint = match endpoint_flag.map(str::trim).filter(|e| !e.is_empty()) {
            Some(flag) => (FLAG_ENDPOINT, flag.to_owned(), true),
            None => match (var(signal.endpoint_var()), var(ENDPOINT)) {
                (Some(own), _) => (signal.endpoint_var(), own, false),
                (None, Some(generic)) => (ENDPOINT, generic, true),
                (None, None) => return Ok(None),
            },
        };
        let (key, url, is_base) = endpoint;
        let url = url.trim();
        if !is_http_url(url) {
            return Err(ConfigError::BadEndpoint { key, value: url.to_owned() });
        }
        let endpoint = match protocol {
            Protocol::HttpProtobuf if is_base => {
                format!("{}{}", url.trim_end_matches('/'), signal.http_path())
            }
            _ => url.to_owned(),
        };

        let headers = match pick(signal.headers_var(), HEADERS) {
            Some((key, value)) => parse_headers(key, &value)?,
            None => Vec::new(),
        };

        let timeout = match pick(signal.timeout_var(), TIMEOUT) {
            Some((key, value)) => value
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| ConfigError::BadTimeout { key, value })?,
            None => DEFAULT_TIMEOUT,
        };

        Ok(Some(OtlpConfig { endpoint, protocol, headers, timeout }))
    }
}

/// Whether `url` is one an exporter can send to: `http://` or `https://`, and a valid URI.
pub fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.parse::<tonic::transport::Uri>().is_ok()
}

/// `k1=v1,k2=v2`, W3C-baggage-like as the spec says: entries separated by commas, whitespace
/// around keys and values ignored, both percent-decoded. A key is needed; a value may be empty.
fn parse_headers(key: &'static str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers = Vec::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let bad = || ConfigError::BadHeader { key, entry: entry.trim().to_owned() };
        let (name, val) = entry.split_once('=').ok_or_else(bad)?;
        let name = percent_decode(name.trim()).ok_or_else(bad)?;
        let val = percent_decode(val.trim()).ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        // Neither HTTP nor gRPC can carry control characters in a value.
        if !valid_name || val.chars().any(|c| c.is_control()) {
            return Err(bad());
        }
        headers.push((name, val));
    }
    Ok(headers)
}

/// RFC 3986 percent-decoding into UTF-8; `None` for a broken escape or invalid UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";

    #[test]
    fn metrics_exporter_and_interval_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(otlp_metrics_enabled(None, env(&[])), Ok(true));
        assert_eq!(otlp_metrics_enabled(None, env(&[("OTEL_METRICS_EXPORTER", "none")])), Ok(false));
        assert_eq!(otlp_metrics_enabled(Some(true), env(&[("OTEL_METRICS_EXPORTER", "none")])), Ok(true));
        assert_eq!(
            otlp_metrics_enabled(None, env(&[("OTEL_METRICS_EXPORTER", "prometheus, otlp")])),
            Ok(true)
        );
        assert_eq!(otlp_metrics_enabled(None, env(&[("OTEL_METRICS_EXPORTER", "prometheus")])), Ok(false));
        assert_eq!(otlp_metrics_enabled(None, env(&[("OTEL_METRICS_EXPORTER", " ")])), Ok(true));
        let err = otlp_metrics_enabled(None, env(&[("OTEL_METRICS_EXPORTER", "otlp,zipkin")])).unwrap_err();
        assert!(err.to_string().contains("OTEL_METRICS_EXPORTER") && err.to_string().contains("zipkin"));
        assert_eq!(metrics_interval(None, env(&[])), Ok(DEFAULT_METRICS_INTERVAL));
        let ms = env(&[("OTEL_METRIC_EXPORT_INTERVAL", "1500")]);
        assert_eq!(metrics_interval(None, ms), Ok(Duration::from_millis(1500)));
        let flag = Some(Duration::from_secs(2));
        assert_eq!(
            metrics_interval(flag, env(&[("OTEL_METRIC_EXPORT_INTERVAL", "x")])),
            Ok(Duration::from_secs(2))
        );
        for bad in ["0", "1.5", "soon"] {
            let pairs: &'static [(&'static str, &'static str)] = match bad {
                "0" => &[("OTEL_METRIC_EXPORT_INTERVAL", "0")],
                "1.5" => &[("OTEL_METRIC_EXPORT_INTERVAL", "1.5")],
                _ => &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")],
            };
            assert!(
                matches!(metrics_interval(None, env(pairs)), Err(ConfigError::BadInterval { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn metrics_have_their_own_path_and_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string())
        };
        let m =
            |flag, pairs| OtlpConfig::resolve_for(Signal::Metrics, flag, None, env(pairs)).unwrap().unwrap();
        assert_eq!(m(None, &[(ENDPOINT, "http://c:4318")]).endpoint, "http://c:4318/v1/metrics");
        assert_eq!(m(Some("http://f:4318/"), &[]).endpoint, "http://f:4318/v1/metrics");
        let own = &[
            (ENDPOINT, "http://g"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m/x"),
            (TRACES_ENDPOINT, "http://t"),
        ];
        assert_eq!(m(None, own).endpoint, "http://m/x");
        let grpc = &[(ENDPOINT, "http://c:4317"), ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")];
        assert_eq!(m(None, grpc).protocol, Protocol::Grpc);
        let err = OtlpConfig::resolve_for(
            Signal::Metrics,
            None,
            None,
            env(&[(ENDPOINT, "http://c"), ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon")]),
        );
        assert!(err.unwrap_err().to_string().contains("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"));
    }

    fn resolve(
        flag: Option<&str>,
        proto: Option<Protocol>,
        env: &[(&str, &str)],
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtlpConfig::resolve(flag, proto, |k| env.get(k).cloned())
    }

    fn endpoint(
        flag: Option<&str>,
        proto: Option<Protocol>,
        env: &[(&str, &str)],
    ) -> Option<(String, Protocol)> {
        resolve(flag, proto, env).unwrap().map(|c| (c.endpoint, c.protocol))
    }

    /// Flag, protocol flag, environment, expected endpoint and protocol.
    type Case<'a> = (Option<&'a str>, Option<Protocol>, &'a [(&'a str, &'a str)], Option<(String, Protocol)>);

    #[test]
    fn endpoint_table() {
        use Protocol::*;
        let s = |e: &str, p| Some((e.to_owned(), p));
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // Nothing configured: print only.
            (None, None, &[], None),
            (None, Some(Grpc), &[(PROTOCOL, "grpc")], None),
            // Default protocol is http/protobuf; the generic variable takes the signal path.
            (None, None, &[(ENDPOINT, "http://c:4318")], s("http://c:4318/v1/traces", HttpProtobuf)),
            (None, None, &[(ENDPOINT, "http://c:4318/")], s("http://c:4318/v1/traces", HttpProtobuf)),
            (None, None, &[(ENDPOINT, "https://c/base/")], s("https://c/base/v1/traces", HttpProtobuf)),
            // The traces variable is used as is, and wins over the generic one.
            (None, None, &[(TRACES_ENDPOINT, "http://c:4318/custom")], s("http://c:4318/custom", HttpProtobuf)),
            (None, None, &[(ENDPOINT, "http://g"), (TRACES_ENDPOINT, "http://t/x")], s("http://t/x", HttpProtobuf)),
            // gRPC never appends a path.
            (None, None, &[(ENDPOINT, "http://c:4317"), (PROTOCOL, "grpc")], s("http://c:4317", Grpc)),
            (None, None, &[(TRACES_ENDPOINT, "http://c:4317"), (TRACES_PROTOCOL, "grpc"), (PROTOCOL, "http/protobuf")], s("http://c:4317", Grpc)),
            // Flags win over the environment; the endpoint flag follows the generic rule.
            (Some("http://f:4318"), None, &[(TRACES_ENDPOINT, "http://t/x")], s("http://f:4318/v1/traces", HttpProtobuf)),
            (Some("http://f:4317"), Some(Grpc), &[(PROTOCOL, "http/protobuf")], s("http://f:4317", Grpc)),
            (None, Some(Grpc), &[(ENDPOINT, "http://c:4317")], s("http://c:4317", Grpc)),
            (Some("http://f:4318"), Some(HttpProtobuf), &[(PROTOCOL, "grpc")], s("http://f:4318/v1/traces", HttpProtobuf)),
            // Empty values count as unset.
            (None, None, &[(TRACES_ENDPOINT, ""), (ENDPOINT, "http://g")], s("http://g/v1/traces", HttpProtobuf)),
            (Some(""), None, &[], None),
        ];
        for (i, (flag, proto, env, want)) in cases.iter().enumerate() {
            assert_eq!(&endpoint(*flag, *proto, env), want, "case {i}: {flag:?} {proto:?} {env:?}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = resolve(None, None, &[(ENDPOINT, "http://c"), (TRACES_PROTOCOL, "http/json")]);
        assert_eq!(err, Err(ConfigError::BadProtocol { key: TRACES_PROTOCOL, value: "http/json".into() }));
        assert!(err.unwrap_err().to_string().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"));

        let err = resolve(Some("collector:4317"), None, &[]).unwrap_err();
        assert!(matches!(err, ConfigError::BadEndpoint { key: FLAG_ENDPOINT, .. }), "{err}");
        let err = resolve(None, None, &[(ENDPOINT, "ftp://c")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadEndpoint { key: ENDPOINT, .. }), "{err}");

        let err = resolve(None, None, &[(ENDPOINT, "http://c"), (TIMEOUT, "5s")]).unwrap_err();
        assert_eq!(err, ConfigError::BadTimeout { key: TIMEOUT, value: "5s".into() });

        assert!("udp".parse::<Protocol>().is_err());
        assert_eq!("http/protobuf".parse::<Protocol>(), Ok(Protocol::HttpProtobuf));
        assert_eq!("grpc".parse::<Protocol>(), Ok(Protocol::Grpc));
        assert_eq!(" grpc ".parse::<Protocol>(), Ok(Protocol::Grpc));
    }

    #[test]
    fn timeout_in_milliseconds() {
        let c = resolve(None, None, &[(ENDPOINT, "http://c")]).unwrap().unwrap();
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        let env = [(ENDPOINT, "http://c"), (TIMEOUT, "2500"), (TRACES_TIMEOUT, "750")];
        assert_eq!(resolve(None, None, &env).unwrap().unwrap().timeout, Duration::from_millis(750));
        let env = [(ENDPOINT, "http://c"), (TIMEOUT, "2500")];
        assert_eq!(resolve(None, None, &env).unwrap().unwrap().timeout, Duration::from_millis(2500));
    }

    #[test]
    fn headers_are_parsed_and_decoded() {
        let headers = |env: &[(&str, &str)]| {
            let mut all = vec![(ENDPOINT, "http://c")];
            all.extend_from_slice(env);
            resolve(None, None, &all).map(|c| c.unwrap().headers)
        };
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(headers(&[]), Ok(vec![]));
        assert_eq!(
            headers(&[(HEADERS, "api-key=abc, x-tenant = a%20b%2Cc ,,empty=")]),
            Ok(vec![pair("api-key", "abc"), pair("x-tenant", "a b,c"), pair("empty", "")])
        );
        assert_eq!(
            headers(&[(HEADERS, "authorization=Basic%20dXNlcjpwYXNz%3D%3D")]),
            Ok(vec![pair("authorization", "Basic dXNlcjpwYXNz==")])
        );
        // The traces variable replaces the generic one as a whole.
        assert_eq!(headers(&[(HEADERS, "a=1,b=2"), (TRACES_HEADERS, "c=3")]), Ok(vec![pair("c", "3")]));
        for bad in ["novalue", "=v", "k=%zz", "k=%4", "bad key=v", "k=a%0Ab"] {
            assert!(
                matches!(headers(&[(HEADERS, bad)]), Err(ConfigError::BadHeader { key: HEADERS, .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
