"""Kubernetes manifests, validated without a cluster: the core resources (deploy/k8s) against the
Kubernetes OpenAPI schemas kubernetes-validate ships (unknown fields refused), the KServe
InferenceServices (deploy/kserve) built into the kserve SDK's model classes field by field (an
unknown field or a wrong type fails), and both wired to what the service really serves."""
import re
from pathlib import Path

import pytest
import yaml

from service.settings import known_variables

kubernetes_validate = pytest.importorskip("kubernetes_validate")
kserve = pytest.importorskip("kserve")
kubernetes = pytest.importorskip("kubernetes")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CORE = sorted((DEPLOY / "k8s").glob("*.yaml"))
INFERENCE_SERVICES = sorted((DEPLOY / "kserve").glob("*.yaml"))
SCALARS = {"str", "int", "float", "bool", "object", "datetime", "date"}


def build(data, type_name: str):
    """``data`` as the SDK's model ``type_name`` (kserve's models, then the Kubernetes client's),
    recursively; ``ValueError`` on a field the model does not have."""
    container = re.fullmatch(r"(list|List)\[(.+)\]|(dict|Dict)[(\[]str, *(.+)[)\]]", type_name)
    if container and container.group(1):
        return [build(item, container.group(2)) for item in data]
    if container:
        return {key: build(value, container.group(4)) for key, value in data.items()}
    if type_name in SCALARS:
        return data
    klass = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    attributes = {json_key: attribute for attribute, json_key in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(attributes))
    if unknown:
        raise ValueError(f"{type_name} has no fields {unknown}")
    return klass(**{attributes[key]: build(value, klass.openapi_types[attributes[key]]) for key, value in data.items()})


def containers(document: dict) -> list[dict]:
    spec = document["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec["predictor"]
    return pod["containers"]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_resources_validate_against_the_kubernetes_schemas(path):
    document = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_refuses_an_unknown_field():
    document = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    containers(document)[0]["readinesProbe"] = containers(document)[0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    service["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ValueError, match="minReplica"):
        build(service, "V1beta1InferenceService")


@pytest.mark.parametrize("path", INFERENCE_SERVICES, ids=lambda p: p.name)
def test_inference_services_build_into_the_kserve_sdk_models(path):
    document = yaml.safe_load(path.read_text())
    service = build(document, "V1beta1InferenceService")
    assert service.kind == "InferenceService" and service.api_version == "serving.kserve.io/v1beta1"
    container = service.spec.predictor.containers[0]
    assert container.name == "kserve-container"  # the name KServe expects of a custom predictor
    assert {env.name: env.value for env in container.env}["STORAGE_URI"].startswith("pvc://")
    assert "--model-dir" in container.args and "/mnt/models" in container.args
    gpu = "gpu" in path.name
    assert ("nvidia.com/gpu" in container.resources.limits) == gpu and ("cuda" in container.args) == gpu


@pytest.mark.parametrize("path", [*CORE, *INFERENCE_SERVICES], ids=lambda p: p.name)
def test_probes_ports_scraping_and_settings_match_the_service(path):
    document = yaml.safe_load(path.read_text())
    if document["kind"] not in ("Deployment", "InferenceService"):
        return
    container = containers(document)[0]
    port = int(container["args"][container["args"].index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    grpc_port = int(container["args"][container["args"].index("--grpc-port") + 1])  # gRPC: KServe names its port h2c
    assert {"name": "h2c" if document["kind"] == "InferenceService" else "grpc", "containerPort": grpc_port, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    metadata = document["spec"]["template"]["metadata"] if document["kind"] == "Deployment" else document["metadata"]
    annotations = metadata["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port
    settings = [env["name"] for env in container.get("env", []) if env["name"].startswith("DIGLM_")]
    assert settings and set(settings) <= set(known_variables())
    grace = (document["spec"]["template"]["spec"] if document["kind"] == "Deployment" else document["spec"]["predictor"])["terminationGracePeriodSeconds"]
    delay = float(next(env["value"] for env in container["env"] if env["name"] == "DIGLM_SHUTDOWN_DELAY_S"))
    assert grace > delay + 30  # the drain: the delay, then up to DIGLM_DRAIN_TIMEOUT_S (30 s) for requests in flight


def test_the_deployment_serves_the_repository_on_the_claim_and_the_autoscaler_targets_it():
    documents = {path.stem: yaml.safe_load(path.read_text()) for path in CORE}
    deployment, service, hpa, claim = documents["deployment"], documents["service"], documents["hpa"], documents["pvc"]
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert env["DIGLM_MODEL_REPOSITORY"] == mounts["models"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {port["name"] for port in pod["containers"][0]["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == container_ports == {"http", "grpc"}
    assert next(port for port in service["spec"]["ports"] if port["name"] == "grpc")["appProtocol"] == "kubernetes.io/h2c"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
