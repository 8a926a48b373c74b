"""`cc-gpu attest`: verify GPU evidence, inspect a report, check a verdict token, import an offline bundle.

    cc-gpu attest verify --report FILE --cert-chain FILE --nonce HEX [--rim FILE ...] [--rim-dir DIR]
                         [--rim-url URL] [--ocsp-dir DIR] [--trust-dir DIR] [--policy FILE] [--at ISO-8601]
                         [--revocation online|cached|off] [--json] [--token-key PEM --token-kid KID [--token-out FILE]]
    cc-gpu attest inspect --report FILE [--json]
    cc-gpu attest check-token --token FILE (--public-key KID=PEM | --keys-configmap FILE) [...] [--nonce HEX]
                              [--at ISO-8601] [--claim-uid UID] [--pod-uid UID] [--node NODE]
    cc-gpu attest bundle import --bundle DIR --store DIR [--trust-dir DIR] [--at ISO-8601]
    cc-gpu attest collect ... / cc-gpu attest serve ...   (the guest path: see `attest_guest.py`)

Exit codes: 0 the evidence satisfies the policy (or the token is valid), 1 it was rejected (the failing checks are
named), 2 usage errors or input that cannot be read. This module is the only place that builds the real network
adapter, and only when the policy's revocation mode is online or a RIM mirror URL is given.
"""

# Imports of the attestation stack sit inside the handlers on purpose: see cc_gpu.cli (lazy, light startup).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cc_gpu.cli._input import CliError, Refusal, directory, existing_directory, input_file, node_name, output_file, url

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _kid(text: str) -> str:
    if not text or len(text) > 253 or not text.isprintable() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected a key id without spaces, at most 253 characters, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    verify = sub.add_parser("verify", help="verify one GPU's attestation evidence against policy")
    verify.add_argument("--report", type=input_file, required=True,
                        help="SPDM report (hex text as NVML writes it, or raw)")
    verify.add_argument("--cert-chain", type=input_file, required=True, help="PEM device certificate chain, leaf first")
    verify.add_argument("--nonce", required=True, help="the 32-byte nonce issued for this report, as hex")
    verify.add_argument("--rim", type=input_file, action="append", default=[], help="a driver or VBIOS RIM file")
    verify.add_argument("--rim-dir", type=existing_directory, help="directory of RIMs named by RIM id")
    verify.add_argument("--rim-url", type=url, help="mirror of NVIDIA's RIM service (base URL)")
    verify.add_argument("--ocsp-dir", type=existing_directory,
                        help="OCSP response cache directory (used by --revocation cached)")
    verify.add_argument("--trust-dir", type=existing_directory, help="trust store directory (device/*.pem, rim/*.pem)")
    verify.add_argument("--policy", type=input_file, help="policy TOML file (default: the strict built-in policy)")
    verify.add_argument("--at", help="verification time, ISO-8601 with offset (default: now)")
    verify.add_argument("--revocation", choices=("online", "cached", "off"), help="override the policy's mode")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.add_argument("--token-key", type=input_file, help="PEM P-384 private key to sign a verdict token with")
    verify.add_argument("--token-kid", type=_kid, help="key id of --token-key")
    verify.add_argument("--token-out", type=output_file, help="write the token here (default: stdout)")

    inspect = sub.add_parser("inspect", help="print the decoded fields of a report")
    inspect.add_argument("--report", type=input_file, required=True)
    inspect.add_argument("--json", action="store_true")

    check = sub.add_parser("check-token", help="verify a verdict token offline (for workloads)")
    check.add_argument("--token", type=input_file, required=True, help="file holding the token ('-' for stdin)")
    check.add_argument("--public-key", action="append", default=[], metavar="KID=PEM", help="trusted key")
    check.add_argument("--keys-configmap", action="append", default=[], type=input_file, metavar="FILE",
                       help="published token keys: a ConfigMap or a List of them, as JSON (kubectl get -o json)")
    check.add_argument("--claim-uid", help="require the token to be issued for this ResourceClaim UID")
    check.add_argument("--pod-uid", help="require the token to be issued for this pod UID")
    check.add_argument("--node", type=node_name, help="require the token to be issued on this node")
    check.add_argument("--nonce", help="expected nonce (hex)")
    check.add_argument("--at", help="time to judge expiry at (default: now)")

    from cc_gpu.cli.attest_guest import add_collect_arguments, add_serve_arguments

    add_collect_arguments(sub.add_parser("collect", help="inside the VM: GPU evidence for the claim's challenge, "
                                         "submitted to the verification service"))
    add_serve_arguments(sub.add_parser("serve", help="the verification service of the guest attestation path"))

    bundle = sub.add_parser("bundle", help="offline bundles for air-gapped clusters")
    bundle_sub = bundle.add_subparsers(dest="bundle_action", required=True)
    imp = bundle_sub.add_parser("import", help="verify and import RIMs and OCSP responses into a local store")
    imp.add_argument("--bundle", type=existing_directory, required=True)
    imp.add_argument("--store", type=directory, required=True, help="store directory (gets rims/ and ocsp/)")
    imp.add_argument("--trust-dir", type=existing_directory)
    imp.add_argument("--at", help="time to verify RIM signatures at (default: now)")


class _Usage(CliError):
    """A usage or unreadable-input error: exit 2 with this message."""


def _time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise _Usage(f"--at {text!r} is not ISO-8601") from e
    if value.tzinfo is None:
        raise _Usage("--at needs a UTC offset (e.g. 2025-01-15T00:00:00Z)")
    return value


def _read(path: Path) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as e:
        raise _Usage(f"cannot read {path}: {e}") from e


def _nonce(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError as e:
        raise _Usage("--nonce is not hex") from e
    if len(value) != 32:
        raise _Usage(f"--nonce must be 32 bytes, got {len(value)}")
    return value


def run(args: argparse.Namespace) -> int:
    from cc_gpu.cli.attest_guest import run_collect, run_serve
    from cc_gpu.errors import CcGpuError

    handlers = {"verify": _verify, "inspect": _inspect, "check-token": _check_token, "bundle": _bundle,
                "collect": run_collect, "serve": run_serve}
    try:
        return handlers[args.action](args)
    except CcGpuError as e:
        raise CliError(str(e), kind=type(e).__name__) from None


def _trust(path: Path | None) -> Any:
    from cc_gpu.attest.trust import TrustStore

    return TrustStore.from_directory(path) if path else TrustStore.default()


def _verify(args: argparse.Namespace) -> int:
    from cc_gpu.attest.ocsp import DirectoryOcspStore, RevocationChecker, RevocationMode
    from cc_gpu.attest.policy import Policy, load_policy
    from cc_gpu.attest.sources import ChainedRimSource, DirectoryRimSource, HttpRimSource, RimSource
    from cc_gpu.attest.verifier import Verifier

    nonce = _nonce(args.nonce)
    at = _time(args.at)
    report, chain = _read(args.report), _read(args.cert_chain)
    rims = [_read(p) for p in args.rim]
    policy = load_policy(args.policy) if args.policy else Policy()
    if args.revocation:
        policy = policy.with_revocation(RevocationMode(args.revocation))
    if bool(args.token_key) != bool(args.token_kid):
        raise _Usage("--token-key and --token-kid go together")
    signer = None
    if args.token_key:  # read the key before verifying, so a bad key is a usage error, not a verdict then an error
        from cc_gpu.attest.token import TokenSigner, load_signing_key

        signer = TokenSigner(load_signing_key(args.token_key), args.token_kid)
    transport = None
    if policy.revocation is RevocationMode.ONLINE or args.rim_url:
        from cc_gpu.attest.transport import UrllibTransport

        transport = UrllibTransport()
    sources: list[RimSource] = []
    if args.rim_dir:
        sources.append(DirectoryRimSource(args.rim_dir))
    if args.rim_url and transport is not None:
        sources.append(HttpRimSource(transport, args.rim_url))
    store = DirectoryOcspStore(args.ocsp_dir) if args.ocsp_dir else None
    verifier = Verifier(
        _trust(args.trust_dir),
        rim_source=ChainedRimSource(sources) if sources else None,
        revocation=RevocationChecker(store=store, transport=transport),
    )
    verdict = verifier.verify(report, chain, nonce, policy, at=at, rims=rims)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        for check in verdict.checks:
            mark = "ok  " if check.satisfied else ("FAIL" if check.required else "note")
            print(f"{mark} {check.name:<55} {check.status:<15} {check.detail}")
        print(verdict.result_text + ("" if verdict.ok else ": " + ", ".join(c.name for c in verdict.failed)))
    if signer is not None:
        token = signer.sign(verdict)
        if args.token_out:
            args.token_out.write_text(token + "\n", encoding="ascii")
        else:
            print(token)
    return EXIT_OK if verdict.ok else EXIT_REJECTED


def _inspect(args: argparse.Namespace) -> int:
    from cc_gpu.attest.errors import EvidenceParseError
    from cc_gpu.attest.evidence import decode_report_text, parse_report

    try:
        report = parse_report(decode_report_text(_read(args.report)))
    except EvidenceParseError as e:
        raise Refusal(str(e), kind=type(e).__name__) from None
    fields: dict[str, Any] = {
        "nonce": report.nonce.hex(),
        "slot_id": report.slot_id,
        "measurement_blocks": len(report.measurements),
        "measurements": {b.index: b.digest.hex() for b in report.measurements if any(b.digest)},
        "opaque": report.opaque.describe(),
        "unknown_opaque_types": list(report.opaque.unknown_types),
    }
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for key, value in fields.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{key}: {value}")
    return EXIT_OK


def _check_token(args: argparse.Namespace) -> int:
    import jwt

    from cc_gpu.attest.binding import check_binding, keys_from_configmap, merge_keys
    from cc_gpu.attest.errors import TokenError
    from cc_gpu.attest.token import TokenVerifier, load_public_key

    keys = {}
    if not args.public_key and not args.keys_configmap:
        raise _Usage("give trusted keys with --public-key or --keys-configmap")
    for spec in args.public_key:
        kid, sep, path = spec.partition("=")
        if not sep or not kid or not path:
            raise _Usage(f"--public-key takes KID=PEM, got {spec!r}")
        keys[kid] = load_public_key(Path(path))
    groups = [keys]
    for path in args.keys_configmap:
        try:
            doc = json.loads(_read(path))
        except ValueError as e:
            raise _Usage(f"{path} is not JSON (kubectl get configmap -o json): {e}") from e
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise _Usage(f"{path} does not hold a ConfigMap or a List of them")
        groups += [keys_from_configmap(item, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
                   for item in items]
    keys = merge_keys(groups)
    token = _read(args.token).decode("ascii", "replace").strip()
    try:
        claims = TokenVerifier(keys).verify(token, _time(args.at), nonce=args.nonce)
        kid = str(jwt.get_unverified_header(token).get("kid"))  # the signature over the header has just verified
        check_binding(claims, kid, claim_uid=args.claim_uid, pod_uid=args.pod_uid, node=args.node)
    except TokenError as e:
        print(f"token rejected: {e}", file=sys.stderr)
        return EXIT_REJECTED
    checked = [f"{what} {value}" for what, value in (("claim", args.claim_uid), ("pod", args.pod_uid),
                                                      ("node", args.node)) if value]
    if checked:
        print(f"token valid and bound to {', '.join(checked)}", file=sys.stderr)
    else:
        print("token valid (signature, expiry, signing node); NO binding checked: give --claim-uid and --pod-uid "
              "to check that it was issued for this workload", file=sys.stderr)
    print(json.dumps(claims, indent=2, sort_keys=True))
    return EXIT_OK


def _bundle(args: argparse.Namespace) -> int:
    from cc_gpu.attest.bundle import import_bundle

    result = import_bundle(args.bundle, args.store, _trust(args.trust_dir), _time(args.at))
    for name in result.rims:
        print(f"imported RIM {name}")
    for key in result.ocsp:
        print(f"imported OCSP response {key}")
    for path, reason in result.rejected:
        print(f"rejected {path}: {reason}", file=sys.stderr)
    return EXIT_REJECTED if result.rejected else EXIT_OK
