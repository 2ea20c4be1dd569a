"""The Kubernetes manifests (deploy/k8s), checked offline on what ``kubectl kustomize`` renders:
schemas (kubernetes-validate, strict, pinned version), then the wiring a schema cannot see
(GPU placement, probes, drain timing, selectors, settings names, security)."""

from __future__ import annotations

import re

import pytest

from philip.settings import Settings, env_name
from tests.deploy.conftest import K8S_VERSION, Rendered
from tests.deploy.k8s_objects import (
    ROLES,
    behind,
    component,
    effective_env,
    in_namespace_sources,
    ingress_peers,
    main_container,
    matches,
    philip_workloads,
    pod_labels,
    pod_spec,
    selected,
    settings_of,
)

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate missing: `pip install -e '.[dev]'`")

WORKERS = ("generator", "refiner", "personalizer")
# amd.com/gpu.device-id from the AMD node labeller, and the taint value of that pool.
POOLS = {"generator": "7448", "refiner": "740f", "personalizer": "740f"}  # W7900, MI210
POOL_TAINTS = {"7448": "w7900", "740f": "mi210"}
# Custom resources: no schema in kubernetes-validate; their structure is checked below.
CRDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}
TRAIN_STREAM, TRAIN_GROUP = "philip:queue:train", "personalizers"
SECRET = "philip-secrets"
SETTINGS_VARS = {env_name(name) for name in Settings.field_names()}


# ---- schema ---------------------------------------------------------------------------------

def test_schemas_validate_strictly(each: Rendered) -> None:
    """Every object validates against Kubernetes' own schema (unknown fields rejected)."""
    errors = []
    for doc in each.docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kv.utils.SchemaNotFoundError as exc:  # a typo'd apiVersion would only warn in the CLI
            errors.append(exc.message)
    assert not errors, f"overlays/{each.overlay} against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def test_every_role_has_a_deployment_and_service(each: Rendered) -> None:
    for role in ROLES:
        workload = each.get("Deployment", f"philip-{role}")
        assert main_container(workload).get("args") == ["serve", role], "runs the image's `philip` entrypoint"
        assert "command" not in main_container(workload), "keep the image's ENTRYPOINT (philip)"
        service = each.get("Service", f"philip-{role}")
        assert behind(each, service) == [role]
        # Workers: headless, so the gateway's dns:/// resolver sees every pod (round_robin).
        assert (service["spec"].get("clusterIP") == "None") == (role in WORKERS), service["metadata"]["name"]
    assert len(each.of_kind("Namespace")) == 1
    namespace = each.of_kind("Namespace")[0]["metadata"]["name"]
    assert {d["metadata"].get("namespace") for d in each.docs if d["kind"] not in
            ("Namespace", "PriorityClass")} == {namespace}


# ---- GPU placement --------------------------------------------------------------------------

def test_amd_gpu_containers_request_a_gpu_on_their_pool(rendered: dict[str, Rendered]) -> None:
    amd = rendered["amd"]
    for workload in amd.workloads:
        role, spec = component(workload), pod_spec(workload)
        limits = main_container(workload).get("resources", {}).get("limits", {})
        selector = spec.get("nodeSelector", {})
        if role not in POOLS:  # gateway, redis: CPU nodes, never a GPU or a GPU pool's selector
            assert "amd.com/gpu" not in limits and not any(k.startswith("amd.com/") for k in selector), role
            continue
        assert limits.get("amd.com/gpu") == 1, f"{role}: limits amd.com/gpu: 1"
        device_id = selector.get("amd.com/gpu.device-id")
        assert device_id == POOLS[role] and isinstance(device_id, str), f"{role}: pool {POOLS[role]!r} (quoted)"
        tolerated = {(t.get("key"), t.get("value"), t.get("effect")) for t in spec.get("tolerations", [])}
        assert ("gpu-pool", POOL_TAINTS[device_id], "NoSchedule") in tolerated, f"{role}: tolerates its pool"
        assert settings_of(amd, main_container(workload)).server.device == "cuda", f"{role}: PHILIP_DEVICE=cuda"


def test_dev_is_cpu_only_with_one_replica_each(rendered: dict[str, Rendered]) -> None:
    dev = rendered["dev"]
    for workload, container in dev.containers():
        spec = pod_spec(workload)
        resources = container.get("resources", {})
        assert not any("amd.com/gpu" in resources.get(k, {}) for k in ("limits", "requests"))
        assert not (spec.get("nodeSelector") or spec.get("tolerations") or spec.get("affinity"))
        assert workload["spec"].get("replicas", 1) == 1, workload["metadata"]["name"]
        if component(workload) in ROLES:
            assert settings_of(dev, container).server.device == "cpu"
    assert not dev.of_kind("HorizontalPodAutoscaler", "ScaledObject", "TriggerAuthentication")


# ---- probes and shutdown --------------------------------------------------------------------

def test_probes_use_grpc_health_on_the_served_port(each: Rendered) -> None:
    for workload in philip_workloads(each):
        container = main_container(workload)
        ports = {p["containerPort"] for p in container["ports"]}
        served = settings_of(each, container).server.port
        assert served in ports, f"{workload['metadata']['name']}: PHILIP_PORT {served} not a containerPort"
        if component(workload) == "gateway":
            continue  # probes its HTTP edge: test_gateway_probes_use_the_http_edge
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            assert probe and probe.get("grpc", {}).get("port") == served, f"{workload['metadata']['name']}.{kind}"
        startup = container["startupProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        # Workers open their port only after loading the model; the GPU pools load real checkpoints.
        needed = 600 if component(workload) in POOLS and each.overlay == "amd" else 300
        if component(workload) in WORKERS:
            assert budget >= needed, f"{workload['metadata']['name']}: startup budget {budget}s < {needed}s"


def test_termination_grace_covers_prestop_and_drain(each: Rendered) -> None:
    for workload in philip_workloads(each):
        container, role = main_container(workload), component(workload)
        prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace_s = settings_of(each, container).server.grace_s
        # services/app.py: the gateway drains calls for grace_s, then gives running session
        # steps another grace_s; workers drain once.
        drain = 2 * grace_s if role == "gateway" else grace_s
        period = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
        assert period > prestop + drain, f"{role}: {period}s <= preStop {prestop}s + drain {drain}s"


# ---- references between objects -------------------------------------------------------------

def test_disruption_budgets_select_one_workload(each: Rendered) -> None:
    budgets = each.of_kind("PodDisruptionBudget")
    assert {component(w) for b in budgets for w in selected(each, b["spec"]["selector"])} >= set(ROLES)
    for budget in budgets:
        assert len(selected(each, budget["spec"]["selector"])) == 1, budget["metadata"]["name"]


def test_autoscalers_target_existing_deployments(rendered: dict[str, Rendered]) -> None:
    amd = rendered["amd"]
    deployments = amd.names("Deployment")
    hpas = amd.of_kind("HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["philip-generator"]
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        target = amd.get("Deployment", ref["name"])
        assert "cpu" in main_container(target)["resources"]["requests"], "CPU utilization needs a CPU request"
        assert "replicas" not in target["spec"], "the HPA owns the count; `kubectl apply` must not reset it"


def test_keda_scales_personalizers_on_training_queue_lag(rendered: dict[str, Rendered]) -> None:
    amd = rendered["amd"]
    (scaled,) = amd.of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == "philip-personalizer"
    assert target["name"] in amd.names("Deployment")
    assert target["name"] not in {h["spec"]["scaleTargetRef"]["name"] for h in amd.of_kind("HorizontalPodAutoscaler")}
    assert "replicas" not in amd.get("Deployment", target["name"])["spec"], "KEDA owns the count"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams"
    assert (meta["stream"], meta["consumerGroup"]) == (TRAIN_STREAM, TRAIN_GROUP)
    assert int(meta["lagCount"]) >= 1 and "pendingEntriesCount" not in meta and "streamLength" not in meta
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    host, _, port = meta["address"].rpartition(":")
    service_name, namespace = host.split(".")[:2]
    redis = amd.get("Service", service_name)
    assert namespace == redis["metadata"]["namespace"] and int(port) in {p["port"] for p in redis["spec"]["ports"]}
    assert behind(amd, redis) == ["redis"]
    auth = amd.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert [(s["parameter"], s["name"]) for s in auth["spec"]["secretTargetRef"]] == [("password", SECRET)]


def test_network_policies_select_existing_pods(each: Rendered) -> None:
    for policy in each.of_kind("NetworkPolicy"):
        name, spec = policy["metadata"]["name"], policy["spec"]
        if spec["podSelector"]:
            assert selected(each, spec["podSelector"]), f"{name}: selects no pod"
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert selected(each, peer["podSelector"]), f"{name}: a source selects no pod"


def test_network_policies_allow_only_the_intended_paths(each: Rendered) -> None:
    deny = [p for p in each.of_kind("NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert deny and all(not p["spec"].get("ingress") and "Ingress" in p["spec"]["policyTypes"] for p in deny)
    redis_clients = {component(w) for w, c in each.containers() if "PHILIP_REDIS_URL" in effective_env(each, c)}
    for workload in each.workloads:
        role, peers = component(workload), ingress_peers(each, workload)
        assert (None in peers) == (role == "gateway"), f"{role}: only the gateway is open to outside"
        if role in WORKERS:
            assert all(p and set(p) == {"podSelector"} for p in peers), f"{role}: pods of this namespace only"
            assert in_namespace_sources(each, peers) == {"gateway"}, role
        if role == "redis":
            assert in_namespace_sources(each, peers) == redis_clients, "exactly the store's users reach Redis"


def test_gateway_dials_headless_services_by_dns(each: Rendered) -> None:
    gateway = main_container(each.get("Deployment", "philip-gateway"))
    settings = settings_of(each, gateway)
    for role in WORKERS:
        address = getattr(settings.upstreams, f"{role}_addr")
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", address or "")
        assert match, f"PHILIP_{role.upper()}_ADDR={address!r}: dns:///name.namespace.svc.cluster.local:port"
        service = each.get("Service", match.group(1))
        assert service["metadata"]["namespace"] == match.group(2)
        assert service["spec"].get("clusterIP") == "None", "headless, for client-side round_robin"
        assert int(match.group(3)) in {p["port"] for p in service["spec"]["ports"]}
        assert behind(each, service) == [role]
    for _, container in each.containers():
        url = effective_env(each, container).get("PHILIP_REDIS_URL")
        if url:
            host = re.fullmatch(r"redis://(?::[^@]*@)?([^:/]+):(\d+)/\d+", url)
            assert host, url
            assert behind(each, each.get("Service", host.group(1).split(".")[0])) == ["redis"], url


def test_priority_classes_put_interactive_above_training(each: Rendered) -> None:
    values = {p["metadata"]["name"]: p["value"] for p in each.of_kind("PriorityClass")}
    priority = {component(w): values[pod_spec(w)["priorityClassName"]] for w in each.workloads}
    assert priority["personalizer"] < min(priority["generator"], priority["refiner"], priority["gateway"])
    training = each.get("PriorityClass", pod_spec(each.get("Deployment", "philip-personalizer"))["priorityClassName"])
    assert training.get("preemptionPolicy") == "Never", "training never evicts anything"


def test_topology_spread_selects_own_pods(each: Rendered) -> None:
    for workload in philip_workloads(each):
        constraints = pod_spec(workload).get("topologySpreadConstraints", [])
        assert constraints, workload["metadata"]["name"]
        for c in constraints:
            assert matches(c["labelSelector"], pod_labels(workload)), workload["metadata"]["name"]
            assert selected(each, c["labelSelector"]) == [workload]


# ---- images, settings, storage, security ----------------------------------------------------

def test_images_are_pinned(each: Rendered) -> None:
    for workload, container in each.containers():
        image = container["image"]
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert digest or (tag and tag != "latest"), f"{workload['metadata']['name']}: unpinned image {image!r}"


def test_philip_env_names_are_settings_fields(each: Rendered) -> None:
    """Every PHILIP_* name is a real Settings field, and each container's values parse."""
    known = SETTINGS_VARS
    for config_map in each.of_kind("ConfigMap"):
        unknown = {k for k in config_map["data"] if k.startswith("PHILIP_")} - known
        assert not unknown, f"ConfigMap {config_map['metadata']['name']}: not Settings fields: {sorted(unknown)}"
    for workload, container in each.containers():
        unknown = {v["name"] for v in container.get("env", []) if v["name"].startswith("PHILIP_")} - known
        assert not unknown, f"{workload['metadata']['name']}: not Settings fields: {sorted(unknown)}"
        if component(workload) in ROLES:
            settings_of(each, container)  # raises naming the variable if a value does not parse


def test_env_references_are_defined_before_use(each: Rendered) -> None:
    """$(VAR) in an env value expands only when VAR is defined earlier in the list."""
    for workload, container in each.containers():
        defined: set[str] = set()
        for var in container.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                assert ref in defined, f"{workload['metadata']['name']}: {var['name']} uses $({ref}) before it is set"
            defined.add(var["name"])
        for arg in container.get("args", []):
            for ref in re.findall(r"\$\((\w+)\)", arg):
                assert ref in defined, f"{workload['metadata']['name']}: args use undefined $({ref})"


def test_secrets_are_referenced_not_committed(each: Rendered) -> None:
    assert not each.of_kind("Secret"), "secret values are created in the cluster, never committed"
    for workload, container in each.containers():
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == SECRET, workload["metadata"]["name"]


def test_every_role_reads_the_internal_token_from_the_secret(each: Rendered) -> None:
    """With API keys on, internal services serve only calls with the gateway's internal token
    (philip/rpc/internal.py), and a role without it refuses to start: all four mount the same key."""
    for workload in philip_workloads(each):
        name, container = workload["metadata"]["name"], main_container(workload)
        path = settings_of(each, container).auth.internal_token_file
        assert path, f"{name}: PHILIP_INTERNAL_TOKEN_FILE"
        mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert len(mounts) == 1 and mounts[0].get("readOnly"), f"{name}: one read-only mount holds {path}"
        secret = {v["name"]: v for v in pod_spec(workload)["volumes"]}[mounts[0]["name"]].get("secret", {})
        item = {"key": "internal-token", "path": path[len(mounts[0]["mountPath"].rstrip("/")) + 1:]}
        assert secret.get("secretName") == SECRET and item in secret.get("items", []), f"{name}: {secret}"


def test_models_and_adapters_are_mounted_where_settings_point(each: Rendered) -> None:
    claim = each.get("PersistentVolumeClaim", "philip-models")
    if each.overlay == "amd":
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "shared by every replica on many nodes"
    for workload in each.workloads:
        if component(workload) not in WORKERS:
            continue
        container = main_container(workload)
        settings = settings_of(each, container)
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for path in (settings.models.model_dir, settings.models.upscaler_path, settings.models.adapters_dir):
            mounts = [m for m in container["volumeMounts"]
                      if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
            assert mounts, f"{workload['metadata']['name']}: nothing mounted at {path}"
            source = volumes[mounts[-1]["name"]].get("persistentVolumeClaim", {}).get("claimName")
            assert source == "philip-models", f"{workload['metadata']['name']}: {path} not on the models volume"
        adapters = next(m for m in container["volumeMounts"] if m["mountPath"] == settings.models.adapters_dir)
        # Only the personalizer writes adapters.
        assert adapters.get("readOnly", False) == (component(workload) != "personalizer")


def test_redis_persists_with_aof_on_a_volume(each: Rendered) -> None:
    redis = each.get("StatefulSet", "philip-redis")
    container = main_container(redis)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["mountPath"] == data_dir and m["name"] in claims for m in container["volumeMounts"])


def test_pods_run_restricted(each: Rendered) -> None:
    for workload, container in each.containers():
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        account = each.get("ServiceAccount", pod["serviceAccountName"])
        assert account.get("automountServiceAccountToken") is False, f"{name}: no API token in the pod"
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        if component(workload) in ROLES:
            volumes = {v["name"]: v for v in pod["volumes"]}
            writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
            assert {"/tmp", "/cache"} <= writable, f"{name}: /tmp and caches need writable emptyDirs"
