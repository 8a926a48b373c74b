"""Plugin configuration: defaults, TOML (strict), environment mirrors, flags; precedence and errors naming the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cc_gpu.cli import plugin as cli_plugin
from cc_gpu.dra.settings import PluginSettings
from cc_gpu.errors import ConfigError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_plugin.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_kubelet_paths() -> None:
    s = cli_plugin.settings_from(parse(["--node-name", "n1"]), {})
    assert s.plugin_path == Path("/var/lib/kubelet/plugins/gpu.cc-gpu.io")
    assert s.registry_dir == Path("/var/lib/kubelet/plugins_registry")
    assert s.cdi_root == Path("/var/run/cdi")
    assert s.kubeconfig is None
    assert s.policy.allowed_handlers == ("kata-qemu-nvidia-gpu-snp", "kata-qemu-nvidia-gpu-tdx")


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "plugin.toml"
    config.write_text(
        'node_name = "from-file"\ncdi_root = "/file/cdi"\nmetrics_port = 9000\n'
        '[policy]\nallowed_handlers = ["kata-qemu-nvidia-gpu-snp"]\nrequire_cc_mode = false\n'
        '[selection]\nmode = "pci"\npci = ["0000:3B:00.0"]\n'
    )
    env = {"NODE_NAME": "from-env", "CC_GPU_CDI_ROOT": "/env/cdi"}
    s = cli_plugin.settings_from(parse(["--config", str(config), "--cdi-root", "/flag/cdi"]), env)
    assert (s.node_name, s.cdi_root, s.metrics_port) == ("from-env", Path("/flag/cdi"), 9000)
    assert s.policy.allowed_handlers == ("kata-qemu-nvidia-gpu-snp",)
    assert s.policy.require_cc_mode is False
    assert s.selection.pci == ("0000:3b:00.0",)


@pytest.mark.parametrize(
    ("name", "toml", "message"),
    [
        ("unknown key", 'node_nam = "x"\n', "config key node_nam: unknown"),
        ("unknown policy key", '[policy]\nrequire_cc = false\n', "policy.require_cc: unknown"),
        ("wrong type", 'metrics_port = "9000"\n', "metrics_port: must be int"),
        ("bool is not an int", "metrics_port = true\n", "metrics_port: must be int"),
        ("bad selection mode", '[selection]\nmode = "some"\n', "selection.mode"),
        ("handler list of non-strings", "[policy]\nallowed_handlers = [1]\n", "policy.allowed_handlers"),
        ("not TOML", "node_name = \n", "not valid TOML"),
        ("unknown kata check key", "[kata_check]\nenable = false\n", "kata_check.enable: unknown"),
        ("kata check switch as string", '[kata_check]\nenabled = "no"\n', "kata_check.enabled: must be bool"),
        ("containerd configs not a list", '[kata_check]\ncontainerd_configs = "/etc"\n',
         "kata_check.containerd_configs"),
        ("unknown binding key", "[binding]\nbind_early = true\n", "binding.bind_early: unknown"),
        ("binding switch as string", '[binding]\nconditions = "on"\n', "binding.conditions: must be bool"),
        ("no quarantine time", "[binding]\nquarantine_seconds = 0\n", "binding.quarantine_seconds: must be positive"),
    ],
)
def test_bad_config_files(tmp_path: Path, name: str, toml: str, message: str) -> None:
    config = tmp_path / "plugin.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        cli_plugin.settings_from(parse(["--config", str(config), "--node-name", "n"]), {})
    assert message in str(exc.value), name


@pytest.mark.parametrize(
    ("name", "argv", "env", "message"),
    [
        ("node name missing", [], {}, "node name is required"),
        ("driver name not DNS", ["--node-name", "n", "--driver-name", "GPU_Driver"], {}, "not a DNS subdomain"),
        ("bad env number", ["--node-name", "n"], {"CC_GPU_METRICS_PORT": "x"}, "CC_GPU_METRICS_PORT"),
        ("kata check neither on nor off", ["--node-name", "n"], {"CC_GPU_KATA_CHECK": "yes"}, "CC_GPU_KATA_CHECK"),
        ("both selections", ["--node-name", "n", "--select-pci", "0000:01:00.0", "--select-label", "l"], {},
         "not both"),
    ],
)
def test_bad_flags(name: str, argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        cli_plugin.settings_from(parse(argv), env)
    assert message in str(exc.value), name


KATA_ROOTS = [
    ("a node", [], {}, "", Path("/")),
    ("a simulated node reads its sim tree", ["--sim", "dgx-h100", "--sim-root", "/sim"], {}, "", Path("/sim")),
    ("from the file", [], {}, '[kata_check]\nroot = "/host"\n', Path("/host")),
    ("environment over the file", [], {"CC_GPU_KATA_ROOT": "/env"}, '[kata_check]\nroot = "/host"\n', Path("/env")),
    ("flag over everything", ["--kata-root", "/flag", "--sim", "dgx-h100"], {"CC_GPU_KATA_ROOT": "/env"}, "",
     Path("/flag")),
]


@pytest.mark.parametrize(("argv", "env", "toml", "root"), [c[1:] for c in KATA_ROOTS], ids=[c[0] for c in KATA_ROOTS])
def test_kata_check_root(tmp_path: Path, argv: list[str], env: dict[str, str], toml: str, root: Path) -> None:
    config = tmp_path / "plugin.toml"
    config.write_text(toml)
    s = cli_plugin.settings_from(parse(["--node-name", "n", "--config", str(config), *argv]), env)
    assert s.kata_root == root
    assert s.kata_check.enabled


def test_kata_check_switch_and_containerd_files(tmp_path: Path) -> None:
    config = tmp_path / "plugin.toml"
    config.write_text('[kata_check]\nenabled = false\ncontainerd_configs = ["/etc/containerd/config.toml"]\n')
    s = cli_plugin.settings_from(parse(["--node-name", "n", "--config", str(config)]), {})
    assert not s.kata_check.enabled
    assert s.kata_check.containerd_configs == (Path("/etc/containerd/config.toml"),)
    flagged = cli_plugin.settings_from(parse(["--node-name", "n", "--config", str(config), "--kata-check", "on"]), {})
    assert flagged.kata_check.enabled


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        PluginSettings().node_name = "x"  # type: ignore[misc]


def test_a_simulation_setting_never_falls_through_to_the_real_host() -> None:
    """`sim_root` without `sim` would quietly run on the real host; real roots with `sim` would be ignored."""
    with pytest.raises(ConfigError, match="needs sim"):
        PluginSettings(node_name="n", sim_root=Path("/tmp/sim")).validate()
    with pytest.raises(ConfigError, match="sysfs_root"):
        PluginSettings(node_name="n", sim="dgx-h100", sysfs_root=Path("/host/sys")).validate()
    PluginSettings(node_name="n", sim="dgx-h100", sim_root=Path("/tmp/sim")).validate()
