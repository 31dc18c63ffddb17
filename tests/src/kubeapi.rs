//! A Kubernetes API server for tests: the few endpoints sonde's metadata uses, answering with
//! real Kubernetes JSON — pod lists (field selector `spec.nodeName` applied), watch streams
//! (newline-delimited `{"type","object"}` events, resumed from a `resourceVersion` as the real one
//! does) and ReplicaSets. It can go down (every request 503, open watches cut) and come back.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Where one open watch's lines go.
type WatchSender = UnboundedSender<Result<Bytes, Infallible>>;

#[derive(Default)]
struct Inner {
    /// Every change, in order: (resourceVersion, event type, pod).
    events: Vec<(u64, &'static str, Value)>,
    replicasets: HashMap<(String, String), Value>,
    /// Open watches: their field selector and where their lines go.
    watchers: Vec<(Option<String>, WatchSender)>,
    down: bool,
    /// Path and query of every request.
    requests: Vec<String>,
}

#[derive(Clone, Default)]
pub struct KubeApi {
    inner: Arc<Mutex<Inner>>,
    addr: Option<SocketAddr>,
}

impl KubeApi {
    pub async fn start() -> KubeApi {
        let mut api = KubeApi::default();
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route("/apis/apps/v1/namespaces/{namespace}/replicasets/{name}", get(replicaset))
            .fallback(|uri: axum::http::Uri| async move { status(404, &format!("{uri} is not served here")) })
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
        api.addr = Some(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    /// Adds (or replaces) a pod; open watches that select it get the event.
    pub fn apply_pod(&self, pod: Value) {
        let mut inner = self.inner.lock().unwrap();
        let kind = if inner.events.iter().any(|(_, _, p)| p["metadata"]["uid"] == pod["metadata"]["uid"]) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let rv = inner.events.len() as u64 + 1;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.events.push((rv, kind, pod.clone()));
        let line = watch_line(kind, &pod);
        let node = pod["spec"]["nodeName"].as_str().map(str::to_owned);
        inner.watchers.retain(|(selector, tx)| {
            !selects(selector.as_deref(), node.as_deref()) || tx.send(Ok(line.clone())).is_ok()
        });
    }

    pub fn add_replicaset(&self, rs: Value) {
        let key = (
            rs["metadata"]["namespace"].as_str().unwrap().to_owned(),
            rs["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        self.inner.lock().unwrap().replicasets.insert(key, rs);
    }

    /// Down: every request gets 503 and open watches end. Up again: back to normal.
    pub fn set_down(&self, down: bool) {
        let mut inner = self.inner.lock().unwrap();
        inner.down = down;
        if down {
            inner.watchers.clear();
        }
    }

    /// Path and query of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }
}

fn watch_line(kind: &str, pod: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": pod})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// `spec.nodeName=NODE` selects pods of NODE; no selector selects all.
fn selects(selector: Option<&str>, node: Option<&str>) -> bool {
    match selector.and_then(|s| s.strip_prefix("spec.nodeName=")) {
        Some(wanted) => node == Some(wanted),
        None => true,
    }
}

fn status(code: u16, message: &str) -> Response {
    let body =
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "code": code});
    json_response(StatusCode::from_u16(code).unwrap(), &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [("content-type", "application/json")], serde_json::to_vec(body).unwrap()).into_response()
}

async fn pods(
    State(api): State<KubeApi>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = api.inner.lock().unwrap();
    inner.requests.push(uri.to_string());
    if inner.down {
        return status(503, "the API server is down (test)");
    }
    let selector = q.get("fieldSelector").cloned();
    if q.get("watch").map(String::as_str) == Some("true") {
        let since: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = unbounded_channel();
        for (rv, kind, pod) in &inner.events {
            if *rv > since && selects(selector.as_deref(), pod["spec"]["nodeName"].as_str()) {
                let _ = tx.send(Ok(watch_line(kind, pod)));
            }
        }
        inner.watchers.push((selector, tx));
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(UnboundedReceiverStream::new(rx)))
            .unwrap();
    }
    // The latest version of each pod that the selector takes.
    let mut latest: Vec<Value> = Vec::new();
    for (_, _, pod) in &inner.events {
        latest.retain(|p| p["metadata"]["uid"] != pod["metadata"]["uid"]);
        if selects(selector.as_deref(), pod["spec"]["nodeName"].as_str()) {
            latest.push(pod.clone());
        }
    }
    let rv = inner.events.len().to_string();
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": latest}),
    )
}

async fn replicaset(
    State(api): State<KubeApi>,
    uri: axum::http::Uri,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let mut inner = api.inner.lock().unwrap();
    inner.requests.push(uri.to_string());
    if inner.down {
        return status(503, "the API server is down (test)");
    }
    match inner.replicasets.get(&(namespace, name.clone())) {
        Some(rs) => json_response(StatusCode::OK, rs),
        None => status(404, &format!("replicasets \"{name}\" not found")),
    }
}

/// A pod as the API server returns it: on `node`, owned by ReplicaSet `replicaset`, with one
/// running container `container` whose id is `container_id` (containerd).
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    replicaset: &str,
    container: &str,
    container_id: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{name}"),
            "labels": {"pod-template-hash": replicaset.rsplit('-').next().unwrap(), "team": "payments"},
            "annotations": {},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                "uid": format!("uid-{replicaset}"), "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "example/app:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": container, "image": "example/app:1", "imageID": "sha256:0", "ready": true,
                "restartCount": 0, "containerID": format!("containerd://{container_id}"),
                "state": {"running": {"startedAt": "2026-11-29T00:00:00Z"}}
            }]
        }
    })
}

/// A ReplicaSet owned by Deployment `deployment`.
pub fn replicaset_of(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                "uid": format!("uid-{deployment}"), "controller": true
            }]
        },
        "spec": {"selector": {"matchLabels": {"app": deployment}}}
    })
}
