"""`cc-gpu attest collect` (inside the confidential VM) and `cc-gpu attest serve` (the verification service).

    cc-gpu attest collect --token-out FILE|- [--challenge HEX] [--service-url URL] [--ca FILE]
                          [--nvml-library PATH] [--simulated-node DIR --simulated-gpus BDF[,BDF...]]
    cc-gpu attest serve --listen HOST:PORT --tls-cert FILE --tls-key FILE --token-key FILE --token-kid KID
                        [--settings FILE] [--kubeconfig FILE] [--driver NAME] [--register-challenge HEX ...]
                        [--rate N] [--burst N] [--replica NAME] [--simulated-node DIR]

`collect` reads the challenge, the service's URL and its CA from the environment the plugin's CDI spec gave the
container (`CC_GPU_ATTESTATION_*`) unless flags say otherwise, collects every GPU's evidence for the challenge from
the VM's NVML, submits it over HTTPS and writes the token to a 0600 file (or stdout with `-`); it never logs the
token. Exit 0 accepted, 1 refused (the failing checks on stderr), 2 usage or unreadable input.

`serve` runs the verification service until SIGTERM. `--settings` is the plugin's settings TOML (policies, bundles,
node floor). `--simulated-node` verifies evidence of that simulated node's GPUs (its test CA), never a real one's.
"""

# ruff: noqa: PLC0415 - imports inside the handlers: see cc_gpu.cli (lazy, light startup)

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from cc_gpu.cli._input import (
    CliError,
    Refusal,
    existing_directory,
    input_file,
    output_file,
    positive_int,
    positive_number,
    url,
)

ENV_PREFIX = "CC_GPU_ATTESTATION_"


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a service listens on all addresses by default


def _hex32(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 32 bytes as hex") from None
    if len(value) != 32:
        raise argparse.ArgumentTypeError(f"expected 32 bytes as hex, got {len(value)}")
    return value


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-out", required=True, help="write the token to this file (mode 0600), or - for stdout")
    p.add_argument("--challenge", type=_hex32, help=f"the challenge (default: ${ENV_PREFIX}CHALLENGE)")
    p.add_argument("--service-url", type=url, help=f"the verification service (default: ${ENV_PREFIX}SERVICE_URL)")
    p.add_argument("--ca", type=input_file, help=f"PEM CA of the service (default: ${ENV_PREFIX}SERVICE_CA, PEM text)")
    p.add_argument("--nvml-library", type=Path, help="load NVML from this path (default: the dynamic linker's)")
    p.add_argument("--simulated-node", type=existing_directory,
                   help="collect from a simulated guest NVML of this simulated node (tests, demo)")
    p.add_argument("--simulated-gpus",
                   help="the simulated node's GPUs passed to this VM (host PCI addresses, comma-separated)")
    p.add_argument("--json", action="store_true", help="print the service's answer as JSON (without the token)")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", type=_listen, default=("0.0.0.0", 8443), help="HOST:PORT (default: 0.0.0.0:8443)")  # noqa: S104
    p.add_argument("--tls-cert", type=input_file, required=True, help="PEM certificate (chain) of the service")
    p.add_argument("--tls-key", type=input_file, required=True, help="PEM private key of --tls-cert")
    p.add_argument("--token-key", type=input_file, required=True, help="PEM P-384 private key that signs tokens")
    p.add_argument("--token-kid", required=True, help="key id of --token-key (published with its public key)")
    p.add_argument("--settings", type=input_file, help="the plugin's settings TOML: policies, bundles, node floor")
    p.add_argument("--kubeconfig", type=input_file, help="kubeconfig (default: the in-cluster service account)")
    p.add_argument("--driver", default="gpu.cc-gpu.io", help="the DRA driver name (default: %(default)s)")
    p.add_argument("--register-challenge", type=_hex32, action="append", default=[],
                   help="accept this challenge without a claim (an interop check; single use); also the "
                        "settings' [attestation] interop_challenges")
    p.add_argument("--rate", type=positive_number, default=5.0,
                   help="submissions per second per client (default: %(default)s)")
    p.add_argument("--burst", type=positive_int, default=20, help="burst per client (default: %(default)s)")
    p.add_argument("--replica", help="this replica's name, kept in the claim's record (default: $HOSTNAME)")
    p.add_argument("--simulated-node", type=existing_directory,
                   help="trust only this simulated node's test CA (tests, demo)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (default: %(default)s)")


def _replica(args: argparse.Namespace) -> str:
    return str(args.replica) if args.replica is not None else os.environ.get("HOSTNAME", "")


# ---- collect --------------------------------------------------------------------------------------------------------


def run_collect(args: argparse.Namespace) -> int:
    import ssl
    import urllib.error
    import urllib.request

    from cc_gpu.attest.guest import SUBMIT_PATH, GuestEvidence, encode_submission
    from cc_gpu.errors import CcGpuError
    from cc_gpu.host.guestnvml import GuestNvmlReader

    challenge = args.challenge or _env_challenge()
    service = args.service_url or os.environ.get(f"{ENV_PREFIX}SERVICE_URL", "")
    if not service.startswith("https://"):
        raise CliError("no https:// verification service: give --service-url or set "
                       f"{ENV_PREFIX}SERVICE_URL (the plugin sets it for a claim that requires guest attestation)")
    ca_text = args.ca.read_text() if args.ca else os.environ.get(f"{ENV_PREFIX}SERVICE_CA", "")
    loader: Any = None
    if args.simulated_node is not None:
        from cc_gpu.dra.simguest import SimulatedGuestNvml

        gpus = [g for g in (args.simulated_gpus or "").split(",") if g]
        if not gpus:
            raise CliError("--simulated-node needs --simulated-gpus")
        loader = SimulatedGuestNvml.of_node(args.simulated_node, gpus)
    elif args.simulated_gpus:
        raise CliError("--simulated-gpus needs --simulated-node")
    elif args.nvml_library is not None:
        from cc_gpu.host.nvml import preload_library

        preload_library(args.nvml_library)
    try:
        raw = GuestNvmlReader(loader).collect_all(challenge)
    except CcGpuError as e:
        raise CliError(f"cannot collect GPU evidence: {e}", code=1, kind=type(e).__name__) from None
    body = encode_submission(challenge, [GuestEvidence(e.report, e.cert_chain_pem, e.arch) for e in raw])
    try:
        context = ssl.create_default_context(cadata=ca_text or None)
    except ssl.SSLError as e:
        raise CliError(f"the service CA is not a PEM certificate: {e}") from None
    request = urllib.request.Request(service.rstrip("/") + SUBMIT_PATH, data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as reply:  # noqa: S310 - https only
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as e:
        try:
            answer = json.loads(e.read())
        except ValueError:
            raise CliError(f"the service answered {e.code} without a verdict", code=1) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CliError(f"cannot reach the verification service {service}: {e}", code=1) from None
    token = answer.pop("token", None)
    if args.json:
        print(json.dumps(answer))
    if not answer.get("accepted") or not isinstance(token, str):
        raise Refusal(f"the service refused the evidence: {', '.join(answer.get('failedChecks') or ['no reason'])}")
    _write_token(args.token_out, token)
    print(f"accepted for claim {answer.get('claim') or '(none: an interop challenge)'}", file=sys.stderr)
    return 0


def _env_challenge() -> bytes:
    text = os.environ.get(f"{ENV_PREFIX}CHALLENGE", "")
    try:
        return _hex32(text)
    except argparse.ArgumentTypeError:
        raise CliError(f"no challenge: give --challenge or set {ENV_PREFIX}CHALLENGE (32 bytes as hex)") from None


def _write_token(where: str, token: str) -> None:
    if where == "-":
        sys.stdout.write(token + "\n")
        return
    path = output_file(where)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")


# ---- serve ----------------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    from cc_gpu.attest.guest import SUBMIT_PATH
    from cc_gpu.attest.nvcompat import NvidiaTokens, register_nvidia_routes
    from cc_gpu.attest.token import TokenSigner, load_signing_key
    from cc_gpu.attest.trust import TrustStore
    from cc_gpu.dra.attestsetup import build_verifier, load_policies
    from cc_gpu.dra.guestservice import GuestVerificationService, RateLimiter
    from cc_gpu.dra.observe import setup_json_logging
    from cc_gpu.dra.serviceserver import ServiceServer, submission_handler
    from cc_gpu.dra.settings import PluginSettings, load_toml
    from cc_gpu.kube.client import KubernetesApi

    setup_json_logging(args.log_level)
    settings = load_toml(args.settings, PluginSettings()) if args.settings else PluginSettings()
    a = settings.attestation
    collateral = None
    if args.simulated_node is not None:
        from cc_gpu.dra.evidence import SIM_CA_FILE
        from cc_gpu.dra.simguest import SimulatedGuestNvml

        if not (args.simulated_node / SIM_CA_FILE).is_file():
            raise CliError(f"{args.simulated_node} holds no simulated node's CA ({SIM_CA_FILE})")
        guest = SimulatedGuestNvml.verifier_side(args.simulated_node)
        verifier = build_verifier(a, guest.ca.trust_store(), guest.ca.ocsp_responder(), simulated=True)
        collateral = guest.rims
    else:
        trust = TrustStore.from_directory(a.trust_dir) if a.trust_dir else TrustStore.default()
        verifier = build_verifier(a, trust, None)
    signer = TokenSigner(load_signing_key(args.token_key), args.token_kid)
    kube = KubernetesApi(args.kubeconfig, user_agent=f"{args.driver}/attestation-service")
    service = GuestVerificationService(
        kube, verifier, signer, a, args.driver, load_policies(a), collateral=collateral,
        registered=[*args.register_challenge, *(bytes.fromhex(h) for h in a.interop_challenges)],
        limiter=RateLimiter(args.rate, args.burst), replica=_replica(args))
    try:
        server = ServiceServer(args.listen, args.tls_cert, args.tls_key)
    except OSError as e:
        raise CliError(f"cannot serve on {args.listen[0]}:{args.listen[1]}: {e}") from None
    server.add_route("POST", SUBMIT_PATH, submission_handler(service))
    # NVIDIA's remote attestation API for GPUs (and its JWKS) over the same core: clients written for NVIDIA's
    # service (its attestation SDK in remote mode) submit evidence for the same challenges.
    register_nvidia_routes(server, service, NvidiaTokens(signer))

    def stop(signum: int, frame: FrameType | None) -> None:
        import threading

        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"listening": f"https://{args.listen[0]}:{server.port}"}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
        kube.close()
    return 0
