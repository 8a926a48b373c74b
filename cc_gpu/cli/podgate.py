"""`cc-gpu pod-gate`: run the pod-gate controller (cc_gpu/dra/podgate.py) until SIGTERM (exit 0) or SIGINT (exit 130).

The chart runs it as a small Deployment with the in-cluster configuration; `--kubeconfig` points it elsewhere.
`--once` releases the pods held now and exits (0), for scripts and troubleshooting.

`--binding-labels DRIVER` also runs the binding-node labeler (`cc_gpu/dra/bindlabel.py`) in this process: the one
cluster-level watch of claims that lets each node's plugin watch only its own (binding conditions).
`--no-pod-release` runs the labeler alone (a chart without the CDI-annotation path).
"""

from __future__ import annotations

import argparse
import sys

from cc_gpu.cli._input import CliError, input_file, positive_seconds
from cc_gpu.cli._signals import StopSignals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=input_file, help="kubeconfig file (default: in-cluster config)")
    parser.add_argument("--interval", type=positive_seconds, default=1.0,
                        help="seconds between passes over the held pods (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="release the pods held now, then exit")
    parser.add_argument("--binding-labels", metavar="DRIVER", default="",
                        help="also label claims allocated to DRIVER's devices with binding conditions with their node "
                             "(cc-gpu.io/binding-node), so each node's plugin watches only its own claims")
    parser.add_argument("--no-pod-release", action="store_true",
                        help="do not release held pods (run only the binding-node labeler)")


def run(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from cc_gpu.dra import podgate  # noqa: PLC0415 (lazy: see cc_gpu.cli)
    from cc_gpu.kube.client import KubernetesApi  # noqa: PLC0415
    from cc_gpu.kube.errors import ApiError, KubeConfigError  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        api = KubernetesApi(args.kubeconfig)
    except (ApiError, KubeConfigError) as e:
        raise CliError(f"cannot configure the Kubernetes client: {e}", kind=type(e).__name__) from None
    try:
        if args.once:
            counts = podgate.release_all(api)
            print(f"released {counts['released']} pod(s), {counts['retry']} to retry")
            return 0 if counts["retry"] == 0 else 1
        stop = StopSignals()
        labeler = None
        if args.binding_labels:
            import threading  # noqa: PLC0415

            from cc_gpu.dra.bindlabel import ClaimLabeler  # noqa: PLC0415

            labeler = threading.Thread(target=ClaimLabeler(api, args.binding_labels).run, args=(stop.event,),
                                       name="binding-labels", daemon=True)
            labeler.start()
        if args.no_pod_release:
            while not stop.event.wait(1.0):
                pass
        else:
            podgate.run(api, stop.event, interval_s=args.interval)
        if labeler is not None:
            labeler.join(timeout=5)
        return stop.exit_code()
    except ApiError as e:
        print(f"cc-gpu pod-gate: {e}", file=sys.stderr)
        return 1
    finally:
        api.close()
