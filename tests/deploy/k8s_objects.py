"""Reading rendered Kubernetes objects: selectors, pod specs, effective env and the policies in front of a pod."""

from __future__ import annotations

import re
from typing import Any

from philip.settings import Settings
from tests.deploy.conftest import Rendered

ROLES = ("gateway", "generator", "refiner", "personalizer")  # each runs `philip serve <role>`


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def component(workload: dict[str, Any]) -> str:
    return pod_labels(workload)["app.kubernetes.io/component"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def selected(r: Rendered, selector: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in r.workloads if matches(selector, pod_labels(w))]


def behind(r: Rendered, service: dict[str, Any]) -> list[str]:
    """Components of the pods a Service routes to (its selector is a plain label map)."""
    return [component(w) for w in selected(r, {"matchLabels": service["spec"]["selector"]})]


def philip_workloads(r: Rendered) -> list[dict[str, Any]]:
    return [w for w in r.workloads if component(w) in ROLES]


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    return containers[0]


def effective_env(r: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """What the process sees: envFrom ConfigMaps, then env (secrets as placeholders, $(VAR) expanded)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        value = var.get("value", "secret")
        env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def settings_of(r: Rendered, container: dict[str, Any]) -> Settings:
    env = effective_env(r, container)
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("PHILIP_")})


def ingress_peers(r: Rendered, workload: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Every peer allowed into the pod by some policy; None = a rule open to every source."""
    peers: list[dict[str, Any] | None] = []
    for policy in r.of_kind("NetworkPolicy"):
        if not matches(policy["spec"]["podSelector"], pod_labels(workload)):
            continue
        for rule in policy["spec"].get("ingress", []):
            peers.extend(rule.get("from") or [None])
    return peers


def in_namespace_sources(r: Rendered, peers: list[dict[str, Any] | None]) -> set[str]:
    """Components of this namespace's pods allowed by ``peers`` (pod-selector peers only)."""
    return {component(w) for p in peers if p and "podSelector" in p and "namespaceSelector" not in p
            for w in selected(r, p["podSelector"])}


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's, Service's or policy's port as the container's number (names resolved)."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"{container['name']}: no containerPort named {port!r}"
    return named[port]


def open_ingress_ports(r: Rendered, workload: dict[str, Any]) -> set[int] | None:
    """Container ports that policies open to every source (rules without ``from``); None = all."""
    container = main_container(workload)
    ports: set[int] = set()
    for policy in r.of_kind("NetworkPolicy"):
        if not matches(policy["spec"]["podSelector"], pod_labels(workload)):
            continue
        for rule in policy["spec"].get("ingress", []):
            if rule.get("from"):
                continue
            if not rule.get("ports"):
                return None
            ports |= {container_port(container, p["port"]) for p in rule["ports"]
                      if p.get("protocol", "TCP") == "TCP"}
    return ports


def service_target(r: Rendered, service: dict[str, Any], port: int | str) -> int:
    """The container port a Service port (by name or number) reaches on the pods behind it."""
    found = [p for p in service["spec"]["ports"] if port in (p.get("name"), p["port"])]
    assert len(found) == 1, f"Service {service['metadata']['name']}: no port {port!r}"
    target = found[0].get("targetPort", found[0]["port"])
    numbers = {container_port(main_container(w), target)
               for w in selected(r, {"matchLabels": service["spec"]["selector"]})}
    assert len(numbers) == 1, f"Service {service['metadata']['name']}: port {port!r} -> {numbers}"
    return numbers.pop()


def nginx_size_bytes(size: str) -> int:
    """An nginx size (``client_max_body_size``: bytes, k, m or g; binary units); 0 = no limit."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, f"not an nginx size: {size!r}"
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")
