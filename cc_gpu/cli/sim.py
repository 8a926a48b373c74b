"""`cc-gpu sim`: run the project's test doubles on their own, for manual exploration and for other tools.

`cc-gpu sim apiserver --port P --kubeconfig-out FILE` serves the API-server double until SIGTERM or SIGINT, prints
its URL and writes a kubeconfig that points at it, so the plugin (`cc-gpu plugin --kubeconfig FILE`), kubectl or a
script can use it like a cluster. `--seed FILE` preloads objects (a JSON object, a JSON list, or a `List` kind).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="double", required=True, metavar="DOUBLE")
    api = sub.add_parser("apiserver", help="serve the Kubernetes API-server double until terminated")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    api.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default: %(default)s)")
    api.add_argument("--kubeconfig-out", type=Path, help="write a kubeconfig pointing at the server to this file")
    api.add_argument("--seed", type=Path, action="append", default=[], help="JSON file of objects to create first")


def _seed_objects(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and str(data.get("kind", "")).endswith("List"):
        data = data.get("items", [])
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("every seed object must be a JSON object")
    return items


def run(args: argparse.Namespace) -> int:
    from cc_gpu.kube.apiserver import ApiServerDouble  # noqa: PLC0415 (lazy: see cc_gpu.cli)
    from cc_gpu.kube.apiserver.status import ApiStatus  # noqa: PLC0415

    double = ApiServerDouble(host=args.host, port=args.port)
    try:
        for path in args.seed:
            for obj in _seed_objects(path):
                double.create(obj)
    except (OSError, ValueError) as e:
        print(f"cc-gpu sim apiserver: cannot read seed objects: {e}", file=sys.stderr)
        return 2
    except ApiStatus as e:
        print(f"cc-gpu sim apiserver: a seed object was refused: {e}", file=sys.stderr)
        return 2
    try:
        double.start()
    except OSError as e:
        print(f"cc-gpu sim apiserver: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if args.kubeconfig_out is not None:
            double.write_kubeconfig(args.kubeconfig_out)
        print(f"API-server double serving at {double.url}", flush=True)
        if args.kubeconfig_out is not None:
            print(f"kubeconfig written to {args.kubeconfig_out}", flush=True)
        stop.wait()
    finally:
        double.stop()
    return 0
