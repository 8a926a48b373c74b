"""Per-group locks: operations on one IOMMU group serialise, across processes too; different groups run in parallel.

Each case runs two real processes. A takes its locks and holds them until told to let go; B then tries. Serialised:
B does not get its locks while A holds them, and gets them once A lets go. Parallel: B gets them while A still holds.
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import pytest

from cc_gpu.dra.errors import ClaimBusyError
from cc_gpu.dra.locks import GroupLocks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from pathlib import Path
from cc_gpu.dra.locks import GroupLocks
locks = GroupLocks(Path(sys.argv[1]))
with locks.hold([int(g) for g in sys.argv[2].split(",")]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _start(tmp_path: Path, groups: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), groups], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _said_held(p: subprocess.Popen[str], timeout: float) -> bool:
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    return bool(ready) and p.stdout.readline().strip() == "held"


def _release(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("\n")
    p.stdin.close()
    assert p.wait(timeout=10) == 0
    p.stdout.close()


@pytest.mark.parametrize(
    ("name", "a", "b", "serialised"),
    [
        ("same group, two processes", "7", "7", True),
        ("overlapping multi-group claims", "3,7", "7,9", True),
        ("different groups", "7", "8", False),
    ],
)
def test_group_locks_across_processes(tmp_path: Path, name: str, a: str, b: str, serialised: bool) -> None:
    first = _start(tmp_path, a)
    assert _said_held(first, 10), name
    second = _start(tmp_path, b)
    if serialised:
        assert not _said_held(second, 1.0), f"{name}: B got the lock while A held it"
        _release(first)
        assert _said_held(second, 10), name
        _release(second)
    else:
        assert _said_held(second, 10), f"{name}: B waited for A although their groups differ"
        _release(second)
        _release(first)


def test_waiting_is_bounded(tmp_path: Path) -> None:
    holder = _start(tmp_path, "5")
    assert _said_held(holder, 10)
    with pytest.raises(ClaimBusyError, match="IOMMU group 5 is busy"), GroupLocks(tmp_path, timeout=0.2).hold([5]):
        pass
    _release(holder)
    with GroupLocks(tmp_path, timeout=0.2).hold([5]):
        pass
