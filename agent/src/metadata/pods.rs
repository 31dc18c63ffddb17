//! The pods of this node by container id, as the watcher last saw them, with a generation number
//! that moves on every change (so cached resources know when to look again).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{semconv::resource, span::model::KeyValue};

/// Pods kept at most (a node runs a few hundred at most; a bound against a misbehaving API).
const MAX_PODS: usize = 4096;
/// Labels and `resource.opentelemetry.io/*` annotations kept per pod.
const MAX_LABELS: usize = 64;
const MAX_VALUE: usize = 256;

/// What sonde keeps of one pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// `resource.opentelemetry.io/<key>` annotations, by `<key>`.
    pub resource_annotations: BTreeMap<String, String>,
    /// The workload that owns the pod: (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`,
    /// `ReplicaSet`, …, name), a ReplicaSet resolved to its Deployment where it has one.
    pub workload: Option<(String, String)>,
    /// The ReplicaSet between the pod and its Deployment.
    pub replicaset: Option<String>,
    /// (container id, container name) of its containers.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// The `k8s.*` resource attributes of a process in `container` of this pod.
    pub fn attributes(&self, container: &str) -> Vec<KeyValue> {
        let mut out = vec![
            KeyValue::str(resource::K8S_NAMESPACE_NAME, self.namespace.clone()),
            KeyValue::str(resource::K8S_POD_NAME, self.name.clone()),
            KeyValue::str(resource::K8S_POD_UID, self.uid.clone()),
            KeyValue::str(resource::K8S_NODE_NAME, self.node.clone()),
        ];
        if let Some((_, name)) = self.containers.iter().find(|(id, _)| id == container) {
            out.push(KeyValue::str(resource::K8S_CONTAINER_NAME, name.clone()));
        }
        if let Some(rs) = &self.replicaset {
            out.push(KeyValue::str(resource::K8S_REPLICASET_NAME, rs.clone()));
        }
        if let Some((kind, name)) = &self.workload {
            let key = match kind.as_str() {
                "Deployment" => Some(resource::K8S_DEPLOYMENT_NAME),
                "StatefulSet" => Some(resource::K8S_STATEFULSET_NAME),
                "DaemonSet" => Some(resource::K8S_DAEMONSET_NAME),
                "Job" => Some(resource::K8S_JOB_NAME),
                "CronJob" => Some(resource::K8S_CRONJOB_NAME),
                "ReplicaSet" => Some(resource::K8S_REPLICASET_NAME),
                _ => None,
            };
            if let Some(key) = key.filter(|k| !out.iter().any(|kv| kv.key == *k)) {
                out.push(KeyValue::str(key, name.clone()));
            }
        }
        for (key, value) in &self.labels {
            out.push(KeyValue::str(format!("k8s.pod.label.{key}"), value.clone()));
        }
        out
    }

    /// `service.name` from Kubernetes, in the order the OTel Kubernetes conventions give: the
    /// `resource.opentelemetry.io/service.name` annotation, the `app.kubernetes.io/name` label, the
    /// owning workload's name.
    pub fn service_name(&self) -> Option<&str> {
        self.resource_annotations
            .get("service.name")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map(String::as_str)
            .or(self.workload.as_ref().map(|(_, name)| name.as_str()))
            .filter(|s| !s.is_empty())
    }

    /// Keeps the maps within bounds (labels are set by whoever can create pods).
    pub fn bounded(mut self) -> Self {
        let cap = |m: &mut BTreeMap<String, String>| {
            m.retain(|k, v| k.len() <= MAX_VALUE && v.len() <= MAX_VALUE);
            while m.len() > MAX_LABELS {
                m.pop_last();
            }
        };
        cap(&mut self.labels);
        cap(&mut self.resource_annotations);
        self
    }
}

#[derive(Default)]
struct Inner {
    /// By pod uid.
    pods: HashMap<String, Arc<PodMeta>>,
    /// Container id → pod uid.
    containers: HashMap<String, String>,
}

/// Cheap to clone; shared by the watcher task (writes) and the intake thread (reads).
#[derive(Clone, Default)]
pub struct Pods {
    inner: Arc<RwLock<Inner>>,
    generation: Arc<AtomicU64>,
}

impl Pods {
    /// The pod of a container (`container.id`), if this node has it.
    pub fn lookup(&self, container: &str) -> Option<Arc<PodMeta>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.containers.get(container).and_then(|uid| inner.pods.get(uid)).cloned()
    }

    /// Moves on every change: a resource built at an older generation may be out of date.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn upsert(&self, pod: PodMeta) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut inner, &pod.uid);
        if inner.pods.len() >= MAX_PODS {
            return;
        }
        for (id, _) in &pod.containers {
            inner.containers.insert(id.clone(), pod.uid.clone());
        }
        inner.pods.insert(pod.uid.clone(), Arc::new(pod));
        drop(inner);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, uid: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut inner, uid);
        drop(inner);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Replaces everything (a fresh list after a lost watch).
    pub fn replace_all(&self, pods: Vec<PodMeta>) {
        let mut fresh = Inner::default();
        for pod in pods.into_iter().take(MAX_PODS) {
            for (id, _) in &pod.containers {
                fresh.containers.insert(id.clone(), pod.uid.clone());
            }
            fresh.pods.insert(pod.uid.clone(), Arc::new(pod));
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn remove_locked(inner: &mut Inner, uid: &str) {
        if let Some(old) = inner.pods.remove(uid) {
            for (id, _) in &old.containers {
                inner.containers.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, container: &str) -> PodMeta {
        PodMeta {
            namespace: "shop".into(),
            name: format!("cart-{uid}"),
            uid: uid.into(),
            node: "node-1".into(),
            labels: [("app.kubernetes.io/name".to_owned(), "cart-app".to_owned())].into(),
            workload: Some(("Deployment".into(), "cart".into())),
            replicaset: Some("cart-7d9f".into()),
            containers: vec![(container.into(), "app".into())],
            ..PodMeta::default()
        }
    }

    #[test]
    fn lookups_follow_upserts_removals_and_relists() {
        let pods = Pods::default();
        let g0 = pods.generation();
        pods.upsert(pod("u1", "c1"));
        assert_eq!(pods.lookup("c1").unwrap().uid, "u1");
        assert!(pods.generation() > g0);
        // A restarted container gets a new id: the old one no longer finds the pod.
        pods.upsert(pod("u1", "c2"));
        assert!(pods.lookup("c1").is_none() && pods.lookup("c2").is_some());
        pods.remove("u1");
        assert!(pods.lookup("c2").is_none());
        pods.upsert(pod("u2", "c3"));
        pods.replace_all(vec![pod("u4", "c4")]);
        assert!(pods.lookup("c3").is_none() && pods.lookup("c4").is_some());
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn attributes_and_service_name_in_convention_order() {
        let mut p = pod("u1", "c1");
        let attrs = p.attributes("c1");
        let has = |k: &str, v: &str| attrs.contains(&KeyValue::str(k.to_owned(), v.to_owned()));
        assert!(
            has("k8s.namespace.name", "shop")
                && has("k8s.pod.name", "cart-u1")
                && has("k8s.node.name", "node-1")
        );
        assert!(has("k8s.container.name", "app") && has("k8s.deployment.name", "cart"));
        assert!(
            has("k8s.replicaset.name", "cart-7d9f")
                && has("k8s.pod.label.app.kubernetes.io/name", "cart-app")
        );
        assert_eq!(p.service_name(), Some("cart-app"));
        p.resource_annotations.insert("service.name".into(), "from-annotation".into());
        assert_eq!(p.service_name(), Some("from-annotation"));
        p.resource_annotations.clear();
        p.labels.clear();
        assert_eq!(p.service_name(), Some("cart"), "the workload's name");
        p.workload = None;
        assert_eq!(p.service_name(), None);
    }

    #[test]
    fn bounded_labels() {
        let mut p = pod("u1", "c1");
        for i in 0..200 {
            p.labels.insert(format!("l{i:03}"), "v".into());
        }
        p.labels.insert("long".into(), "x".repeat(1000));
        let p = p.bounded();
        assert_eq!(p.labels.len(), MAX_LABELS);
        assert!(!p.labels.contains_key("long"));
    }
}
