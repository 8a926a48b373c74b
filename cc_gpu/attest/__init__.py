"""GPU attestation: parse SPDM evidence, verify it against trust anchors, RIMs and policy, sign a verdict.

Pure: imports neither the host layer nor Kubernetes; time, the trust store, the RIM source, the OCSP transport and
the signing key are injected. The pieces, by concern:

    evidence   the SPDM 1.1 GET_MEASUREMENTS report parser          certs      chains, report signature, FWID
    trust      trust anchors (NVIDIA's roots ship in `roots/`)       rim        RIM parsing, XMLDSig, golden values
    ocsp       revocation: online / cached / off                     sources    RIM directory and HTTP mirror
    measure    runtime vs golden measurements                        policy     policy as data (TOML)
    verdict    per-check results and NVIDIA-style claims             token      ES384 verdict tokens
    verifier   `Verifier(trust, ...).verify(report, chain, nonce, policy, at=...) -> Verdict`
    sim        simulated evidence under a runtime test CA            bundle     offline bundles for air-gapped clusters
    transport  the real HTTP adapter (built only by the CLI)

Heavy imports (cryptography, lxml, signxml) live in those modules, so importing this package costs nothing.
"""
