"""Regenerates the committed gRPC modules from the `.proto` files beside this module.

Run from anywhere: `python -m cc_gpu.dra.proto.generate [OUTDIR]`. The proto path is the repository root, so the
generated modules import each other as `cc_gpu.dra.proto.*` and the package needs no `sys.path` tricks. The freshness
test generates into a temporary directory and compares byte for byte with what is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parents[2]
PROTOS = (
    "pluginregistration.proto",
    "dra_v1.proto",
    "dra_v1beta1.proto",
    "dra_health_v1alpha1.proto",
    "grpc_health_v1.proto",
)


def generate(out_dir: Path) -> list[Path]:
    """Generate the `_pb2` and `_pb2_grpc` modules into `out_dir` (mirroring the package path); return their paths."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # noqa: PLC0415  (a build-time tool: imported only when generating)

    out_dir.mkdir(parents=True, exist_ok=True)
    rel = [str((PROTO_DIR / name).relative_to(REPO_ROOT)) for name in PROTOS]
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{REPO_ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
         f"--grpc_python_out={out_dir}", *rel]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    gen_dir = out_dir / PROTO_DIR.relative_to(REPO_ROOT)
    return sorted(p for p in gen_dir.iterdir() if "_pb2" in p.name)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
