"""GPU attestation: parse SPDM evidence, verify it against trust anchors, RIMs and policy, sign a verdict.

Pure: imports neither the host layer nor Kubernetes; time and the trust store are injected.
"""
