"""Every subcommand, walked with bad input as a user would type it: a one-line error, the documented exit code, never a
traceback and never the internal-error catch-all (a row that reaches it is a bug in the input's validation).

Each row runs the real `python -m cc_gpu` in a subprocess. `{BIN}` is a file of random bytes, `{DIR}` an empty
directory, `{MISSING}` a path that does not exist, `{SIM}` a fresh simulated node's directory. No row touches the
real host's sysfs: every row that would act on hardware is refused before it gets there, or runs on `--sim`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cc_gpu import cli
from cc_gpu.cli import COMMANDS, keys
from cc_gpu.host.sim import SimKernel

USAGE, REFUSED = 2, 1

# (argv, exit code, a piece of the message). The message names the input (the flag) and what is expected.
ROWS: list[tuple[str, int, str]] = [
    # dispatcher
    ("frobnicate", USAGE, "unknown command"),
    # discover
    ("discover --sim nonesuch", USAGE, "unknown simulated topology"),
    ("discover --sim dgx-h100 --vendor xyz", USAGE, "--vendor"),
    ("discover --sim dgx-h100 --class 12345", USAGE, "--class"),
    ("discover --sim-root {DIR}", USAGE, "--sim-root needs --sim"),
    ("discover --sim dgx-h100 --sysfs-root {DIR}", USAGE, "--sysfs-root"),
    ("discover --root {BIN}", USAGE, "--root"),
    ("discover --sim nonesuch --json", USAGE, "unknown simulated topology"),
    ("discover --root {DIR} --json", REFUSED, "IOMMU is off"),
    # vfio
    ("vfio", USAGE, "ACTION"),
    ("vfio status --sim-root {DIR}", USAGE, "--sim-root needs --sim"),
    ("vfio bind 10 --sim-root {DIR}", USAGE, "--sim-root needs --sim"),
    ("vfio bind 10 --sim dgx-h100 --root /", USAGE, "--root"),
    ("vfio bind not-a-target --sim dgx-h100", USAGE, "GROUP|BDF"),
    ("vfio bind 10 --sim dgx-h100 --timeout abc", USAGE, "--timeout"),
    ("vfio bind 10 --sim dgx-h100 --timeout -1", USAGE, "--timeout"),
    ("vfio bind 10 --sim dgx-h100 --in-use-timeout nan", USAGE, "--in-use-timeout"),
    ("vfio bind 10 --sim dgx-h100 --allow bogus", USAGE, "--allow"),
    ("vfio bind 10 --sim dgx-h100 --owner ''", USAGE, "--owner"),
    ("vfio bind 10 --sim dgx-h100 --backend fast", USAGE, "--backend"),
    ("vfio bind 999 --sim dgx-h100", REFUSED, "GroupNotFoundError"),
    ("vfio bind 99:00.0 --sim dgx-h100", REFUSED, "no PCI device"),
    ("vfio restore 99 --sim dgx-h100", REFUSED, "nothing to restore"),
    ("vfio restore 99 --sim dgx-h100 --json", REFUSED, "nothing to restore"),
    ("vfio reset 12x --sim dgx-h100", USAGE, "GROUP|BDF"),
    ("vfio reset 999 --sim dgx-h100", REFUSED, "does not exist"),
    ("vfio status --sim dgx-h100 --vendor 0x10de0 --json", USAGE, "--vendor"),
    ("vfio status --sim dgx-h100 --state-dir {BIN}", USAGE, "--state-dir"),
    # kata
    ("kata check --config {BIN}", USAGE, "--config"),
    ("kata check --config {BIN} --json", USAGE, "--config"),
    ("kata check --config {DIR}", USAGE, "--config"),
    ("kata check --config {MISSING}", USAGE, "--config"),
    ("kata check --containerd-config {BIN} --config {MISSING}", USAGE, "--config"),
    ("kata check --gpus 0", USAGE, "--gpus"),
    ("kata check --gpus many", USAGE, "--gpus"),
    ("kata check --ports-per-gpu -2", USAGE, "--ports-per-gpu"),
    ("kata check --class nonesuch", USAGE, "--class"),
    ("kata check --path teleport", USAGE, "--path"),
    ("kata check --root {MISSING}", USAGE, "--root"),
    ("kata check --root {DIR}", USAGE, "no NVIDIA GPU Kata configuration"),
    ("kata check --root {DIR} --json", USAGE, "no NVIDIA GPU Kata configuration"),
    # attest
    ("attest", USAGE, "action"),
    ("attest verify --report {MISSING} --cert-chain {BIN} --nonce 00", USAGE, "--report"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce zz", USAGE, "--nonce"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce 00 --json", USAGE, "--nonce"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --at yesterday", USAGE, "--at"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --rim-url ftp://x", USAGE, "--rim-url"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --trust-dir {MISSING}", USAGE,
     "--trust-dir"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --policy {BIN}", USAGE, "policy"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --token-out {DIR}", USAGE,
     "--token-out"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --revocation maybe", USAGE,
     "--revocation"),
    ("attest verify --report {BIN} --cert-chain {BIN} --nonce " + "00" * 32 + " --token-key {BIN} --token-kid a.k1"
     " --json", USAGE, "signing key"),
    ("attest check-token --token {BIN} --public-key k={MISSING}", USAGE, "public key"),
    ("attest check-token --token {BIN} --public-key k={BIN}", USAGE, "public key"),
    ("attest inspect --report {BIN}", REFUSED, ""),
    ("attest inspect --report {BIN} --json", REFUSED, ""),
    ("attest inspect --report {DIR}", USAGE, "--report"),
    ("attest check-token --token {BIN}", USAGE, "--public-key"),
    ("attest check-token --token {BIN} --public-key nokey", USAGE, "--public-key"),
    ("attest check-token --token {BIN} --keys-configmap {BIN}", USAGE, "not JSON"),
    ("attest check-token --token {BIN} --keys-configmap {MISSING}", USAGE, "--keys-configmap"),
    ("attest check-token --token {BIN} --public-key k={BIN} --node Not_A_Node", USAGE, "--node"),
    ("attest collect --token-out - --service-url https://127.0.0.1:1", USAGE, "no challenge"),
    ("attest collect --token-out - --challenge zz", USAGE, "--challenge"),
    ("attest collect --token-out - --challenge " + "00" * 32, USAGE, "no https:// verification service"),
    ("attest collect --token-out - --challenge " + "00" * 32 + " --service-url https://127.0.0.1:1"
     " --simulated-gpus 0000:18:00.0", USAGE, "--simulated-gpus needs --simulated-node"),
    ("attest collect --token-out - --challenge " + "00" * 32 + " --service-url https://127.0.0.1:1"
     " --simulated-node {DIR} --simulated-gpus 0000:18:00.0", USAGE, "no simulated node's CA"),
    ("attest serve --tls-cert {MISSING} --tls-key {BIN} --token-key {BIN} --token-kid k", USAGE, "--tls-cert"),
    ("attest serve --rate 0 --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k", USAGE, "--rate"),
    ("attest serve --burst -3 --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k", USAGE, "--burst"),
    ("attest serve --listen nowhere --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k", USAGE,
     "--listen"),
    ("attest serve --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k --simulated-node {DIR}", USAGE,
     "simulated node's CA"),
    ("attest serve --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k --settings {BIN}", USAGE,
     "config file"),
    ("attest serve --tls-cert {BIN} --tls-key {BIN} --token-key {BIN} --token-kid k", USAGE,
     "cannot load token signing key"),
    ("attest bundle import --bundle {MISSING} --store {DIR}", USAGE, "--bundle"),
    ("attest bundle import --bundle {DIR} --store {BIN}", USAGE, "--store"),
    ("attest bundle import --bundle {DIR} --store {DIR} --at 2025-01-01", USAGE, "--at"),
    # plugin (every row fails before any adapter is built)
    ("plugin --log-level loud --node-name n --sim dgx-h100", USAGE, "--log-level"),
    ("plugin --metrics-port 99999 --node-name n", USAGE, "--metrics-port"),
    ("plugin --probe-port -1 --node-name n", USAGE, "--probe-port"),
    ("plugin --rescan-seconds 0 --node-name n", USAGE, "--rescan-seconds"),
    ("plugin --node-name Bad_Name", USAGE, "--node-name"),
    ("plugin --config {BIN}", USAGE, "not TOML text"),
    ("plugin --json", USAGE, "unrecognized arguments: --json"),
    ("plugin --config {MISSING}", USAGE, "cannot read config file"),
    ("plugin --kata-check maybe", USAGE, "--kata-check"),
    ("plugin --node-name n --driver-name Bad_Driver", USAGE, "driver name"),
    ("plugin --node-name n --select-pci 18:00.0 --select-label gpus", USAGE, "not both"),
    ("plugin --node-name n --sim dgx-h100 --kubeconfig {BIN}", USAGE, "Kubernetes client configuration"),
    ("plugin --node-name n --sim-root {DIR}", USAGE, "needs sim"),
    ("plugin --node-name n --sim dgx-h100 --sysfs-root {DIR}", USAGE, "sysfs_root"),
    ("plugin --node-name n --sim dgx-h100 --plugin-dir {DIR}/" + "p" * 100, USAGE, "Unix socket path"),
    # pod-gate
    ("pod-gate --interval 0", USAGE, "--interval"),
    ("pod-gate --interval soon", USAGE, "--interval"),
    ("pod-gate --kubeconfig {MISSING} --once", USAGE, "--kubeconfig"),
    ("pod-gate --kubeconfig {BIN} --once", USAGE, "Kubernetes client"),
    # keys
    ("keys", USAGE, "action"),
    ("keys shuffle --node-name n", USAGE, "action"),
    ("keys list --node-name Bad_Name", USAGE, "--node-name"),
    ("keys list --node-name n --keep 0", USAGE, "--keep"),
    ("keys rotate --node-name n --plugin-dir {BIN}/sub", USAGE, "--plugin-dir"),
    ("keys list --node-name n --plugin-dir {BIN}", USAGE, "--plugin-dir"),
    ("keys list --node-name n --driver-name Bad_Driver", USAGE, "--driver-name"),
    # sim
    ("sim", USAGE, "DOUBLE"),
    ("sim apiserver --port 70000", USAGE, "--port"),
    ("sim apiserver --port http", USAGE, "--port"),
    ("sim apiserver --seed {BIN}", USAGE, "--seed"),
    ("sim apiserver --seed {MISSING}", USAGE, "--seed"),
    ("sim apiserver --kubeconfig-out {DIR}", USAGE, "--kubeconfig-out"),
    ("sim apiserver --host 256.1.1.1", USAGE, "--host"),
    # demo (validated before anything starts)
    ("demo --topology nonesuch", USAGE, "--topology"),
    ("demo --bind-delay -1", USAGE, "--bind-delay"),
    ("demo --bind-delay inf", USAGE, "--bind-delay"),
    ("demo --workdir {BIN}", USAGE, "--workdir"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bad-input")
    binary = base / "random.bin"
    binary.write_bytes(b"\xff\xfe\x00\xd9" + os.urandom(256))
    empty = base / "empty"
    empty.mkdir()
    return {"BIN": str(binary), "DIR": str(empty), "MISSING": str(base / "missing")}


def _argv(row: str, places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in shlex.split(row)]


def _cc_gpu(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CC_GPU_") and k != "NODE_NAME"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run([sys.executable, "-m", "cc_gpu", *argv], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


@pytest.mark.parametrize(("row", "code", "message"), ROWS, ids=[r[0][:60] for r in ROWS])
def test_bad_input(row: str, code: int, message: str, places: dict[str, str]) -> None:
    argv = _argv(row, places)
    out = _cc_gpu(argv)
    both = out.stdout + out.stderr
    assert "Traceback" not in both, both
    assert "internal error" not in both, both
    assert out.returncode == code, both
    if "--json" in argv and argv[0] != "plugin":
        doc = json.loads(out.stdout)  # one JSON document, nothing else
        assert set(doc) == {"error"} and set(doc["error"]) == {"type", "message"}, doc
        assert message in doc["error"]["message"]
    else:
        assert out.stdout == "", out.stdout
        error = out.stderr.strip()
        assert message in error
        if argv[0] != "frobnicate":  # the unknown command is followed by the list of commands
            assert "\n" not in error, f"not one line: {error!r}"


def test_a_command_that_writes_to_the_real_host_names_its_roots(places: dict[str, str]) -> None:
    """Without --sim, `vfio restore` says where it acts before it does; here under an empty prefix it finds nothing."""
    out = _cc_gpu(["vfio", "restore", "99", "--root", places["DIR"]])
    lines = out.stderr.splitlines()
    assert out.returncode == REFUSED, out.stderr
    root = places["DIR"]
    assert lines[0] == (f"cc-gpu: vfio restore acts on the real host: sysfs {root}/sys, /dev {root}/dev, "
                        f"state {root}/var/lib/cc-gpu")
    assert "nothing to restore" in lines[1]
    status = _cc_gpu(["vfio", "status", "--root", places["DIR"]])
    assert "acts on the real host" not in status.stderr  # reading is not announced


def test_every_subcommand_has_a_row() -> None:
    assert {r[0].split()[0] for r in ROWS} >= set(COMMANDS)


def test_the_last_resort_names_itself_and_exits_70(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A bug (here: a command that raises what it should not) is reported as one line asking for a report."""
    def broken(_args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(keys, "run", broken)
    assert cli.main(["keys", "list", "--node-name", "n"]) == 70
    err = capsys.readouterr().err
    assert err == "cc-gpu: internal error: RuntimeError: boom (please report this)\n"


def test_ctrl_c_in_the_demo_exits_130_and_stops_what_it_started(tmp_path: Path) -> None:
    """SIGINT while the demo runs: no KeyboardInterrupt traceback, exit 130, and the plugin it started is gone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CC_GPU_")}
    proc = subprocess.Popen([sys.executable, "-m", "cc_gpu", "demo", "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()  # the demo has started (its first title line)
    # Wait until the plugin it starts has written its log, so there is a child process to clean up.
    log = tmp_path / "plugin.log"
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err
    assert not _processes_mentioning(str(tmp_path)), "the demo left its plugin running"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_ctrl_c_during_a_bind_exits_130_and_rolls_the_group_back(tmp_path: Path) -> None:
    """SIGINT while the simulated kernel is slow to probe vfio-pci: the bind is undone, the group is not left held."""
    node = tmp_path / "node"
    sim = ["--sim", "dgx-h100", "--sim-root", str(node)]
    assert _cc_gpu(["discover", *sim]).returncode == 0
    SimKernel(node).set_default_bind_delay(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CC_GPU_")}
    proc = subprocess.Popen([sys.executable, "-m", "cc_gpu", "vfio", "bind", "10", *sim],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    records = node / "var" / "lib" / "cc-gpu"
    deadline = time.monotonic() + 60
    while not any(records.rglob("*.json")) and time.monotonic() < deadline:  # the record precedes any sysfs write
        time.sleep(0.05)
    assert any(records.rglob("*.json")), "the bind never started"
    time.sleep(0.5)  # now inside the slow probe
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    SimKernel(node).set_default_bind_delay(0)
    status = _cc_gpu(["vfio", "status", "10", "--json", *sim])
    doc = json.loads(status.stdout)[0]
    assert doc["owner"] is None, doc
    assert all(m["driver"] == "nvidia" for m in doc["members"] if not m["bridge"]), doc
