"""Renders and lints the rmm-monitor Helm chart with Helm's own engine, offline.

Helm is not packaged for Debian and no other registry is reachable here; the PyPI package
helm-python-sdk ships libhelm_c, Helm's Go SDK (helm.sh/helm/v4) built as a C library, and binds
it with ctypes. `chart.render` is the engine `helm template` uses (no cluster: `lookup` returns
nothing); `lint` is `helm lint`. This script adds what the `helm` command adds around them:
values files merged in order, documents split and sorted in Helm's install order, `# Source:`
lines.

    render.py template CHART [-f VALUES]... [--name NAME] [--namespace NS]
        the manifest on stdout, like `helm template NAME CHART -n NS -f VALUES`
    render.py plain CHART DIR [--check]
        write (or, with --check, compare) DIR/rmm-monitor.yaml and
        DIR/optional/servicemonitor.yaml: the chart with ci/kubernetes-values.yaml
    render.py lint CHART [-f VALUES]... [--namespace NS] [--kube-version V]
        `helm lint --strict`: exit 1 on any warning or error
    render.py json FILE...
        every YAML document of the files as one JSON list (for the Rust tests)

Used by tests/tests/deploy.rs; run it with the Python that has helm-python-sdk and PyYAML
(target/deploy-tools/bin/python).
"""

import argparse
import difflib
import json
import os
import sys

import yaml

# pkg/release/v1/util/kind_sorter.go: InstallOrder.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]

PLAIN_RELEASE = "rmm-monitor"
PLAIN_NAMESPACE = "rmm-monitor"
PLAIN_HEADER = """\
# rmm-monitor for Kubernetes: {what}.
# Generated from the Helm chart deploy/helm/rmm-monitor with ci/kubernetes-values.yaml
# (release rmm-monitor, namespace rmm-monitor); do not edit: change the chart, then run
#   target/deploy-tools/bin/python tests/tests/deploy/render.py plain deploy/helm/rmm-monitor deploy/kubernetes
# (`cargo test -p rmm-tests --test deploy` fails while the two differ).
# Apply: {apply}
"""


def helm():
    try:
        import helm_python
    except ImportError as e:
        sys.exit(f"render.py: {e}: install the PyPI package helm-python-sdk (0.2.2)")
    return helm_python


def merge(base, over):
    """Helm's merge of values files: maps recursively, anything else replaced, null deletes."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_values(files):
    h = helm()
    values = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            values = merge(values, h.values_from_yaml(fh.read()) or {})
    return values


def documents(rendered):
    """(source, text, object) of every non-empty document, in Helm's install order."""
    docs = []
    for source, text in rendered.items():
        base = os.path.basename(source)
        if base == "NOTES.txt" or base.startswith("_"):
            continue
        chunks, cur = [], []
        for line in text.splitlines():
            if line.rstrip() == "---":
                chunks.append(cur)
                cur = []
            else:
                cur.append(line)
        chunks.append(cur)
        for chunk in chunks:
            body = "\n".join(chunk).strip("\n")
            obj = yaml.safe_load(body) if body.strip() else None
            if obj is None:
                continue
            if not isinstance(obj, dict) or "kind" not in obj:
                sys.exit(f"render.py: {source} rendered a document that is not an object:\n{body}")
            docs.append((source, body, obj))

    def key(d):
        kind = d[2]["kind"]
        order = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
        return (order, kind, d[2].get("metadata", {}).get("name", ""), d[0])

    return sorted(docs, key=key)


def render(chart_dir, values, name, namespace):
    h = helm()
    with h.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    return documents(rendered)


def manifest(docs, header=""):
    out = [header] if header else []
    for source, body, _ in docs:
        out.append(f"---\n# Source: {source}\n{body}\n")
    return "".join(out)


def plain_files(chart_dir):
    values = load_values([os.path.join(chart_dir, "ci", "kubernetes-values.yaml")])
    docs = render(chart_dir, values, PLAIN_RELEASE, PLAIN_NAMESPACE)
    monitor_values = merge(values, {"metrics": {"serviceMonitor": {"enabled": True}}})
    extra = [
        d
        for d in render(chart_dir, monitor_values, PLAIN_RELEASE, PLAIN_NAMESPACE)
        if d[2]["kind"] == "ServiceMonitor"
    ]
    if not extra:
        sys.exit("render.py: the chart rendered no ServiceMonitor with metrics.serviceMonitor.enabled")
    return {
        "rmm-monitor.yaml": manifest(
            docs,
            PLAIN_HEADER.format(
                what="namespace, service account, configuration, metrics Service and DaemonSet",
                apply="kubectl apply -f deploy/kubernetes/rmm-monitor.yaml",
            ),
        ),
        os.path.join("optional", "servicemonitor.yaml"): manifest(
            extra,
            PLAIN_HEADER.format(
                what="the ServiceMonitor (needs the Prometheus Operator's CRDs)",
                apply="kubectl apply -f deploy/kubernetes/optional/servicemonitor.yaml",
            ),
        ),
    }


def cmd_template(a):
    values = load_values(a.values)
    sys.stdout.write(manifest(render(a.chart, values, a.name, a.namespace)))


def cmd_plain(a):
    stale = []
    for rel, text in plain_files(a.chart).items():
        path = os.path.join(a.dir, rel)
        if a.check:
            try:
                with open(path, encoding="utf-8") as fh:
                    old = fh.read()
            except FileNotFoundError:
                old = ""
            if old != text:
                stale.append(path)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        fromfile=path,
                        tofile=f"{path} (rendered from the chart)",
                    )
                )
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            print(f"wrote {path}")
    if stale:
        sys.exit(f"render.py: out of date with the chart: {', '.join(stale)}")


def cmd_lint(a):
    h = helm()
    values = load_values(a.values)
    report = h.lint(
        a.chart, values, strict=True, namespace=a.namespace, kube_version=a.kube_version
    )
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    for m in report.get("messages", []):
        print(f"[{m.get('severity')}] {m.get('path')}: {m.get('error')}")
    for e in report.get("errors", []) or []:
        print(f"error: {e}")
    if problems or report.get("errors"):
        sys.exit("render.py: helm lint found problems")


def cmd_json(a):
    out = []
    for f in a.files:
        with open(f, encoding="utf-8") as fh:
            out.extend(d for d in yaml.safe_load_all(fh) if d is not None)
    json.dump(out, sys.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("template")
    t.add_argument("chart")
    t.add_argument("-f", "--values", action="append", default=[])
    t.add_argument("--name", default=PLAIN_RELEASE)
    t.add_argument("--namespace", default=PLAIN_NAMESPACE)
    t.set_defaults(func=cmd_template)
    pl = sub.add_parser("plain")
    pl.add_argument("chart")
    pl.add_argument("dir")
    pl.add_argument("--check", action="store_true")
    pl.set_defaults(func=cmd_plain)
    li = sub.add_parser("lint")
    li.add_argument("chart")
    li.add_argument("-f", "--values", action="append", default=[])
    li.add_argument("--namespace", default=PLAIN_NAMESPACE)
    li.add_argument("--kube-version", default=None)
    li.set_defaults(func=cmd_lint)
    js = sub.add_parser("json")
    js.add_argument("files", nargs="+")
    js.set_defaults(func=cmd_json)
    a = p.parse_args()
    try:
        a.func(a)
    except helm().HelmError as e:
        sys.exit(f"render.py: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
