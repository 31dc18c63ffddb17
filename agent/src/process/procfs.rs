//! The few /proc reads sonde needs per process, through the `procfs` crate. Every read may fail
//! (the process exited, or we lack CAP_SYS_PTRACE for its environ): missing facts are `None`,
//! never an error.

use std::{collections::HashMap, ffi::OsString};

use ::procfs::process::Process;

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
    *NS.get_or_init(|| 1_000_000_000 / ::procfs::ticks_per_second().max(1))
}

/// Longest command line kept (attribute values must stay bounded).
const MAX_COMMAND_LINE: usize = 1024;

/// `comm`: the command name from the kernel event, used when the process is already gone.
pub fn read(pid: u32, comm: Option<&str>) -> ProcInfo {
    let Some(process) = i32::try_from(pid).ok().and_then(|pid| Process::new(pid).ok()) else {
        return ProcInfo::gone(comm);
    };
    let exe_path = process.exe().ok().map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_owned());
    let exe_name = exe_path.as_deref().and_then(|p| p.rsplit('/').next()).map(str::to_owned).or_else(|| {
        process.stat().ok().map(|s| s.comm).or_else(|| comm.filter(|c| !c.is_empty()).map(str::to_owned))
    });
    let command_line = process.cmdline().ok().map(|args| {
        let mut s = args.iter().filter(|a| !a.is_empty()).map(String::as_str).collect::<Vec<_>>().join(" ");
        truncate(&mut s, MAX_COMMAND_LINE);
        s
    });
    let environ = process.environ().unwrap_or_default();
    let env_service_name = env_var(&environ, "OTEL_SERVICE_NAME");
    let env_resource_attributes = env_var(&environ, "OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| super::otel_env::resource_attributes(&v))
        .unwrap_or_default();
    let own_sdk = own_sdk(command_line.as_deref(), &environ);
    // Through /proc: the executable of a process in another mount namespace too.
    let go_runtime =
        exe_path.is_some() && super::runtime::is_go(std::path::Path::new(&format!("/proc/{pid}/exe")));
    let container_id = process
        .cgroups()
        .ok()
        .and_then(|groups| groups.into_iter().find_map(|g| super::container::from_path(&g.pathname)));
    ProcInfo {
        exe_name,
        exe_path,
        command_line: command_line.filter(|c| !c.is_empty()),
        env_service_name,
        env_resource_attributes,
        container_id,
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
pub fn own_sdk(command_line: Option<&str>, environ: &HashMap<OsString, OsString>) -> Option<String> {
    if command_line.is_some_and(|c| c.contains("opentelemetry")) {
        return Some("its command line loads OpenTelemetry".into());
    }
    for name in AGENT_VARIABLES {
        if env_var(environ, name).is_some_and(|v| v.contains("opentelemetry")) {
            return Some(format!("{name} loads OpenTelemetry"));
        }
    }
    env_var(environ, "OTEL_DOTNET_AUTO_HOME").map(|_| "OTEL_DOTNET_AUTO_HOME is set".into())
}

/// The value of `name` in a process's environment, as text.
pub fn env_var(environ: &HashMap<OsString, OsString>, name: &str) -> Option<String> {
    environ.get(std::ffi::OsStr::new(name)).map(|v| v.to_string_lossy().into_owned())
}

/// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
pub fn start_time(pid: u32) -> Option<u64> {
    Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok().map(|s| s.starttime)
}

pub fn exists(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| Process::new(pid).is_ok())
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

    fn environ(vars: &[(&str, &str)]) -> HashMap<OsString, OsString> {
        vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn env_var_matches_whole_names() {
        let env = environ(&[("OTEL_SERVICE_NAME_X", "no"), ("PATH", "/bin"), ("OTEL_SERVICE_NAME", "cart")]);
        assert_eq!(env_var(&env, "OTEL_SERVICE_NAME").as_deref(), Some("cart"));
        assert_eq!(env_var(&HashMap::new(), "OTEL_SERVICE_NAME"), None);
    }

    #[test]
    fn own_sdk_from_how_the_process_started() {
        let python = environ(&[(
            "PYTHONPATH",
            "/venv/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation:/app",
        )]);
        assert_eq!(
            own_sdk(Some("python3 app.py"), &python).as_deref(),
            Some("PYTHONPATH loads OpenTelemetry")
        );
        let node = "node --require @opentelemetry/auto-instrumentations-node/register app.js";
        assert!(own_sdk(Some(node), &HashMap::new()).is_some());
        // A platform's exporter settings alone say nothing about the process.
        let platform = environ(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "cart"),
        ]);
        assert_eq!(own_sdk(Some("python3 app.py"), &platform), None);
    }

    #[test]
    fn this_process_as_read_through_procfs() {
        let me = read(std::process::id(), None);
        assert!(me.exe_path.is_some() && me.exe_name.is_some(), "{me:?}");
        assert!(me.command_line.is_some(), "{me:?}");
        assert!(!me.go_runtime);
        assert!(exists(std::process::id()));
        assert!(!exists(u32::MAX));
        assert_eq!(read(u32::MAX, Some("gone")).exe_name.as_deref(), Some("gone"));
    }

    #[test]
    fn start_time_of_self() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
