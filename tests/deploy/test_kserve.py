"""deploy/kserve: the ClusterServingRuntime and the InferenceService have what KServe requires,
and the runtime's container command line starts a real evserve that serves.

KServe's CRDs are not bundled anywhere offline, so the fields KServe's schemas require are
checked by name (taken from KServe's CRDs: a runtime's ``spec.containers`` with names,
``supportedModelFormats`` with names; an InferenceService's ``spec.predictor`` with
``model.modelFormat.name``), and the runtime's container, which is a Kubernetes Container, is
validated strictly against Kubernetes' own schema inside a Pod.

The arguments are those KServe passes to its Triton runtime (kserve-tritonserver); evserve's
parser must take them, and then the same command line, moved to free ports and a temporary
model store, must start a server that answers inference.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("yaml", reason="needs the [test] extra (PyYAML)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs the [test] extra (kubernetes-validate)")

from tests.deploy.manifests import (  # noqa: E402
    KSERVE,
    container_command,
    evserve_arguments,
    only_document,
    with_value,
)
from tests.e2e.conftest import call, copy_simple, simple_infer, wait_for  # noqa: E402
from tests.evserve_process import SERVER_COMMAND, free_port  # noqa: E402

# What KServe's own Triton runtime passes (config/runtimes/kserve-tritonserver.yaml), after its
# leading `tritonserver`.
KSERVE_TRITON_ARGS = ["--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080", "--allow-grpc=true",
                      "--allow-http=true"]
RUNTIME_KINDS = ("ClusterServingRuntime", "ServingRuntime")


def runtime() -> dict[str, Any]:
    return only_document(KSERVE / "servingruntime.yaml")


def kserve_container(resource: dict[str, Any]) -> dict[str, Any]:
    containers = resource["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "kserve-container"]
    return container


def test_runtime_kind_and_required_fields() -> None:
    resource = runtime()
    assert resource["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert resource["kind"] in RUNTIME_KINDS
    assert resource["metadata"]["name"]
    spec = resource["spec"]
    assert spec["containers"] and all(container.get("name") for container in spec["containers"])
    assert all(fmt.get("name") for fmt in spec["supportedModelFormats"])
    assert {fmt["name"] for fmt in spec["supportedModelFormats"]} == {"triton", "python"}
    # HTTP only: evserve serves no gRPC, so grpc-v2 must not be claimed.
    assert spec["protocolVersions"] == ["v2"]


def test_runtime_container_is_a_valid_kubernetes_container() -> None:
    container = kserve_container(runtime())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, kubernetes_validate.utils.latest_version(), strict=True)


def test_runtime_args_are_kserves_triton_args_and_evserve_accepts_them() -> None:
    resource = runtime()
    container = kserve_container(resource)
    command = container_command(container)
    assert container["command"] == ["evserve"], "the image's entrypoint would add --model-repository /models"
    for arg in KSERVE_TRITON_ARGS:
        assert arg in container["args"], f"KServe's Triton runtime passes {arg}"
    args, config = evserve_arguments(command)
    assert config.model_repositories == ("/mnt/models",)  # where KServe's storage initializer puts the model
    assert [port["containerPort"] for port in container["ports"]] == [config.http_port]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": config.http_port}
    annotations = resource["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == config.metrics_port
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert "lifecycle" not in container, "Knative refuses lifecycle hooks; evserve's drain grace does the work"
    assert config.drain_grace > 0


def test_inference_service_uses_the_runtime() -> None:
    service = only_document(KSERVE / "inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    spec = runtime()["spec"]
    assert model["runtime"] == runtime()["metadata"]["name"]
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in spec["supportedModelFormats"]}
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert model["storageUri"].split("://")[0] in ("pvc", "s3", "gs", "https", "hf", "oci")


def test_runtime_command_line_starts_a_server_that_serves(tmp_path: Path) -> None:
    """The runtime's exact arguments, with only the ports and the model store moved."""
    copy_simple(tmp_path)
    http, metrics = free_port(), free_port()
    command = container_command(kserve_container(runtime()))
    command = with_value(command, "--model-store", str(tmp_path))
    command = with_value(command, "--http-port", str(http))
    command = with_value(command, "--metrics-port", str(metrics))
    log = tmp_path / "evserve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*SERVER_COMMAND, *command[1:], "--http-address=127.0.0.1"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return call(http, "GET", "/v2/health/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, 60, "the runtime's command line to serve")
        assert simple_infer(http).status == 200
        assert call(metrics, "GET", "/metrics").status == 200
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(http, "GET", "/v2/health/ready").status == 400, 5, "the drain grace")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(30) == 0, log.read_text()
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "evserve serves no gRPC: --grpc-port, --allow-grpc ignored" in log.read_text()
