"""Package data: NVIDIA's public attestation roots (see README.md here for provenance and fingerprints)."""
