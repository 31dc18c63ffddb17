//! The few /proc reads sonde needs per process. Every read may fail (the process exited, or we
//! lack CAP_SYS_PTRACE for its environ): missing facts are `None`, never an error.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub exe_name: Option<String>,
    pub exe_path: Option<String>,
    pub command_line: Option<String>,
    pub env_service_name: Option<String>,
    /// Its `OTEL_RESOURCE_ATTRIBUTES`, parsed.
    pub env_resource_attributes: Vec<(String, String)>,
    /// From its cgroup: the container it runs in.
    pub container_id: Option<String>,
    /// Why the process looks like it runs an OpenTelemetry SDK of its own (see [`own_sdk`]).
    pub own_sdk: Option<String>,
    /// A Go program: its threads are shared by goroutines (see `runtime::is_go`).
    pub go_runtime: bool,
}

impl ProcInfo {
    /// A process that is gone: only the command name the kernel saw (`comm`) is known.
    pub fn gone(comm: Option<&str>) -> ProcInfo {
        ProcInfo { exe_name: comm.filter(|c| !c.is_empty()).map(str::to_owned), ..ProcInfo::default() }
    }
}

/// Nanoseconds per clock tick of /proc/PID/stat's times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ns_per_tick() -> u64 {
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
    })
}

/// Longest command line kept (attribute values must stay bounded).
const MAX_COMMAND_LINE: usize = 1024;

/// `comm`: the command name from the kernel event, used when the process is already gone.
pub fn read(pid: u32, comm: Option<&str>) -> ProcInfo {
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_owned());
    let exe_name = exe_path.as_deref().and_then(|p| p.rsplit('/').next()).map(str::to_owned).or_else(|| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|c| c.trim().to_owned())
            .or_else(|| comm.filter(|c| !c.is_empty()).map(str::to_owned))
    });
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|raw| {
        let mut s: String = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        truncate(&mut s, MAX_COMMAND_LINE);
        s
    });
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let env_service_name = env_var(&environ, b"OTEL_SERVICE_NAME");
    let env_resource_attributes = env_var(&environ, b"OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| super::otel_env::resource_attributes(&v))
        .unwrap_or_default();
    let own_sdk = own_sdk(command_line.as_deref(), &environ);
    // Through /proc: the executable of a process in another mount namespace too.
    let go_runtime =
        exe_path.is_some() && super::runtime::is_go(std::path::Path::new(&format!("/proc/{pid}/exe")));
    ProcInfo {
        exe_name,
        exe_path,
        command_line: command_line.filter(|c| !c.is_empty()),
        env_service_name,
        env_resource_attributes,
        container_id: super::container::read(pid),
        own_sdk,
        go_runtime,
    }
}

/// Variables through which OpenTelemetry's zero-code instrumentations load into a process.
const AGENT_VARIABLES: &[&str] =
    &["PYTHONPATH", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "RUBYOPT"];

/// Whether a process loads an OpenTelemetry SDK, from how it was started: `opentelemetry-instrument`
/// puts its `auto_instrumentation` directory on `PYTHONPATH`, Node's and Java's agents come in
/// through `--require`/`-javaagent` on the command line or the runtime's options variable, .NET's
/// through `OTEL_DOTNET_AUTO_HOME`. Deliberately not `OTEL_EXPORTER_OTLP_*`: platforms set those
/// for every workload, SDK or not, and a process wrongly taken for instrumented would lose its spans.
pub fn own_sdk(command_line: Option<&str>, environ: &[u8]) -> Option<String> {
    if command_line.is_some_and(|c| c.contains("opentelemetry")) {
        return Some("its command line loads OpenTelemetry".into());
    }
    for name in AGENT_VARIABLES {
        if env_var(environ, name.as_bytes()).is_some_and(|v| v.contains("opentelemetry")) {
            return Some(format!("{name} loads OpenTelemetry"));
        }
    }
    env_var(environ, b"OTEL_DOTNET_AUTO_HOME").map(|_| "OTEL_DOTNET_AUTO_HOME is set".into())
}

/// The value of `name` in a NUL-separated environ block.
pub fn env_var(environ: &[u8], name: &[u8]) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name)?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_matches_whole_names() {
        let env = b"OTEL_SERVICE_NAME_X=no\0PATH=/bin\0OTEL_SERVICE_NAME=cart\0";
        assert_eq!(env_var(env, b"OTEL_SERVICE_NAME").as_deref(), Some("cart"));
        assert_eq!(env_var(b"", b"OTEL_SERVICE_NAME"), None);
    }

    #[test]
    fn own_sdk_from_how_the_process_started() {
        let python = b"PYTHONPATH=/venv/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation:/app\0";
        assert_eq!(
            own_sdk(Some("python3 app.py"), python).as_deref(),
            Some("PYTHONPATH loads OpenTelemetry")
        );
        let node = "node --require @opentelemetry/auto-instrumentations-node/register app.js";
        assert!(own_sdk(Some(node), b"").is_some());
        // A platform's exporter settings alone say nothing about the process.
        let platform = b"OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318\0OTEL_SERVICE_NAME=cart\0";
        assert_eq!(own_sdk(Some("python3 app.py"), platform), None);
    }

    #[test]
    fn start_time_of_self() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
