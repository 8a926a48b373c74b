"""Times NVIDIA's nv-local-gpu-verifier 2.7.3 on the 2.1.1 sample, in-process; run by attest_vs_nvidia.py.

This file runs under the Python of NVIDIA's own virtualenv (its pinned dependencies conflict with ours) and imports
only NVIDIA's package and the standard library. To make NVIDIA's code run a full pass offline it:
  - feeds its test-mode handler the 2.1.1 report and chain and reports the matching versions (545.00 / 96.00.5e.00.01;
    the handler hard-codes 2.7.3's versions);
  - points its driver and VBIOS RIM paths at the 2.1.1 test RIMs;
  - pins X.509 verification time to 2025-01-15 by setting the time on every pyOpenSSL store before verification
    (its chain checks and signxml's both go through X509StoreContext);
  - replaces its OCSP step with "good" (no network; revocation is off on our side too);
  - with --quiet, silences its INFO console log and DEBUG file log (as shipped, both are on).
Writes one JSON object (to --out): import time, per-run seconds, and each run's overall result.
"""

# NVIDIA's package is imported inside main() on purpose: the import itself is timed.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", required=True, help="verifier/samples of the 2.1.1 wheel")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", required=True, help="where to write the JSON figures")
    parser.add_argument("--quiet", action="store_true", help="silence its console and file logging")
    args = parser.parse_args()
    samples, out = os.path.abspath(args.samples), os.path.abspath(args.out)
    os.chdir(tempfile.mkdtemp(prefix="nv-verifier-"))  # it deletes ./verifier.log in the working directory on import

    started = time.perf_counter()
    from OpenSSL import crypto
    from verifier import cc_admin
    from verifier.cc_admin_utils import CcAdminUtils
    from verifier.config import BaseSettings, HopperSettings, event_log, info_log
    from verifier.nvml.nvmlHandlerTest import NvmlHandlerTest

    import_s = time.perf_counter() - started

    if args.quiet:
        info_log.setLevel(logging.ERROR)
        event_log.setLevel(logging.ERROR)
    pinned = datetime(2025, 1, 15)
    original_context = crypto.X509StoreContext

    class PinnedStoreContext(original_context):  # type: ignore[misc, valid-type]
        def __init__(self, store, certificate, chain=None):  # type: ignore[no-untyped-def]
            store.set_time(pinned)
            super().__init__(store, certificate, chain)

    crypto.X509StoreContext = PinnedStoreContext

    def no_ocsp(cert_chain, settings, mode):  # type: ignore[no-untyped-def]
        return True, "", "good", None

    CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(no_ocsp)

    HopperSettings.ATTESTATION_REPORT_PATH = os.path.join(samples, "attestationReport.txt")
    HopperSettings.GPU_ATTESTATION_CERTIFICATES_PATH = os.path.join(samples, "gpuAkCertChain.txt")
    HopperSettings.DRIVER_RIM_PATH = os.path.join(samples, "Driver_RIM_test_no_gpu.swidtag")
    HopperSettings.TEST_NO_GPU_DRIVER_RIM_PATH = HopperSettings.DRIVER_RIM_PATH
    HopperSettings.TEST_NO_GPU_VBIOS_RIM_PATH = os.path.join(samples, "1010_0200_882_96005E0001_test_no_gpu.swidtag")
    options = {
        "verbose": False,
        "test_no_gpu": True,
        "driver_rim": None,
        "vbios_rim": None,
        "user_mode": True,
        "allow_hold_cert": False,
        "service_key": None,
        "nonce": None,
        "rim_root_cert": None,
        "rim_service_url": None,
        "ocsp_url": None,
        "ocsp_nonce_disabled": True,
        "claims_version": "3.0",
    }
    nonce = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e"

    def once() -> bool:
        gpu = NvmlHandlerTest(settings=HopperSettings)
        gpu.DriverVersion = "545.00"
        gpu.VbiosVersion = "96.00.5e.00.01"
        outcome = cc_admin.attest(options, nonce, [gpu])
        return bool(outcome and outcome[0])

    results, times = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        results.append(once())
        times.append(time.perf_counter() - t)
    nonce_setting = BaseSettings.NONCE if isinstance(BaseSettings.NONCE, str) else BaseSettings.NONCE.hex()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"import_s": import_s, "times_s": times, "results": results, "nonce_setting": nonce_setting}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
