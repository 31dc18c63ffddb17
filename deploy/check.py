"""Checks deploy/ (run by `cargo xtask test`, which installs what it imports):

- the Helm chart lints (strict) and renders, with its defaults and with every option changed;
- every rendered manifest, and deploy/kubernetes/sonde.yaml, validates against the Kubernetes API
  schemas (strict: unknown fields are errors) of the oldest and newest releases the chart supports;
- the DaemonSet keeps its promises: not privileged, exactly the capabilities sonde checks for,
  read-only root filesystem, host PID namespace, no service-link variables, tracefs the only host
  path (and the cgroup v2 root with context propagation), read-only; RBAC is get/list/watch on pods and replicasets only;
- the configuration the chart writes passes `sonde config check`;
- deploy/kubernetes/sonde.yaml is the chart's rendering with its defaults (`--write` updates it).

Usage: python3 deploy/check.py --sonde PATH/TO/sonde [--write]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(DEPLOY, "helm", "sonde")
MANIFEST = os.path.join(DEPLOY, "kubernetes", "sonde.yaml")
# The chart's kubeVersion floor, and the newest release kubernetes-validate knows.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
CAPABILITIES = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]
MANIFEST_HEADER = (
    "# sonde as plain Kubernetes manifests: the Helm chart (deploy/helm/sonde) rendered with its\n"
    "# defaults, release `sonde` in namespace `sonde` (create it first: kubectl create namespace sonde).\n"
    "# Set OTEL_EXPORTER_OTLP_ENDPOINT in the DaemonSet to your collector. Regenerated and checked by\n"
    "# `python3 deploy/check.py --write`; do not edit by hand.\n"
)

# Every option away from its default at once.
VARIANT = {
    "image": {"repository": "registry.example/sonde", "tag": "dev", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "pull"}],
    "otlp": {"endpoint": "http://collector.observability:4317", "protocol": "grpc", "headers": "x=y"},
    "config": {"port": [80, 8080], "exe": ["nginx"], "route": ["/users/{id}"], "capture-query": True},
    "prometheus": {"port": 0},
    "tolerations": [],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "sonde", "operator": "NotIn", "values": ["off"]}]}]}}},
    "priorityClassName": "system-node-critical",
    "podLabels": {"team": "observability"},
    "podAnnotations": {"example.com/owner": "sre"},
    "serviceAccount": {"create": False, "name": "existing"},
    "rbac": {"create": False},
    "contextPropagation": "all",
    "cgroupRoot": "/sys/fs/cgroup/unified",
}


def fail(message):
    print(f"deploy/check.py: {message}", file=sys.stderr)
    sys.exit(1)


def render(values=None):
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="sonde", namespace="sonde", is_install=True)
    docs = []
    for path in sorted(rendered):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return docs, rendered


def validate(docs, where):
    for doc in docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')} is not valid for Kubernetes {version}: {e}")


def check_daemonset(docs, where, propagation=False):
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    [container] = pod["containers"]
    sc = container["securityContext"]
    expect = [
        (pod.get("hostPID") is True, "hostPID: true (pids in the kernel's events are the host's)"),
        (pod.get("hostNetwork") in (None, False), "no hostNetwork"),
        (pod.get("enableServiceLinks") is False, "enableServiceLinks: false (SONDE_PORT from a Service)"),
        (sc.get("privileged") is False, "privileged: false"),
        (sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false"),
        (sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true"),
        (sc["capabilities"].get("drop") == ["ALL"], "capabilities drop ALL"),
    ]
    args = container.get("args", [])
    mode = "--context-propagation=all"
    expect.append(((mode in args) == propagation, f"{mode} in the arguments exactly when set"))
    capabilities = CAPABILITIES + (["NET_ADMIN"] if propagation else [])
    expect.append((sorted(sc["capabilities"].get("add", [])) == sorted(capabilities), f"capabilities add exactly {capabilities}"))
    host_paths = [v for v in pod.get("volumes", []) if "hostPath" in v]
    paths = ["/sys/kernel/tracing"] + (["/sys/fs/cgroup/unified"] if propagation else [])
    expect.append(([v["hostPath"]["path"] for v in host_paths] == paths, f"host paths exactly {paths}"))
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    expect.append((all(mounts[v["name"]].get("readOnly") for v in host_paths), "host paths mounted read-only"))
    for ok, what in expect:
        if not ok:
            fail(f"{where}: the DaemonSet breaks a promise: {what}")
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            if sorted(rule["verbs"]) != ["get", "list", "watch"] or not set(rule["resources"]) <= {"pods", "replicasets"}:
                fail(f"{where}: RBAC grants more than get/list/watch on pods and replicasets: {rule}")


def check_config(docs, sonde, where):
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(cm["data"]["sonde.yaml"])
        f.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SONDE_", "OTEL_"))}
        out = subprocess.run([sonde, "config", "check", f.name], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            fail(f"{where}: the chart's configuration fails `sonde config check`: {out.stderr}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sonde", required=True, help="the sonde binary")
    parser.add_argument("--write", action="store_true", help="update deploy/kubernetes/sonde.yaml")
    args = parser.parse_args()

    lint = helm.lint(CHART, strict=True)
    problems = [m for m in lint["messages"] if m["severity"] >= 2] + [{"error": e} for e in lint["errors"]]
    if problems:
        fail(f"helm lint --strict: {problems}")

    for values, where in [(None, "chart defaults"), (VARIANT, "chart with every option set")]:
        docs, _ = render(values)
        kinds = sorted(d["kind"] for d in docs)
        print(f"deploy/check.py: {where}: {', '.join(kinds)}")
        validate(docs, where)
        check_daemonset(docs, where, propagation=values is not None)
        check_config(docs, args.sonde, where)

    _, rendered = render()
    expected = MANIFEST_HEADER + "".join(
        f"---\n# {path}\n{text.strip()}\n" for path, text in sorted(rendered.items()) if not path.endswith(".txt") and text.strip()
    )
    if args.write:
        os.makedirs(os.path.dirname(MANIFEST), exist_ok=True)
        with open(MANIFEST, "w") as f:
            f.write(expected)
    with open(MANIFEST) as f:
        current = f.read()
    if current != expected:
        fail(f"{MANIFEST} is not the chart's rendering: run `python3 deploy/check.py --sonde … --write`")
    docs = [d for d in yaml.safe_load_all(current) if d]
    validate(docs, "deploy/kubernetes/sonde.yaml")
    check_daemonset(docs, "deploy/kubernetes/sonde.yaml")
    print(f"deploy/check.py: ok ({len(docs)} manifests in deploy/kubernetes/sonde.yaml, Kubernetes {' and '.join(KUBE_VERSIONS)})")


if __name__ == "__main__":
    main()
