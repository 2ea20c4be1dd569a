"""The gateway's HTTP edge in the Kubernetes manifests (docs/HTTP.md): its port on the container and the
Service, its probes, the NetworkPolicy, and the overlays' streaming-friendly Ingress."""

from __future__ import annotations

from services.gateway.http.sse import HEARTBEAT_S
from tests.deploy.conftest import Rendered
from tests.deploy.k8s_objects import (
    behind,
    component,
    container_port,
    effective_env,
    main_container,
    nginx_size_bytes,
    open_ingress_ports,
    philip_workloads,
    service_target,
    settings_of,
)

HTTP_PORT_NAME = "http"
NGINX = "nginx.ingress.kubernetes.io/"


def test_gateway_probes_use_the_http_edge(each: Rendered) -> None:
    """Readiness on /readyz (503 while starting or draining), liveness and startup on /healthz
    (200 while the process runs), all on the container's http port (docs/HTTP.md)."""
    container = main_container(each.get("Deployment", "philip-gateway"))
    http = container_port(container, HTTP_PORT_NAME)
    expected = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for kind, path in expected.items():
        probe = container.get(kind, {}).get("httpGet")
        assert probe, f"gateway.{kind}: an httpGet probe"
        assert probe["path"] == path and container_port(container, probe["port"]) == http, f"gateway.{kind}"
        assert probe.get("scheme", "HTTP") == "HTTP", f"gateway.{kind}: the edge serves plain HTTP"
    startup = container["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 30, "startup budget"


def test_network_policy_admits_every_gateway_port(each: Rendered) -> None:
    """gRPC and the HTTP edge are both open to every source (clients, the ingress controller)."""
    gateway = each.get("Deployment", "philip-gateway")
    opened = open_ingress_ports(each, gateway)
    declared = {p["containerPort"] for p in main_container(gateway)["ports"]}
    assert opened is None or declared <= opened, f"gateway ports {sorted(declared)}, open {sorted(opened)}"
    assert {50051, 8080} <= declared


def test_gateway_serves_http_on_its_exposed_port(each: Rendered) -> None:
    """PHILIP_HTTP_PORT is the `http` containerPort, and the Service routes `http` to it."""
    container = main_container(each.get("Deployment", "philip-gateway"))
    env = effective_env(each, container)
    assert "PHILIP_HTTP_PORT" in env, "set PHILIP_HTTP_PORT explicitly: the probes and the Service use it"
    http = container_port(container, HTTP_PORT_NAME)
    assert int(env["PHILIP_HTTP_PORT"]) == http == 8080, f"PHILIP_HTTP_PORT={env['PHILIP_HTTP_PORT']}, port {http}"
    settings = settings_of(each, container)
    assert settings.http.http_port == http
    assert http != settings.server.port, "HTTP beside gRPC, on a port of its own"
    service = each.get("Service", "philip-gateway")
    assert service_target(each, service, HTTP_PORT_NAME) == http
    assert service_target(each, service, "grpc") == settings.server.port, "gRPC stays on the Service"
    for var in ("PHILIP_HTTP_PORT", "PHILIP_HTTP_CORS_ORIGINS"):
        for workload in philip_workloads(each):
            if component(workload) != "gateway":
                assert var not in effective_env(each, main_container(workload)), f"{var}: gateway only"


def test_ingress_streams_the_gateways_http_port(each: Rendered) -> None:
    """The overlays' Ingress reaches the gateway's HTTP port with SSE-safe ingress-nginx settings:
    no response buffering, timeouts beyond the heartbeat, uploads up to PHILIP_MAX_MESSAGE_MB."""
    ingresses = each.of_kind("Ingress")
    assert ingresses, f"overlays/{each.overlay}: an Ingress for the HTTP edge"
    gateway = main_container(each.get("Deployment", "philip-gateway"))
    http, settings = container_port(gateway, HTTP_PORT_NAME), settings_of(each, gateway)
    for ingress in ingresses:
        name, spec = ingress["metadata"]["name"], ingress["spec"]
        assert ingress["apiVersion"] == "networking.k8s.io/v1" and spec.get("ingressClassName") == "nginx", name
        assert "defaultBackend" not in spec, name
        notes = ingress["metadata"].get("annotations", {})
        assert notes.get(NGINX + "proxy-buffering") == "off", f"{name}: SSE needs proxy-buffering off"
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(notes.get(NGINX + timeout, "60")) > HEARTBEAT_S, f"{name}: {timeout} <= the heartbeat"
        body = nginx_size_bytes(notes.get(NGINX + "proxy-body-size", "1m"))
        assert body == 0 or body >= settings.server.max_message_mb * 2**20, \
            f"{name}: proxy-body-size < PHILIP_MAX_MESSAGE_MB"
        hosts = [rule.get("host") for rule in spec["rules"]]
        assert hosts and all(hosts), f"{name}: every rule names its host"
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = each.get("Service", backend["name"])
                assert behind(each, service) == ["gateway"], f"{name}: {backend['name']} is not the gateway"
                port = backend["port"].get("name") or backend["port"]["number"]
                assert service_target(each, service, port) == http, f"{name}: not the gateway's HTTP port"
            assert [p["path"] for p in rule["http"]["paths"]] == ["/"], f"{name}: the API and the studio"
        if each.overlay == "amd":
            tls = spec.get("tls", [])
            assert tls and all(t.get("secretName") for t in tls), f"{name}: TLS with a referenced secret"
            assert set(hosts) <= {h for t in tls for h in t.get("hosts", [])}, f"{name}: TLS covers every host"
