//! Kubernetes metadata: which pod, namespace, node, workload and labels a process's container
//! belongs to, for its resource (`k8s.*` attributes and the service name).
//!
//! ```text
//! API server ──watch pods (spec.nodeName=this node)──▶ kube::watch_pods ──▶ Pods (by container id)
//! process/ (ProcessCache) ──container id from /proc/PID/cgroup──▶ Pods::lookup ──▶ resource
//! ```
//!
//! Only this node's pods are watched (a field selector), so memory follows the node, not the
//! cluster. kube-rs's watcher re-lists after a lost watch or an API server restart, with back-off;
//! until the first list, and without Kubernetes at all, lookups find nothing and resources simply
//! have no `k8s.*`.

pub mod kube;
pub mod pods;

pub use pods::{PodMeta, Pods};
