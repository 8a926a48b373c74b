"""The attestation deployment pieces: the plugin settings example decodes, the DeviceClasses pass the API schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cc_gpu.dra import attestcfg, opaque
from cc_gpu.dra.settings import PluginSettings, load_toml
from cc_gpu.kube.apiserver import ApiServerDouble

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "attestation"


def test_settings_example_decodes_to_the_defaults() -> None:
    settings = load_toml(DEPLOY / "plugin-attestation.toml", PluginSettings())
    assert settings.attestation == attestcfg.AttestationSettings()


@pytest.mark.parametrize("name", ["00-token-keys-namespace.yaml", "10-deviceclasses.yaml"])
def test_manifests_are_accepted_by_the_api_schema(name: str) -> None:
    with ApiServerDouble() as server:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            server.create(doc)


def test_attested_class_requires_attestation_and_plain_does_not() -> None:
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "10-deviceclasses.yaml").read_text())}
    attested = docs["attested-vfio.gpu.cc-gpu.io"]["spec"]["config"][0]["opaque"]
    entries = opaque.entries_for_driver([{"source": "FromClass", "opaque": attested}], "gpu.cc-gpu.io")
    assert attestcfg.request_of(opaque.resolve(entries, "gpu").extra).required
    assert "config" not in docs["vfio.gpu.cc-gpu.io"]["spec"]
