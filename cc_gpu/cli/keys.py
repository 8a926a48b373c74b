"""`cc-gpu keys`: list or rotate the node's verdict-token signing keys (run on the node, next to the plugin).

    cc-gpu keys list   --node-name NODE [--plugin-dir DIR] [--driver-name NAME]
    cc-gpu keys rotate --node-name NODE [--plugin-dir DIR] [--driver-name NAME]

Rotation writes a new key into the plugin's state directory; the running plugin signs with it from its next token
on, publishing it in its key ConfigMap first, and keeps the previous public keys published so tokens signed before
the rotation still verify until they expire. Private keys are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "rotate"))
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (env NODE_NAME)")
    parser.add_argument("--driver-name", default="gpu.cc-gpu.io")
    parser.add_argument("--plugin-dir", type=Path, help="plugin directory (default /var/lib/kubelet/plugins/<driver>)")
    parser.add_argument("--keep", type=int, default=3, help="public keys kept published (as the plugin's setting)")


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta  # noqa: PLC0415

    from cc_gpu.dra.keys import NodeKeyStore  # noqa: PLC0415
    from cc_gpu.errors import CcGpuError  # noqa: PLC0415

    if not args.node_name:
        print("cc-gpu keys: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    plugin_dir = args.plugin_dir or Path("/var/lib/kubelet/plugins") / args.driver_name
    # The age limit only matters to the plugin; here a key is never rotated by age as a side effect of listing.
    store = NodeKeyStore(plugin_dir / "token-keys", args.node_name, timedelta(days=36500), keep=args.keep)
    try:
        if args.action == "rotate":
            key = store.rotate()
            print(f"rotated: new signing key {key.kid}")
        for key in store.published():
            print(f"{key.kid}  created {key.created.isoformat()}")
    except CcGpuError as e:
        print(f"cc-gpu keys: {e}", file=sys.stderr)
        return 1
    return 0
