"""deploy/kubernetes: the manifests validate against the Kubernetes API schemas and agree with
evserve and with each other.

Validation is kubernetes-validate's (a pinned test dependency): JSON schemas of the Kubernetes
API bundled in the wheel, so it runs offline, in strict mode (an unknown field, such as a
misspelt probe, is an error, where the API server would drop it silently). It runs against the
oldest and the newest Kubernetes versions the wheel carries, and a control shows that a
misspelt field does fail. The PodMonitor is a Prometheus Operator resource, outside those
schemas: its fields are checked here.

Agreement: the container's command line (the image's ENTRYPOINT plus ``args``) goes through
evserve's own parser; the ports, probes and scrape settings must name what evserve serves;
and terminationGracePeriodSeconds must cover preStop, the drain grace and the exit timeout,
or the kubelet would kill a replica with requests still in flight.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

pytest.importorskip("yaml", reason="needs the [test] extra (PyYAML)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs the [test] extra (kubernetes-validate)")

from tests.deploy.manifests import (  # noqa: E402
    KUBERNETES,
    container_command,
    documents,
    evserve_arguments,
    only_document,
)

STANDARD_FILES = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
OLDEST, NEWEST = kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()


def validate(resource: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


def deployment() -> dict[str, Any]:
    return only_document(KUBERNETES / "deployment.yaml")


def evserve_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "evserve"]
    return container


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("name", STANDARD_FILES)
def test_manifest_validates_strictly(name: str, version: str) -> None:
    for resource in documents(KUBERNETES / name):
        validate(resource, version)


def test_a_misspelt_field_fails_validation() -> None:
    """The control: strict validation is not a formality."""
    resource = copy.deepcopy(deployment())
    container = evserve_container(resource["spec"]["template"]["spec"])
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(resource, NEWEST)


def test_kustomization_lists_every_standard_manifest() -> None:
    kustomization = only_document(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(STANDARD_FILES)
    for name in kustomization["resources"]:
        assert (KUBERNETES / name).is_file()


def test_container_command_line_is_one_evserve_accepts() -> None:
    container = evserve_container(deployment()["spec"]["template"]["spec"])
    args, config = evserve_arguments(container_command(container))
    assert config.model_repositories == ("/models",)
    assert config.drain_grace > 0, "a rolling update needs the drain grace"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": config.http_port, "metrics": config.metrics_port}
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/models" in mounts


def test_probes_use_the_health_endpoints_on_the_http_port() -> None:
    container = evserve_container(deployment()["spec"]["template"]["spec"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_termination_grace_covers_prestop_drain_grace_and_exit_timeout() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    container = evserve_container(pod)
    _, config = evserve_arguments(container_command(container))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop > 0, "the endpoints controller needs time to drop the pod"
    needed = pre_stop + config.drain_grace + config.exit_timeout
    assert pod["terminationGracePeriodSeconds"] >= needed + 1, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {pre_stop} + "
        f"--drain-grace-secs {config.drain_grace} + --exit-timeout-secs {config.exit_timeout} + 1")


def test_rolling_update_never_goes_below_the_replica_count() -> None:
    strategy = deployment()["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_service_hpa_pdb_and_metrics_scraping_point_at_the_deployment() -> None:
    resource = deployment()
    template = resource["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert resource["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = evserve_container(template["spec"])
    _, config = evserve_arguments(container_command(container))
    port_names = {port["name"] for port in container["ports"]}

    service = only_document(KUBERNETES / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names

    hpa = only_document(KUBERNETES / "hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      resource["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "resources" in container and "cpu" in container["resources"]["requests"]  # Utilization needs it

    pdb = only_document(KUBERNETES / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_pod_monitor_scrapes_the_metrics_port() -> None:
    monitor = only_document(KUBERNETES / "podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    container = evserve_container(deployment()["spec"]["template"]["spec"])
    assert endpoint["port"] in {port["name"] for port in container["ports"] if port["name"] == "metrics"}
    assert endpoint["path"] == "/metrics"
