//! Which connections are parsed. Include criteria narrow each other (a connection must match every
//! one given; one not given matches all): `--pid` (also enforced in the kernel), `--port` (either
//! end of the connection), `--exe` (glob on the executable's name or full path), `--container`
//! (a prefix of the process's container id), and Kubernetes ones — `--k8s-namespace`,
//! `--k8s-pod-label KEY=VALUE` (the pod has every one given), `--k8s-workload [KIND/]NAME`.
//! Exclude criteria of the same kinds then take out whatever any of them matches. A process
//! outside Kubernetes matches no Kubernetes criterion. Processes are judged when sonde first sees their connections, so
//! processes started later are selected by the same rules without a restart.

use std::sync::Arc;

use super::ConnInfo;
use crate::{metadata::PodMeta, process::ProcInfo};

/// What selection may ask of a connection's process.
#[derive(Debug, Default, Clone)]
pub struct Subject {
    pub info: ProcInfo,
    /// Its pod, when Kubernetes metadata knows it.
    pub pod: Option<Arc<PodMeta>>,
}

impl From<ProcInfo> for Subject {
    fn from(info: ProcInfo) -> Self {
        Subject { info, pod: None }
    }
}

/// A pod label asked for: `KEY=VALUE` (`--k8s-pod-label`); the value may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLabel {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for PodLabel {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                Ok(PodLabel { key: key.to_owned(), value: value.to_owned() })
            }
            _ => Err("expected KEY=VALUE"),
        }
    }
}

/// What the flags ask for (`RunArgs`' selection flags), parsed.
#[derive(Debug, Default, Clone)]
pub struct Criteria {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    /// On the executable's name or full path.
    pub exes: Vec<glob::Pattern>,
    pub containers: Vec<String>,
    pub namespaces: Vec<String>,
    pub pod_labels: Vec<PodLabel>,
    /// `NAME` or `KIND/NAME`, e.g. `Deployment/cart`.
    pub workloads: Vec<String>,
}

#[derive(Debug, Default)]
struct Compiled {
    pids: Vec<u32>,
    ports: Vec<u16>,
    exes: Vec<glob::Pattern>,
    containers: Vec<String>,
    namespaces: Vec<String>,
    pod_labels: Vec<PodLabel>,
    workloads: Vec<(Option<String>, String)>,
}

impl Compiled {
    fn new(c: &Criteria) -> Self {
        let workloads = c
            .workloads
            .iter()
            .map(|w| match w.split_once('/') {
                Some((kind, name)) => (Some(kind.to_owned()), name.to_owned()),
                None => (None, w.clone()),
            })
            .collect();
        Self {
            pids: c.pids.clone(),
            ports: c.ports.clone(),
            exes: c.exes.clone(),
            containers: c.containers.iter().map(|id| id.to_ascii_lowercase()).collect(),
            namespaces: c.namespaces.clone(),
            pod_labels: c.pod_labels.clone(),
            workloads,
        }
    }

    fn namespace(&self, pod: Option<&PodMeta>) -> bool {
        pod.is_some_and(|p| self.namespaces.contains(&p.namespace))
    }

    /// Include: the pod has every label given; exclude: any.
    fn labels(&self, pod: Option<&PodMeta>, all: bool) -> bool {
        let Some(pod) = pod else { return false };
        let has = |l: &PodLabel| pod.labels.get(&l.key) == Some(&l.value);
        if all { self.pod_labels.iter().all(has) } else { self.pod_labels.iter().any(has) }
    }

    fn workload(&self, pod: Option<&PodMeta>) -> bool {
        let Some((kind, name)) = pod.and_then(|p| p.workload.as_ref()) else { return false };
        self.workloads
            .iter()
            .any(|(k, n)| n == name && k.as_ref().is_none_or(|k| k.eq_ignore_ascii_case(kind)))
    }

    fn port(&self, conn: &ConnInfo) -> bool {
        [conn.local_port(), conn.remote_port()].iter().flatten().any(|p| self.ports.contains(p))
    }

    fn exe(&self, info: &ProcInfo) -> bool {
        let names = [info.exe_name.as_deref(), info.exe_path.as_deref()];
        names.iter().flatten().any(|n| self.exes.iter().any(|p| p.matches(n)))
    }

    fn container(&self, info: &ProcInfo) -> bool {
        info.container_id
            .as_deref()
            .is_some_and(|id| self.containers.iter().any(|c| id.starts_with(c.as_str())))
    }

    fn needs_process(&self) -> bool {
        !self.exes.is_empty()
            || !self.containers.is_empty()
            || !self.namespaces.is_empty()
            || !self.pod_labels.is_empty()
            || !self.workloads.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Selector {
    include: Compiled,
    exclude: Compiled,
}

impl Selector {
    pub fn new(include: &Criteria, exclude: &Criteria) -> Self {
        Self { include: Compiled::new(include), exclude: Compiled::new(exclude) }
    }

    /// Whether `conn` is traced; `process` is read only if a criterion needs it.
    pub fn accepts(&self, conn: &ConnInfo, process: impl FnOnce() -> Subject) -> bool {
        let (inc, exc) = (&self.include, &self.exclude);
        if (!inc.pids.is_empty() && !inc.pids.contains(&conn.pid)) || exc.pids.contains(&conn.pid) {
            return false;
        }
        if (!inc.ports.is_empty() && !inc.port(conn)) || (!exc.ports.is_empty() && exc.port(conn)) {
            return false;
        }
        if !inc.needs_process() && !exc.needs_process() {
            return true;
        }
        let Subject { info, pod } = process();
        let pod = pod.as_deref();
        (inc.exes.is_empty() || inc.exe(&info))
            && (inc.containers.is_empty() || inc.container(&info))
            && (inc.namespaces.is_empty() || inc.namespace(pod))
            && (inc.pod_labels.is_empty() || inc.labels(pod, true))
            && (inc.workloads.is_empty() || inc.workload(pod))
            && !exc.exe(&info)
            && !exc.container(&info)
            && !exc.namespace(pod)
            && !exc.labels(pod, false)
            && !exc.workload(pod)
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::Role;

    use super::*;

    fn conn(pid: u32, local: u16, remote: u16) -> ConnInfo {
        ConnInfo {
            id: 1,
            pid,
            fd: 3,
            role: Role::Server,
            local: Some(([127, 0, 0, 1], local).into()),
            remote: Some(([127, 0, 0, 1], remote).into()),
            tls: false,
        }
    }

    fn nginx() -> ProcInfo {
        ProcInfo {
            exe_name: Some("nginx".into()),
            exe_path: Some("/usr/sbin/nginx".into()),
            ..Default::default()
        }
    }

    #[test]
    fn criteria_narrow_each_other() {
        let all = Selector::default();
        assert!(all.accepts(&conn(1, 80, 5000), Subject::default));

        let by_port = include(Criteria { ports: vec![80], ..Criteria::default() });
        assert!(by_port.accepts(&conn(1, 80, 5000), Subject::default));
        assert!(by_port.accepts(&conn(1, 5000, 80), Subject::default));
        assert!(!by_port.accepts(&conn(1, 81, 5000), Subject::default));

        let by_exe = include(Criteria { exes: globs(&["/usr/sbin/*"]), ..Criteria::default() });
        assert!(by_exe.accepts(&conn(1, 80, 5000), || nginx().into()));
        assert!(!by_exe.accepts(&conn(1, 80, 5000), Subject::default));
        let by_name = include(Criteria { ports: vec![80], exes: globs(&["ngin?"]), ..Criteria::default() });
        assert!(by_name.accepts(&conn(1, 80, 5000), || nginx().into()));
        assert!(!by_name.accepts(&conn(1, 81, 5000), || nginx().into()));

        let by_pid = include(Criteria { pids: vec![7], ..Criteria::default() });
        assert!(by_pid.accepts(&conn(7, 1, 2), Subject::default));
        assert!(!by_pid.accepts(&conn(8, 1, 2), Subject::default));
    }

    fn include(c: Criteria) -> Selector {
        Selector::new(&c, &Criteria::default())
    }

    fn globs(patterns: &[&str]) -> Vec<glob::Pattern> {
        patterns.iter().map(|p| glob::Pattern::new(p).unwrap()).collect()
    }

    fn in_container(id: &str) -> impl Fn() -> Subject {
        let id = id.to_owned();
        move || ProcInfo { container_id: Some(id.clone()), ..nginx() }.into()
    }

    #[test]
    fn containers_by_id_prefix_and_exclusions_win() {
        let id = "3f4b1c6a2d8e".repeat(5) + "abcd";
        let by_container =
            include(Criteria { containers: vec!["3F4B1C6A2D8E".into()], ..Criteria::default() });
        assert!(by_container.accepts(&conn(1, 80, 5000), in_container(&id)));
        assert!(!by_container.accepts(&conn(1, 80, 5000), || nginx().into()), "not in a container");
        assert!(!by_container.accepts(&conn(1, 80, 5000), in_container(&"0".repeat(64))));

        let exclude = |c: Criteria| Selector::new(&Criteria::default(), &c);
        let no_nginx = exclude(Criteria { exes: globs(&["nginx"]), ..Criteria::default() });
        assert!(!no_nginx.accepts(&conn(1, 80, 5000), || nginx().into()));
        assert!(no_nginx.accepts(&conn(1, 80, 5000), Subject::default));
        let no_port = exclude(Criteria { ports: vec![22], ..Criteria::default() });
        assert!(!no_port.accepts(&conn(1, 5000, 22), Subject::default));
        assert!(no_port.accepts(&conn(1, 5000, 80), Subject::default));
        let no_pid = exclude(Criteria { pids: vec![7], ..Criteria::default() });
        assert!(!no_pid.accepts(&conn(7, 1, 2), Subject::default));
        let no_container = exclude(Criteria { containers: vec![id[..12].to_owned()], ..Criteria::default() });
        assert!(!no_container.accepts(&conn(1, 80, 5000), in_container(&id)));
        assert!(no_container.accepts(&conn(1, 80, 5000), || nginx().into()));

        // Include and exclude together: port 80, but not nginx.
        let both = Selector::new(
            &Criteria { ports: vec![80], ..Criteria::default() },
            &Criteria { exes: globs(&["nginx"]), ..Criteria::default() },
        );
        assert!(!both.accepts(&conn(1, 80, 5000), || nginx().into()));
        assert!(both.accepts(&conn(1, 80, 5000), Subject::default));
        assert!(!both.accepts(&conn(1, 81, 5000), Subject::default));
    }

    #[test]
    fn kubernetes_criteria() {
        let pod = Arc::new(PodMeta {
            namespace: "shop".into(),
            labels: [("tier".to_owned(), "web".to_owned()), ("team".to_owned(), "a".to_owned())].into(),
            workload: Some(("Deployment".into(), "cart".into())),
            ..PodMeta::default()
        });
        let in_pod = || Subject { info: nginx(), pod: Some(pod.clone()) };
        let c = conn(1, 80, 5000);
        let inc = |k: Criteria| Selector::new(&k, &Criteria::default());
        let exc = |k: Criteria| Selector::new(&Criteria::default(), &k);
        let ns = |n: &str| Criteria { namespaces: vec![n.into()], ..Criteria::default() };
        let labels = |l: &[&str]| Criteria {
            pod_labels: l.iter().map(|s| s.parse().unwrap()).collect(),
            ..Criteria::default()
        };
        let workload = |w: &str| Criteria { workloads: vec![w.into()], ..Criteria::default() };
        assert!(inc(ns("shop")).accepts(&c, in_pod) && !inc(ns("kube-system")).accepts(&c, in_pod));
        assert!(!inc(ns("shop")).accepts(&c, Subject::default), "not in Kubernetes: no match");
        assert!(inc(labels(&["tier=web", "team=a"])).accepts(&c, in_pod));
        assert!(!inc(labels(&["tier=web", "team=b"])).accepts(&c, in_pod), "every label given");
        assert!(!exc(labels(&["team=b", "tier=web"])).accepts(&c, in_pod), "any label excludes");
        assert!(
            inc(workload("cart")).accepts(&c, in_pod) && inc(workload("deployment/cart")).accepts(&c, in_pod)
        );
        assert!(!inc(workload("StatefulSet/cart")).accepts(&c, in_pod));
        assert!(!exc(ns("shop")).accepts(&c, in_pod) && exc(ns("shop")).accepts(&c, Subject::default));
        assert_eq!("novalue".parse::<PodLabel>(), Err("expected KEY=VALUE"));
        assert_eq!("=v".parse::<PodLabel>(), Err("expected KEY=VALUE"));
        assert_eq!("k=".parse(), Ok(PodLabel { key: "k".into(), value: String::new() }));
    }
}
