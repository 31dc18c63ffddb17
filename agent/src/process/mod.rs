//! Process metadata: the OTel resource of each traced process, read once from /proc and cached.
//!
//! `service.name` comes from the process's own `OTEL_SERVICE_NAME`, else `service.name` in its
//! `OTEL_RESOURCE_ATTRIBUTES` (what its SDK would use), else its executable name. The rest of its
//! `OTEL_RESOURCE_ATTRIBUTES` is added, and `container.id` when its cgroup names a container. Entries are keyed by pid and checked against the process start time, so a
//! reused pid does not inherit another program's resource.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;

use crate::{
    metadata::{PodMeta, Pods},
    semconv::resource,
    span::model::{KeyValue, Resource},
};

mod container;
mod otel_env;
mod procfs;
mod runtime;

pub use procfs::{ProcInfo, read as read_info};

/// Upper bound on cached processes; beyond it the least recently used half is dropped.
const MAX_CACHED: usize = 16_384;

/// How often a cached process's start time is read again to catch a reused pid. Reading
/// `/proc/PID/stat` on every new connection cost more than everything else sonde does for a
/// request on a server that opens a connection per request. The kernel reports exits
/// (`ProcessCache::exited`), so this only matters where that tracepoint is missing; a pid is
/// reused only after the pid space wraps around, and the periodic sweep drops exited processes.
const REVALIDATE_EVERY: Duration = Duration::from_secs(1);

pub struct ProcessCache {
    host_name: String,
    entries: HashMap<u32, Entry>,
    clock: u64,
    /// Kubernetes metadata, when sonde watches the API server.
    pods: Option<Pods>,
}

struct Entry {
    start_time: u64,
    info: ProcInfo,
    resource: Arc<Resource>,
    last_used: u64,
    checked_at: Instant,
    /// `Pods::generation` when `resource` was built: a container's resource is built again when
    /// its pod may have changed (or arrived after the process was first seen).
    pods_generation: u64,
    /// Seen receiving OTLP exports (`mark_otlp_receiver`).
    receives_otlp: bool,
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCache {
    pub fn new() -> Self {
        Self { host_name: host_name(), entries: HashMap::default(), clock: 0, pods: None }
    }

    /// With Kubernetes metadata from `pods`.
    pub fn with_pods(pods: Pods) -> Self {
        Self { pods: Some(pods), ..Self::new() }
    }

    /// The pod of a process's container, and the generation of the pods it was looked up in.
    fn pod_of(&self, info: &ProcInfo) -> (Option<Arc<PodMeta>>, u64) {
        match (&self.pods, &info.container_id) {
            (Some(pods), Some(id)) => (pods.lookup(id), pods.generation()),
            (Some(pods), None) => (None, pods.generation()),
            (None, _) => (None, 0),
        }
    }

    /// `pid`'s resource from its /proc facts and, with Kubernetes metadata, its pod; with the
    /// pods' generation it reflects.
    fn resource_of(&self, pid: u32, start_time: u64, info: &ProcInfo) -> (Arc<Resource>, u64) {
        let (pod, generation) = self.pod_of(info);
        let container = info.container_id.as_deref().unwrap_or_default();
        let pod = pod.as_deref().map(|p| (p, container));
        (Arc::new(build_resource(pid, start_time, info, &self.host_name, pod)), generation)
    }

    /// Builds `pid`'s resource again if its pod may have changed since.
    fn refresh_pod(&mut self, pid: u32) {
        let Some(generation) = self.pods.as_ref().map(Pods::generation) else { return };
        let Some(e) = self.entries.get(&pid) else { return };
        if e.pods_generation == generation || e.info.container_id.is_none() {
            return;
        }
        let (resource, generation) = self.resource_of(pid, e.start_time, &e.info);
        let e = self.entries.get_mut(&pid).expect("looked up above");
        e.resource = resource;
        e.pods_generation = generation;
    }

    /// The resource of `pid` for a new connection: the start time is checked against the cache
    /// (at most every `REVALIDATE_EVERY`), so a reused pid is read afresh. Called once per
    /// connection, not per span.
    /// `comm`: the command name the kernel saw, for a process gone before /proc could be read.
    /// `start_ns`: when the kernel says the process started (`ConnEvent::start_ns`, 0: unknown):
    /// if /proc/PID is by now another process's, only `comm` describes this one.
    pub fn observe(&mut self, pid: u32, comm: Option<&str>, start_ns: u64) -> Arc<Resource> {
        self.entry(pid, comm, start_ns).resource.clone()
    }

    /// What `/proc` says about `pid` (executable, command line, …), cached like `observe`: for
    /// `--exe`, which is decided once per new connection.
    pub fn info(&mut self, pid: u32, comm: Option<&str>, start_ns: u64) -> ProcInfo {
        self.entry(pid, comm, start_ns).info.clone()
    }

    /// What selection asks of `pid`: its /proc facts and, with Kubernetes metadata, its pod.
    pub fn subject(&mut self, pid: u32, comm: Option<&str>, start_ns: u64) -> crate::conn::select::Subject {
        let info = self.info(pid, comm, start_ns);
        let (pod, _) = self.pod_of(&info);
        crate::conn::select::Subject { info, pod }
    }

    fn entry(&mut self, pid: u32, comm: Option<&str>, start_ns: u64) -> &Entry {
        self.clock += 1;
        let now = Instant::now();
        // The kernel's word on which process this is, in /proc/PID/stat's clock ticks.
        let started = (start_ns != 0).then(|| start_ns / procfs::ns_per_tick());
        // Some(start time) when the entry must be (re)built.
        let rebuild = match (self.entries.get_mut(&pid), started) {
            (Some(e), Some(ticks)) if e.start_time == ticks => None,
            (_, Some(ticks)) => Some(ticks),
            (Some(e), None) if now.duration_since(e.checked_at) < REVALIDATE_EVERY => None,
            (Some(e), None) => {
                let start_time = procfs::start_time(pid).unwrap_or(0);
                if e.start_time == start_time || start_time == 0 {
                    e.checked_at = now;
                    None
                } else {
                    Some(start_time)
                }
            }
            (None, None) => Some(procfs::start_time(pid).unwrap_or(0)),
        };
        if let Some(start_time) = rebuild {
            if self.entries.len() >= MAX_CACHED {
                self.evict_half();
            }
            // The process may have exited since the event, and its pid been taken: /proc/PID
            // then describes another process, and only what the event carried is this one's.
            let same = started.is_none() || procfs::start_time(pid) == Some(start_time);
            let info = if same { procfs::read(pid, comm) } else { ProcInfo::gone(comm) };
            if let Some(why) = &info.own_sdk {
                log_own_sdk(pid, &info, why);
            }
            let (resource, pods_generation) = self.resource_of(pid, start_time, &info);
            let entry = Entry {
                start_time,
                info,
                resource,
                last_used: self.clock,
                checked_at: now,
                pods_generation,
                receives_otlp: false,
            };
            self.entries.insert(pid, entry);
        } else {
            self.refresh_pod(pid);
        }
        let clock = self.clock;
        let entry = self.entries.get_mut(&pid).expect("present: found fresh or just inserted");
        entry.last_used = clock;
        entry
    }

    /// The cached resource of `pid` (per span: no /proc access unless the pid is new).
    pub fn resource(&mut self, pid: u32) -> Arc<Resource> {
        self.refresh_pod(pid);
        self.clock += 1;
        match self.entries.get_mut(&pid) {
            Some(e) => {
                e.last_used = self.clock;
                e.resource.clone()
            }
            None => self.observe(pid, None, 0),
        }
    }

    /// Whether `pid` looks like it runs an OpenTelemetry SDK of its own (per span: cached).
    pub fn has_own_sdk(&mut self, pid: u32) -> bool {
        match self.entries.get(&pid) {
            Some(e) => e.info.own_sdk.is_some(),
            None => self.entry(pid, None, 0).info.own_sdk.is_some(),
        }
    }

    /// Whether `pid` is a Go program, whose threads goroutines share (per request: cached).
    pub fn runs_goroutines(&mut self, pid: u32) -> bool {
        match self.entries.get(&pid) {
            Some(e) => e.info.go_runtime,
            None => self.entry(pid, None, 0).info.go_runtime,
        }
    }

    /// `pid` was seen receiving an OTLP export: a collector, or a proxy in front of one. What it
    /// sends on is forwarded, not its own SDK's (see `mark_own_sdk`). Kept with the process's other
    /// facts, so that a pid taken by another program starts without it.
    pub fn mark_otlp_receiver(&mut self, pid: u32) {
        self.entry(pid, None, 0);
        if let Some(e) = self.entries.get_mut(&pid) {
            e.receives_otlp = true;
        }
    }

    /// `pid` was seen exporting traces itself (an SDK set up in code, which nothing in how the
    /// process started reveals) — unless it receives OTLP exports too, and so forwards them.
    pub fn mark_own_sdk(&mut self, pid: u32, why: &'static str) {
        let entry = self.entry(pid, None, 0);
        if entry.info.own_sdk.is_none() && !entry.receives_otlp {
            log_own_sdk(pid, &entry.info, why);
            if let Some(e) = self.entries.get_mut(&pid) {
                e.info.own_sdk = Some(why.to_owned());
            }
        }
    }

    /// Whether `pid` is cached: it had a traced connection.
    pub fn knows(&self, pid: u32) -> bool {
        self.entries.contains_key(&pid)
    }

    /// `pid` exited (the kernel said so): a process that gets the pid next is read afresh, even
    /// within `REVALIDATE_EVERY`.
    pub fn exited(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Forget processes that have exited.
    pub fn sweep(&mut self) {
        self.entries.retain(|pid, _| procfs::exists(*pid));
    }

    fn evict_half(&mut self) {
        let mut ages: Vec<u64> = self.entries.values().map(|e| e.last_used).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        self.entries.retain(|_, e| e.last_used > cutoff);
    }
}

/// Once per process: the tests and users look for this line.
fn log_own_sdk(pid: u32, info: &ProcInfo, why: &str) {
    let exe = info.exe_name.as_deref().unwrap_or("?");
    tracing::info!(pid, exe, why, "process has an OpenTelemetry SDK of its own");
}

/// Attribute prefixes only sonde sets: a process's `OTEL_RESOURCE_ATTRIBUTES` cannot claim them.
const OWN_KEYS: &[&str] =
    &["process.", "telemetry.sdk.", "host.", "container.", "k8s.", "service.instance.id"];

/// The resource of process `pid`; `pod` is its pod and container id when Kubernetes knows them.
pub fn build_resource(
    pid: u32,
    start_time: u64,
    info: &ProcInfo,
    host_name: &str,
    pod: Option<(&PodMeta, &str)>,
) -> Resource {
    let from_attributes = info
        .env_resource_attributes
        .iter()
        .find(|(k, _)| k == resource::SERVICE_NAME)
        .map(|(_, v)| v.clone());
    let from_pod = pod.and_then(|(p, _)| p.service_name()).map(str::to_owned);
    let service_name = [info.env_service_name.clone(), from_attributes, from_pod]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| info.exe_name.clone().unwrap_or_else(|| format!("pid-{pid}")));
    let mut attributes = vec![
        KeyValue::str(resource::SERVICE_NAME, service_name.clone()),
        // One instance per process on a host: what tells two processes of one service apart
        // (their metric series above all). The start time (clock ticks after boot) keeps a
        // reused pid from continuing an exited process's series.
        KeyValue::str(resource::SERVICE_INSTANCE_ID, format!("{host_name}:{pid}:{start_time}")),
        KeyValue::int(resource::PROCESS_PID, pid as i64),
        KeyValue::str(resource::HOST_NAME, host_name.to_owned()),
        KeyValue::str(resource::TELEMETRY_SDK_NAME, "sonde"),
        KeyValue::str(resource::TELEMETRY_SDK_VERSION, env!("CARGO_PKG_VERSION")),
        KeyValue::str(resource::TELEMETRY_SDK_LANGUAGE, "rust"),
    ];
    if let Some(name) = &info.exe_name {
        attributes.push(KeyValue::str(resource::PROCESS_EXECUTABLE_NAME, name.clone()));
    }
    if let Some(path) = &info.exe_path {
        attributes.push(KeyValue::str(resource::PROCESS_EXECUTABLE_PATH, path.clone()));
    }
    if let Some(cmd) = &info.command_line {
        attributes.push(KeyValue::str(resource::PROCESS_COMMAND_LINE, cmd.clone()));
    }
    if let Some(id) = &info.container_id {
        attributes.push(KeyValue::str("container.id", id.clone()));
    }
    if let Some((pod, container)) = pod {
        attributes.extend(pod.attributes(container));
    }
    // What the process's SDK would add, then the pod's `resource.opentelemetry.io/*` annotations;
    // the facts sonde reads itself stand.
    let annotations =
        pod.into_iter().flat_map(|(p, _)| p.resource_annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let claimed: Vec<(String, String)> =
        info.env_resource_attributes.iter().cloned().chain(annotations).collect();
    for (key, value) in &claimed {
        if !attributes.iter().any(|kv| kv.key == key.as_str()) && !OWN_KEYS.iter().any(|p| key.starts_with(p))
        {
            attributes.push(KeyValue::str(key.clone(), value.clone()));
        }
    }
    let id = ((pid as u64) << 32) ^ start_time;
    Resource { id, service_name, attributes }
}

/// The resource of sonde itself, for its own metrics.
pub fn own_resource() -> Resource {
    let pid = std::process::id();
    let info = ProcInfo { env_service_name: Some("sonde".into()), ..procfs::read(pid, None) };
    build_resource(pid, procfs::start_time(pid).unwrap_or(0), &info, &host_name(), None)
}

/// This host's name, as `host.name` reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether a process still exists (its connections are dropped once it is gone).
pub fn alive(pid: u32) -> bool {
    procfs::exists(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_prefers_the_process_env() {
        let info = ProcInfo {
            exe_name: Some("python3.11".into()),
            exe_path: Some("/usr/bin/python3.11".into()),
            command_line: Some("python3 -m http.server".into()),
            env_service_name: Some("checkout".into()),
            own_sdk: None,
            ..ProcInfo::default()
        };
        let r = build_resource(42, 1, &info, "host-a", None);
        assert_eq!(r.service_name, "checkout");
        let r = build_resource(42, 1, &ProcInfo { env_service_name: None, ..info.clone() }, "host-a", None);
        assert_eq!(r.service_name, "python3.11");
        assert!(r.attributes.contains(&KeyValue::int("process.pid", 42)));
        assert!(r.attributes.contains(&KeyValue::str("process.command_line", "python3 -m http.server")));
        let r = build_resource(42, 1, &ProcInfo::default(), "host-a", None);
        assert_eq!(r.service_name, "pid-42");
    }

    #[test]
    fn resource_attributes_from_the_process_env_and_its_container() {
        let pairs =
            |list: &[(&str, &str)]| list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let info = ProcInfo {
            exe_name: Some("java".into()),
            env_resource_attributes: pairs(&[
                ("service.name", "orders"),
                ("deployment.environment.name", "prod"),
                ("process.pid", "1"),
                ("host.name", "spoofed"),
                ("service.version", "2.1"),
            ]),
            container_id: Some("ab".repeat(32)),
            ..ProcInfo::default()
        };
        let r = build_resource(42, 1, &info, "host-a", None);
        assert_eq!(
            r.service_name, "orders",
            "service.name in OTEL_RESOURCE_ATTRIBUTES, after OTEL_SERVICE_NAME"
        );
        let has = |k: &str, v: &str| r.attributes.contains(&KeyValue::str(k.to_owned(), v.to_owned()));
        assert!(has("deployment.environment.name", "prod") && has("service.version", "2.1"));
        assert!(has("container.id", &"ab".repeat(32)) && has("host.name", "host-a"));
        assert!(r.attributes.contains(&KeyValue::int("process.pid", 42)), "sonde's own facts stand");
        assert_eq!(r.attributes.iter().filter(|kv| kv.key == "service.name").count(), 1);
        let named = ProcInfo { env_service_name: Some("checkout".into()), ..info };
        assert_eq!(build_resource(42, 1, &named, "h", None).service_name, "checkout");
    }

    #[test]
    fn reads_this_process() {
        let mut cache = ProcessCache::new();
        let r = cache.resource(std::process::id());
        assert!(r.attributes.iter().any(|kv| kv.key == "process.executable.name"));
        assert!(Arc::ptr_eq(&r, &cache.resource(std::process::id())));
        assert!(Arc::ptr_eq(&r, &cache.observe(std::process::id(), None, 0)), "same start time, same entry");
    }

    #[test]
    fn a_reused_pid_is_read_afresh_once_revalidation_is_due() {
        let pid = std::process::id();
        let mut cache = ProcessCache::new();
        let real = cache.observe(pid, None, 0);
        // Pretend the cached entry belonged to an earlier process with this pid.
        let stale = Arc::new(build_resource(pid, 1, &ProcInfo::default(), "host-a", None));
        let entry = cache.entries.get_mut(&pid).unwrap();
        entry.start_time = 1;
        entry.resource = stale.clone();
        assert!(Arc::ptr_eq(&stale, &cache.observe(pid, None, 0)), "checked just now: not read again");

        cache.entries.get_mut(&pid).unwrap().checked_at = Instant::now() - REVALIDATE_EVERY;
        let fresh = cache.observe(pid, None, 0);
        assert!(!Arc::ptr_eq(&stale, &fresh), "start time differs: read afresh");
        assert_eq!(fresh.service_name, real.service_name);
    }

    #[test]
    fn the_kernels_start_time_tells_a_process_from_its_pids_next_owner() {
        let pid = std::process::id();
        let ticks = procfs::start_time(pid).unwrap();
        let mut cache = ProcessCache::new();
        // The event's process is the one /proc shows: read from /proc.
        let this = cache.observe(pid, Some("ghost"), ticks * procfs::ns_per_tick());
        assert_ne!(this.service_name, "ghost");
        // An event of an earlier process with this pid (gone since): only its comm describes it,
        // never what /proc says of the process there now.
        let earlier = cache.observe(pid, Some("ghost"), (ticks - 3) * procfs::ns_per_tick());
        assert_eq!(earlier.service_name, "ghost");
        // And the current process is read again when its own event comes.
        let again = cache.observe(pid, Some("ghost"), ticks * procfs::ns_per_tick());
        assert_eq!(again.service_name, this.service_name);
    }

    #[test]
    fn a_container_process_gets_its_pod_once_the_pod_is_known() {
        let pid = std::process::id();
        let pods = Pods::default();
        let mut cache = ProcessCache::with_pods(pods.clone());
        cache.observe(pid, None, 0);
        // As if this process ran in container "c1".
        cache.entries.get_mut(&pid).unwrap().info.container_id = Some("c1".into());
        let before = cache.resource(pid);
        assert!(!before.attributes.iter().any(|kv| kv.key.starts_with("k8s.")));
        pods.upsert(PodMeta {
            namespace: "shop".into(),
            name: "cart-1".into(),
            uid: "u1".into(),
            labels: [("app.kubernetes.io/name".to_owned(), "cart".to_owned())].into(),
            containers: vec![("c1".into(), "app".into())],
            ..PodMeta::default()
        });
        let after = cache.resource(pid);
        assert!(
            after.attributes.contains(&KeyValue::str("k8s.pod.name", "cart-1")),
            "{:?}",
            after.attributes
        );
        assert_eq!(after.service_name, "cart", "the pod's app.kubernetes.io/name label names it");
        assert_eq!(after.id, before.id, "the same process");
        assert!(Arc::ptr_eq(&after, &cache.resource(pid)), "built again only when the pods change");
    }
}
