"""The plugin image, built for real by deploy/build-image.sh (debootstrap + buildah, no registry) and run with buildah.

Proves: the image builds from the project's files; `cc-gpu --version`, `discover --sim` and `demo` run inside it; it
holds no shell history, .git, tests, compilers, pip or package caches; its SBOM is valid CycloneDX and lists every
Debian package and Python distribution in it, with the lock's hashes; deploy/Containerfile declares the same image;
and the DaemonSet's container as the chart renders it (entrypoint + args, env, mounts, user) runs this image: the
plugin registers with a kubelet and publishes its ResourceSlice, on a simulated node; and the install guide's
`kata check` one-liner runs in it against a node's files mounted at /host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cc_gpu.dra.kubelet import KubeletDouble, RegistrationError
from cc_gpu.dra.proto import grpc_health_v1_pb2, grpc_health_v1_pb2_grpc
from cc_gpu.kube.apiserver import ApiServerDouble, cluster
from cc_gpu.kube.client import KubernetesApi
from tests.deploy.chart import REPO, one, render
from tests.deploy.image import BUILD_SCRIPT, Built, Container, build, container, tools_python
from tests.deploy.test_containerfile import instructions
from tests.kata.test_kata_node import kata_deploy_3_29

pytestmark = pytest.mark.slow

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
DRIVER = "gpu.cc-gpu.io"
SIZE_TARGET_MB = 250


@pytest.fixture(scope="module")
def built() -> Built:
    return build(VERSION)


@pytest.fixture(scope="module")
def image(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    with container(tmp_path_factory.mktemp("buildah-store"), built.archive) as c:
        yield c


def declared() -> dict[str, str]:
    """The `NAME=value` declarations at the top of deploy/build-image.sh."""
    found = {}
    for line in BUILD_SCRIPT.read_text().splitlines():
        match = re.match(r"^([A-Z_]+)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip("'\"")
    return found


def test_the_image_is_built_and_its_size_and_digest_are_reported(built: Built, image: Container,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", built.digest)
    assert f"digest: {built.digest}" in built.log
    usage = subprocess.run(["du", "-sm", "--apparent-size", *(str(image.mount / p) for p in (
        "usr/lib/python3.11", "usr/lib/x86_64-linux-gnu", "opt/cc-gpu", "usr/share", "usr/bin", "var/lib/dpkg"))],
        capture_output=True, text=True, check=True).stdout
    total = int(subprocess.run(["du", "-sm", "--apparent-size", str(image.mount)], capture_output=True, text=True,
                               check=True).stdout.split()[0])
    with capsys.disabled():
        how = "cached" if built.build_seconds is None else f"built in {built.build_seconds:.0f} s"
        print(f"\nimage {built.archive.name} ({how}): {built.digest}")
        print(f"  {total} MB unpacked, {built.archive.stat().st_size // 2**20} MB archive "
              f"({sum(built.layer_sizes()) // 2**20} MB compressed layers); target < {SIZE_TARGET_MB} MB")
        for line in usage.splitlines():
            size, path = line.split("\t")
            print(f"  {size:>4} MB  /{Path(path).relative_to(image.mount)}")
    assert total < SIZE_TARGET_MB


def test_the_cli_runs_inside_the_image(image: Container) -> None:
    version = image.run(["cc-gpu", "--version"])
    assert version.returncode == 0, version.stderr
    assert VERSION in version.stdout
    discover = image.run(["cc-gpu", "discover", "--sim", "dgx-h100", "--json"])
    assert discover.returncode == 0, discover.stderr
    assert len(json.loads(discover.stdout)["gpus"]) == 8
    demo = image.run(["cc-gpu", "demo"])
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "kata-qemu-nvidia-gpu-snp" in demo.stdout


def test_the_guides_kata_check_one_liner_runs_in_the_image(image: Container, tmp_path: Path) -> None:
    """deploy/README.md's `podman run --rm -v /:/host:ro IMAGE kata check --root /host ...`: the same arguments run
    by the image's entrypoint as its default user, a kata-deploy 3.29 node's files mounted read-only at /host."""
    text = (REPO / "deploy" / "README.md").read_text()
    match = re.search(r"<!-- tested: kata-check-in-image -->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert match, "deploy/README.md lost its tested kata check one-liner"
    argv = shlex.split(match.group(1))
    assert argv[:5] == ["podman", "run", "--rm", "-v", "/:/host:ro"], argv
    node = tmp_path / "node"
    node.mkdir()
    kata_deploy_3_29(node)
    for path in [node, *node.rglob("*")]:  # as a node's files are: world-readable, the image's user is not root
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    out = image.run(["cc-gpu", *argv[6:]], volumes=[f"{node}:/host:ro"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("OK  /host/opt/kata/") == 3 and "summary: ok" in out.stdout


def test_the_image_runs_as_the_unprivileged_user_by_default(image: Container) -> None:
    who = image.run(["python3", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert who.stdout.split() == ["65532", "65532"], who.stderr


def test_the_image_holds_no_history_git_tests_compilers_or_caches(image: Container) -> None:
    root = image.mount
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames + filenames:
            path = here / name
            rel = "/" + str(path.relative_to(root))
            if (name.endswith("_history") or name in (".git", "__pycache__", ".cache") or name.endswith(".whl")
                    or (path.parent.name in ("bin", "sbin") and name in ("gcc", "cc", "c++", "make", "ld", "pip"))
                    or (rel.startswith("/opt/cc-gpu/lib") and ("/cc_gpu/" in rel or rel.endswith("/cc_gpu"))
                        and (name == "tests" or name.startswith("test_")))):
                found.append(rel)
    assert found == []
    assert not list((root / "var/lib/apt/lists").glob("*Packages*"))
    assert not list((root / "var/cache/apt").iterdir())
    assert not list((root / "opt/cc-gpu/lib/python3.11/site-packages").glob("pip*"))


def test_the_sbom_is_valid_cyclonedx_and_lists_everything_in_the_image(built: Built, image: Container) -> None:
    check = subprocess.run([str(tools_python()), str(REPO / "deploy/image/sbom.py"), "validate", str(built.sbom)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    sbom = json.loads(built.sbom.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["specVersion"] == "1.6"
    assert sbom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256",
                                                        "content": built.digest.removeprefix("sha256:")}]
    components = {(c["purl"].split(":")[1].split("/")[0], c["name"]): c for c in sbom["components"]}
    dpkg = subprocess.run(["dpkg-query", f"--admindir={image.mount}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\n"],
                          capture_output=True, text=True, check=True).stdout
    for line in dpkg.splitlines():
        name, version = line.split()
        assert components[("deb", name)]["version"] == version
    lock = (REPO / "deploy/requirements.txt").read_text()
    site = image.mount / "opt/cc-gpu/lib/python3.11/site-packages"
    installed = dict(d.name.removesuffix(".dist-info").split("-") for d in site.glob("*.dist-info"))
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in installed.items()}
    assert set(installed) == {n for (kind, n) in components if kind == "pypi"}
    for name, version in installed.items():
        component = components[("pypi", name)]
        assert component["version"] == version
        (digest,) = [h["content"] for h in component["hashes"] if h["alg"] == "SHA-256"]
        if name != "cc-gpu":
            assert f"--hash=sha256:{digest}" in lock, f"{name}: the installed wheel is not the locked one"


def test_the_containerfile_declares_the_same_image(built: Built) -> None:
    script = declared()
    steps = instructions()
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    final = steps[froms[-1]:]
    (base,) = [v.split("=", 1)[1] for k, v in steps if k == "ARG" and v.startswith("DEBIAN_IMAGE=")]
    # Same Python: Debian 12's python3 package in both, on the same release.
    assert re.fullmatch(rf"docker\.io/library/debian:{script['DEBIAN_SUITE']}-slim(@sha256:[0-9a-f]{{64}})?", base)
    (apt,) = [v for k, v in final if k == "RUN" and "apt-get install" in v]
    packages = re.search(r"--no-install-recommends ([a-z0-9. -]+?) &&", apt)
    assert packages is not None
    runtime = re.search(r"^RUNTIME_PACKAGES=\((.*)\)$", BUILD_SCRIPT.read_text(), re.M)
    assert runtime is not None
    assert packages.group(1).split() == runtime.group(1).split()
    # Same pinned dependencies, hash-checked, into the same virtualenv; no pip in the final image.
    runs = " ".join(" ".join(v for k, v in steps if k == "RUN").split())
    assert "--require-hashes --only-binary=:all: --no-compile --requirement deploy/requirements.txt" in runs
    assert f"python3 -m venv --without-pip {script['VENV']}" in runs
    assert ("COPY", f"--from=build {script['VENV']} {script['VENV']}") in final
    site = f"{script['VENV']}/lib/python3.11/site-packages"
    assert f"sh deploy/prune.sh {site} /src" in runs
    assert '"$repo/deploy/image/prune.sh" "$mnt$VENV/lib/python3.11/site-packages" "$repo"' in BUILD_SCRIPT.read_text()
    # Same configuration: what the Containerfile declares is what the built image carries.
    config = built.config()["config"]
    assert ("USER", config["User"]) in final
    assert ("ENTRYPOINT", json.dumps(config["Entrypoint"])) in final
    assert ("CMD", json.dumps(config["Cmd"])) in final
    (env,) = [v for k, v in final if k == "ENV"]
    assert sorted(env.split()) == sorted(config["Env"])
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(
        v for k, v in final if k == "LABEL")))
    image_labels = config["Labels"]
    assert set(labels) <= set(image_labels)
    assert {"org.opencontainers.image.source", "org.opencontainers.image.version",
            "org.opencontainers.image.revision", "org.opencontainers.image.licenses"} <= set(labels)
    assert image_labels["org.opencontainers.image.version"] == VERSION
    assert image_labels["org.opencontainers.image.licenses"] == labels["org.opencontainers.image.licenses"]
    assert re.fullmatch(r"[0-9a-f]{40}", image_labels["org.opencontainers.image.revision"])
    assert "io.buildah.version" not in image_labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children") as f:
            for child in f.read().split():
                found += [int(child), *descendants(int(child))]
    return found


def test_the_charts_daemonset_container_runs_the_image(built: Built, image: Container, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """The chart's defaults, with the kubelet directory and ports moved under this test; a simulated host and an
    API-server double stand in for the node and the cluster (two env vars the chart does not set: CC_GPU_SIM,
    CC_GPU_KUBECONFIG).
    """
    # A short path: the DRA socket's path must fit a Unix socket address (107 bytes), which pytest's tmp_path does not.
    kubelet_dir = Path(tempfile.mkdtemp(prefix="cc-gpu-kubelet-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(kubelet_dir, ignore_errors=True))
    metrics, probe = free_port(), free_port()
    objects = render({"kubeletDir": str(kubelet_dir), "metrics": {"port": metrics}, "probePort": probe})
    daemonset = one(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    assert "command" not in spec, "the chart runs the image's entrypoint with its args"
    assert spec["image"] == f"ghcr.io/cc-gpu/cc-gpu:{VERSION}"
    node = "smoke-node"
    fields = {"spec.nodeName": node, "metadata.uid": str(uuid.uuid4())}
    env = {e["name"]: fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in spec["env"]}
    argv = built.config()["config"]["Entrypoint"] + [expand(a, env) for a in spec["args"]]
    # The simulated host replaces the node's filesystems, so the chart's real-host root flags go: the plugin refuses
    # to mix them with a simulation (a simulation never falls through to the real host).
    host_roots = [a for a in argv if a.startswith(("--sysfs-root=", "--dev-root=", "--proc-root=", "--modules-root="))]
    assert host_roots == ["--sysfs-root=/sys", "--dev-root=/dev", "--proc-root=/host/proc"]
    argv = [a for a in argv if a not in host_roots]
    user = f"{spec['securityContext']['runAsUser']}:0"

    volumes = {v["name"]: v for v in pod["volumes"]}
    configmap = one(objects, "ConfigMap", "plugin-config")
    mounts = []
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        if mount["mountPath"] in ("/sys", "/dev"):
            continue  # the simulated host's sysfs and /dev live under its sim root; buildah provides these
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            source = tmp_path / "configmap"
            source.mkdir()
            for key, value in configmap["data"].items():
                (source / key).write_text(value)
        else:
            path = Path(volume["hostPath"]["path"])
            source = path if path.is_relative_to(kubelet_dir) else tmp_path / "node" / path.relative_to("/")
            source.mkdir(parents=True, exist_ok=True)
        mounts.append(f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else ""))

    with ApiServerDouble() as server:
        server.create(cluster.node(node))
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cc-gpu-token-keys"}})
        kubeconfig = server.write_kubeconfig(tmp_path / "cluster" / "kubeconfig")
        mounts.append(f"{kubeconfig.parent}:/run/smoke:ro")
        env |= {"CC_GPU_SIM": "dgx-h100", "CC_GPU_KUBECONFIG": "/run/smoke/kubeconfig"}
        kubelet = KubeletDouble(kubelet_dir / "plugins_registry")
        kubelet.start()
        marker = tmp_path / "before-run"
        marker.touch()
        log = (tmp_path / "plugin.log").open("w")
        proc = subprocess.Popen(image.run_argv(argv, user=user, env=env, volumes=mounts), stdout=log,
                                stderr=subprocess.STDOUT)
        api = KubernetesApi(kubeconfig)
        try:
            for _ in range(300):
                assert proc.poll() is None, f"the plugin exited: {(tmp_path / 'plugin.log').read_text()[-4000:]}"
                with contextlib.suppress(RegistrationError):
                    kubelet.wait_registered(DRIVER, timeout=1)
                    break
            else:
                raise AssertionError(f"no registration: {(tmp_path / 'plugin.log').read_text()[-4000:]}")
            (slice_,) = api.list_resource_slices(DRIVER, node)
            assert len(slice_["spec"]["devices"]) == 8
            with grpc.insecure_channel(f"127.0.0.1:{probe}") as channel:
                reply = grpc_health_v1_pb2_grpc.HealthStub(channel).Check(
                    grpc_health_v1_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == grpc_health_v1_pb2.HealthCheckResponse.SERVING
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as response:
                assert b"cc_gpu_" in response.read()
        finally:
            # SIGTERM to the plugin itself, as a container runtime sends it (buildah's chroot helper sits between).
            for pid in descendants(proc.pid):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"/opt/cc-gpu/bin/python\0/opt/cc-gpu/bin/cc-gpu\0plugin\0"):
                        os.kill(pid, signal.SIGTERM)
            code = proc.wait(timeout=120)
            kubelet.stop()
            api.close()
            log.close()
        output = (tmp_path / "plugin.log").read_text()
        assert code == 0, output[-4000:]
    # readOnlyRootFilesystem: the plugin wrote nothing into the image, only into its mounts.
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    written = subprocess.run(["find", str(image.mount), "-xdev", "-newer", str(marker), "-not", "-type", "d"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert [p for p in written if not p.endswith(("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"))] == []

