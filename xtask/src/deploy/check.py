"""What kubernetes-validate cannot check in deploy/*.yaml (cargo xtask test).

- PodMonitors (a CRD: kubernetes-validate ships no schema for it) against
  podmonitor.schema.json, a structural subset of the Prometheus Operator's
  CRD, with jsonschema (installed with kubernetes-validate).
- That each PodMonitor scrapes lbpath: a DaemonSet in its namespace whose pod
  labels its selector matches, with a container port of each endpoint's name,
  the port that container's `--metrics` argument serves.

Usage: python check.py SCHEMA FILE...; prints one line per PodMonitor, and
one line per problem, exit status 1 when there is one.
"""

import json
import sys

import jsonschema
import yaml


def metrics_port(args):
    """The port of `--metrics [HOST]:PORT` (or --metrics=…), if any."""
    for i, a in enumerate(args):
        value = None
        if a == "--metrics" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--metrics="):
            value = a.split("=", 1)[1]
        if value is not None:
            return int(value.rsplit(":", 1)[1])
    return None


def scrape_problems(monitor, daemonsets):
    ns = monitor["metadata"].get("namespace")
    want = monitor["spec"]["selector"].get("matchLabels", {})
    pods = [
        d["spec"]["template"]
        for d in daemonsets
        if d["metadata"].get("namespace") == ns
        and want.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
    ]
    if not pods:
        return [f"selects no DaemonSet's pods in namespace {ns}"]
    problems = []
    for ep in monitor["spec"].get("podMetricsEndpoints", []):
        name = ep.get("port")
        found = [
            (c, p)
            for pod in pods
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p.get("name") == name
        ]
        if not found:
            problems.append(f"no container port named {name!r}")
        for c, p in found:
            served = metrics_port(c.get("args", []))
            if served != p["containerPort"]:
                problems.append(
                    f"port {name!r} is {p['containerPort']} but container {c['name']} serves metrics on {served}"
                )
    return problems


def main():
    schema_path, *files = sys.argv[1:]
    with open(schema_path) as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    docs = []
    for path in files:
        with open(path) as f:
            docs += [(path, d) for d in yaml.safe_load_all(f) if d]
    daemonsets = [d for _, d in docs if d.get("kind") == "DaemonSet"]
    failed = False
    for path, doc in docs:
        if doc.get("kind") != "PodMonitor":
            continue
        name = f"{path}: PodMonitor {doc.get('metadata', {}).get('name')}"
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
        if not errors:
            errors = scrape_problems(doc, daemonsets)
        for e in errors:
            print(f"ERROR {name}: {e}")
        if errors:
            failed = True
        else:
            print(f"OK {name}: valid (structural schema) and scrapes lbpath's metrics port")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
