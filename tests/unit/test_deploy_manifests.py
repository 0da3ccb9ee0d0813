"""Static checks of deploy/: the Dockerfile, the compose file and the Kubernetes manifests.

Neither a Docker engine nor a cluster is needed. The files are parsed and compared with
the defaults of the `mlbackend` command (ports, health service names, flags), so a port,
probe or security setting that drifts from them fails here rather than in a rollout.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

HEALTH_PORT = 8086
GATEWAY_HTTP_PORT = 8080
PYTHON_IMAGE = "python:3.11-slim"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Service:
    """What the deploy files must agree on for one mlbackend process."""

    name: str
    grpc_port: int
    metrics_port: int
    # The grpc.health.v1 service name the probes ask for; "" = the server as a whole.
    health_service: str
    replicated: bool


SERVICES = [
    Service("gateway", 50050, 9050, "mlbackend.gateway.v1.InferenceGatewayService", True),
    Service("features", 50051, 9051, "mlbackend.features.v1.FeatureStoreService", False),
    Service("registry", 50052, 9052, "mlbackend.registry.v1.ModelRegistryService", False),
    Service("serving", 50053, 9053, "mlbackend.serving.v1.ModelServingService", True),
    Service("monitoring", 50054, 9054, "mlbackend.monitoring.v1.MonitoringService", False),
]
# A worker with health and metrics only; an opt-in kustomize Component / compose profile.
STREAM_SCORER = Service("stream-scorer", 50055, 9055, "", True)
K8S_SERVICES = [*SERVICES, STREAM_SCORER]
BY_NAME = {s.name: s for s in K8S_SERVICES}
# Backends the gateway balances over with client-side round_robin.
HEADLESS = ["features", "serving"]


def _ids(services: list[Service]) -> list[str]:
    return [s.name for s in services]


@functools.cache
def _load(path: Path) -> list[Doc]:
    # Cached: tests read but never modify the parsed documents.
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: every document must be a mapping"
    return docs


def _k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def _k8s_docs() -> list[Doc]:
    return [
        doc for path in _k8s_files() if path.name != "kustomization.yaml" for doc in _load(path)
    ]


def _find(kind: str, name: str) -> Doc:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name!r}, found {len(found)}"
    return found[0]


def _pod_spec(service: Service) -> Doc:
    spec: Doc = _find("Deployment", service.name)["spec"]["template"]["spec"]
    return spec


def _container(service: Service) -> Doc:
    containers = _pod_spec(service)["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    assert container["name"] == service.name
    return container


def _flag(args: list[str], name: str) -> str | None:
    """Value of `--name=value` or `--name value` in an argument list; None if absent."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_labels(service: Service) -> dict[str, str]:
    labels: dict[str, str] = _find("Deployment", service.name)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", [*_k8s_files(), COMPOSE], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path} is empty"
    if path.parent.is_relative_to(K8S):
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
            if path.name != "kustomization.yaml":
                assert doc["metadata"]["name"], f"{path}: metadata.name missing"


def test_kustomizations_list_every_file_in_their_folder() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert K8S / "kustomization.yaml" in kustomizations
    for kustomization in kustomizations:
        (doc,) = _load(kustomization)
        folder = kustomization.parent
        on_disk = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(doc.get("resources", [])) == on_disk, kustomization
        # Subfolders are kustomize Components, each listing its own files (checked too).
        if folder != K8S:
            assert doc["kind"] == "Component", kustomization
        for sub in folder.iterdir():
            if sub.is_dir():
                assert (sub / "kustomization.yaml").is_file(), f"{sub} is not a kustomization"


def test_all_k8s_objects_have_unique_names() -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in _k8s_docs()]
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_deployment_runs_the_service_on_its_default_ports(service: Service) -> None:
    container = _container(service)
    args: list[str] = container["args"]
    assert "command" not in container, "the image's ENTRYPOINT `mlbackend` must be kept"
    assert args[:2] == ["serve", service.name]
    assert _flag(args, "--port") == str(service.grpc_port)
    assert _flag(args, "--metrics-port") == str(service.metrics_port)
    assert _flag(args, "--health-port") == str(HEALTH_PORT)
    assert _flag(args, "--host") == "0.0.0.0"
    # In a cluster the servers run with TLS and tokens, never opted out.
    assert "--insecure" not in args

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"grpc": service.grpc_port, "metrics": service.metrics_port, "health": HEALTH_PORT}
    if service.name == "gateway":
        expected["http"] = GATEWAY_HTTP_PORT
    assert ports == expected


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_probes_use_the_builtin_grpc_probe_on_the_health_port(service: Service) -> None:
    container = _container(service)
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe_name
        assert probe["grpc"]["port"] == HEALTH_PORT, probe_name
        assert probe["grpc"].get("service", "") == service.health_service, probe_name


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_pods_run_non_root_with_a_read_only_root(service: Service) -> None:
    pod = _pod_spec(service)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    assert pod.get("automountServiceAccountToken") is False
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not ctx["capabilities"].get("add")
        # A read-only root still needs somewhere for temporary files.
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_environment_secrets_and_resources(service: Service) -> None:
    pod = _pod_spec(service)
    container = _container(service)
    env = _env(container)
    assert env["OMP_NUM_THREADS"]["value"] == "1"

    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    read_only_secret_dirs = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if m["name"] in secret_volumes and m.get("readOnly") is True
    ]
    assert not [
        m
        for m in container["volumeMounts"]
        if m["name"] in secret_volumes and m.get("readOnly") is not True
    ], "secrets must be mounted read-only"
    # The CA for outgoing calls is needed only by services that call others.
    optional = [v for v in ("MLBACKEND_TLS_CA",) if v in env]
    for var in ("MLBACKEND_TOKEN_FILE", "MLBACKEND_TLS_CERT", "MLBACKEND_TLS_KEY", *optional):
        path = env[var]["value"]
        assert any(path.startswith(d.rstrip("/") + "/") for d in read_only_secret_dirs), var

    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_prometheus_scrape_and_graceful_termination(service: Service) -> None:
    template = _find("Deployment", service.name)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(service.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    # The metrics port speaks TLS whenever the service does.
    env = {e["name"] for e in _container(service).get("env", [])}
    assert annotations["prometheus.io/scheme"] == (
        "https" if "MLBACKEND_TLS_CERT" in env else "http"
    )

    container = _container(service)
    grace = _flag(container["args"], "--grace-seconds")
    assert grace is not None, "set the drain period explicitly"
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pause = int(pre_stop[-1]) if pre_stop and pre_stop[0] == "sleep" else 0
    # The drain (after the preStop pause) must end before the kubelet's SIGKILL.
    assert template["spec"]["terminationGracePeriodSeconds"] > int(grace) + pause


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_service_exposes_named_grpc_and_metrics_ports(service: Service) -> None:
    svc = _find("Service", service.name)
    assert _selects(svc["spec"]["selector"], _pod_labels(service))
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == service.grpc_port
    assert ports["grpc"]["targetPort"] == "grpc"
    assert ports["metrics"]["port"] == service.metrics_port
    assert ports["metrics"]["targetPort"] == "metrics"
    if service.name == "gateway":
        # The pod has a certificate, so its JSON front answers HTTPS only.
        env = {e["name"] for e in _container(service)["env"]}
        assert "MLBACKEND_TLS_CERT" in env
        assert ports["http"]["appProtocol"] == "https"


@pytest.mark.parametrize("name", HEADLESS)
def test_headless_service_for_client_side_round_robin(name: str) -> None:
    service = BY_NAME[name]
    svc = _find("Service", f"{name}-headless")
    assert svc["spec"]["clusterIP"] == "None"
    assert _selects(svc["spec"]["selector"], _pod_labels(service))
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == service.grpc_port

    target = _flag(_container(BY_NAME["gateway"])["args"], f"--{name}")
    assert target is not None
    assert re.fullmatch(
        rf"dns:///{name}-headless\.mlbackend\.svc[\w.]*:{service.grpc_port}", target
    ), target


def test_gateway_reaches_the_single_replica_services_by_service_name() -> None:
    args = _container(BY_NAME["gateway"])["args"]
    for name in ("registry", "monitoring"):
        target = _flag(args, f"--{name}")
        assert target is not None
        assert target.split(".")[0] == name
        assert target.endswith(f":{BY_NAME[name].grpc_port}")


@pytest.mark.parametrize("service", K8S_SERVICES, ids=_ids(K8S_SERVICES))
def test_replicas_disruption_budgets_and_storage(service: Service) -> None:
    deployment = _find("Deployment", service.name)
    pod = _pod_spec(service)
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    budgets = [
        d
        for d in _k8s_docs()
        if d["kind"] == "PodDisruptionBudget"
        and _selects(d["spec"]["selector"]["matchLabels"], _pod_labels(service))
    ]
    if service.replicated:
        assert deployment["spec"]["replicas"] == 2
        assert not claims, "a replicated, stateless service must not hold a volume claim"
        assert len(budgets) == 1
        assert budgets[0]["spec"]["minAvailable"] == 1
    else:
        assert deployment["spec"]["replicas"] == 1
        # A ReadWriteOnce volume cannot be attached to the old and new pod at once.
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        assert len(claims) == 1
        claim = _find("PersistentVolumeClaim", claims[0])
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        data_volume = next(
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claims[0]
        )
        mounts = {m["name"]: m["mountPath"] for m in _container(service)["volumeMounts"]}
        assert _flag(_container(service)["args"], "--data-dir") == mounts[data_volume]


def test_namespace_and_kustomization_agree() -> None:
    (kustomization,) = _load(K8S / "kustomization.yaml")
    namespace = _find("Namespace", kustomization["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    images = {i["name"] for i in kustomization.get("images", [])}
    for service in K8S_SERVICES:
        assert _container(service)["image"].split(":")[0] in images


# --------------------------------------------------------------------------- compose


def _compose() -> Doc:
    (doc,) = _load(COMPOSE)
    return doc


@pytest.mark.parametrize(
    "service", [*SERVICES, STREAM_SCORER], ids=_ids([*SERVICES, STREAM_SCORER])
)
def test_compose_service_starts_the_right_command(service: Service) -> None:
    spec = _compose()["services"][service.name]
    assert "entrypoint" not in spec, "the image's ENTRYPOINT `mlbackend` must be kept"
    command = spec["command"]
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    assert args[:2] == ["serve", service.name]
    # Reachable over the compose network; see the comment at the top of compose.yaml.
    assert _flag(args, "--host") == "0.0.0.0"
    assert "--insecure" in args
    assert _flag(args, "--port") == str(service.grpc_port)
    assert _flag(args, "--metrics-port") == str(service.metrics_port)

    build = spec["build"]
    assert (DEPLOY / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    for published in spec.get("ports", []):
        assert str(published).startswith("127.0.0.1:"), "publish on the host's loopback only"
    assert f"127.0.0.1:{service.grpc_port}:{service.grpc_port}" in spec["ports"]

    if not service.replicated:
        data_dir = _flag(args, "--data-dir")
        assert data_dir is not None
        volumes = {str(v).split(":")[0]: str(v).split(":")[1] for v in spec["volumes"]}
        assert data_dir in volumes.values()
        assert set(volumes) <= set(_compose()["volumes"])


def test_compose_has_storage_servers_and_keeps_the_scorer_opt_in() -> None:
    services = _compose()["services"]
    assert {s.name for s in SERVICES} | {"redis", "postgres"} <= set(services)
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    for service in SERVICES:
        assert "profiles" not in services[service.name]
    assert services[STREAM_SCORER.name]["profiles"] == ["realtime"]


def test_compose_gateway_targets_the_other_services_by_name() -> None:
    services = _compose()["services"]
    args = [str(a) for a in services["gateway"]["command"]]
    for service in SERVICES:
        if service.name != "gateway":
            assert _flag(args, f"--{service.name}") == f"{service.name}:{service.grpc_port}"
    assert f"127.0.0.1:{GATEWAY_HTTP_PORT}:{GATEWAY_HTTP_PORT}" in services["gateway"]["ports"]


# --------------------------------------------------------------------------- image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "dangling line continuation"
    return instructions


def test_dockerfile_is_multi_stage_non_root_with_mlbackend_entrypoint() -> None:
    instructions = _dockerfile_instructions()
    args = dict(
        re.findall(r"^(\w+)=(\S+)$", " ".join(a for k, a in instructions if k == "ARG"), flags=re.M)
    )
    stage_starts = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    assert len(stage_starts) >= 2, "build and runtime stages"
    for i in stage_starts:
        image = instructions[i][1].split()[0]
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        assert resolved == PYTHON_IMAGE

    assert any(
        k == "RUN" and re.search(r"pip install (\S+ )*\.(\s|$)", a) for k, a in instructions
    ), "the project is installed with `pip install .`"

    final = instructions[stage_starts[-1] :]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    entrypoints = [a for k, a in final if k == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["mlbackend"]
    env = " ".join(a for k, a in final if k == "ENV")
    assert re.search(r"\bOMP_NUM_THREADS=1\b", env)
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    dockerignore = REPO / ".dockerignore"
    patterns = {
        line.strip()
        for line in dockerignore.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".tools", "data"} <= patterns
    # What `pip install .` needs must stay in the context.
    assert not patterns & {"pyproject.toml", "README.md", "clients", "services", "*"}


def test_the_image_build_copies_what_the_c_extensions_are_built_from() -> None:
    """Every path setup.py names (sources, shared headers) is in a COPY of the build
    stage and not ignored, or `pip install .` in the image would build them without it."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    named = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and " " not in node.value
        and (REPO / node.value).exists()
    }
    assert any(path.endswith(".c") for path in named), named
    copied = {
        source.rstrip("/")
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in named:
        top = path.split("/")[0]
        assert top in copied, f"{path}: the Dockerfile does not COPY {top}"
        assert top not in ignored, f"{path}: .dockerignore drops {top}"


# --------------------------------------------------------------------------- the code


def test_deploy_covers_the_cli_catalog_and_its_dependencies() -> None:
    from mlbackend_cli import catalog

    assert set(catalog.SERVICES) == {s.name for s in SERVICES}
    compose = _compose()["services"]
    for name, dependencies in catalog.DEPENDENCIES.items():
        k8s_args = _container(BY_NAME[name])["args"]
        compose_args = [str(a) for a in compose[name]["command"]]
        for dependency in dependencies:
            port = BY_NAME[dependency].grpc_port
            assert _flag(compose_args, f"--{dependency}") == f"{dependency}:{port}", name
            k8s_target = _flag(k8s_args, f"--{dependency}")
            assert k8s_target is not None, f"{name} needs --{dependency}"
            assert k8s_target.endswith(f":{port}"), name


@pytest.mark.parametrize("service", SERVICES, ids=_ids(SERVICES))
def test_ports_and_health_names_match_the_service_spec(service: Service) -> None:
    from mlbackend_cli import catalog

    spec = catalog.load(service.name).SPEC
    assert spec.default_port == service.grpc_port
    assert spec.default_metrics_port == service.metrics_port
    assert service.health_service in spec.grpc_services
