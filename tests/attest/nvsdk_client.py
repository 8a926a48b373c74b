"""Drives NVIDIA's attestation SDK (nv-attestation-sdk) in remote mode; run by the interop test and the benchmark.

Runs under the Python of the SDK's own virtualenv (its pinned dependencies conflict with ours) and imports only the
SDK and the standard library. It does what NVIDIA's remote GPU sample does, with the evidence list given (the SDK's
`get_evidence()` needs NVML and a GPU): set the nonce and claims version 3.0, `add_verifier(GPU, REMOTE, url, "")`,
`attest(evidence)`, `validate_token(policy)`. The service's CA reaches `requests` through REQUESTS_CA_BUNDLE.
Writes one JSON object to --out: the two results and the SDK's token.
"""

# The SDK is imported inside main() on purpose: it must run in a scratch directory (its verifier package removes
# ./verifier.log on import).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--nonce", required=True)
    parser.add_argument("--evidence", required=True, help="JSON file: the evidence list attest() takes")
    parser.add_argument("--policy", required=True, help="JSON file: the appraisal policy validate_token() takes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quiet", action="store_true", help="silence the SDK's logging")
    args = parser.parse_args()
    with open(args.evidence, encoding="utf-8") as f:
        evidence = json.load(f)
    with open(args.policy, encoding="utf-8") as f:
        policy = f.read()
    out = os.path.abspath(args.out)
    os.chdir(tempfile.mkdtemp(prefix="nv-sdk-"))

    from nv_attestation_sdk import attestation

    if args.quiet:
        for name in ("sdk-console", "sdk-file", "nv-attestation-sdk", ""):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    client = attestation.Attestation()
    client.set_name("cc-gpu-interop")
    client.set_nonce(args.nonce)
    client.set_claims_version("3.0")
    client.add_verifier(attestation.Devices.GPU, attestation.Environment.REMOTE, args.url, "")
    attested = client.attest(evidence)
    token = client.get_token()
    validated = client.validate_token(policy)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"attest": attested, "validate": validated, "token": token}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
