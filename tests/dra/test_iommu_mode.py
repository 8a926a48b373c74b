"""Confidential pods get iommufd cdevs: Kata >= 3.26 refuses a legacy group node for a confidential guest.

The rule itself (`cc_gpu.dra.iommu`) is checked as a table; the plugin process on simulated nodes shows it end to
end: the default node (`dgx-h100`, iommufd as current kernels have) prepares an SNP claim with a cdev spec, the same
machine without iommufd (`dgx-h100-legacy`) refuses it before anything is bound, and an explicit `iommuMode: legacy`
is honoured only on a Kata known to be older than 3.26.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cc_gpu.dra.iommu import IommuModeRefusedError, choose_mode, parse_kata_version
from tests.dra.harness import DRIVER, Node, opaque, simulated_node

V3_25, V3_26, V3_14 = (3, 25, 0), (3, 26, 0), (3, 14, 2)

# requested, confidential, node iommufd, kata version -> mode or the refusal's telling words
TABLE = [
    ("auto", True, True, None, "iommufd"),
    ("auto", True, True, V3_26, "iommufd"),
    ("iommufd", True, True, V3_25, "iommufd"),
    ("auto", True, False, V3_26, "CONFIG_VFIO_DEVICE_CDEV"),
    ("auto", True, False, None, "iommuFD=true"),
    ("auto", True, True, V3_14, "needs >= 3.15"),
    ("legacy", True, True, V3_26, "legacy for a confidential pod is refused"),
    ("legacy", True, False, None, "Kata unknown"),
    ("legacy", True, False, V3_25, "legacy"),
    ("auto", False, False, None, "auto"),
    ("legacy", False, True, V3_26, "legacy"),
    ("iommufd", False, False, None, "iommuMode iommufd was requested"),
]


@pytest.mark.parametrize(("requested", "confidential", "node", "kata", "expected"), TABLE)
def test_choose_mode(requested: str, confidential: bool, node: bool, kata: tuple[int, int, int] | None,
                     expected: str) -> None:
    if expected in ("iommufd", "legacy", "auto"):
        assert choose_mode(requested, confidential=confidential, node_iommufd=node, kata_version=kata,
                           device="gpu-x") == expected
    else:
        with pytest.raises(IommuModeRefusedError, match=expected.replace(".", r"\.")):
            choose_mode(requested, confidential=confidential, node_iommufd=node, kata_version=kata, device="gpu-x")


@pytest.mark.parametrize(("text", "version"), [
    ("3.26.0\n", (3, 26, 0)), ("3.23.0-12-gabcdef0", (3, 23, 0)), ("v4.1", (4, 1, 0)), ("", None), ("main", None),
])
def test_parse_kata_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_kata_version(text) == version


def _spec_nodes(node: Node, claim_uid: str) -> list[str]:
    spec = json.loads((node.cdi_root / f"cc-gpu.io-vfio_{claim_uid}.json").read_text())
    return [n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]]


def test_confidential_claim_gets_an_iommufd_spec_on_the_default_node(node: Node) -> None:
    node.start_plugin()
    (s,) = node.api.list_resource_slices(DRIVER, "node-a")
    assert all(d["attributes"]["iommuFD"] == {"bool": True} for d in s["spec"]["devices"])
    devices = node.devices()
    claim = node.vm_pod_claim([devices[0]])
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    (cdev,) = _spec_nodes(node, claim[2])
    assert cdev.startswith("/dev/vfio/devices/vfio"), cdev
    assert (node.sim_root / cdev.removeprefix("/")).exists(), "the host node the spec names exists"
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}


def test_legacy_only_node_refuses_a_confidential_claim(tmp_path: Path) -> None:
    with simulated_node(tmp_path, "dgx-h100-legacy") as node:
        node.start_plugin()
        (s,) = node.api.list_resource_slices(DRIVER, "node-a")
        assert all(d["attributes"]["iommuFD"] == {"bool": False} for d in s["spec"]["devices"])
        device = node.devices()[0]
        claim = node.vm_pod_claim([device])
        error = node.kubelet.prepare(DRIVER, [claim])[claim[2]].error
        assert "must be passed as an iommufd cdev" in error
        assert "CONFIG_IOMMUFD=y, CONFIG_VFIO_DEVICE_CDEV=y" in error
        assert node.driver_of("0000:18:00.0") == "nvidia", "refused before anything was bound"
        assert not list(node.cdi_root.glob("*.json"))


@pytest.mark.parametrize(("kata_version", "accepted"), [(None, False), ("3.26.0", False), ("3.25.1", True)],
                         ids=["version unknown", "kata 3.26", "kata 3.25"])
def test_explicit_legacy_for_a_confidential_pod(tmp_path: Path, kata_version: str | None, accepted: bool) -> None:
    with simulated_node(tmp_path) as node:
        if kata_version is not None:  # read as kata-deploy leaves it, under the host root
            (node.sim_root / "opt" / "kata").mkdir(parents=True)
            (node.sim_root / "opt" / "kata" / "VERSION").write_text(kata_version + "\n")
        node.start_plugin()
        config = [{"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": opaque(iommuMode="legacy")}}]
        claim = node.vm_pod_claim([node.devices()[0]], config=config)
        error = node.kubelet.prepare(DRIVER, [claim])[claim[2]].error
        if accepted:
            assert error == ""
            assert _spec_nodes(node, claim[2]) == ["/dev/vfio/10"]
        else:
            assert "iommuMode legacy for a confidential pod is refused" in error
            assert f"Kata {kata_version or 'unknown'}" in error
            assert node.driver_of("0000:18:00.0") == "nvidia"
