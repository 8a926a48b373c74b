"""The Helm chart: rendered by Helm's own engine, linted, and every object valid against Kubernetes 1.37's schemas."""

from __future__ import annotations

import argparse
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cc_gpu.cli import plugin
from tests.deploy.chart import CHART, NAMESPACE, REPO, notes, one, render

K8S_VERSION = "1.37.0"
# Kinds from CRDs have no schema in kubernetes-validate; they are checked structurally below instead.
CRD_KINDS = {"ServiceMonitor"}
PEM = ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
       "-----END PUBLIC KEY-----\n")

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "attested class off": {"deviceClasses": {"attested": {"create": False}}},
    "no surge": {"rollingUpdate": {"surge": False}},
    "custom driver name": {"driverName": "gpu.example.com",
                           "deviceClasses": {"vfio": {"name": "vfio.gpu.example.com"},
                                             "attested": {"name": "attested.gpu.example.com"}}},
    "everything on": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                      "runtimeClasses": {"create": True},
                      "attestation": {"verdictPublicKey": PEM, "signingKeySecret": "cc-gpu-verdict-key"},
                      "image": {"digest": "sha256:" + "a" * 64}},
    "admission off": {"admission": {k: {"enabled": False} for k in
                                    ("cdiAnnotation", "cdiAnnotationGuard", "sliceNodeRestriction",
                                     "tenantNamespaces")}},
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render(VARIANTS[name])


def test_every_object_is_valid_for_kubernetes_1_37(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")


def test_lint_is_clean(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, _ = variant
    report = helm.lint(CHART, VARIANTS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_expected_objects_per_variant(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = variant
    kinds = sorted(o["kind"] for o in objects)
    base = ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "DeviceClass", "DeviceClass", "ServiceAccount"]
    admission = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"] + [
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 3
    expected = {
        "defaults": base + admission,
        "attested class off": [k for k in base if k != "DeviceClass"] + ["DeviceClass"] + admission,
        "no surge": base + admission,
        "custom driver name": base + admission,
        "everything on": base + admission + ["ConfigMap", "RuntimeClass", "RuntimeClass", "RuntimeClass", "Service",
                                             "ServiceMonitor"],
        "admission off": base,
    }[name]
    assert kinds == sorted(expected)


def test_custom_driver_name_reaches_every_place() -> None:
    objects = render(VARIANTS["custom driver name"])
    text = yaml.safe_dump_all(objects)
    assert "gpu.cc-gpu.io" not in text
    args = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--driver-name=gpu.example.com" in args
    assert "--plugin-dir=/var/lib/kubelet/plugins/gpu.example.com" in args
    rule = next(r for r in one(objects, "ClusterRole")["rules"] if r["resources"] == ["resourceclaims/driver"])
    assert rule["resourceNames"] == ["gpu.example.com"]
    for cls in (o for o in objects if o["kind"] == "DeviceClass"):
        assert cls["spec"]["selectors"] == [{"cel": {"expression": 'device.driver == "gpu.example.com"'}}]
        assert cls["spec"]["config"][0]["opaque"]["driver"] == "gpu.example.com"


def test_attested_class_requires_attestation() -> None:
    objects = render()
    attested = one(objects, "DeviceClass", "attested")["spec"]["config"][0]["opaque"]["parameters"]
    plain = one(objects, "DeviceClass", "vfio.gpu.cc-gpu.io")["spec"]["config"][0]["opaque"]["parameters"]
    assert attested == {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig",
                        "attestation": {"required": True}}
    assert plain == {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig"}


@pytest.mark.parametrize(("surge", "expected"), [(True, (1, 0)), (False, (0, 1))], ids=["surge", "no surge"])
def test_rolling_update(surge: bool, expected: tuple[int, int]) -> None:
    strategy = one(render({"rollingUpdate": {"surge": surge}}), "DaemonSet")["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert (strategy["rollingUpdate"]["maxSurge"], strategy["rollingUpdate"]["maxUnavailable"]) == expected


def test_daemonset_mounts_and_privileges() -> None:
    pod = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts == {"/var/lib/kubelet/plugins/gpu.cc-gpu.io": False, "/var/lib/kubelet/plugins_registry": False,
                      "/var/run/cdi": False, "/sys": False, "/dev": False, "/lib/modules": True, "/host/proc": True}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host_paths["host-proc"] == "/proc"
    assert pod["hostPID"] is False
    assert "hostNetwork" not in pod
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["nodeSelector"] == {"feature.node.kubernetes.io/pci-10de.present": "true"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert "--proc-root=/host/proc" in container["args"]
    annotations = one(render(), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("name", ["defaults", "custom driver name"])
def test_plugin_arguments_are_accepted_by_the_plugin_command(name: str) -> None:
    container = one(render(VARIANTS[name]), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "plugin"
    parser = argparse.ArgumentParser(exit_on_error=False)
    plugin.add_arguments(parser)
    args = parser.parse_args([a.replace("$(NODE_NAME)", "node-a") for a in container["args"][1:]])
    assert (args.node_name, args.metrics_port, args.probe_port) == ("node-a", 9400, 51515)
    assert {e["name"] for e in container["env"]} == {"NODE_NAME", "POD_UID"}


def test_rbac_is_least_privilege() -> None:
    rules = one(render(), "ClusterRole")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in item for item in granted)
    assert {r for _, r, _ in granted} == {"resourceslices", "resourceclaims", "resourceclaims/status",
                                          "resourceclaims/driver", "pods", "nodes"}
    assert {v for _, r, v in granted if r in ("resourceclaims", "pods", "nodes")} == {"get"}
    assert {v for _, r, v in granted if r == "resourceclaims/driver"} == {"associated-node:update",
                                                                          "associated-node:patch"}
    assert not any(r == "secrets" for _, r, _ in granted)


def test_runtime_classes_match_the_kata_folder() -> None:
    rendered = [o for o in render({"runtimeClasses": {"create": True}}) if o["kind"] == "RuntimeClass"]
    for obj in rendered:
        del obj["metadata"]["labels"]
    shipped = [d for d in yaml.safe_load_all((REPO / "kata/runtimeclasses.yaml").read_text()) if d]
    assert sorted(rendered, key=lambda o: o["metadata"]["name"]) == shipped


def test_verdict_key_configmap_and_service_monitor() -> None:
    objects = render(VARIANTS["everything on"])
    assert one(objects, "ConfigMap")["data"]["verdict-public-key.pem"].strip() == PEM.strip()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(objects, "Service")
    assert service["spec"]["selector"] == one(objects, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/cc-gpu/cc-gpu@sha256:" + "a" * 64
    key = next(v for v in pod["volumes"] if v["name"] == "verdict-key")
    assert key["secret"] == {"secretName": "cc-gpu-verdict-key", "defaultMode": 0o400}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "verdict-key")
    assert mount["readOnly"] is True


def test_notes_tell_how_to_check_the_install() -> None:
    text = notes()
    assert "kubectl get resourceslices --field-selector spec.driver=gpu.cc-gpu.io" in text
    assert "cc-gpu kata check" in text
    assert "kubectl label namespace <tenant> cc-gpu.io/gpu-tenant=true" in text


BAD_VALUES = [
    ("driver name not a DNS name", {"driverName": "GPU_Driver"}, "driverName"),
    ("unknown key", {"replicas": 3}, "replicas"),
    ("port out of range", {"probePort": 70000}, "probePort"),
    ("relative kubelet dir", {"kubeletDir": "var/lib/kubelet"}, "kubeletDir"),
    ("not a CDI directory", {"cdiRoot": "/tmp/cdi"}, "cdiRoot"),
    ("not a PEM key", {"attestation": {"verdictPublicKey": "ssh-ed25519 AAAA"}}, "verdictPublicKey"),
    ("no runtime classes", {"admission": {"cdiAnnotation": {"runtimeClassNames": []}}}, "runtimeClassNames"),
    ("bad digest", {"image": {"digest": "latest"}}, "digest"),
    ("flag as string", {"rollingUpdate": {"surge": "yes"}}, "surge"),
]


@pytest.mark.parametrize(("values", "key"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_rejected_by_the_schema(values: dict[str, Any], key: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as caught:
            chart.validate_schema(chart.merge_values(values))
        assert key in str(caught.value)
        with pytest.raises(helm.HelmError):
            chart.render(values, name="cc-gpu", namespace=NAMESPACE)


def test_a_bad_values_file_names_every_fault() -> None:
    values = helm.values_from_yaml("driverName: gpu_cc\nrollingUpdate:\n  surge: yes-please\nreplicas: 2\n")
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(values))
    message = str(caught.value)
    for fault in ("/driverName", "/rollingUpdate/surge", "'replicas' not allowed"):
        assert fault in message
