"""Whether the host runs a TEE-capable hypervisor: AMD SEV-SNP or Intel TDX enabled in KVM.

The plugin refuses confidential claims on a node without one. Read from the KVM module parameters under the injected
sysfs root (`Y` or `1` means enabled); a missing file means the module is not loaded, which is "no".
"""

from __future__ import annotations

from dataclasses import dataclass

from cc_gpu.host.fsio import HostIO
from cc_gpu.host.roots import HostRoots


@dataclass(frozen=True)
class HostTee:
    sev_snp: bool
    tdx: bool

    @property
    def any(self) -> bool:
        return self.sev_snp or self.tdx

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in (("sev-snp", self.sev_snp), ("tdx", self.tdx)) if on)


def _enabled(io: HostIO, roots: HostRoots, module: str, param: str) -> bool:
    try:
        return io.read_text(roots.sysfs / "module" / module / "parameters" / param).strip() in ("Y", "y", "1")
    except OSError:
        return False


def read_host_tee(io: HostIO, roots: HostRoots) -> HostTee:
    return HostTee(sev_snp=_enabled(io, roots, "kvm_amd", "sev_snp"), tdx=_enabled(io, roots, "kvm_intel", "tdx"))
