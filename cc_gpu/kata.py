"""Checks a node's Kata Containers configuration for what a VFIO GPU needs to reach a confidential VM.

A GPU that cc-gpu prepares perfectly still never reaches the guest when Kata is configured for hot plug only, asks the
kubelet's PodResources API (which released Kata reads only for device-plugin results, not DRA), has too few PCIe root
ports, or runs an SNP/TDX class without its confidential-guest flags. Those failures surface late, as a pod stuck in
sandbox creation, far from their cause. This module names each one with its fix, before any pod is scheduled.

It is pure: it takes parsed TOML (Kata's configuration, and optionally containerd's) plus the number of GPUs a pod may
get, and returns a frozen report. Reading files is the caller's job (`cc-gpu kata check`, the plugin at startup).
The rules are Kata's Go runtime's, as its code applies them. At load time (`pkg/katautils/config.go`):
`cold_plug_vfio`/`hot_plug_vfio` take `no-port`, `bridge-port`, `root-port` or `switch-port`, and not both at once;
`pcie_root_port`/`pcie_switch_port` above 16 are capped at 16 (not refused); a `vfio_mode` other than `vfio` or
`guest-kernel` fails loading. At VM creation (`virtcontainers/qemu.go`, `createPCIeTopology`): the runtime creates
max(cold-plugged PCIe functions, `pcie_root_port`) root ports and refuses more than 16 functions; since 3.26 a
confidential guest refuses a legacy VFIO group node (iommufd cdevs are supported since 3.15). An empty
`pod_resource_api_sock` makes it cold-plug the devices named in `cdi.k8s.io/*` sandbox annotations (3.23 and later;
earlier releases leak that annotation into workload containers) instead of asking the kubelet.

Beyond what stops the VM, two settings undo attestation: `nvrc.smi.srs=1` in a confidential class's `kernel_params`
lets the guest mark the GPU ready without attesting it, and an `enable_annotations` entry matching `kernel_params` lets
any pod set the guest kernel's parameters (`io.katacontainers.config.hypervisor.kernel_params`). And containerd's
`pod_annotations` must forward `cdi.k8s.io/cc-gpu` and no other `cdi.k8s.io/` key: Kata cold-plugs what any such key
names.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cc_gpu.errors import ConfigError

#: Kata's Go runtime caps `pcie_root_port`/`pcie_switch_port` at this, and refuses more cold-plugged functions.
MAX_PCIE_PORTS = 16
VFIO_MODES = ("vfio", "guest-kernel")
#: Kata releases: the annotation path works from 3.23; iommufd cdevs from 3.15; confidential guests need them from 3.26.
KATA_MIN_ANNOTATIONS = (3, 23, 0)
KATA_MIN_IOMMUFD = (3, 15, 0)
KATA_CC_NEEDS_IOMMUFD = (3, 26, 0)
SRS_PARAM = "nvrc.smi.srs=1"
KERNEL_PARAMS_ANNOTATION = "io.katacontainers.config.hypervisor.kernel_params"
DEFAULT_KUBELET_ROOT = "/var/lib/kubelet"

#: The pod annotation that carries the pod's CDI device on the released-Kata path (set at admission, see deploy/).
CDI_POD_ANNOTATION = "cdi.k8s.io/cc-gpu"

_PORT_VALUES = ("no-port", "bridge-port", "root-port", "switch-port")
_CRI_PLUGINS = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")


class KataConfigError(ConfigError):
    """A Kata or containerd configuration file could not be parsed."""


class RuntimeClassKind(StrEnum):
    """Which of the three NVIDIA GPU runtime classes a configuration serves."""

    PLAIN = "plain"
    SNP = "snp"
    TDX = "tdx"

    @property
    def confidential(self) -> bool:
        return self is not RuntimeClassKind.PLAIN

    @property
    def handler(self) -> str:
        """The containerd runtime handler (and RuntimeClass name) kata-deploy creates for this class."""
        return "kata-qemu-nvidia-gpu" if self is RuntimeClassKind.PLAIN else f"kata-qemu-nvidia-gpu-{self.value}"


class ColdPlugPath(StrEnum):
    """How the GPU becomes known to Kata when it creates the VM."""

    #: Released Kata: no PodResources socket; devices named in `cdi.k8s.io/*` sandbox annotations are cold-plugged.
    CDI_ANNOTATIONS = "cdi-annotations"
    #: Kata that reads DRA results from the kubelet's PodResources API (kata-containers#13322, not yet released).
    POD_RESOURCES = "pod-resources"


class Severity(StrEnum):
    ERROR = "error"  # the GPU will not reach the VM, or the VM will not start
    WARNING = "warning"  # works, but something is unchecked or fragile


@dataclass(frozen=True)
class Finding:
    """One setting that stops (or may stop) a VFIO GPU from reaching the VM, with its fix."""

    code: str
    severity: Severity
    setting: str
    message: str
    fix: str


@dataclass(frozen=True)
class KataCheckReport:
    """The result of checking one runtime class's configuration."""

    runtime_class: RuntimeClassKind
    path: ColdPlugPath
    gpus: int
    findings: tuple[Finding, ...]
    kata_version: str | None = None  # the node's Kata release, when it could be read

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def summary(self) -> str:
        """A short verdict that fits a ResourceSlice string attribute (at most 64 characters)."""
        if self.ok:
            return "ok"
        codes = ",".join(sorted({f.code for f in self.errors}))
        return codes if len(codes) <= 64 else f"{len(self.errors)} errors"


def parse_toml(name: str, text: str) -> dict[str, Any]:
    """Parses one TOML document; `name` only labels the error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KataConfigError(f"{name}: not valid TOML: {e}") from e


def merge_layers(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merges a base configuration with drop-ins, later wins: tables merge key by key, other values are replaced.

    This is how Kata applies the files of `config.d/` (in name order) over its configuration file, and how containerd
    applies imported files.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = {}
            _merge_into(target[key], value)
        else:
            target[key] = value


def infer_runtime_class(config: Mapping[str, Any], file_name: str = "") -> RuntimeClassKind:
    """Guesses the class from the configuration's file name (kata-deploy's naming), then from its flags."""
    lowered = file_name.lower()
    if "snp" in lowered:
        return RuntimeClassKind.SNP
    if "tdx" in lowered:
        return RuntimeClassKind.TDX
    _, hypervisor = _hypervisor(config)
    if hypervisor.get("sev_snp_guest") is True:
        return RuntimeClassKind.SNP
    if hypervisor.get("confidential_guest") is True:
        return RuntimeClassKind.TDX
    return RuntimeClassKind.PLAIN


def _hypervisor(config: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    tables = config.get("hypervisor")
    if not isinstance(tables, Mapping) or not tables:
        return "", {}
    name = next(iter(tables))
    table = tables[name]
    return name, table if isinstance(table, Mapping) else {}


def check_kata_config(
    config: Mapping[str, Any],
    *,
    gpus: int,
    runtime_class: RuntimeClassKind,
    path: ColdPlugPath = ColdPlugPath.CDI_ANNOTATIONS,
    ports_per_gpu: int = 1,
    containerd: Mapping[str, Any] | None = None,
    handler: str | None = None,
    functions: int | None = None,
    kata_version: str | None = None,
    node_iommufd: bool | None = None,
    kubelet_root: Path | None = None,
) -> KataCheckReport:
    """Checks a merged Kata configuration for one runtime class.

    `gpus` is the most GPUs one pod may get (the plugin passes its node's count); `ports_per_gpu` the PCIe functions
    in one GPU's IOMMU group (2 when an audio function shares it), each of which takes a root port. `containerd` is
    containerd's merged configuration: on the CDI-annotation path its `pod_annotations` decide whether the pod's CDI
    annotation reaches Kata at all. `handler` defaults to kata-deploy's handler name for the class. `functions` is the
    number of PCIe functions one pod may get cold-plugged (default `gpus * ports_per_gpu`). `kata_version` is the
    node's Kata release (`VERSION`; "" when the node's cannot be read, None to skip the version rules),
    `node_iommufd` whether the host offers iommufd (None: unknown), `kubelet_root` the kubelet's root directory (for
    the PodResources socket).
    """
    if gpus < 1 or ports_per_gpu < 1:
        raise ValueError("gpus and ports_per_gpu must be at least 1")
    needed = functions if functions is not None and functions > 0 else gpus * ports_per_gpu
    findings: list[Finding] = []
    name, hypervisor = _hypervisor(config)
    if not name:
        findings.append(Finding("no-hypervisor", Severity.ERROR, "[hypervisor.qemu]",
                                "the configuration has no [hypervisor.*] table",
                                "check the file is the Kata configuration the runtime class's shim loads"))
    elif name != "qemu":
        findings.append(Finding("not-qemu", Severity.ERROR, f"[hypervisor.{name}]",
                                f"hypervisor {name!r}: confidential GPU passthrough needs QEMU",
                                "use kata-deploy's qemu-nvidia-gpu configurations"))
    runtime = config.get("runtime")
    runtime = runtime if isinstance(runtime, Mapping) else {}

    cold = _port(hypervisor, "cold_plug_vfio", findings)
    hot = _port(hypervisor, "hot_plug_vfio", findings)
    findings += _plug_findings(runtime_class, cold, hot)
    findings += _port_count_findings(hypervisor, cold, hot, needed, runtime_class)
    if cold not in ("no-port", None):
        findings += _socket_findings(runtime, path, kubelet_root)
    findings += _confidential_findings(hypervisor, runtime_class)
    mode = runtime.get("vfio_mode", "guest-kernel")
    if mode not in VFIO_MODES:
        findings.append(Finding("bad-vfio-mode", Severity.ERROR, "runtime.vfio_mode",
                                f"vfio_mode = {mode!r} is not one of {', '.join(VFIO_MODES)}: Kata fails loading the "
                                "configuration", 'set vfio_mode = "guest-kernel" under [runtime]'))
    elif mode != "guest-kernel":
        findings.append(Finding("vfio-mode", Severity.WARNING, "runtime.vfio_mode",
                                f"vfio_mode is {mode!r}: the GPU driver in the guest does not own the device",
                                'set vfio_mode = "guest-kernel" under [runtime]'))
    findings += _version_findings(kata_version, runtime_class, path, node_iommufd)  # None: not asked
    findings += _attestation_findings(hypervisor, runtime_class)
    if path is ColdPlugPath.CDI_ANNOTATIONS and cold not in ("no-port", None):
        findings += check_containerd(containerd, handler or runtime_class.handler)
    return KataCheckReport(runtime_class, path, gpus, tuple(findings), kata_version or None)


def _port(hypervisor: Mapping[str, Any], key: str, findings: list[Finding]) -> str | None:
    value = hypervisor.get(key, "no-port")
    if value in _PORT_VALUES:
        return str(value)
    findings.append(Finding("bad-port-value", Severity.ERROR, f"hypervisor.qemu.{key}",
                            f"{key} = {value!r} is not one of {', '.join(_PORT_VALUES)}",
                            f'set {key} = "root-port" (cold plug) or "no-port"'))
    return None


def _plug_findings(kind: RuntimeClassKind, cold: str | None, hot: str | None) -> list[Finding]:
    findings: list[Finding] = []
    if cold not in ("no-port", None) and hot not in ("no-port", None):
        findings.append(Finding("hot-and-cold-plug", Severity.ERROR, "hypervisor.qemu.hot_plug_vfio",
                                "both hot_plug_vfio and cold_plug_vfio are set; Kata accepts only one",
                                'set hot_plug_vfio = "no-port"'))
    if cold == "no-port":
        if kind.confidential and hot not in ("no-port", None):
            findings.append(Finding("hot-plug-only", Severity.ERROR, "hypervisor.qemu.cold_plug_vfio",
                                    "VFIO is hot plug only: a confidential guest cannot accept hot-plugged devices",
                                    'set cold_plug_vfio = "root-port" and hot_plug_vfio = "no-port"'))
        elif kind.confidential or hot == "no-port":
            findings.append(Finding("no-vfio-plug", Severity.ERROR, "hypervisor.qemu.cold_plug_vfio",
                                    "neither cold nor hot plug of VFIO devices is enabled",
                                    'set cold_plug_vfio = "root-port"'))
    if "bridge-port" in (cold, hot):
        key = "cold_plug_vfio" if cold == "bridge-port" else "hot_plug_vfio"
        findings.append(Finding("bridge-port", Severity.ERROR, f"hypervisor.qemu.{key}",
                                "a PCI bridge port cannot map a GPU's large 64-bit BARs",
                                f'set {key} = "root-port"'))
    return findings


def _port_count_findings(hypervisor: Mapping[str, Any], cold: str | None, hot: str | None,
                         needed: int, kind: RuntimeClassKind) -> list[Finding]:
    findings: list[Finding] = []
    for key in ("pcie_root_port", "pcie_switch_port"):
        configured = hypervisor.get(key, 0)
        if not isinstance(configured, int) or isinstance(configured, bool) or configured < 0:
            findings.append(Finding("bad-port-count", Severity.ERROR, f"hypervisor.qemu.{key}",
                                    f"{key} = {configured!r} is not a non-negative integer: Kata fails loading the "
                                    "configuration", f"set {key} = 0"))
        elif configured > MAX_PCIE_PORTS:
            findings.append(Finding("ports-capped", Severity.WARNING, f"hypervisor.qemu.{key}",
                                    f"{key} = {configured}: Kata caps it at {MAX_PCIE_PORTS}",
                                    f"set {key} to at most {MAX_PCIE_PORTS}"))
    if cold in ("root-port", "switch-port") and needed > MAX_PCIE_PORTS:
        findings.append(Finding("too-many-devices", Severity.ERROR, "hypervisor.qemu.cold_plug_vfio",
                                f"{needed} PCIe functions to cold plug; Kata creates at most {MAX_PCIE_PORTS} ports",
                                "limit the GPUs per pod (claim count) or functions per IOMMU group"))
    if hot in ("root-port", "switch-port") and not kind.confidential:  # confidential: hot plug is already an error
        key = "pcie_root_port" if hot == "root-port" else "pcie_switch_port"
        configured = hypervisor.get(key, 0)
        if isinstance(configured, int) and min(configured, MAX_PCIE_PORTS) < needed:
            findings.append(Finding("too-few-ports", Severity.ERROR, f"hypervisor.qemu.{key}",
                                    f"{key} = {configured}, but a pod may get {needed} hot-plugged PCIe functions",
                                    f"set {key} = {min(needed, MAX_PCIE_PORTS)}"))
    return findings


def _socket_findings(runtime: Mapping[str, Any], path: ColdPlugPath, kubelet_root: Path | None) -> list[Finding]:
    sock = runtime.get("pod_resource_api_sock", "")
    expected = f"{(kubelet_root or Path(DEFAULT_KUBELET_ROOT)).as_posix()}/pod-resources/kubelet.sock"
    if path is ColdPlugPath.CDI_ANNOTATIONS:
        if sock:
            return [Finding("pod-resources-socket-set", Severity.ERROR, "runtime.pod_resource_api_sock",
                            "with a PodResources socket, released Kata cold-plugs only device-plugin devices and "
                            "ignores the pod's cdi.k8s.io annotation, so a DRA-allocated GPU never reaches the VM",
                            'set pod_resource_api_sock = "" (or check with --path pod-resources on a Kata that '
                            "reads DRA results)")]
        return []
    if not sock:
        return [Finding("no-pod-resources-socket", Severity.ERROR, "runtime.pod_resource_api_sock",
                        "no PodResources socket: Kata cannot learn the pod's devices from the kubelet",
                        f'set pod_resource_api_sock = "{expected}" (the kubelet\'s --root-dir/pod-resources)')]
    if kubelet_root is not None and sock != expected:
        return [Finding("pod-resources-socket-elsewhere", Severity.ERROR, "runtime.pod_resource_api_sock",
                        f"pod_resource_api_sock = {sock!r}, but this kubelet's socket is {expected}",
                        f'set pod_resource_api_sock = "{expected}"')]
    # `pod_resource_device_sources` is in no Kata release: runtime-rs PR 13420 (kata-containers#13322) proposes it.
    sources = runtime.get("pod_resource_device_sources")
    if isinstance(sources, list) and "dra" not in sources:
        return [Finding("dra-source-off", Severity.ERROR, "runtime.pod_resource_device_sources",
                        "the PodResources device sources do not include DRA claims",
                        'set pod_resource_device_sources = ["device-plugin", "dra"]')]
    if sources is None:
        return [Finding("dra-support-unknown", Severity.WARNING, "runtime.pod_resource_api_sock",
                        "released Kata reads only device-plugin results from PodResources; DRA GPUs are cold-plugged "
                        "only by a Kata build with DRA support (kata-containers#13322)",
                        "use the cdi-annotations path on released Kata")]
    return []


def _confidential_findings(hypervisor: Mapping[str, Any], kind: RuntimeClassKind) -> list[Finding]:
    findings: list[Finding] = []
    confidential = hypervisor.get("confidential_guest", False) is True
    snp = hypervisor.get("sev_snp_guest", False) is True
    if kind.confidential and not confidential:
        findings.append(Finding("not-confidential", Severity.ERROR, "hypervisor.qemu.confidential_guest",
                                f"the {kind.value} class would start an ordinary VM: confidential_guest is off",
                                "set confidential_guest = true"))
    if kind is RuntimeClassKind.SNP and not snp:
        findings.append(Finding("snp-off", Severity.ERROR, "hypervisor.qemu.sev_snp_guest",
                                "sev_snp_guest is off: the guest would run as plain SEV, not SEV-SNP",
                                "set sev_snp_guest = true"))
    if kind is RuntimeClassKind.TDX and snp:
        findings.append(Finding("snp-on-tdx", Severity.ERROR, "hypervisor.qemu.sev_snp_guest",
                                "sev_snp_guest is set in a TDX configuration", "remove sev_snp_guest"))
    if kind is RuntimeClassKind.PLAIN and confidential:
        findings.append(Finding("plain-is-confidential", Severity.WARNING, "hypervisor.qemu.confidential_guest",
                                "the plain GPU class has confidential_guest on",
                                "use the snp or tdx class for confidential pods"))
    return findings


#: Our findings that mean Kata's loader refuses the configuration (the shim fails before any VM exists).
LOAD_ERRORS = frozenset({"bad-port-value", "bad-vfio-mode", "hot-and-cold-plug", "bad-port-count"})


def effective_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The VFIO-relevant settings Kata's loader derives from a merged configuration, as this check reads them.

    The test suite compares this with what Kata's own loader decides for the same files.
    """
    _, hypervisor = _hypervisor(config)
    runtime = config.get("runtime")
    runtime = runtime if isinstance(runtime, Mapping) else {}
    params = hypervisor.get("kernel_params", "")
    annotations = hypervisor.get("enable_annotations")
    return {
        "cold_plug_vfio": hypervisor.get("cold_plug_vfio", "no-port"),
        "hot_plug_vfio": hypervisor.get("hot_plug_vfio", "no-port"),
        "pcie_root_port": min(int(hypervisor.get("pcie_root_port", 0)), MAX_PCIE_PORTS),
        "pcie_switch_port": min(int(hypervisor.get("pcie_switch_port", 0)), MAX_PCIE_PORTS),
        "confidential_guest": hypervisor.get("confidential_guest", False) is True,
        "sev_snp_guest": hypervisor.get("sev_snp_guest", False) is True,
        "srs": isinstance(params, str) and SRS_PARAM in params.split(),
        "enable_annotations": list(annotations) if isinstance(annotations, list) and annotations else None,
        "vfio_mode": runtime.get("vfio_mode", "guest-kernel"),
    }


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """`3.26.0`, `3.23.0-12-gabcdef` (kata-deploy's VERSION is `git describe`) -> (3, 26, 0); else None."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _version_findings(text: str | None, kind: RuntimeClassKind, path: ColdPlugPath,
                      node_iommufd: bool | None) -> list[Finding]:
    findings: list[Finding] = []
    version = parse_version(text)
    if text is None:
        pass  # the caller did not ask (the pure check without a node); "" is a node whose version is unknown
    elif version is None:
        findings.append(Finding("kata-version-unknown", Severity.WARNING, "opt/kata/VERSION",
                                f"the Kata release cannot be read ({text or 'no VERSION file'}): the minimum "
                                "versions (3.23 for the annotation path, 3.15 for iommufd) are unchecked",
                                "install Kata with kata-deploy (it writes VERSION) or pass --kata-version"))
    else:
        if path is ColdPlugPath.CDI_ANNOTATIONS and version < KATA_MIN_ANNOTATIONS:
            findings.append(Finding("kata-too-old-annotations", Severity.ERROR, "opt/kata/VERSION",
                                    f"Kata {text}: releases before 3.23 leak the sandbox's cdi.k8s.io annotation into "
                                    "every workload container of the pod", "upgrade Kata to 3.23 or later"))
        if kind.confidential and version < KATA_MIN_IOMMUFD:
            findings.append(Finding("kata-no-iommufd", Severity.ERROR, "opt/kata/VERSION",
                                    f"Kata {text} cannot pass iommufd cdevs (3.15 or later), which confidential pods "
                                    "get", "upgrade Kata"))
    if kind.confidential and node_iommufd is False and (version is None or version >= KATA_CC_NEEDS_IOMMUFD):
        findings.append(Finding("confidential-needs-iommufd", Severity.ERROR, "host kernel",
                                "this node has no iommufd (/dev/iommu): Kata 3.26 and later refuse a legacy VFIO "
                                "group node for a confidential guest, so no confidential pod can get a GPU here",
                                "boot a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV"))
    return findings


def _attestation_findings(hypervisor: Mapping[str, Any], kind: RuntimeClassKind) -> list[Finding]:
    findings: list[Finding] = []
    params = hypervisor.get("kernel_params", "")
    if kind.confidential and isinstance(params, str) and SRS_PARAM in params.split():
        findings.append(Finding("srs-skips-attestation", Severity.WARNING, "hypervisor.qemu.kernel_params",
                                f"{SRS_PARAM} lets the guest mark the GPU ready without attesting it: not for "
                                "attested use", f"remove {SRS_PARAM} from kernel_params for attested pods"))
    allowed = hypervisor.get("enable_annotations", [])
    suffix = KERNEL_PARAMS_ANNOTATION.rsplit(".", 1)[1]
    if isinstance(allowed, list) and any(isinstance(a, str) and _go_regexp_search(a, suffix) for a in allowed):
        findings.append(Finding("kernel-params-annotation", Severity.ERROR if kind.confidential else Severity.WARNING,
                                "hypervisor.qemu.enable_annotations",
                                f"enable_annotations allows kernel_params: any pod can set the guest kernel's "
                                f"parameters with {KERNEL_PARAMS_ANNOTATION} (for example {SRS_PARAM})",
                                "remove kernel_params from enable_annotations (cc-gpu's guard also denies the "
                                "annotation in tenant namespaces)"))
    return findings


def _go_regexp_search(pattern: str, text: str) -> bool:
    """Go's `regexp.MatchString` (unanchored), as Kata matches `enable_annotations`; a bad pattern matches nothing."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


#: Sample `cdi.k8s.io/` keys other than ours: an allow-list that forwards any of them forwards more than our key.
OTHER_CDI_KEYS = ("cdi.k8s.io/other", "cdi.k8s.io/vfio0", "cdi.k8s.io/cc-gpu-x", "cdi.k8s.io/nvidia")


def check_containerd(containerd: Mapping[str, Any] | None, handler: str) -> list[Finding]:
    """Checks that containerd passes the pod's CDI annotation to the Kata runtime `handler`."""
    fix = f'set pod_annotations = ["io.katacontainers.*", "{CDI_POD_ANNOTATION}"] on the {handler} runtime'
    if containerd is None:
        return [Finding("containerd-unchecked", Severity.WARNING, "containerd pod_annotations",
                        f"containerd's configuration was not checked: it must pass {CDI_POD_ANNOTATION} to Kata",
                        f"pass containerd's configuration too, or {fix}")]
    runtime = containerd_runtime(containerd, handler)
    if runtime is None:
        return [Finding("no-containerd-runtime", Severity.ERROR, f"containerd runtimes.{handler}",
                        f"containerd has no runtime handler {handler!r}",
                        "install the NVIDIA GPU runtime classes with kata-deploy")]
    findings: list[Finding] = []
    cri = _dig(containerd, "plugins", "io.containerd.grpc.v1.cri")
    if containerd.get("version", 2) == 2 and isinstance(cri, Mapping) and cri.get("enable_cdi") is not True:
        findings.append(Finding("cdi-disabled", Severity.ERROR, "containerd enable_cdi",
                                "containerd 1.7 injects no CDI devices (the claim's CDI ids from the kubelet) "
                                "unless enable_cdi is on",
                                'set enable_cdi = true under [plugins."io.containerd.grpc.v1.cri"]'))
    patterns = runtime.get("pod_annotations", [])
    patterns = [p for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else []
    if not any(go_path_match(p, CDI_POD_ANNOTATION) for p in patterns):
        findings.append(Finding("cdi-annotation-filtered", Severity.ERROR,
                                f"containerd runtimes.{handler}.pod_annotations",
                                f"containerd drops the {CDI_POD_ANNOTATION} pod annotation before Kata sees it", fix))
    wide = sorted({p for p in patterns for key in OTHER_CDI_KEYS if go_path_match(p, key)})
    if wide:
        findings.append(Finding("cdi-annotations-forwarded", Severity.ERROR,
                                f"containerd runtimes.{handler}.pod_annotations",
                                f"pod_annotations {wide} forward cdi.k8s.io/ keys other than {CDI_POD_ANNOTATION}: "
                                "Kata cold-plugs whatever CDI device any such key names, and cc-gpu's guard covers "
                                "only its own key", fix))
    return findings


def containerd_runtime(containerd: Mapping[str, Any], handler: str) -> Mapping[str, Any] | None:
    plugins = containerd.get("plugins")
    if not isinstance(plugins, Mapping):
        return None
    for plugin in _CRI_PLUGINS:
        found = _dig(plugins, plugin, "containerd", "runtimes", handler)
        if isinstance(found, Mapping):
            return found
    return None


def _dig(table: Mapping[str, Any], *keys: str) -> object:
    node: object = table
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def go_path_match(pattern: str, name: str) -> bool:
    """Go's `path.Match`, which containerd uses for `pod_annotations`: `*` and `?` never match `/`.

    Hand-written because `fnmatch` lets `*` cross `/`, which would report `*` as passing `cdi.k8s.io/cc-gpu`
    when containerd drops it.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return False  # Go reports ErrBadPattern; containerd then matches nothing
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), name) is not None
