//! Watching this node's pods through the API server with kube-rs, into [`Pods`].

use std::collections::HashMap;

use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, Client, Config,
    runtime::{WatchStreamExt as _, watcher},
};

use super::{PodMeta, Pods};

/// ReplicaSet → Deployment answers kept (a node's pods have a few dozen).
const MAX_OWNERS: usize = 4096;
const ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kube-api {url:?} is not a URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("no Kubernetes configuration (in-cluster service account or kubeconfig)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client for `api_url` (unauthenticated, for a local API server or a proxy such as
/// `kubectl proxy`), else from the pod's service account or the kubeconfig.
pub async fn client(api_url: Option<&str>) -> Result<Client, KubeError> {
    let config = match api_url {
        Some(url) => Config::new(
            url.parse::<hyper::Uri>()
                .map_err(|e| KubeError::BadUrl { url: url.to_owned(), message: e.to_string() })?,
        ),
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// Watches the pods of `node` until the task is aborted, keeping `pods` current. A lost watch or
/// an unreachable API server is retried with back-off (kube-rs's default), logged at its 1st, 2nd,
/// 4th, 8th… failure.
pub fn spawn(client: Client, node: String, pods: Pods) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut owners = Owners { client, cache: HashMap::new() };
        let mut listing: Vec<PodMeta> = Vec::new();
        let mut failures: u64 = 0;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(pod)) => listing.extend(owners.meta(&pod).await),
                Ok(watcher::Event::InitDone) => {
                    let n = listing.len();
                    pods.replace_all(std::mem::take(&mut listing));
                    tracing::info!(node = %node, pods = n, "Kubernetes: pods of this node listed; watching");
                    failures = 0;
                }
                Ok(watcher::Event::Apply(pod)) => {
                    if let Some(meta) = owners.meta(&pod).await {
                        pods.upsert(meta);
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        pods.remove(uid);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "Kubernetes: watching pods failed; retrying");
                    }
                }
            }
        }
    })
}

/// Resolves a pod's ReplicaSet to its Deployment, asking the API server once per ReplicaSet.
struct Owners {
    client: Client,
    cache: HashMap<(String, String), Option<String>>,
}

impl Owners {
    async fn meta(&mut self, pod: &Pod) -> Option<PodMeta> {
        let m = &pod.metadata;
        let uid = m.uid.clone()?;
        let namespace = m.namespace.clone().unwrap_or_default();
        let labels = m.labels.clone().unwrap_or_default();
        let controller = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone()));
        let (workload, replicaset) = match controller {
            Some((kind, rs)) if kind == "ReplicaSet" => {
                let hash = labels.get("pod-template-hash").cloned();
                match self.deployment_of(&namespace, &rs, hash.as_deref()).await {
                    Some(deployment) => (Some(("Deployment".to_owned(), deployment)), Some(rs)),
                    None => (Some((kind, rs.clone())), Some(rs)),
                }
            }
            other => (other, None),
        };
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                let all =
                    [&s.container_statuses, &s.init_container_statuses, &s.ephemeral_container_statuses];
                all.into_iter().flatten().flatten()
            })
            .filter_map(|c| Some((container_id(c.container_id.as_deref()?)?, c.name.clone())))
            .collect();
        let resource_annotations = m
            .annotations
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?.to_owned(), v.clone())))
            .collect();
        Some(
            PodMeta {
                namespace,
                name: m.name.clone().unwrap_or_default(),
                uid,
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
                labels,
                resource_annotations,
                workload,
                replicaset,
                containers,
            }
            .bounded(),
        )
    }

    /// The Deployment owning ReplicaSet `rs`: asked of the API server; if it cannot say, the
    /// ReplicaSet's name without its `-<pod-template-hash>` suffix, which is how Deployments name
    /// them.
    async fn deployment_of(&mut self, namespace: &str, rs: &str, hash: Option<&str>) -> Option<String> {
        let key = (namespace.to_owned(), rs.to_owned());
        if let Some(known) = self.cache.get(&key) {
            return known.clone();
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        let by_name = || hash.and_then(|h| rs.strip_suffix(&format!("-{h}"))).map(str::to_owned);
        let answer = match api.get_opt(rs).await {
            Ok(Some(found)) => found
                .metadata
                .owner_references
                .into_iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.name),
            // Gone already, or not readable: its name still says.
            Ok(None) => by_name(),
            Err(e) => {
                tracing::debug!(error = %e, namespace, replicaset = rs, "Kubernetes: cannot read a ReplicaSet");
                by_name()
            }
        };
        if self.cache.len() >= MAX_OWNERS {
            self.cache.clear();
        }
        self.cache.insert(key, answer.clone());
        answer
    }
}

/// `containerd://<id>`, `docker://<id>`, `cri-o://<id>` → `<id>` as /proc/PID/cgroup shows it.
fn container_id(status_id: &str) -> Option<String> {
    let id = status_id.rsplit("://").next()?.to_ascii_lowercase();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_without_their_runtime() {
        assert_eq!(container_id("containerd://ABC123").as_deref(), Some("abc123"));
        assert_eq!(container_id("cri-o://abc").as_deref(), Some("abc"));
        assert_eq!(container_id("").as_deref(), None);
    }
}
