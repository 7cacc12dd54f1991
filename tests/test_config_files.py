"""The packaged YAML configs: ``-c NAME`` lookup, its error, ``catdog configs``, and the commands that use them."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from catdog import CatDogError
from catdog.cli import main as catdog
from catdog.config_files import (
    packaged_config_dir,
    packaged_config_names,
    resolve_config,
    resolve_config_args,
)

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["compare", "logger/csv", "poutyne", "pretrained", "scratch", "trainer/bf16", "trainer/ddp", "trainer/gpu"]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the checkout, without a ./configs folder."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_packaged_configs_are_package_data_and_the_checkout_folder_points_at_them() -> None:
    assert packaged_config_names() == NAMES
    assert packaged_config_dir() == ROOT / "catdog" / "configs"
    # configs/ at the repository root is the same folder (a symlink), so `-c configs/scratch.yaml` still works.
    assert (ROOT / "configs").resolve() == packaged_config_dir().resolve()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["catdog"]
    for name in NAMES:
        assert any(fnmatch.fnmatch(f"configs/{name}.yaml", pattern) for pattern in patterns), name


def test_names_resolve_to_packaged_files(elsewhere: Path) -> None:
    for name in NAMES:
        expected = str(packaged_config_dir() / f"{name}.yaml")
        assert resolve_config(name) == expected
        assert resolve_config(f"{name}.yaml") == expected
    assert resolve_config("logger\\csv") == str(packaged_config_dir() / "logger" / "csv.yaml")


def test_an_existing_file_wins_and_inline_yaml_passes_through(elsewhere: Path) -> None:
    (elsewhere / "scratch.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("scratch.yaml") == "scratch.yaml"  # the local file, not the packaged one
    assert resolve_config("scratch") == str(packaged_config_dir() / "scratch.yaml")  # no local `scratch`
    assert resolve_config(str(elsewhere / "scratch.yaml")) == str(elsewhere / "scratch.yaml")
    inline = "{trainer: {max_epochs: 2}}"
    assert resolve_config(inline) == inline
    assert resolve_config("x" * 5000 + ": 1") == "x" * 5000 + ": 1"  # longer than a path may be


@pytest.mark.parametrize("value", ["scrach", "configs/scratch.yaml", "../configs/scratch", "logger", "/no/such.yaml"])
def test_unknown_name_is_an_error_listing_the_packaged_names(elsewhere: Path, value: str) -> None:
    with pytest.raises(CatDogError) as raised:
        resolve_config(value)
    message = str(raised.value)
    assert message.startswith(f"-c {value}: no such file, nor a packaged config")
    assert ", ".join(NAMES) in message and "catdog configs --out" in message


def test_resolve_config_args_rewrites_every_config_option(elsewhere: Path) -> None:
    packaged = packaged_config_dir()
    argv = ["-c", "scratch", "--data.data_dir", "scratch", "--config", "logger/csv", "--config=trainer/bf16"]
    assert resolve_config_args(argv) == [
        "-c", str(packaged / "scratch.yaml"), "--data.data_dir", "scratch",
        "--config", str(packaged / "logger" / "csv.yaml"), f"--config={packaged / 'trainer' / 'bf16.yaml'}",
    ]  # fmt: skip
    assert resolve_config_args(["--", "-c", "nope"]) == ["--", "-c", "nope"]
    with pytest.raises(CatDogError, match="-c nope: no such file"):
        resolve_config_args(["-c", "nope"])


def test_fit_reads_packaged_configs_by_name(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert catdog(["fit", "-c", "scratch", "-c", "logger/csv", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "default_root_dir: runs/scratch" in printed
    assert "CSVLogger" in printed and "WandbLogger" not in printed  # logger/csv.yaml replaced the loggers
    assert catdog(["fit", "-c", "scratch", "-c", "pretrained", "--print_config"]) == 0
    assert "default_root_dir: runs/pretrained" in capsys.readouterr().out
    assert catdog(["test", "-c", "scrach"]) == 2
    assert "catdog test: error: -c scrach: no such file, nor a packaged config" in capsys.readouterr().err


def test_poutyne_reads_packaged_configs_by_name(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert catdog(["poutyne", "-c", "scratch", "-c", "poutyne", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "poutyne:" in printed and "save_model_epoch: 1" in printed and "max_epochs: 30" in printed
    assert catdog(["poutyne", "-c", "scratch", "--config", "poutyn"]) == 2
    assert "-c poutyn: no such file, nor a packaged config" in capsys.readouterr().err


def test_compare_defaults_to_the_packaged_config(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from catdog.evaluation.compare.plan import default_config, load_config

    assert default_config() == packaged_config_dir() / "compare.yaml"
    config = load_config("compare")
    assert config.configs["scratch"] == packaged_config_dir() / "scratch.yaml"  # relative to compare.yaml
    assert config.configs["csv_logger"] == packaged_config_dir() / "logger" / "csv.yaml"
    assert catdog(["compare", "--only", "nope"]) == 2  # the packaged compare.yaml is read, then --only checked
    assert f"no such run in {packaged_config_dir() / 'compare.yaml'}" in capsys.readouterr().err
    # ./configs/compare.yaml, where there is one, is the default.
    assert catdog(["configs", "--out", "configs"]) == 0
    assert default_config() == Path("configs/compare.yaml")
    assert load_config(default_config()).configs["scratch"] == Path("configs/scratch.yaml")


def test_demo_falls_back_to_the_packaged_configs(elsewhere: Path) -> None:
    from catdog.demo import find_configs, plan_models

    folder = find_configs(None)
    assert folder == packaged_config_dir()
    models = plan_models(folder, Path("weights.pth"), "--pretrained-file", "tf_efficientnetv2_b2")
    for args in models.values():
        files = [args[i + 1] for i, arg in enumerate(args) if arg == "-c"]
        assert files and all(Path(file).is_file() for file in files)  # the printed commands can be rerun
    (elsewhere / "configs").mkdir()
    assert find_configs(None) == packaged_config_dir()  # an empty ./configs is passed over
    with pytest.raises(CatDogError, match="no scratch.yaml and pretrained.yaml in .*catdog configs --out"):
        find_configs(elsewhere / "configs")


def test_catdog_configs_copies_them_out_and_refuses_to_overwrite(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = elsewhere / "my-configs"
    assert catdog(["configs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in NAMES:
        copied = out / f"{name}.yaml"
        assert copied.read_bytes() == (packaged_config_dir() / f"{name}.yaml").read_bytes()
        assert f"wrote {copied}" in printed
    (out / "scratch.yaml").write_text("# edited\n")
    assert catdog(["configs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {len(NAMES)} file(s) exist" in err and "nothing was written" in err and "--force" in err
    assert (out / "scratch.yaml").read_text() == "# edited\n"
    assert catdog(["configs", "--out", str(out), "--force"]) == 0
    assert (out / "scratch.yaml").read_bytes() == (packaged_config_dir() / "scratch.yaml").read_bytes()
    (elsewhere / "a-file").write_text("")
    assert catdog(["configs", "--out", "a-file"]) == 2
    assert "--out a-file: exists and is not a folder" in capsys.readouterr().err
    # The copied compare.yaml reads the copied configs.
    from catdog.evaluation.compare.plan import load_config

    assert load_config(out / "compare.yaml").configs["poutyne"] == out / "poutyne.yaml"


def test_catdog_configs_lists_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert catdog(["configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert str(packaged_config_dir()) in listed[0]
    assert [line.strip() for line in listed[1:]] == NAMES
