"""The Helm chart: rendered by Helm's own engine, linted, and every object valid against Kubernetes 1.37's schemas."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from cc_gpu.cli import plugin
from cc_gpu.dra import attestcfg, opaque
from cc_gpu.dra.bindcfg import BindingSettings
from cc_gpu.dra.settings import PluginSettings, load_toml
from tests.deploy.chart import CHART, NAMESPACE, REPO, notes, one, render

K8S_VERSION = "1.37.0"
# Kinds from CRDs have no schema in kubernetes-validate; they are checked structurally below instead.
CRD_KINDS = {"ServiceMonitor"}

SERVICE: dict[str, Any] = {"enabled": True, "tokenKey": {"secretName": "cc-gpu-attestation-token-key", "kid": "svc-1"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "attested class off": {"deviceClasses": {"attested": {"create": False}}},
    "no surge": {"rollingUpdate": {"surge": False}},
    "custom driver name": {"driverName": "gpu.example.com",
                           "deviceClasses": {"vfio": {"name": "vfio.gpu.example.com"},
                                             "attested": {"name": "attested.gpu.example.com"}}},
    "everything on": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                      "runtimeClasses": {"create": True},
                      "image": {"digest": "sha256:" + "a" * 64}},
    "admission off": {"admission": {k: {"enabled": False} for k in
                                    ("cdiAnnotation", "cdiAnnotationGuard", "sliceNodeRestriction",
                                     "tenantNamespaces", "tokenKeysOwnNode", "claimByName")}},
    "attestation off": {"attestation": {"provider": "none"}},
    "directory evidence, existing key namespace": {
        "attestation": {"provider": "directory", "evidenceDir": "/var/lib/cc-gpu/evidence",
                        "keys": {"namespace": "gpu-keys", "createNamespace": False, "publicRead": False}},
        "deviceClasses": {"attested": {"policy": "lenient", "selectAttested": False}}},
    "attestation service": {"attestationService": SERVICE},
    "attestation service, admin's certificate": {
        "attestationService": SERVICE | {"tls": {"secretName": "svc-tls", "caCertificate": "-----BEGIN CERTIFICATE-----"
                                                 "\nMIIB\n-----END CERTIFICATE-----\n"}}},
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
    base = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "DeviceClass", "DeviceClass",
            "ServiceAccount"]
    # The pod-gate controller comes with the cdi-annotation policy: its account, role, scope policy and Deployment.
    pod_gate = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding", "Deployment"]
    admission = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"] + [
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 4 + pod_gate
    keys = ["Namespace", "Role", "RoleBinding", "Role", "RoleBinding"]
    keys_admission = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    service = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service", "Deployment"]
    expected = {
        "defaults": base + admission + keys + keys_admission,
        "attested class off": [k for k in base if k != "DeviceClass"] + ["DeviceClass"] + admission + keys
        + keys_admission,
        "no surge": base + admission + keys + keys_admission,
        "custom driver name": base + admission + keys + keys_admission,
        "everything on": base + admission + keys + keys_admission + [
            "RuntimeClass", "RuntimeClass", "RuntimeClass", "Service", "ServiceMonitor"],
        "admission off": base + keys,
        "attestation off": base + admission,
        "directory evidence, existing key namespace": base + admission + ["Role", "RoleBinding"] + keys_admission,
        "attestation service": base + admission + keys + keys_admission + service + ["Secret"],
        "attestation service, admin's certificate": base + admission + keys + keys_admission + service,
    }[name]
    assert kinds == sorted(expected)


def test_custom_driver_name_reaches_every_place() -> None:
    objects = render(VARIANTS["custom driver name"])
    text = yaml.safe_dump_all(objects)
    assert "gpu.cc-gpu.io" not in text
    args = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--driver-name=gpu.example.com" in args
    assert "--plugin-dir=/var/lib/kubelet/plugins/gpu.example.com" in args
    rules = one(objects, "ClusterRole", "kubelet-plugin")["rules"]
    rule = next(r for r in rules if r["resources"] == ["resourceclaims/driver"])
    assert rule["resourceNames"] == ["gpu.example.com"]
    for cls in (o for o in objects if o["kind"] == "DeviceClass"):
        assert cls["spec"]["selectors"][0]["cel"]["expression"].startswith('device.driver == "gpu.example.com"')
        assert cls["spec"]["config"][0]["opaque"]["driver"] == "gpu.example.com"
    host = {"deviceClasses": {"attested": {"evidence": "host", "selectAttested": True}}}
    selector = one(render(VARIANTS["custom driver name"] | host), "DeviceClass", "attested")["spec"]["selectors"][0]
    assert 'device.attributes["gpu.example.com"].attested == true' in selector["cel"]["expression"]


ATTESTED_CLASSES = [
    ("defaults: guest evidence", {}, "strict", False, "guest"),
    ("host pre-flight, attested GPUs", {"deviceClasses": {"attested": {"evidence": "host", "selectAttested": True}}},
     "strict", True, "host"),
    ("lenient, any GPU", {"deviceClasses": {"attested": {"policy": "lenient", "selectAttested": False}}},
     "lenient", False, "guest"),
]


@pytest.mark.parametrize(("values", "policy", "selects_attested", "evidence"), [c[1:] for c in ATTESTED_CLASSES],
                         ids=[c[0] for c in ATTESTED_CLASSES])
def test_attested_class_requires_attestation(values: dict[str, Any], policy: str, selects_attested: bool,
                                             evidence: str) -> None:
    objects = render(values)
    attested = one(objects, "DeviceClass", "attested")["spec"]
    plain = one(objects, "DeviceClass", "vfio.gpu.cc-gpu.io")["spec"]["config"][0]["opaque"]["parameters"]
    assert plain == {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig"}
    # The plugin's own decoder reads the class config as it would at prepare.
    entries = opaque.entries_for_driver([{"source": "FromClass", "opaque": attested["config"][0]["opaque"]}],
                                        "gpu.cc-gpu.io")
    request = attestcfg.request_of(opaque.resolve(entries, "gpu").extra)
    assert (request.required, request.policy, request.evidence) == (True, policy, evidence)
    assert ("attested == true" in attested["selectors"][0]["cel"]["expression"]) is selects_attested


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
                      "/var/run/cdi": False, "/sys": False, "/dev": False, "/lib/modules": True, "/host/proc": True,
                      "/etc/cc-gpu": True, "/host/nvidia-lib": True,
                      "/host/etc/kata-containers": True, "/host/opt/kata": True,
                      "/host/etc/containerd": True}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
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
    assert str(args.config) == "/etc/cc-gpu/plugin.toml"
    assert {e["name"] for e in container["env"]} == {"NODE_NAME", "POD_UID"}
    assert str(args.nvml_library) == "/host/nvidia-lib/libnvidia-ml.so.1"


def _plugin_settings(objects: list[dict[str, Any]], tmp_path: Path) -> PluginSettings:
    """The settings the plugin builds from the rendered ConfigMap, as `--config` reads it."""
    path = tmp_path / "plugin.toml"
    path.write_text(one(objects, "ConfigMap", "plugin-config")["data"]["plugin.toml"])
    return load_toml(path, PluginSettings())


def test_default_config_file_decodes_to_the_plugins_defaults(tmp_path: Path) -> None:
    assert _plugin_settings(render(), tmp_path).attestation == attestcfg.AttestationSettings()


def test_attestation_values_reach_the_plugin(tmp_path: Path) -> None:
    values = {"attestation": {"provider": "directory", "evidenceDir": "/srv/evidence", "ocspOnline": False,
                              "discovery": False, "discoveryPolicy": "lenient", "allowRebind": True,
                              "tokenMount": False, "tokenTtlSeconds": 600, "allowForeignNonce": True,
                              "ocspOnlineCacheSeconds": 60, "claimPolicies": ["inline"],
                              "minimum": {"required": True, "policy": "strict", "revocation": "cached",
                                          "maxEvidenceAgeSeconds": 120, "whenBoundToVfio": "refuse",
                                          "plainVfio": True},
                              "keys": {"namespace": "gpu-keys", "maxAgeDays": 7, "published": 2}},
              "deviceClasses": {"attested": {"selectAttested": False}}}
    objects = render(values)
    settings = _plugin_settings(objects, tmp_path).attestation
    assert settings == attestcfg.AttestationSettings(
        provider="directory", evidence_dir=Path("/host/evidence"), ocsp_online=False, discovery=False,
        discovery_policy="lenient", allow_rebind=True, token_mount=False, token_ttl_seconds=600,
        key_max_age_days=7, keys_published=2, keys_namespace="gpu-keys", allow_foreign_nonce=True,
        ocsp_online_cache_seconds=60, claim_policies=("inline",),
        minimum=attestcfg.NodeMinimum(required=True, policy="strict", revocation="cached", max_evidence_age_s=120,
                                      when_bound_to_vfio="refuse", plain_vfio=True))
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    evidence = next(v for v in pod["volumes"] if v["name"] == "evidence")
    assert evidence["hostPath"] == {"path": "/srv/evidence", "type": "Directory"}
    assert {"name": "evidence", "mountPath": "/host/evidence", "readOnly": True} in pod["containers"][0][
        "volumeMounts"]
    assert one(objects, "Role", "token-keys-writer")["metadata"]["namespace"] == "gpu-keys"


def test_binding_values_reach_the_plugin_and_only_then_widen_rbac(tmp_path: Path) -> None:
    """Binding conditions are off unless the admin says the cluster has them; on, the plugin may list and watch
    claims (the only way to learn of a claim allocated to its GPUs before its pod is bound), and nothing more."""
    assert _plugin_settings(render(), tmp_path).binding == BindingSettings()
    objects = render({"binding": {"conditions": True, "quarantine": False, "quarantineSeconds": 60}})
    assert _plugin_settings(objects, tmp_path).binding == BindingSettings(
        conditions=True, quarantine=False, quarantine_seconds=60.0)
    rules = one(objects, "ClusterRole", "kubelet-plugin")["rules"]
    claims = {v for rule in rules if "resourceclaims" in rule["resources"] for v in rule["verbs"]}
    assert claims == {"get", "list", "watch"}


def test_binding_conditions_run_the_claim_labeler_in_the_pod_gate_deployment() -> None:
    """The one cluster-level watch of claims: the pod-gate Deployment runs the labeler, may list, watch and patch
    claims, and its claims policy limits the patch to the binding-node label; without the cdi-annotation path it runs
    the labeler alone and gets no right on pods."""
    objects = render({"binding": {"conditions": True}})
    args = one(objects, "Deployment", "pod-gate")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["pod-gate", "--binding-labels=gpu.cc-gpu.io"]
    rules = one(objects, "ClusterRole", "pod-gate")["rules"]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in rules} == {
        ("pods", ("list", "watch", "patch")), ("resourceclaims", ("list", "watch", "patch"))}
    policy = one(objects, "ValidatingAdmissionPolicy", "pod-gate-claims")
    assert "cc-gpu.io/binding-node" in json.dumps(policy["spec"]["validations"])
    alone = render({"binding": {"conditions": True}, "admission": {"cdiAnnotation": {"enabled": False}}})
    args = one(alone, "Deployment", "pod-gate")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["pod-gate", "--binding-labels=gpu.cc-gpu.io", "--no-pod-release"]
    assert [r["resources"] for r in one(alone, "ClusterRole", "pod-gate")["rules"]] == [["resourceclaims"]]
    assert not [o for o in alone if o["metadata"]["name"].endswith("pod-gate-scope")]
    assert not [o for o in render() if o["metadata"]["name"].endswith("pod-gate-claims")]


NVML_LIBRARY = [
    ("driver container", "/run/nvidia/driver/usr/lib/x86_64-linux-gnu", True),
    ("no NVML", "", False),
]


@pytest.mark.parametrize(("directory", "mounted"), [c[1:] for c in NVML_LIBRARY], ids=[c[0] for c in NVML_LIBRARY])
def test_nvml_library_comes_from_the_node(directory: str, mounted: bool) -> None:
    pod = one(render({"nvml": {"libraryDir": directory}}), "DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = [v for v in pod["volumes"] if v["name"] == "nvidia-lib"]
    mounts = [m for m in container["volumeMounts"] if m["name"] == "nvidia-lib"]
    flags = [a for a in container["args"] if a.startswith("--nvml-library=")]
    assert "LD_LIBRARY_PATH" not in {e["name"] for e in container["env"]}  # nothing from the node shadows the image
    if not mounted:
        assert (volumes, mounts, flags) == ([], [], [])
        return
    assert volumes[0]["hostPath"] == {"path": directory, "type": "Directory"}
    assert mounts[0]["readOnly"] is True
    assert flags == [f"--nvml-library={mounts[0]['mountPath']}/libnvidia-ml.so.1"]


KATA_CHECK = [("on", {}, ["--kata-root=/host"], 3), ("off", {"kataCheck": {"enabled": False}}, ["--kata-check=off"], 0)]


@pytest.mark.parametrize(("values", "flags", "mounts"), [c[1:] for c in KATA_CHECK], ids=[c[0] for c in KATA_CHECK])
def test_kata_check_reads_the_nodes_files(values: dict[str, Any], flags: list[str], mounts: int) -> None:
    pod = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert [a for a in container["args"] if a.startswith("--kata")] == flags
    kata = [m for m in container["volumeMounts"] if m["name"].startswith("kata-config")]
    assert len(kata) == mounts
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if v["name"].startswith("kata-config")}
    for mount in kata:
        # Each node directory appears under the plugin's --kata-root at its own path.
        assert mount["mountPath"] == "/host" + volumes[mount["name"]]
        assert mount["readOnly"] is True
    parser = argparse.ArgumentParser(exit_on_error=False)
    plugin.add_arguments(parser)
    parser.parse_args([a.replace("$(NODE_NAME)", "n") for a in container["args"][1:]])


def test_a_config_change_restarts_the_plugin_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = one(render(values), "DaemonSet")["spec"]["template"]
        return str(template["metadata"]["annotations"]["cc-gpu.io/config-sha256"])

    assert checksum({}) == checksum({"rollingUpdate": {"surge": False}})
    assert checksum({}) != checksum({"attestation": {"allowRebind": True}})


def test_rbac_is_least_privilege() -> None:
    rules = one(render(), "ClusterRole", "kubelet-plugin")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in item for item in granted)
    assert {r for _, r, _ in granted} == {"resourceslices", "resourceclaims", "resourceclaims/status",
                                          "resourceclaims/driver", "pods", "nodes", "runtimeclasses", "events"}
    assert {v for _, r, v in granted if r in ("resourceclaims", "pods", "nodes", "runtimeclasses")} == {"get"}
    assert {v for _, r, v in granted if r == "events"} == {"create"}
    assert {v for _, r, v in granted if r == "resourceclaims/driver"} == {"associated-node:update",
                                                                          "associated-node:patch"}
    assert not any(r == "secrets" for _, r, _ in granted)


def test_runtime_classes_match_the_kata_folder() -> None:
    rendered = [o for o in render({"runtimeClasses": {"create": True}}) if o["kind"] == "RuntimeClass"]
    for obj in rendered:
        del obj["metadata"]["labels"]
    shipped = [d for d in yaml.safe_load_all((REPO / "kata/runtimeclasses.yaml").read_text()) if d]
    assert sorted(rendered, key=lambda o: o["metadata"]["name"]) == shipped


def test_token_keys_namespace_rbac_and_no_signing_key() -> None:
    """Per-node keys: the plugin writes ConfigMaps only in the key namespace; no key material in the chart."""
    objects = render()
    assert one(objects, "Namespace")["metadata"]["name"] == "cc-gpu-token-keys"
    writer = one(objects, "Role", "token-keys-writer")
    assert writer["metadata"]["namespace"] == "cc-gpu-token-keys"
    assert writer["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]}]
    binding = one(objects, "RoleBinding", "token-keys-writer")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cc-gpu-kubelet-plugin",
                                    "namespace": NAMESPACE}]
    reader = one(objects, "RoleBinding", "token-keys-reader")
    assert reader["subjects"][0]["name"] == "system:authenticated"
    assert one(objects, "Role", "token-keys-reader")["rules"][0]["verbs"] == ["get", "list", "watch"]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert not any("secret" in v for v in pod["volumes"])
    assert not any(o["kind"] == "Secret" for o in objects)
    assert "PRIVATE KEY" not in yaml.safe_dump_all(objects)


def test_service_monitor_and_digest() -> None:
    objects = render(VARIANTS["everything on"])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(objects, "Service")
    assert service["spec"]["selector"] == one(objects, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/cc-gpu/cc-gpu@sha256:" + "a" * 64


def test_notes_tell_how_to_check_the_install() -> None:
    text = notes()
    assert "kubectl get resourceslices --field-selector spec.driver=gpu.cc-gpu.io" in text
    assert "cc-gpu kata check" in text
    assert "kubectl label namespace <tenant> cc-gpu.io/gpu-tenant=true" in text
    assert "kubectl -n cc-gpu-token-keys get configmaps -l cc-gpu.io/token-keys=true" in text
    assert "token-keys" not in notes({"attestation": {"provider": "none"}})


BAD_VALUES = [
    ("driver name not a DNS name", {"driverName": "GPU_Driver"}, "driverName"),
    ("unknown key", {"replicas": 3}, "replicas"),
    ("port out of range", {"probePort": 70000}, "probePort"),
    ("relative kubelet dir", {"kubeletDir": "var/lib/kubelet"}, "kubeletDir"),
    ("not a CDI directory", {"cdiRoot": "/tmp/cdi"}, "cdiRoot"),
    ("unknown evidence provider", {"attestation": {"provider": "tpm"}}, "provider"),
    ("directory provider without a directory", {"attestation": {"provider": "directory"}}, "evidenceDir"),
    ("relative NVML library directory", {"nvml": {"libraryDir": "usr/lib64"}}, "libraryDir"),
    ("unknown class policy", {"deviceClasses": {"attested": {"policy": "fleet"}}}, "policy"),
    ("no published keys", {"attestation": {"keys": {"published": 0}}}, "published"),
    ("selecting attested GPUs that discovery never marks",
     {"attestation": {"discovery": False}, "deviceClasses": {"attested": {"evidence": "host", "selectAttested": True}}},
     "selectAttested"),
    ("host-attested GPUs for guest evidence", {"deviceClasses": {"attested": {"selectAttested": True}}},
     "selectAttested"),
    ("unknown evidence source", {"deviceClasses": {"attested": {"evidence": "tpm"}}}, "evidence"),
    ("service without a token key", {"attestationService": {"enabled": True}}, "secretName"),
    ("service without a key id",
     {"attestationService": {"enabled": True, "tokenKey": {"secretName": "k"}}}, "kid"),
    ("admin certificate without its CA",
     {"attestationService": {"tls": {"secretName": "svc-tls"}}}, "caCertificate"),
    ("service port below 1024", {"attestationService": {"port": 443}}, "port"),
    ("plain-HTTP guest service", {"attestation": {"guestService": {"url": "http://attest:80", "caConfigMap": "c"}}},
     "url"),
    ("external guest service without its CA",
     {"attestation": {"guestService": {"url": "https://attest.example.com"}}}, "caConfigMap"),
    ("unknown service key", {"attestationService": {"ingress": True}}, "ingress"),
    ("a cluster-wide signing key is gone", {"attestation": {"signingKeySecret": "k"}}, "signingKeySecret"),
    ("no runtime classes", {"admission": {"cdiAnnotation": {"runtimeClassNames": []}}}, "runtimeClassNames"),
    ("bad digest", {"image": {"digest": "latest"}}, "digest"),
    ("flag as string", {"rollingUpdate": {"surge": "yes"}}, "surge"),
    ("binding conditions as string", {"binding": {"conditions": "on"}}, "conditions"),
    ("no quarantine time", {"binding": {"quarantineSeconds": 0}}, "quarantineSeconds"),
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


@pytest.mark.parametrize("require", [True, False], ids=["default: iommufd required", "requireIommuFD false"])
def test_confidential_classes_select_iommufd_nodes(require: bool) -> None:
    """Kata >= 3.26 refuses a legacy group node for confidential guests: by default both classes select only devices
    whose node publishes iommuFD=true (the attribute `cc_gpu.dra.slices.device_json` writes), so the scheduler never
    sends a confidential claim to a legacy-only node."""
    from cc_gpu.dra.ports import GpuView  # noqa: PLC0415
    from cc_gpu.dra.slices import device_json  # noqa: PLC0415

    view = GpuView("gpu-0000-18-00-0", "0000:18:00.0", ("0000:18:00.0",), ("0000:18:00.0",), 10, "0x10de", "0x2330",
                   "H100", "hopper", 0, "pci0000:16", False, True, "on", "nvidia", None)
    assert device_json(view)["attributes"]["iommuFD"] == {"bool": False}
    clause = ('"iommuFD" in device.attributes["gpu.cc-gpu.io"] && '
              'device.attributes["gpu.cc-gpu.io"].iommuFD == true')
    values = {} if require else {"deviceClasses": {"requireIommuFD": False}}
    for cls in (o for o in render(values) if o["kind"] == "DeviceClass"):
        expression = " ".join(cls["spec"]["selectors"][0]["cel"]["expression"].split())
        assert expression.startswith('device.driver == "gpu.cc-gpu.io"')
        assert (clause in expression) is require, (cls["metadata"]["name"], expression)


def test_key_version_pattern_in_the_chart_is_the_codes() -> None:
    """One key-id grammar: the chart's policy carries `KEY_VERSION_PATTERN` from cc_gpu/attest/binding.py."""
    from cc_gpu.attest.binding import KEY_VERSION_PATTERN  # noqa: PLC0415

    policy = one(render(), "ValidatingAdmissionPolicy", "token-keys-own-node")
    assert f"}}{KEY_VERSION_PATTERN}[.]pem$" in policy["spec"]["validations"][-1]["expression"]


def test_attestation_service_rbac_is_least_privilege() -> None:
    """Read claims, write their status (this driver's status.devices from any node), create Events: nothing else."""
    rules = one(render(VARIANTS["attestation service"]), "ClusterRole", "attestation")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("resource.k8s.io", "resourceclaims", "get"), ("resource.k8s.io", "resourceclaims", "list"),
        ("resource.k8s.io", "resourceclaims", "watch"),
        ("resource.k8s.io", "resourceclaims/status", "update"), ("resource.k8s.io", "resourceclaims/status", "patch"),
        ("resource.k8s.io", "resourceclaims/driver", "arbitrary-node:update"),
        ("resource.k8s.io", "resourceclaims/driver", "arbitrary-node:patch"),
        ("", "events", "create"),
    }
    driver_rule = next(r for r in rules if r["resources"] == ["resourceclaims/driver"])
    assert driver_rule["resourceNames"] == ["gpu.cc-gpu.io"]


def test_attestation_service_runs_attest_serve_with_its_files() -> None:
    objects = render(VARIANTS["attestation service"])
    deployment = one(objects, "Deployment", "attestation")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == [
        "attest", "serve", "--listen=0.0.0.0:8443", "--tls-cert=/etc/cc-gpu/tls/tls.crt",
        "--tls-key=/etc/cc-gpu/tls/tls.key", "--token-key=/etc/cc-gpu/token-key/token.key", "--token-kid=svc-1",
        "--settings=/etc/cc-gpu/config/plugin.toml", "--driver=gpu.cc-gpu.io",
    ]
    assert pod["serviceAccountName"] == "cc-gpu-attestation"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token-key"]["secret"]["secretName"] == "cc-gpu-attestation-token-key"
    assert volumes["tls"]["secret"]["secretName"] == "cc-gpu-attestation-tls"
    assert volumes["config"]["configMap"]["name"] == one(objects, "ConfigMap", "plugin-config")["metadata"]["name"]
    service = one(objects, "Service", "attestation")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert "PRIVATE KEY" not in yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])


def test_attestation_service_certificate_is_generated_for_the_service_name() -> None:
    objects = render(VARIANTS["attestation service"])
    secret = one(objects, "Secret", "attestation-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert "cc-gpu-attestation.cc-gpu-system.svc" in names
    published = one(objects, "ConfigMap", "attestation-ca")["data"]
    assert published["url"] == "https://cc-gpu-attestation.cc-gpu-system.svc:443"
    assert x509.load_pem_x509_certificate(published["ca.crt"].encode()) == ca


def test_attestation_service_uses_the_admins_certificate() -> None:
    objects = render(VARIANTS["attestation service, admin's certificate"])
    assert not any(o["kind"] == "Secret" for o in objects)
    pod = one(objects, "Deployment", "attestation")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "svc-tls"
    assert "MIIB" in one(objects, "ConfigMap", "attestation-ca")["data"]["ca.crt"]


def test_attestation_service_is_off_by_default() -> None:
    assert not [o for o in render() if "attestation" in o["metadata"]["name"] and o["kind"] != "DeviceClass"]
    assert "attestationService.enabled=true" in notes()
    text = notes(VARIANTS["attestation service"])
    assert "https://cc-gpu-attestation.cc-gpu-system.svc:443" in text
    assert "get configmap cc-gpu-attestation-ca" in text


def test_attestation_service_arguments_are_accepted_by_attest_serve(tmp_path: Path) -> None:
    """The Deployment's args parse with `cc-gpu attest serve`'s own parser (its mounted files made here)."""
    from cc_gpu.cli.attest_guest import add_serve_arguments  # noqa: PLC0415 - the command's own parser

    (container,) = one(render(VARIANTS["attestation service"]), "Deployment", "attestation")["spec"]["template"][
        "spec"]["containers"]
    assert container["args"][:2] == ["attest", "serve"]
    args = [a.replace("/etc/cc-gpu/", f"{tmp_path}/") for a in container["args"][2:]]
    for arg in args:
        if "=" in arg and arg.split("=", 1)[1].startswith(str(tmp_path)):
            path = Path(arg.split("=", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    parsed = parser.parse_args(args)
    assert parsed.listen == ("0.0.0.0", 8443) and parsed.token_kid == "svc-1" and parsed.driver == "gpu.cc-gpu.io"
    assert parsed.kubeconfig is None, "in-cluster: the pod's ServiceAccount"


GUEST_SERVICES = [
    ("the chart's own service", {"attestationService": SERVICE},
     "https://cc-gpu-attestation.cc-gpu-system.svc:443", "cc-gpu-attestation-ca"),
    ("an external service", {"attestation": {"guestService": {"url": "https://attest.example.com:8443",
                                                              "caConfigMap": "attest-ca"}}},
     "https://attest.example.com:8443", "attest-ca"),
]


@pytest.mark.parametrize(("values", "url", "config_map"), [c[1:] for c in GUEST_SERVICES],
                         ids=[c[0] for c in GUEST_SERVICES])
def test_the_plugin_points_guests_at_the_service(tmp_path: Path, values: dict[str, Any], url: str,
                                                 config_map: str) -> None:
    """The plugin's settings name the service's URL and CA file, and the DaemonSet mounts the CA there."""
    objects = render(values)
    settings = _plugin_settings(objects, tmp_path).attestation
    assert (settings.service_url, settings.challenge_ttl_seconds) == (url, 900)
    assert settings.service_ca is not None
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "guest-service-ca"]
    assert Path(mount["mountPath"]) / "ca.crt" == settings.service_ca and mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "guest-service-ca"]
    assert volume["configMap"]["name"] == config_map


def test_no_service_no_service_settings(tmp_path: Path) -> None:
    objects = render()
    assert _plugin_settings(objects, tmp_path).attestation.service_url == ""
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if v["name"] == "guest-service-ca"]
