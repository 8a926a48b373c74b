"""Boots one QEMU guest under TCG with an emulated Intel IOMMU, runs one command in it and collects what it left.

One boot per tier: the guest runs every case and writes its results to a writable 9p share, so the host reads the
kernel's answers back as files (results, the guest's own log, `dmesg`). QEMU never outlives its hard timeout: it
is killed, and whatever the guest managed to write still comes back, with the serial console.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "CC-GPU-GUEST-DONE"

# The PCI layout the cases rely on (see README, "Real-kernel tests"):
#  - an edu device alone behind a PCIe root port: a solo IOMMU group;
#  - behind a PCIe-to-PCI bridge: a second edu and a virtio-rng held by virtio-pci, sharing one group with the bridge
#    (the "GPU + foreign device" group);
#  - a display function and an HDA function of one multifunction slot: one group, like a GPU and its HDMI audio.
TOPOLOGY = (
    "-device", "intel-iommu,intremap=on",
    "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
    "-device", "edu,bus=rp1",
    "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
    "-device", "pcie-pci-bridge,id=br1,bus=rp2",
    "-device", "edu,bus=br1,addr=1",
    "-device", "virtio-rng-pci,bus=br1,addr=2",
    "-device", "VGA,addr=5.0,multifunction=on",
    "-device", "ich9-intel-hda,addr=5.1",
)


@dataclass(frozen=True)
class GuestRun:
    """What one boot produced. `exit_code` is None when the guest never reported one (crash, hang, timeout)."""

    exit_code: int | None
    timed_out: bool
    seconds: float
    console: str
    guest_log: str
    dmesg: str
    results: str | None
    qemu_command: tuple[str, ...]

    def tail(self, text: str, lines: int = 60) -> str:
        return "\n".join(text.splitlines()[-lines:])


def qemu_command(kernel: Path, initrd: Path, project: Path, out: Path, memory_mb: int = 768) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 not found (Debian package qemu-system-x86)")
    return [
        qemu,
        "-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet loglevel=3",
        *TOPOLOGY,
        "-virtfs", f"local,path={project},mount_tag=work,security_model=none,readonly=on",
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def boot(
    kernel: Path, initrd: Path, project: Path, command: str, timeout_s: float, workdir: Path | None = None
) -> GuestRun:
    """Boot, run `command` (a shell script, run in the project root) in the guest, and collect the results.

    The guest reads the command from the output share; its results are expected in `/out/results.json`.
    """
    out = Path(tempfile.mkdtemp(prefix="cc-gpu-guest-", dir=workdir))
    (out / "command").write_text(command)
    # The guest gives up on its command a little before QEMU is killed, so the kernel log still comes back.
    (out / "time_limit").write_text(str(max(10, int(timeout_s) - 30)))
    console_path = out / "console.txt"
    argv = qemu_command(kernel, initrd, project, out)
    started = time.monotonic()
    timed_out = False
    with console_path.open("wb") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = started + timeout_s
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if MARKER in _read(console_path) and (out / "exit_code").exists():
                    # The guest is done; give poweroff a moment, then stop QEMU regardless.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.monotonic() - started
    code_text = _read(out / "exit_code").strip()
    results_path = out / "results.json"
    run = GuestRun(
        exit_code=int(code_text) if code_text.lstrip("-").isdigit() else None,
        timed_out=timed_out,
        seconds=seconds,
        console=_read(console_path),
        guest_log=_read(out / "guest.log"),
        dmesg=_read(out / "dmesg.txt"),
        results=results_path.read_text() if results_path.exists() else None,
        qemu_command=tuple(argv),
    )
    shutil.rmtree(out, ignore_errors=True)
    return run
