"""deploy/kubernetes: every overlay renders offline (`kubectl kustomize`), every object it renders is valid against
the Kubernetes schemas (kubernetes-validate, strict: a misspelt field fails), and the manifests agree with what
they deploy: the Dockerfile's port, user, command and graceful-shutdown timeout, docker-compose.yml's settings,
app/settings.py's variables and limits, and the metric the batcher exports."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.services.batcher import BatcherMetrics
from app.settings import Settings

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
# The oldest Kubernetes the manifests are written for (a release still in common managed offerings) and the newest
# whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

KUSTOMIZE = shutil.which("kubectl") or shutil.which("kustomize")
needs_kustomize = pytest.mark.skipif(
    KUSTOMIZE is None,
    reason="!!! neither kubectl nor kustomize is INSTALLED, so the Kubernetes manifests are NOT RENDERED and NOT "
    "CHECKED !!! Install kubectl (https://kubernetes.io/docs/tasks/tools/) or kustomize",
)
pytestmark = needs_kustomize


@cache
def render(overlay: str) -> tuple[dict, ...]:
    directory = KUBERNETES / "overlays" / overlay
    verb = "kustomize" if Path(KUSTOMIZE).name == "kubectl" else "build"  # kubectl's built-in kustomize, or kustomize's
    command = [KUSTOMIZE, verb, str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects: tuple[dict, ...], kind: str) -> dict:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_cmd() -> list[str]:
    return yaml.safe_load(next(args for name, args in dockerfile_instructions() if name == "CMD"))


def cmd_option(name: str) -> str:
    cmd = dockerfile_cmd()
    return cmd[cmd.index(name) + 1]


def literal_env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def settings_of(container: dict) -> Settings:
    env = literal_env(container)
    return Settings(**{key[len("FACEGEN_") :].lower(): value for key, value in env.items()})


def named_port(container: dict, name: str) -> int:
    return next(port["containerPort"] for port in container["ports"] if port["name"] == name)


def nginx_size_bytes(size: str) -> int:
    """nginx's size syntax (ingress-nginx passes proxy-body-size to client_max_body_size): k and m are 1024-based."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, size
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


# ----------------------------------------------------------------------------------------------- rendered and valid


# Custom resources, whose schemas come with their operators, not with Kubernetes: checked field by field below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CORE_KINDS = ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PersistentVolumeClaim"]


def test_there_are_overlays_over_one_base():
    assert {"production", "cpu-autoscaling"} <= set(OVERLAYS)
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text())
        assert kustomization["resources"] == ["../../base"], overlay
        assert kustomization["namespace"] == "facegen"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(overlay, version):
    objects = render(overlay)
    assert set(CORE_KINDS + ["Ingress"]) <= {obj["kind"] for obj in objects}
    for obj in objects:
        assert obj["metadata"]["namespace"] == "facegen", obj["kind"]
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        # strict: a field the schema does not know (a typo) fails; a kind without a schema raises, never passes
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_weights_loader_pod_is_valid(version):
    (pod,) = [doc for doc in yaml.safe_load_all((KUBERNETES / "weights-loader.yaml").read_text()) if doc]
    kubernetes_validate.validate(pod, version, strict=True)
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == one(render("production"), "PersistentVolumeClaim")["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["spec"]["containers"][0]["image"] == container_of(one(render("production"), "Deployment"))["image"]
    # its labels must not put it behind the Service or in the disruption budget
    selector = one(render("production"), "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_the_validator_refuses_a_misspelt_field():
    deployment = copy.deepcopy(one(render("production"), "Deployment"))
    container_of(deployment)["readinessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------------- the Deployment and the image


def dockerfile_user() -> int:
    users = [args for name, args in dockerfile_instructions() if name == "USER"]
    return int(users[-1].split(":")[0])


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request) -> tuple[dict, ...]:
    return render(request.param)


@pytest.fixture(scope="module")
def deployment(objects) -> dict:
    return one(objects, "Deployment")


def test_one_gpu_per_replica(deployment):
    resources = container_of(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_same_image_and_command_as_compose(deployment):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["facegen"]
    container = container_of(deployment)
    assert container["image"].rsplit("/", 1)[-1].split(":")[0] == compose["image"].split(":")[0]
    assert "command" not in container and "args" not in container  # the image's CMD: python -m app ...


def test_ports_agree_with_the_dockerfile(objects, deployment):
    container = container_of(deployment)
    exposed = [args for name, args in dockerfile_instructions() if name == "EXPOSE"]
    assert named_port(container, "http") == int(exposed[0].split()[0]) == int(cmd_option("--port"))
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_environment_is_compose_settings_and_parses(deployment):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["facegen"]["environment"]
    container = container_of(deployment)
    env = literal_env(container)
    assert {key: str(value) for key, value in compose.items()}.items() <= env.items()
    known = {f"FACEGEN_{name.upper()}" for name in Settings.model_fields}
    names = {item["name"] for item in container["env"]}
    assert names <= known, names - known  # a typo would be silently ignored by pydantic-settings
    settings = settings_of(container)
    assert settings.device == "cuda" and settings.required
    weights = next(mount for mount in container["volumeMounts"] if mount["name"] == "weights")
    assert str(settings.weights_dir) == weights["mountPath"]


def test_api_key_comes_from_a_secret(deployment):
    (key,) = [item for item in container_of(deployment)["env"] if item["name"] == "FACEGEN_API_KEY"]
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"] and key["valueFrom"]["secretKeyRef"]["key"]
    assert not key["valueFrom"]["secretKeyRef"].get("optional", False)  # no key, no pod: never an open service


def test_probes(deployment):
    container = container_of(deployment)
    port = named_port(container, "http")
    for probe in ("startupProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/health" and check["port"] in ("http", port), probe
    # /ready needs the key: the probe sends the container's own, to this port
    command = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{port}/ready" in command and "FACEGEN_API_KEY" in command and "X-API-Key" in command
    # loading and warm-up happen before the server listens: the startup probe gives them at least the Dockerfile
    # HEALTHCHECK's start period, and longer than liveness would
    start_period = re.search(r"--start-period=(\d+)s", dict(dockerfile_instructions())["HEALTHCHECK"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2 * int(start_period.group(1))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"], probe


def test_grace_period_outlasts_the_graceful_shutdown(deployment):
    spec = deployment["spec"]["template"]["spec"]
    pre_stop = container_of(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    graceful = float(cmd_option("--timeout-graceful-shutdown"))
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + graceful
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["facegen"]
    assert spec["terminationGracePeriodSeconds"] >= int(compose["stop_grace_period"].rstrip("s"))
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a rollout never drops below the serving replicas


def test_non_root_with_a_read_only_root_and_a_writable_tmp(deployment):
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_user()
    container = container_of(deployment)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]] and not mounts["/tmp"].get("readOnly")


def test_weights_come_read_only_from_the_claim(objects, deployment):
    container = container_of(deployment)
    weights = next(mount for mount in container["volumeMounts"] if mount["name"] == "weights")
    assert weights["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "weights")
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    claim = one(objects, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # replicas on several nodes read it at once
    assert {"ReadWriteMany", "ReadOnlyMany"} & set(claim["spec"]["accessModes"])


def test_disruption_budget_covers_the_replicas(objects, deployment):
    budget = one(objects, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable")


# ------------------------------------------------------------------------------------- metrics and autoscaling


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    BatcherMetrics(registry)
    return {metric.name for metric in registry.collect()}


def adapter_rules() -> list[dict]:
    return yaml.safe_load((KUBERNETES / "prometheus" / "adapter-rules.yaml").read_text())["rules"]["custom"]


def test_pods_are_not_offered_to_a_scrape_without_the_key(deployment):
    """The generic kubernetes-pods job follows prometheus.io/scrape and sends no key: it would only collect 401s."""
    assert "prometheus.io/scrape" not in deployment["spec"]["template"]["metadata"].get("annotations", {})


def api_key_secret(deployment: dict) -> dict:
    (key,) = [item for item in container_of(deployment)["env"] if item["name"] == "FACEGEN_API_KEY"]
    return key["valueFrom"]["secretKeyRef"]


def test_service_monitor_scrapes_every_replica_with_the_key():
    from app.main import create_app

    objects = render("production")
    monitor, service, deployment = one(objects, "ServiceMonitor"), one(objects, "Service"), one(objects, "Deployment")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval", "authorization"}  # no misspelt field passes silently
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] in {getattr(r, "path", None) for r in create_app(Settings()).routes}
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {k: api_key_secret(deployment)[k] for k in ("name", "key")}
    assert "ServiceMonitor" not in {obj["kind"] for obj in render("cpu-autoscaling")}  # no operator needed there


def test_plain_prometheus_scrape_job_sends_the_key_and_keeps_pod_labels():
    (job,) = yaml.safe_load((KUBERNETES / "prometheus" / "scrape-config.yaml").read_text())
    deployment = one(render("production"), "Deployment")
    secret = api_key_secret(deployment)
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].endswith(f"/{secret['name']}/{secret['key']}")
    assert job["metrics_path"] == "/metrics"
    keep = job["relabel_configs"][0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert keep["action"] == "keep" and keep["regex"] == ";".join(
        labels[f"app.kubernetes.io/{name}"] for name in ("name", "component")
    )
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod"}  # the adapter maps them


def test_adapter_rule_serves_the_batchers_queue_gauge():
    (rule,) = adapter_rules()
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)
    assert series in exported_metric_names() and series == "facegen_queue_rows"
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert rule["metricsQuery"].startswith("sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)")


def test_autoscaler_uses_queue_depth_with_cpu_as_the_fallback():
    objects = render("production")
    hpa, deployment = one(objects, "HorizontalPodAutoscaler"), one(objects, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "facegen"}
    assert deployment["metadata"]["name"] == "facegen"
    pods, cpu = hpa["spec"]["metrics"]
    (rule,) = adapter_rules()
    assert pods["type"] == "Pods" and pods["pods"]["metric"]["name"] == rule["name"]["as"]
    # one CUDA forward's worth of images waiting per replica
    target = float(pods["pods"]["target"]["averageValue"])
    assert target == Settings().batch_size_for("cuda") == settings_of(container_of(deployment)).batch_size_for("cuda")
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2  # with the disruption budget, a drain never leaves no replica
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_cpu_overlay_scales_on_cpu_alone():
    hpa = one(render("cpu-autoscaling"), "HorizontalPodAutoscaler")
    assert [metric["type"] for metric in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


# ----------------------------------------------------------------------------------------------------- the Ingress


def test_ingress_limits_agree_with_the_settings():
    objects = render("production")
    ingress, deployment = one(objects, "Ingress"), one(objects, "Deployment")
    settings = settings_of(container_of(deployment))
    annotations = ingress["metadata"]["annotations"]
    assert nginx_size_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) == settings.max_upload_bytes
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > settings.request_timeout_s, timeout
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    service = one(objects, "Service")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert all(b["name"] == service["metadata"]["name"] and b["port"]["name"] in port_names for b in backends)


def test_the_deployment_page_shows_the_adapter_rule_in_use():
    page = (ROOT / "docs" / "deployment.md").read_text()
    section = page[page.index("\n## Kubernetes\n") :]
    block = re.search(r"```yaml\n(rules:\n.*?)```", section, re.DOTALL)
    assert block, "docs/deployment.md, Kubernetes: the adapter rule"
    assert yaml.safe_load(block.group(1))["rules"]["custom"] == adapter_rules()
