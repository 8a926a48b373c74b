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
from pathlib import Path

from cc_gpu.cli._input import CliError, Refusal, directory, node_name, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "rotate"),
                        help="list the published keys, or rotate: make a new signing key, then list")
    parser.add_argument("--node-name", type=node_name, default=os.environ.get("NODE_NAME"),
                        help="this node's name (env NODE_NAME)")
    parser.add_argument("--driver-name", type=node_name, default="gpu.cc-gpu.io",
                        help="the DRA driver name, a DNS subdomain (default gpu.cc-gpu.io)")
    parser.add_argument("--plugin-dir", type=directory,
                        help="plugin directory (default /var/lib/kubelet/plugins/<driver>)")
    parser.add_argument("--keep", type=positive_int, default=3,
                        help="public keys kept published (as the plugin's setting)")


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta  # noqa: PLC0415

    from cc_gpu.dra.keys import NodeKeyStore  # noqa: PLC0415
    from cc_gpu.errors import CcGpuError  # noqa: PLC0415

    if not args.node_name:
        raise CliError("--node-name (or NODE_NAME) is required")
    if args.node_name == os.environ.get("NODE_NAME"):  # argparse does not run `type` on a default
        try:
            node_name(args.node_name)
        except argparse.ArgumentTypeError as e:
            raise CliError(f"environment NODE_NAME: {e}") from None
    plugin_dir = args.plugin_dir or Path("/var/lib/kubelet/plugins") / args.driver_name
    # The age limit only matters to the plugin; here a key is never rotated by age as a side effect of listing.
    try:
        store = NodeKeyStore(plugin_dir / "token-keys", args.node_name, timedelta(days=36500), keep=args.keep)
        if args.action == "rotate":
            key = store.rotate()
            print(f"rotated: new signing key {key.kid}")
        for key in store.published():
            print(f"{key.kid}  created {key.created.isoformat()}")
    except CcGpuError as e:
        raise Refusal(str(e), kind=type(e).__name__) from None
    except OSError as e:
        raise CliError(f"--plugin-dir {plugin_dir}: cannot use the key directory: {e.strerror or e}",
                       kind="KeyStoreError") from None
    return 0
