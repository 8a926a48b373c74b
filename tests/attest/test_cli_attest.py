"""`cc-gpu attest` as a process: exit codes, JSON verdicts, inspect, tokens, bundle import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cc_gpu.attest.binding import check_binding
from cc_gpu.attest.errors import TokenError
from tests.attest.conftest import Sample

ROOT = Path(__file__).resolve().parents[2]
DRIVER, VBIOS = "Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag"


def cc_gpu(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cc_gpu", "attest", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def verify_args(s: Sample, *extra: str | Path, vbios: str = VBIOS) -> list[str | Path]:
    return [
        "verify",
        "--report",
        s.dir / "attestationReport.txt",
        "--cert-chain",
        s.dir / "gpuAkCertChain.txt",
        "--nonce",
        s.nonce.hex(),
        "--rim",
        s.dir / DRIVER,
        "--rim",
        s.dir / vbios,
        "--at",
        "2025-01-15T00:00:00Z",
        "--revocation",
        "off",
        *extra,
    ]


def test_verify_passes_with_exit_0_and_json(nvidia_211: Sample) -> None:
    out = cc_gpu(*verify_args(nvidia_211, "--json"))
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["ok"] is True and verdict["failed_checks"] == [] and verdict["revocation_mode"] == "off"


def test_verify_rejects_with_exit_1_naming_the_check(nvidia_211: Sample) -> None:
    out = cc_gpu(*verify_args(nvidia_211, vbios="1010_0200_882_96005E0001_PROD.swidtag"))
    assert out.returncode == 1
    assert "REJECTED: measres" in out.stdout and "[1, 2, 3, 9]" in out.stdout


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("missing-file", {"--report": "/nonexistent/report"}),
        ("short-nonce", {"--nonce": "abcd"}),
        ("bad-time", {"--at": "yesterday"}),
        ("naive-time", {"--at": "2025-01-15T00:00:00"}),
    ],
)
def test_usage_and_unreadable_input_exit_2(case: str, change: dict[str, str], nvidia_211: Sample) -> None:
    args = verify_args(nvidia_211)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    out = cc_gpu(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_bad_policy_file_exits_2(tmp_path: Path, nvidia_211: Sample) -> None:
    (tmp_path / "p.toml").write_text("[revocation]\nmode = 'maybe'\n")
    out = cc_gpu(*verify_args(nvidia_211, "--policy", tmp_path / "p.toml"))
    assert out.returncode == 2 and "online, cached or off" in out.stderr


def test_inspect(nvidia_273: Sample) -> None:
    out = cc_gpu("inspect", "--report", nvidia_273.dir / "hopperAttestationReport.txt", "--json")
    assert out.returncode == 0
    fields = json.loads(out.stdout)
    assert fields["nonce"] == nvidia_273.nonce.hex()
    assert fields["opaque"]["driver_version"] == "550.90.07" and fields["opaque"]["fwid"]


def test_inspect_malformed_report_exits_1(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_text("11e0")
    out = cc_gpu("inspect", "--report", tmp_path / "r.txt")
    assert out.returncode == 1 and "request.Param1 at offset 2" in out.stderr


def test_token_issue_and_check(tmp_path: Path, nvidia_211: Sample) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "k.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    out = cc_gpu(
        *verify_args(
            nvidia_211, "--token-key", tmp_path / "k.pem", "--token-kid", "node-a.k1", "--token-out", tmp_path / "t.jwt"
        )
    )
    assert out.returncode == 0, out.stderr
    check = [
        "check-token",
        "--token",
        tmp_path / "t.jwt",
        "--public-key",
        f"node-a.k1={tmp_path / 'k.pub'}",
        "--nonce",
        nvidia_211.nonce.hex(),
        "--at",
        "2025-01-15T00:01:00Z",
    ]
    good = cc_gpu(*check)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["hwmodel"] == "GH100 A01 GSP BROM"
    late = cc_gpu(*check[:-1], "2025-01-15T01:00:00Z")
    assert late.returncode == 1 and "expired" in late.stderr
    bound = cc_gpu(*check, "--node", "node-a")
    assert bound.returncode == 0 and "bound to node node-a" in bound.stderr, bound.stderr
    other = cc_gpu(*check, "--node", "node-b")
    assert other.returncode == 1, other.stderr
    assert "token names node 'node-a', expected node 'node-b'" in other.stderr and "None" not in other.stderr


def test_token_with_json_and_no_token_out_stays_one_json_document(tmp_path: Path, nvidia_211: Sample) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    out = cc_gpu(*verify_args(nvidia_211, "--json", "--token-key", tmp_path / "k.pem", "--token-kid", "node-a.k1"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole of stdout is one document
    assert doc["ok"] is True and doc["token"].count(".") == 2
    (tmp_path / "t.jwt").write_text(doc["token"])
    written = cc_gpu(*verify_args(nvidia_211, "--json", "--token-key", tmp_path / "k.pem", "--token-kid",
                                  "node-a.k1", "--token-out", tmp_path / "t2.jwt"))
    assert "token" not in json.loads(written.stdout) and (tmp_path / "t2.jwt").read_text().count(".") == 2


@pytest.mark.parametrize("kid", ["node-a", "node-a.k0", "node-a.k01", "Node.k1", "node a.k1", "node-a.kx"])
def test_token_kid_outside_the_grammar_is_a_usage_error(tmp_path: Path, nvidia_211: Sample, kid: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    out = cc_gpu(*verify_args(nvidia_211, "--token-key", tmp_path / "k.pem", "--token-kid", kid))
    assert out.returncode == 2 and "<node>.k<version>" in out.stderr, out.stderr


def test_a_token_without_a_node_is_refused_without_printing_none() -> None:
    with pytest.raises(TokenError) as e:
        check_binding({}, "node-a.k1")
    assert str(e.value) == "token names no node but is signed by the key of node 'node-a'"
    with pytest.raises(TokenError) as e:
        check_binding({"x-cc-gpu-node": "node-a"}, "node-a.k1", claim_uid="u")
    assert "None" not in str(e.value) and "names no claim" in str(e.value)


def test_bundle_import(tmp_path: Path, nvidia_211: Sample) -> None:
    (tmp_path / "b" / "rims").mkdir(parents=True)
    (tmp_path / "b" / "rims" / "NV_GPU_DRIVER_GH100_545.00.swidtag").write_bytes(nvidia_211.rim(DRIVER))
    (tmp_path / "b" / "rims" / "NV_GPU_VBIOS_1010_0200_882_96005E0001").write_bytes(nvidia_211.rim(VBIOS))
    out = cc_gpu(
        "bundle", "import", "--bundle", tmp_path / "b", "--store", tmp_path / "s", "--at", "2025-01-15T00:00:00Z"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("imported RIM") == 2
    args = [a for a in verify_args(nvidia_211) if a not in ("--rim", nvidia_211.dir / DRIVER, nvidia_211.dir / VBIOS)]
    verified = cc_gpu(*args, "--rim-dir", tmp_path / "s" / "rims")
    assert verified.returncode == 0, verified.stdout


def test_cli_module_import_is_light() -> None:
    heavy = "('cryptography', 'lxml', 'signxml', 'jwt')"
    code = f"import sys, cc_gpu.cli.attest; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "[]"


def test_accepted_without_measurements_says_so(nvidia_211: Sample, tmp_path: Path) -> None:
    """A policy that lets a missing RIM pass accepts, but the verdict says the measurements were not verified, in the
    text and the JSON, and the evidence age is not applicable (the CLI has no collection time)."""
    policy = tmp_path / "lenient.toml"
    policy.write_text('[rim]\nmissing = "report"\n')
    args: list[str | Path] = ["verify", "--report", nvidia_211.dir / "attestationReport.txt", "--cert-chain",
                              nvidia_211.dir / "gpuAkCertChain.txt", "--nonce", nvidia_211.nonce.hex(),
                              "--at", "2025-01-15T00:00:00Z", "--revocation", "off", "--policy", policy]
    out = cc_gpu(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("ACCEPTED (measurements not verified)")
    assert "not-applicable" in next(line for line in out.stdout.splitlines() if "x-cc-gpu-evidence-age" in line)
    verdict = json.loads(cc_gpu(*args, "--json").stdout)
    assert verdict["result"] == "ACCEPTED (measurements not verified)" and verdict["measurements_verified"] is False
    full = json.loads(cc_gpu(*verify_args(nvidia_211, "--json")).stdout)
    assert full["result"] == "ACCEPTED" and full["measurements_verified"] is True
