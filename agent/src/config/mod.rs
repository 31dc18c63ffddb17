//! The command line. Every flag is documented here once; `sonde run --help` prints these texts.
//! The same flags are keys of the configuration file (`file`) and have SONDE_* variables; `load`
//! puts the three together. clap checks every value wherever it came from (typed values and the
//! parsers in `values`); `Settings` resolves what also needs the OTEL_* variables.

pub mod file;
pub mod load;
mod settings;
pub mod values;

use clap::{Args, Parser, Subcommand};

pub use self::settings::Settings;
use crate::{
    conn::select::PodLabel,
    export::{PrintMode, Protocol},
    probes::HookChoice,
};

#[derive(Debug, Parser)]
#[command(
    name = "sonde",
    version,
    about = "Traces HTTP services with eBPF and exports OpenTelemetry spans — no code changes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace until SIGINT/SIGTERM, then flush and exit (needs root or the capabilities in the README).
    Run(RunArgs),
    /// For benchmarks (`cargo xtask bench`): attach programs that only count to the very hooks
    /// `run` uses, until SIGINT/SIGTERM; then print the hit count. Measures the floor of hooking.
    NullProbe(NullProbeArgs),
    /// Start a chain of four plain local services (gateway → auth, gateway → cart → payments, the
    /// last one slow), send a few requests through it and show their traces.
    Demo(DemoArgs),
    /// One service of the demo chain (started by `sonde demo`).
    #[command(hide = true)]
    DemoService(DemoServiceArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Say what this kernel offers sonde (the features probed, the hook set `run` would choose)
    /// and load every kernel program without attaching it: a program this kernel's verifier
    /// refuses is named with the verifier's reason, and the exit status is non-zero unless each
    /// refused program needs a feature the kernel lacks (root needed).
    CheckKernel,
    /// Say what sonde finds in the executable at PATH (a process's is /proc/PID/exe): for a Go
    /// program, the Go release that built it and where the functions are that sonde hooks to
    /// follow goroutines, found through Go's own function table, which binaries stripped with
    /// `-s -w` keep. The exit status is non-zero for a file sonde cannot read as a Go program.
    CheckBinary {
        /// The executable.
        path: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check FILE (with the SONDE_* and OTEL_* variables of this environment) and print the
    /// configuration `sonde run --config FILE` would use, each value with where it came from.
    /// Whatever `sonde run` would refuse is an error here too, naming the file and key (or the
    /// variable), and the exit status is non-zero.
    Check {
        /// The YAML file (keys are `sonde run` flags without the dashes; see deploy/sonde.yaml).
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests sent through the chain before the demo ends.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub requests: u32,
    /// Milliseconds the payments service takes per request: the slow hop.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub slow_ms: u64,
    /// The flags of `sonde run` (e.g. `--otlp-endpoint` to see the traces in a backend too);
    /// `--pid` is set to the demo's services.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct DemoServiceArgs {
    /// Milliseconds to wait before answering.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// A service to call (address) for each request, in order (repeatable).
    #[arg(long = "call", value_name = "ADDR")]
    pub calls: Vec<std::net::SocketAddr>,
    /// Serve nothing: send this many requests (`/checkout/1`, …) to the first `--call`, a pause
    /// of `--delay-ms` after each, then exit — the demo's client, a process of its own.
    #[arg(long, default_value_t = 0)]
    pub send: u32,
}

#[derive(Debug, Args)]
pub struct NullProbeArgs {
    /// The hook set to attach, as for `run`.
    #[arg(long, value_enum, default_value_t = HookChoice::Auto)]
    pub hooks: HookChoice,

    /// Also hook the TLS libraries, as `run` does.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = TlsMode::On)]
    pub tls: TlsMode,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML file of settings whose keys are these flags without the dashes (see
    /// deploy/sonde.yaml). Flags and environment variables win over it.
    #[arg(long, env = "SONDE_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// OTLP endpoint to export spans to, an http:// or https:// URL, e.g. http://127.0.0.1:4317
    /// (gRPC) or http://127.0.0.1:4318 (HTTP; `/v1/traces` is appended). Default:
    /// OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; with none, spans are only printed.
    #[arg(env = "SONDE_OTLP_ENDPOINT", long, value_name = "URL", value_parser = values::http_url)]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf`. Default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL,
    /// else http/protobuf (the OTLP default).
    #[arg(env = "SONDE_OTLP_PROTOCOL", long, value_enum, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<Protocol>,

    /// What is printed on stdout: `tree`, `json` or `none`. Default: `tree` without an OTLP
    /// endpoint, `none` with one.
    #[arg(env = "SONDE_PRINT", long, value_enum, value_name = "MODE")]
    pub print: Option<PrintMode>,

    /// Trace only these process ids (repeatable). Enforced in the kernel.
    #[arg(env = "SONDE_PID", value_delimiter = ',', long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..sonde_common::PID_LIMIT as i64))]
    pub pids: Vec<u32>,

    /// Trace only connections with this port at either end (repeatable), e.g. a server's listening port.
    #[arg(env = "SONDE_PORT", value_delimiter = ',', long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Trace only processes whose executable name or path matches this glob (repeatable), e.g.
    /// `nginx` or `/usr/sbin/*`.
    #[arg(env = "SONDE_EXE", long = "exe", value_name = "GLOB", value_parser = values::glob)]
    pub exes: Vec<glob::Pattern>,

    /// Trace only processes in a container whose id starts with this (repeatable; the short 12-digit
    /// form works), as `container.id` reports it.
    #[arg(env = "SONDE_CONTAINER", long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Never trace these process ids (repeatable).
    #[arg(env = "SONDE_EXCLUDE_PID", value_delimiter = ',', long = "exclude-pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..sonde_common::PID_LIMIT as i64))]
    pub exclude_pids: Vec<u32>,

    /// Never trace connections with this port at either end (repeatable), e.g. 22.
    #[arg(env = "SONDE_EXCLUDE_PORT", value_delimiter = ',', long = "exclude-port", value_name = "PORT")]
    pub exclude_ports: Vec<u16>,

    /// Never trace processes whose executable name or path matches this glob (repeatable).
    #[arg(env = "SONDE_EXCLUDE_EXE", long = "exclude-exe", value_name = "GLOB", value_parser = values::glob)]
    pub exclude_exes: Vec<glob::Pattern>,

    /// Never trace processes in a container whose id starts with this (repeatable).
    #[arg(env = "SONDE_EXCLUDE_CONTAINER", long = "exclude-container", value_name = "ID")]
    pub exclude_containers: Vec<String>,

    /// Trace only processes of pods in this Kubernetes namespace (repeatable).
    #[arg(env = "SONDE_K8S_NAMESPACE", long = "k8s-namespace", value_name = "NAMESPACE")]
    pub k8s_namespaces: Vec<String>,

    /// Trace only processes of pods with this label (repeatable: every one given must match); the
    /// value may be empty (`KEY=`).
    #[arg(env = "SONDE_K8S_POD_LABEL", long = "k8s-pod-label", value_name = "KEY=VALUE")]
    pub k8s_pod_labels: Vec<PodLabel>,

    /// Trace only processes of pods owned by this workload (repeatable), e.g. `cart` or
    /// `Deployment/cart` (a ReplicaSet's pods belong to its Deployment).
    #[arg(env = "SONDE_K8S_WORKLOAD", long = "k8s-workload", value_name = "[KIND/]NAME")]
    pub k8s_workloads: Vec<String>,

    /// Never trace processes of pods in this namespace (repeatable), e.g. `kube-system`.
    #[arg(env = "SONDE_EXCLUDE_K8S_NAMESPACE", long = "exclude-k8s-namespace", value_name = "NAMESPACE")]
    pub exclude_k8s_namespaces: Vec<String>,

    /// Never trace processes of pods with this label (repeatable: any one matches).
    #[arg(env = "SONDE_EXCLUDE_K8S_POD_LABEL", long = "exclude-k8s-pod-label", value_name = "KEY=VALUE")]
    pub exclude_k8s_pod_labels: Vec<PodLabel>,

    /// Never trace processes of pods owned by this workload (repeatable).
    #[arg(env = "SONDE_EXCLUDE_K8S_WORKLOAD", long = "exclude-k8s-workload", value_name = "[KIND/]NAME")]
    pub exclude_k8s_workloads: Vec<String>,

    /// Bytes of each read/write copied from the kernel (max 16384). Headers longer than this still
    /// give a span, with the fields past the cut missing.
    #[arg(env = "SONDE_CAPTURE_BYTES", long, value_name = "BYTES", default_value_t = sonde_common::DEFAULT_CAPTURE, value_parser = values::capture_bytes)]
    pub capture_bytes: u32,

    /// Size of the kernel → agent ring buffer (rounded up to a power of two). When it is full,
    /// events are dropped and counted, never waited for. The default holds ~150 ms of a
    /// saturated 2-core web server's traffic (50k requests/s) and seconds of an ordinary one;
    /// it is resident twice over (the kernel maps its pages twice), so it is most of sonde's RSS.
    #[arg(env = "SONDE_RING_BUFFER_BYTES", long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub ring_buffer_bytes: u32,

    /// Which kernel hooks see the syscalls: `auto` picks the cheapest this kernel allows.
    #[arg(env = "SONDE_HOOKS", long, value_enum, default_value_t = HookChoice::Auto)]
    pub hooks: HookChoice,

    /// Put trace context on the wire for services that do not propagate it, so that a trace stays
    /// whole across hosts. `tcp` writes the context of each HTTP/1 request a traced process sends
    /// into a TCP header option of the segment the request begins (kind 25, the format OBI/Beyla
    /// use) and reads it on the receiving host — no byte of the application's stream changes, but
    /// sonde (or OBI/Beyla) must run on both ends, a proxy or load balancer that ends TCP drops it,
    /// and a segment that already carries SACK blocks has no room for it. `headers` writes a
    /// `traceparent` header into each plaintext HTTP/1 request head a traced process sends
    /// (through sockops and sk_msg), which any receiver understands, an OpenTelemetry SDK
    /// included; it is refused on kernels where a socket in a SOCKHASH misbehaves (a self-test at
    /// start-up; `sonde check-kernel` shows its verdict). `all`: both, or `tcp` alone with a
    /// warning where `headers` is refused. `off`: nothing on the wire; traces join only on one
    /// host. See docs/propagation.md.
    #[arg(env = "SONDE_CONTEXT_PROPAGATION", long, value_enum, value_name = "MODE", default_value_t = ContextPropagation::Off)]
    pub context_propagation: ContextPropagation,

    /// The cgroup v2 directory whose sockets context propagation acts on (its sockops program is
    /// attached there, beside any other); sockets of processes outside it carry no context.
    /// Default: the cgroup v2 root, `/sys/fs/cgroup` (or `/sys/fs/cgroup/unified` on a host that
    /// mounts cgroup v1 there).
    #[arg(env = "SONDE_CGROUP", long, value_name = "PATH")]
    pub cgroup: Option<std::path::PathBuf>,

    /// Export the query string as `url.query` (off by default: queries often carry secrets).
    #[arg(long, env = "SONDE_CAPTURE_QUERY")]
    pub capture_query: bool,

    /// Also export the HTTP conventions' Opt-In span attributes: `client.port`,
    /// `network.transport`, `network.type`, `http.request.body.size`, `http.response.body.size`.
    #[arg(long, env = "SONDE_OPT_IN_ATTRIBUTES")]
    pub opt_in_attributes: bool,

    /// Processes that run an OpenTelemetry SDK of their own (started through
    /// `opentelemetry-instrument`, Node's or Java's OTel agent, or seen exporting OTLP/HTTP traces):
    /// `skip` leaves their spans to their SDK — sonde's would repeat each of their requests — while
    /// the `traceparent` headers they send still parent sonde's spans downstream; `trace` makes
    /// sonde's spans for them as well.
    #[arg(env = "SONDE_SDK_PROCESSES", long, value_enum, value_name = "MODE", default_value_t = SdkProcesses::Skip)]
    pub sdk_processes: SdkProcesses,

    /// Which traces are exported, as OpenTelemetry SDKs sample: `always_on`, `always_off`,
    /// `traceidratio`, `parentbased_always_on`, `parentbased_always_off` or
    /// `parentbased_traceidratio`. The ratio is decided on the trace id, so every sonde (and every
    /// SDK with the same ratio) keeps the same traces; `parentbased_*` follow the caller's
    /// `traceparent` when there is one. RED metrics and the service graph count every request.
    /// Default: OTEL_TRACES_SAMPLER, else `parentbased_always_on`.
    #[arg(env = "SONDE_TRACES_SAMPLER", long, value_enum, value_name = "SAMPLER")]
    pub traces_sampler: Option<crate::link::sampler::SamplerName>,

    /// The ratio of the `*traceidratio` samplers, from 0 to 1 (e.g. 0.1 keeps one trace in ten).
    /// Default: OTEL_TRACES_SAMPLER_ARG, else 1.
    #[arg(env = "SONDE_TRACES_SAMPLER_ARG", long, value_name = "RATIO", value_parser = values::ratio)]
    pub traces_sampler_arg: Option<f64>,

    /// HTTPS: `on` hooks OpenSSL (`libssl.so.3`, `libssl.so.1.1`) wherever processes load it, and
    /// Go's `crypto/tls` in the Go programs whose goroutines are followed (`--go on`), and reads
    /// the plaintext there; `off` leaves TLS alone (its connections give no spans). Each hooked
    /// call costs the calling thread about 1–5 µs (uprobes trap into the kernel).
    #[arg(env = "SONDE_TLS", long, value_enum, value_name = "MODE", default_value_t = TlsMode::On)]
    pub tls: TlsMode,

    /// Go programs: `on` follows the goroutines of Go programs built by Go 1.17 or later (amd64),
    /// through uprobes on `runtime.newproc1` and on net/http's client in each Go executable, so
    /// that a handler's requests are children of the request it serves even while it serves many
    /// at once (amd64; on kernels without `bpf_task_pt_regs`, before 5.15, the goroutine is read
    /// from the top of the task's kernel stack). `off`: a Go program's client spans get an
    /// in-process parent only while it serves one request at a time. Each hooked call costs about
    /// 1–5 µs. `sonde check-binary` shows what sonde finds in an executable.
    #[arg(env = "SONDE_GO", long, value_enum, value_name = "MODE", default_value_t = GoMode::On)]
    pub go: GoMode,

    /// Opt out of TLS hooking (repeatable): a glob on a library's path or file name leaves that
    /// library unhooked (no cost to the processes using it); a glob on an executable's name or path
    /// makes the kernel ignore that process's TLS calls (they still trap, ~1 µs each, but nothing
    /// is copied), and leaves a Go executable's `crypto/tls` unhooked. E.g. `--tls-exclude
    /// '/opt/vendor/*'` or `--tls-exclude haproxy`.
    #[arg(env = "SONDE_TLS_EXCLUDE", long = "tls-exclude", value_name = "GLOB", value_parser = values::glob)]
    pub tls_exclude: Vec<glob::Pattern>,

    /// Hook OpenSSL's exported `SSL_read`/`SSL_write` (and `_ex`) even where the cheaper internal
    /// functions behind them are found (for tests of that fallback).
    #[arg(long, hide = true)]
    pub tls_exported_hooks: bool,

    /// Serve metrics for Prometheus to scrape at `http://ADDR/metrics`, e.g. `127.0.0.1:9400` (or
    /// `0.0.0.0:9400` for a scraper on another host): the RED histograms, the service graph and
    /// sonde's own counters, named the Prometheus way (`http_server_request_duration_seconds`).
    #[arg(env = "SONDE_PROMETHEUS_LISTEN", long, value_name = "ADDR")]
    pub prometheus_listen: Option<std::net::SocketAddr>,

    /// OTLP metrics: `on` sends the metrics to the OTLP endpoint (`--otlp-endpoint`, or
    /// OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT) every `--metrics-interval`; `off` does not.
    /// Default: `off` when OTEL_METRICS_EXPORTER is `none`, else `on`.
    #[arg(env = "SONDE_OTLP_METRICS", long, value_enum, value_name = "MODE")]
    pub otlp_metrics: Option<OnOff>,

    /// How often metrics are sent over OTLP. Default: OTEL_METRIC_EXPORT_INTERVAL (milliseconds),
    /// else 60s.
    #[arg(env = "SONDE_METRICS_INTERVAL", long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub metrics_interval: Option<std::time::Duration>,

    /// A route template for `http.route` (repeatable), e.g. `/users/{id}/orders/{order}` or
    /// `/static/**`: `{name}` and `*` match one path segment, a final `**` the rest. The first
    /// pattern that matches wins; paths no pattern matches get the heuristic template
    /// (numbers, UUIDs, hashes and other id-like segments become `{id}`; see docs/metrics.md).
    #[arg(env = "SONDE_ROUTE", long = "route", value_name = "PATTERN")]
    pub routes: Vec<crate::metrics::route::RoutePattern>,

    /// Distinct heuristic routes a service may have in the metrics; later new ones are reported
    /// as `/{overflow}` (route patterns given with `--route` do not count).
    #[arg(env = "SONDE_MAX_ROUTES_PER_SERVICE", long, value_name = "N", default_value_t = 200)]
    pub max_routes_per_service: usize,

    /// Kubernetes metadata (`k8s.*` resource attributes, service names from pod annotations,
    /// labels and workloads): `on` watches this node's pods through the API server, `off` does
    /// not, `auto` does when running in a cluster (KUBERNETES_SERVICE_HOST is set) or with
    /// `--kube-api`.
    #[arg(long, env = "SONDE_KUBERNETES", value_enum, value_name = "MODE", default_value_t = KubernetesMode::Auto)]
    pub kubernetes: KubernetesMode,

    /// The API server's URL (http:// or https://), used as it is (no credentials: a local API
    /// server or `kubectl proxy`). Default: the pod's service account, else the kubeconfig.
    #[arg(long, env = "SONDE_KUBE_API", value_name = "URL", value_parser = values::http_url)]
    pub kube_api: Option<String>,

    /// This node's name, whose pods are watched (the DaemonSet sets it from `spec.nodeName`).
    /// Default: the host name.
    #[arg(long, env = "SONDE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Spans waiting for export beyond this are dropped and counted.
    #[arg(env = "SONDE_MAX_QUEUE_SPANS", long, value_name = "SPANS", default_value_t = 8192)]
    pub max_queue_spans: usize,

    /// Log filter for sonde's own diagnostics on stderr (RUST_LOG, when set, wins), e.g. `info`,
    /// `sonde=debug`. The kernel programs' diagnostics log under `sonde::kernel`, all at debug or
    /// trace, so they stay off at the default level: `sonde::kernel=debug` switches them on.
    #[arg(env = "SONDE_LOG", long, value_name = "FILTER", default_value = "info", value_parser = values::log_filter)]
    pub log: String,
}

/// Whether Kubernetes metadata is watched (`--kubernetes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubernetesMode {
    /// When in a cluster, or given `--kube-api`.
    #[default]
    Auto,
    On,
    Off,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Whether TLS libraries are hooked (`--tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    #[default]
    On,
    Off,
}

/// Whether goroutines of Go programs are followed (`--go`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GoMode {
    #[default]
    On,
    Off,
}

/// Whether trace context goes on the wire (`--context-propagation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextPropagation {
    #[default]
    Off,
    /// In a TCP header option.
    Tcp,
    /// In a `traceparent` header written into request heads.
    Headers,
    /// Both; the TCP option alone where the kernel refuses headers.
    All,
}

/// What sonde does for processes that export their own traces (`--sdk-processes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SdkProcesses {
    /// No sonde spans for them: their SDK's spans stand for their requests.
    #[default]
    Skip,
    /// sonde's spans too (each of their requests then appears twice).
    Trace,
}
