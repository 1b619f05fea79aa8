"""Checks of the deployment files: deploy/k8s (kustomize), compose.yaml and the Dockerfile.

No cluster and no Docker engine are needed. A small Python renderer follows each overlay's
kustomization.yaml (resources, components, strategic-merge patches, namespace, replicas, images:
only what our files use; anything else is refused loudly), and the rendered objects are checked
against the code: commands are console scripts of pyproject.toml, CC_* variables are fields of the
settings classes, probe ports are the ports the services listen on. Where a kustomize binary is on
PATH (`kustomize`, or `kubectl kustomize` built in), the overlays are also rendered with it and
must give exactly what the Python renderer gives.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from callcenter import settings as settings_module
from callcenter.store.keys import Keys

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SERVICES = {
    "callcenter-sip-edge": "StatefulSet",
    "callcenter-dispatcher": "Deployment",
    "callcenter-cdr-writer": "Deployment",
    "callcenter-api": "Deployment",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}
# kinds whose lists merge by key in a strategic-merge patch (custom resources: lists are replaced)
BUILTIN_APIS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
CC_NAME = re.compile(r"\bCC_[A-Z][A-Z0-9_]*\b")


# -- a tiny kustomize ---------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def object_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def strategic_merge(target: Any, patch: Any, builtin: bool, key: str | None = None) -> Any:
    """Merge `patch` into `target` the way `kubectl kustomize` does for the cases our files use:
    maps merge, a null deletes, lists of known merge keys merge by that key (new items first),
    every other list is replaced."""
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for k, v in patch.items():
            if k.startswith("$"):
                raise NotImplementedError(f"patch directive {k} is not supported by this renderer")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, builtin, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(target, list) and builtin and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        by_key = {item[mk]: item for item in patch}
        existing = {item[mk] for item in target}
        new = [copy.deepcopy(item) for item in patch if item[mk] not in existing]
        merged = [strategic_merge(item, by_key[item[mk]], builtin) if item[mk] in by_key else item for item in target]
        return new + merged
    return copy.deepcopy(patch)


def image_name(image: str) -> tuple[str, str]:
    """Split `name[:tag]` (a digest or a registry port is not used by our files)."""
    if "@" in image:
        raise NotImplementedError("image digests are not supported by this renderer")
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return name, tag


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "replicas", "images"}


def render(directory: Path, accumulated: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Render a Kustomization (or, with `accumulated`, apply a Component to it)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kust) - SUPPORTED_FIELDS
    assert not unsupported, f"{directory}: this renderer does not implement {sorted(unsupported)}"
    is_component = kust.get("kind") == "Component"
    assert is_component == (accumulated is not None), f"{directory}: Component used as a resource or v.v."
    objects = list(accumulated or [])
    for entry in kust.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_docs(path)
    for entry in kust.get("components", []):
        objects = render(directory / entry, objects)
    ids = [object_id(o) for o in objects]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate objects {ids}"

    for entry in kust.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only `patches: - path:` is implemented"
        for patch in load_docs(directory / entry["path"]):
            matches = [
                o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(matches) == 1, f"{directory}: patch target {patch['kind']}/{patch['metadata']['name']}"
            target = matches[0]
            merged = strategic_merge(target, patch, target["apiVersion"] in BUILTIN_APIS)
            objects[objects.index(target)] = merged

    if "namespace" in kust:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = kust["namespace"]
    for entry in kust.get("replicas", []):
        matches = [o for o in objects if o["kind"] in WORKLOAD_KINDS and o["metadata"]["name"] == entry["name"]]
        assert len(matches) == 1, f"{directory}: replicas target {entry['name']}"
        matches[0]["spec"]["replicas"] = entry["count"]
    for entry in kust.get("images", []):
        for o in objects:
            if o["kind"] not in WORKLOAD_KINDS:
                continue
            spec = pod_spec(o)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                name, tag = image_name(c["image"])
                if name == entry["name"]:
                    new_tag = entry.get("newTag", tag)
                    c["image"] = entry.get("newName", name) + (f":{new_tag}" if new_tag else "")
    return objects


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


# -- what the code declares ----------------------------------------------------------------------


def console_scripts() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["scripts"])


def settings_classes() -> list[type[BaseSettings]]:
    return [
        c
        for c in vars(settings_module).values()
        if isinstance(c, type) and issubclass(c, BaseSettings) and c is not BaseSettings
    ]


def settings_env_names() -> set[str]:
    names = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        assert prefix == "CC_", f"{cls.__name__} has env_prefix {prefix!r}"
        names |= {prefix + field.upper() for field in cls.model_fields}
    return names


def field_default(field: str) -> Any:
    for cls in settings_classes():
        if field in cls.model_fields:
            return cls.model_fields[field].get_default(call_default_factory=True)
    raise KeyError(field)


# -- container helpers ---------------------------------------------------------------------------


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The environment a container sees: envFrom ConfigMaps first, then `env` (which wins).
    A value from a Secret or the downward API is represented by its valueFrom."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def is_callcenter(container: dict[str, Any]) -> bool:
    return image_name(container["image"])[0].rsplit("/", 1)[-1] == "callcenter"


# -- the overlays --------------------------------------------------------------------------------


def test_every_overlay_renders_the_four_services(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    for service, kind in SERVICES.items():
        by_name(objects, kind, service)
        by_name(objects, "PodDisruptionBudget", service)
    by_name(objects, "ConfigMap", "callcenter-config")
    by_name(objects, "Service", "callcenter-api")
    by_name(objects, "Service", "callcenter-sip-edge")
    for o in objects:
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"].get("namespace"), f"{name}: {object_id(o)} has no namespace"


def test_probes_point_at_the_port_the_service_listens_on(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            ports = {p.get("name", p["containerPort"]): p["containerPort"] for p in c.get("ports", [])}
            ports |= {p["containerPort"]: p["containerPort"] for p in c.get("ports", [])}
            env = container_env(c, objects)
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(probe_name)
                if probe_name == "startupProbe" and probe is None:
                    continue
                assert probe, f"{where}: no {probe_name}"
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler is None:
                    assert "exec" in probe, f"{where}: {probe_name} has no handler"
                    assert not is_callcenter(c), f"{where}: callcenter services are probed over HTTP"
                    continue
                assert handler["port"] in ports, f"{where}: {probe_name} port {handler['port']} not declared"
                if is_callcenter(c):
                    port = ports[handler["port"]]
                    listening = {int(env[v]) for v in ("CC_HEALTH_PORT", "CC_API_PORT") if v in env}
                    assert port in listening, f"{where}: {probe_name} on {port}, service listens on {listening}"
                    assert probe["httpGet"]["path"] == ("/readyz" if probe_name == "readinessProbe" else "/healthz")


def test_resources_and_security_context(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    for w in workloads(objects):
        spec = pod_spec(w)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", w["metadata"]["name"]
        for c in spec["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{where}: {kind}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where


def test_commands_are_console_scripts(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    scripts = console_scripts()
    seen = set()
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            if is_callcenter(c):
                command = c.get("command", [])
                assert len(command) == 1 and command[0] in scripts, f"{w['metadata']['name']}: {command}"
                seen.add(command[0])
                assert c["image"] != "callcenter", "an overlay must pin the image (images: newTag)"
    assert seen == {"callcenter-sip-edge", "callcenter-dispatcher", "callcenter-cdr-writer", "callcenter-api"}


def test_manifest_env_vars_are_settings(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    known = settings_env_names()
    used: set[str] = set()
    for o in objects:
        if o["kind"] == "ConfigMap":
            used |= {k for k in o.get("data", {}) if k.startswith("CC_")}
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            used |= {v["name"] for v in c.get("env", []) if v["name"].startswith("CC_")}
    assert used, "no CC_ variable found"
    assert used <= known, f"not a field of any settings class: {sorted(used - known)}"


def test_every_cc_name_in_deploy_files_is_a_setting() -> None:
    """Comments included: a setting named in a comment must exist too."""
    files = [*K8S.rglob("*.yaml"), ROOT / "compose.yaml", ROOT / "Dockerfile"]
    known = settings_env_names()
    for path in files:
        unknown = set(CC_NAME.findall(path.read_text())) - known
        assert not unknown, f"{path.relative_to(ROOT)}: {sorted(unknown)}"


def test_sip_edge_outlives_its_drain(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    edge = by_name(objects, "StatefulSet", "callcenter-sip-edge")
    (container,) = pod_spec(edge)["containers"]
    env = container_env(container, objects)
    drain = float(env.get("CC_DRAIN_TIMEOUT_S", field_default("drain_timeout_s")))
    assert pod_spec(edge)["terminationGracePeriodSeconds"] > drain
    # a stable edge id per replica: the pod name, from the downward API
    assert env["CC_EDGE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert edge["spec"]["serviceName"] == "callcenter-sip-edge-headless"
    assert by_name(objects, "Service", "callcenter-sip-edge-headless")["spec"]["clusterIP"] == "None"
    assert {p["protocol"] for p in by_name(objects, "Service", "callcenter-sip-edge")["spec"]["ports"]} == {"UDP"}


def test_secret_references_resolve_or_are_documented(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """A Secret the workloads read is either rendered (dev) or an operator-provided one that
    base/secret.example.yaml documents with the same key."""
    _, objects = overlay
    examples = {
        (s["metadata"]["name"], k) for s in load_docs(K8S / "base" / "secret.example.yaml") for k in s["stringData"]
    }
    rendered = {
        (s["metadata"]["name"], k)
        for s in objects
        if s["kind"] == "Secret"
        for k in s.get("stringData", s.get("data", {}))
    }
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            for v in c.get("env", []):
                ref = v.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in rendered | examples, f"{w['metadata']['name']}: {ref}"


def test_health_endpoints_listen_where_their_probes_reach(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Health binds loopback by default; the kubelet probes the pod's IP, so a service probed on
    CC_HEALTH_PORT is told CC_HEALTH_HOST=0.0.0.0 (and the api CC_API_HOST)."""
    _, objects = overlay
    assert field_default("health_host") == "127.0.0.1"
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            if is_callcenter(c):
                env = container_env(c, objects)
                host = env.get("CC_HEALTH_HOST") if "CC_HEALTH_PORT" in env else env.get("CC_API_HOST")
                assert host == "0.0.0.0", f"{w['metadata']['name']}: probes would find nothing listening"


def secret_value(objects: list[dict[str, Any]], ref: dict[str, Any]) -> str:
    secret = by_name(objects, "Secret", ref["name"])
    return str(secret.get("stringData", {})[ref["key"]])


def test_redis_wants_a_password_from_a_secret(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """No shipped configuration runs Redis without a password: every service reads CC_REDIS_URL
    from a Secret, and the dev Redis requires the password of that same Secret."""
    name, objects = overlay
    refs = []
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            if is_callcenter(c):
                url = container_env(c, objects)["CC_REDIS_URL"]
                assert isinstance(url, dict) and "secretKeyRef" in url, f"{w['metadata']['name']}: {url}"
                refs.append(url["secretKeyRef"])
    redis = [w for w in workloads(objects) if w["metadata"]["name"] == "redis"]
    assert bool(redis) == (name == "dev"), name  # production's Redis is outside the cluster
    for w in redis:
        (c,) = pod_spec(w)["containers"]
        env = container_env(c, objects)
        password_ref = env["REDIS_PASSWORD"]["secretKeyRef"]
        assert c["args"][c["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        assert env["REDISCLI_AUTH"] == env["REDIS_PASSWORD"], "the readiness probe's redis-cli authenticates"
        password = secret_value(objects, password_ref)
        for ref in refs:
            assert f":{password}@redis:6379/" in secret_value(objects, ref), ref


def test_autoscalers_target_the_tenant_streams(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    # production autoscales; dev runs fixed single replicas
    assert bool(scaled) == bool(hpas) == (name == "production"), name
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert "replicas" not in by_name(objects, "Deployment", target)["spec"], "the HPA owns replicas"
    tenant = by_name(objects, "ConfigMap", "callcenter-config")["data"]["CC_TENANT"]
    keys = Keys(tenant)
    expected = {
        "callcenter-dispatcher": (keys.reports, "dispatcher"),
        "callcenter-cdr-writer": (keys.events, "cdr-writer"),
    }
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]["name"]
        by_name(objects, "Deployment", target)
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert (meta["stream"], meta["consumerGroup"]) == expected[target]
            assert ":" in meta["address"] and "//" not in meta["address"], "KEDA wants host:port"
            if "authenticationRef" in trigger:
                by_name(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert "replicas" not in by_name(objects, "Deployment", target)["spec"], "the autoscaler owns replicas"


# -- the real kustomize, when this machine has one -----------------------------------------------


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(kustomize_command() is None, reason="no kustomize or kubectl on PATH")
@pytest.mark.parametrize("name", OVERLAYS)
def test_real_kustomize_renders_the_same(name: str) -> None:
    command = kustomize_command()
    assert command is not None
    out = subprocess.run(
        [*command, str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    theirs = {object_id(o): o for o in yaml.safe_load_all(out) if o}
    ours = {object_id(o): o for o in render(K8S / "overlays" / name)}
    assert sorted(theirs) == sorted(ours)
    for key, obj in ours.items():
        assert theirs[key] == obj, f"{name}: {key} differs between kustomize and the Python renderer"


# -- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_services_run_console_scripts(compose: dict[str, Any]) -> None:
    scripts = console_scripts()
    services = compose["services"]
    commands = set()
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["context"] == "." and svc["build"]["dockerfile"] == "Dockerfile", name
            command = svc["command"]
            assert isinstance(command, list) and len(command) == 1 and command[0] in scripts, name
            commands.add(command[0])
        else:
            assert "image" in svc, name
    assert {"callcenter-sip-edge", "callcenter-dispatcher", "callcenter-cdr-writer", "callcenter-api"} <= commands
    assert services["dispatcher"]["deploy"]["replicas"] == 2
    assert "5060:5060/udp" in services["sip-edge"]["ports"]


def test_compose_dependencies_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        for target, condition in depends.items() if isinstance(depends, dict) else ():
            assert target in services, f"{name} depends on unknown {target}"
            assert condition["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
        assert isinstance(depends, dict), f"{name}: use the long depends_on form"
        if "profiles" not in svc:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
    for volume in (v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])):
        assert volume in compose.get("volumes", {}), volume


def test_compose_env_vars_are_settings(compose: dict[str, Any]) -> None:
    known = settings_env_names()
    scripts = console_scripts()
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        used = {k for k in env if k.startswith("CC_")}
        assert used <= known, f"{name}: {sorted(used - known)}"
        if svc.get("command", [None])[0] in scripts:
            # health checks hit the port the service was told to listen on
            test = " ".join(svc.get("healthcheck", {}).get("test", []))
            port = env.get("CC_HEALTH_PORT") or env.get("CC_API_PORT")
            if "healthcheck" in svc:
                assert port and f"127.0.0.1:{port}/" in test, name
    edge = compose["services"]["sip-edge"]
    grace = edge["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > float(edge["environment"]["CC_DRAIN_TIMEOUT_S"])


def test_compose_redis_wants_a_password(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password == "${REDIS_PASSWORD:-callcenter-dev}"
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password  # its healthcheck's redis-cli
    for name, svc in services.items():
        if "CC_REDIS_URL" in svc.get("environment", {}):
            assert svc["environment"]["CC_REDIS_URL"] == f"redis://:{password}@redis:6379/0", name


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_with_the_service_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS build$", text, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert "[sip-edge,api,postgres,celery]" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"sip-edge", "api", "postgres"} <= set(extras)
    # the build context carries what setuptools' package-dir needs
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "src", "services"):
        assert f"!{needed}" in ignore, needed
