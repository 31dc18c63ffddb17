//! Privileged: Kubernetes metadata on spans, from an in-test API server that answers with real
//! Kubernetes JSON (no real API server installs here). The traced servers run in cgroups named
//! like containerd's, so their container ids match the pods' `containerID`s.

use std::time::Duration;

use sonde_tests::{
    harness::{self, ContainerCgroup, Sonde, curl},
    kubeapi::{KubeApi, pod, replicaset_of},
    receiver::{ReceivedSpan, Receiver},
};

const WAIT: Duration = Duration::from_secs(30);

/// Sends requests to `url` (one per 300 ms) until a SERVER span on `port` has `k8s.pod.name`
/// `pod`; returns it. A process's first spans may come before its pod is known.
async fn span_with_pod(receiver: &Receiver, url: &str, port: u16, pod: &str) -> Option<ReceivedSpan> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let port = port.to_string();
    while tokio::time::Instant::now() < deadline {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || curl(&["-o", "/dev/null", &url])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let found = receiver.spans().into_iter().find(|s| {
            s.kind_name() == "SERVER"
                && s.attr("server.port").as_deref() == Some(&port)
                && s.resource.get("k8s.pod.name").map(String::as_str) == Some(pod)
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_carry_their_pods_metadata_and_the_watch_survives_an_api_server_outage() {
    let receiver = Receiver::start().await.unwrap();
    let api = KubeApi::start().await;
    let (id1, id2) = ("a1".repeat(32), "b2".repeat(32));
    // Made before the servers, so dropped after them (a cgroup is removed once empty).
    let cgroups =
        [ContainerCgroup::create("cri-containerd", &id1), ContainerCgroup::create("cri-containerd", &id2)];
    let cart = harness::python_http_server(&[]);
    let pay = harness::python_http_server(&[]);
    cgroups[0].add(cart.pid());
    cgroups[1].add(pay.pid());

    let mut cart_pod = pod("shop", "cart-7d9f8-x2x4q", "node-1", "cart-7d9f8", "app", &id1);
    cart_pod["metadata"]["labels"]["app.kubernetes.io/name"] = "cart-api".into();
    api.apply_pod(cart_pod);
    api.add_replicaset(replicaset_of("shop", "cart-7d9f8", "cart"));
    // The same container on another node must not be taken (the field selector).
    api.apply_pod(pod("shop", "elsewhere", "node-2", "other-5c6d", "app", &id2));

    let endpoint = receiver.grpc_endpoint();
    let pids = [cart.pid().to_string(), pay.pid().to_string()];
    let kube_api = api.url();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--pid",
        &pids[0],
        "--pid",
        &pids[1],
        "--kube-api",
        &kube_api,
        "--node-name",
        "node-1",
    ]);

    let span = span_with_pod(&receiver, &cart.url("/index.html"), cart.port, "cart-7d9f8-x2x4q").await;
    let span = span.unwrap_or_else(|| {
        panic!("no span with the pod's metadata; API requests {:?}\n{}", api.requests(), sonde.stderr())
    });
    let r = |k: &str| span.resource.get(k).map(String::as_str);
    assert_eq!(r("k8s.namespace.name"), Some("shop"));
    assert_eq!(r("k8s.pod.uid"), Some("uid-cart-7d9f8-x2x4q"));
    assert_eq!(r("k8s.node.name"), Some("node-1"));
    assert_eq!(r("k8s.container.name"), Some("app"));
    assert_eq!(r("k8s.replicaset.name"), Some("cart-7d9f8"));
    assert_eq!(r("k8s.deployment.name"), Some("cart"), "the ReplicaSet's owner, asked of the API");
    assert_eq!(r("k8s.pod.label.team"), Some("payments"));
    assert_eq!(r("container.id"), Some(id1.as_str()));
    assert_eq!(r("service.name"), Some("cart-api"), "app.kubernetes.io/name names the service");
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|q| q.starts_with("/api/v1/pods?") && q.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "only this node's pods are asked for: {requests:?}"
    );

    // The API server goes away, open watches with it; a pod is created meanwhile. When it comes
    // back, the watch resumes and the new pod's metadata arrives.
    api.set_down(true);
    let mut pay_pod = pod("shop", "pay-6b5c4-q8w7e", "node-1", "pay-6b5c4", "pay", &id2);
    pay_pod["metadata"]["annotations"]["resource.opentelemetry.io/service.name"] = "payments".into();
    pay_pod["metadata"]["annotations"]["resource.opentelemetry.io/service.version"] = "1.4.2".into();
    api.apply_pod(pay_pod);
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.set_down(false);
    // No ReplicaSet to ask about: the Deployment comes from the ReplicaSet's name.
    let span = span_with_pod(&receiver, &pay.url("/index.html"), pay.port, "pay-6b5c4-q8w7e").await;
    let span = span.unwrap_or_else(|| {
        panic!("no span with the new pod's metadata; API requests {:?}\n{}", api.requests(), sonde.stderr())
    });
    let r = |k: &str| span.resource.get(k).map(String::as_str);
    assert_eq!(r("service.name"), Some("payments"), "the annotation names the service");
    assert_eq!(r("service.version"), Some("1.4.2"), "resource.opentelemetry.io/* annotations");
    assert_eq!(r("k8s.deployment.name"), Some("pay"));
    let watches = api.requests().iter().filter(|q| q.contains("watch=true")).count();
    assert!(watches >= 2, "the watch was opened again: {:?}", api.requests());
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_kubernetes_no_k8s_attributes_and_no_errors() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[]);
    let endpoint = receiver.grpc_endpoint();
    let pid = server.pid().to_string();
    // `auto`, outside a cluster: nothing to watch, nothing to say about it.
    let mut sonde = Sonde::start_with_env(
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid],
        &[("KUBERNETES_SERVICE_HOST", "")],
    );
    curl(&["-o", "/dev/null", &server.url("/index.html")]);
    let spans = receiver.wait_for(|s| !s.is_empty(), WAIT).await;
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|s| !s.resource.keys().any(|k| k.starts_with("k8s."))), "{spans:#?}");
    sonde.stop_cleanly();
    let log = sonde.stderr();
    assert!(!log.contains("Kubernetes"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn selection_by_namespace_label_and_workload() {
    let receiver = Receiver::start().await.unwrap();
    let api = KubeApi::start().await;
    let ids = ["c1".repeat(32), "d2".repeat(32), "e3".repeat(32)];
    let cgroups = ids.each_ref().map(|id| ContainerCgroup::create("cri-containerd", id));
    let servers = [(); 3].map(|_| harness::python_http_server(&[]));
    for (cgroup, server) in cgroups.iter().zip(&servers) {
        cgroup.add(server.pid());
    }
    // Traced: shop's cart (label team=payments, Deployment cart). Not: shop's pod of another
    // team; kube-system's pod with the right label (the namespace is excluded).
    api.apply_pod(pod("shop", "cart-1111-aaaaa", "node-1", "cart-1111", "app", &ids[0]));
    let mut other_team = pod("shop", "ads-2222-bbbbb", "node-1", "ads-2222", "app", &ids[1]);
    other_team["metadata"]["labels"]["team"] = "ads".into();
    api.apply_pod(other_team);
    api.apply_pod(pod("kube-system", "dns-3333-ccccc", "node-1", "dns-3333", "app", &ids[2]));

    let endpoint = receiver.grpc_endpoint();
    let kube_api = api.url();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--kube-api",
        &kube_api,
        "--node-name",
        "node-1",
        "--k8s-pod-label",
        "team=payments",
        "--k8s-workload",
        "Deployment/cart",
        "--exclude-k8s-namespace",
        "kube-system",
    ]);
    // Processes are judged when their connections open: wait for the pods to be known.
    let deadline = std::time::Instant::now() + WAIT;
    while !api.requests().iter().any(|q| q.contains("watch=true")) {
        assert!(std::time::Instant::now() < deadline, "sonde never watched: {:?}", api.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for server in &servers {
        curl(&["-o", "/dev/null", &server.url("/index.html")]);
    }
    let port = servers[0].port.to_string();
    receiver.wait_for(|s| s.iter().any(|s| s.attr("server.port").as_deref() == Some(&port)), WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pods: Vec<_> = receiver.spans().iter().map(|s| s.resource.get("k8s.pod.name").cloned()).collect();
    assert!(!pods.is_empty() && pods.iter().all(|p| p.as_deref() == Some("cart-1111-aaaaa")), "{pods:?}");
    sonde.stop_cleanly();
    drop(servers);
}
