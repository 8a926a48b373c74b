"""Which value of each attestation knob is the stricter one: the single table every merge of policies reads.

The node admin's policy is the floor. A DeviceClass config, a node-wide minimum policy and a claim config can all
speak about the same knob; they are combined by taking the stricter value, and a claim that asks for a weaker value
is refused (the caller names the knob). Policies themselves (named or inline) are combined field by field the same
way, which is the same as requiring that every one of them passes: each field is a monotone constraint (a minimum
version, a maximum age, a check that must pass), so the field-wise strictest policy passes exactly when all do.

A new knob is added here, with its order, before any layer may set it (`KNOBS` is checked by the tests, one row per
knob, weaker, equal and stricter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cc_gpu.attest.errors import PolicyError


def _version_key(hex_parts: bool) -> Callable[[str], tuple[int, ...]]:
    def key(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part, 16 if hex_parts else 10) for part in text.strip().split("."))
        except ValueError as e:
            raise PolicyError(f"not a version: {text!r}") from e

    return key


@dataclass(frozen=True)
class Knob:
    """One knob's order. `order` lists enumerated values weakest first; otherwise `rank` maps a value to a number
    (larger = stricter). `None` is "not set" and ranks weakest for minimums and maximums."""

    name: str
    stricter_is: str  # human text, used in error messages and the docs
    order: tuple[object, ...] = ()
    rank: Callable[[object], tuple[int, ...]] | None = None

    def key(self, value: object) -> tuple[int, ...]:
        if self.order:
            if value not in self.order:
                raise PolicyError(f"{self.name}: {value!r} is not one of {self.order!r}")
            return (self.order.index(value),)
        assert self.rank is not None
        return self.rank(value)

    def stricter(self, a: object, b: object) -> object:
        """The stricter of two values (the first on a tie)."""
        return b if self.key(b) > self.key(a) else a

    def weaker(self, candidate: object, reference: object) -> bool:
        """Is `candidate` strictly weaker than `reference`?"""
        return self.key(candidate) < self.key(reference)


def _max_age_rank(value: object) -> tuple[int, ...]:
    # Smaller is stricter; None (no limit) is the weakest.
    if value is None:
        return (0, 0)
    assert isinstance(value, int | float)
    return (1, -int(value * 1000))


def _min_version_rank(hex_parts: bool) -> Callable[[object], tuple[int, ...]]:
    key = _version_key(hex_parts)

    def rank(value: object) -> tuple[int, ...]:
        # Larger is stricter; None (no minimum) is the weakest.
        if value is None:
            return (0,)
        assert isinstance(value, str)
        return (1, *key(value))

    return rank


def _checks_rank(value: object) -> tuple[int, ...]:
    # Sets of required checks are ordered by inclusion only; `stricter` of two sets is handled by `combine_checks`.
    assert isinstance(value, frozenset)
    return (len(value),)


REQUIRED = Knob("required", "true", order=(False, True))
REVOCATION = Knob("revocation", "online > cached > off", order=("off", "cached", "online"))
MAX_EVIDENCE_AGE = Knob("maxEvidenceAgeSeconds", "smaller", rank=_max_age_rank)
WHEN_BOUND_TO_VFIO = Knob("whenBoundToVfio", "refuse > rebind > useDiscoveryEvidence",
                          order=("useDiscoveryEvidence", "rebind", "refuse"))
MIN_DRIVER = Knob("minDriverVersion", "higher", rank=_min_version_rank(False))
MIN_VBIOS = Knob("minVbiosVersion", "higher", rank=_min_version_rank(True))
MISSING_RIM = Knob("missingRim", "fail > report", order=("report", "fail"))
ALLOW_CERTIFICATE_HOLD = Knob("allowCertificateHold", "false", order=(True, False))
REQUIRED_CHECKS = Knob("requiredChecks", "a superset (the union of both)", rank=_checks_rank)
# Where the evidence comes from. `host`: the host driver's evidence at prepare (a pre-flight check, possible only
# while the GPU still serves the host: CC off or devtools). `guest`: evidence the GPU gives the driver inside the
# confidential VM, verified by the verification service against a challenge minted at prepare. Guest evidence is
# the stricter: it is what the guest actually talks to, so a claim may ask for it but never turn it off.
EVIDENCE = Knob("evidence", "guest > host", order=("host", "guest"))

KNOBS: dict[str, Knob] = {k.name: k for k in (REQUIRED, REVOCATION, MAX_EVIDENCE_AGE, WHEN_BOUND_TO_VFIO, MIN_DRIVER,
                                               MIN_VBIOS, MISSING_RIM, ALLOW_CERTIFICATE_HOLD, REQUIRED_CHECKS,
                                               EVIDENCE)}


def combine_checks(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    """Both policies' required checks must pass: the union."""
    return a | b
