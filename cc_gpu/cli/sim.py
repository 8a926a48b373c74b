"""`cc-gpu sim`: run the project's test doubles on their own, for manual exploration and for other tools.

`cc-gpu sim apiserver --port P --kubeconfig-out FILE` serves the API-server double until SIGTERM (exit 0) or SIGINT
(exit 130), prints its URL and writes a kubeconfig that points at it, so the plugin (`cc-gpu plugin --kubeconfig
FILE`), kubectl or a script can use it like a cluster. `--seed FILE` preloads objects (a JSON object, a JSON list, or
a `List` kind).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cc_gpu.cli._input import CliError, input_file, output_path, port
from cc_gpu.cli._signals import StopSignals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="double", required=True, metavar="DOUBLE")
    api = sub.add_parser("apiserver", help="serve the Kubernetes API-server double until terminated")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    api.add_argument("--port", type=port, default=0,
                     help="port to listen on; 0 picks a free one (default: %(default)s)")
    api.add_argument("--kubeconfig-out", type=output_path,
                     help="write a kubeconfig pointing at the server to this file")
    api.add_argument("--seed", type=input_file, action="append", default=[],
                     help="JSON file of objects to create first")


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
    for path in args.seed:
        try:
            objects = _seed_objects(path)
        except UnicodeDecodeError as e:
            raise CliError(f"--seed {path}: not JSON text (not UTF-8 at byte {e.start})") from None
        except (OSError, ValueError) as e:
            raise CliError(f"--seed {path}: cannot read seed objects: {e}") from None
        try:
            for obj in objects:
                double.create(obj)
        except ApiStatus as e:
            raise CliError(f"--seed {path}: a seed object was refused: {e}") from None
    try:
        double.start()
    except (OSError, OverflowError) as e:
        raise CliError(f"--host/--port: cannot listen on {args.host}:{args.port}: {e}") from None
    stop = StopSignals()
    try:
        if args.kubeconfig_out is not None:
            double.write_kubeconfig(args.kubeconfig_out)
        print(f"API-server double serving at {double.url}", flush=True)
        if args.kubeconfig_out is not None:
            print(f"kubeconfig written to {args.kubeconfig_out}", flush=True)
        stop.event.wait()
    finally:
        double.stop()
    return stop.exit_code()
