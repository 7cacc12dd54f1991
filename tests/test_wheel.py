"""The wheel of the checkout holds what a non-editable install needs: its configs, and a demo that runs.

The wheel is built from a copy of the checkout's files (so no build/ or egg-info is written into the
checkout), installed with ``--no-deps`` into a fresh venv outside the checkout, and run from a folder
outside the checkout. The fresh venv sees the dev venv's installed dependencies through a ``.pth`` line
naming the dev venv's site-packages: a directory listed in a ``.pth`` file is added to ``sys.path``
without its own ``.pth`` files being processed, so the dev venv's editable catdog stays invisible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from catdog.config_files import packaged_config_names

ROOT = Path(__file__).resolve().parent.parent
#: The dev venv's installed packages (torch, lightning, ...), made visible to the fresh venv.
DEV_SITE_PACKAGES = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command``; a failure fails the test with the command's output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` exited with {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
            f"--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked, plus untracked ones not ignored), symlinks kept."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source, target = ROOT / name, dest / name
        if not os.path.lexists(source):  # deleted in the working tree, not yet committed
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(bin folder of a fresh venv with the checkout's wheel installed, its site-packages, the environment)."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", WANDB_MODE="offline", WANDB_SILENT="true")

    source, wheels = base / "src", base / "wheels"
    _copy_checkout(source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
          str(wheels), str(source)], cwd=base, env=env)  # fmt: skip
    (wheel,) = wheels.glob("catdog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = [n for n in packaged_config_names() if f"catdog/configs/{n}.yaml" not in shipped]
    assert not missing, f"{wheel.name} lacks the configs {missing}"
    assert "catdog/serving/static/index.html" in shipped

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=env)
    python = venv / "bin" / "python"
    # The dev venv's pip installs into the fresh venv (--python), before the fresh venv can see the dev
    # venv's packages: so pip finds no catdog installed there and touches nothing of the dev venv.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=base, env=env)  # fmt: skip
    paths = json.loads(_run([str(python), "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"],
                            cwd=base, env=env).stdout)  # fmt: skip
    fresh_site = Path(paths["purelib"])
    (fresh_site / "catdog-dev-dependencies.pth").write_text("".join(f"{path}\n" for path in DEV_SITE_PACKAGES))

    # catdog is the wheel's copy; its dependencies come from the dev venv.
    where = _run([str(python), "-c", "import catdog, torch, lightning; print(catdog.__file__)"], cwd=base, env=env)
    assert Path(where.stdout.strip()) == fresh_site / "catdog" / "__init__.py"
    return venv / "bin", fresh_site, env


@pytest.mark.slow
def test_the_installed_wheel_reads_its_packaged_configs(
    fresh_venv: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, _, env = fresh_venv
    printed = _run([str(bin_dir / "catdog"), "fit", "-c", "scratch", "-c", "logger/csv", "--print_config"],
                   cwd=tmp_path, env=env).stdout  # fmt: skip
    assert "default_root_dir: runs/scratch" in printed and "WandbLogger" not in printed
    listed = _run([str(bin_dir / "catdog"), "configs", "--out", "my-configs"], cwd=tmp_path, env=env).stdout
    assert all((tmp_path / "my-configs" / f"{name}.yaml").is_file() for name in packaged_config_names()), listed


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_outside_the_checkout(
    fresh_venv: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, site, env = fresh_venv
    # No pretrained weights (no file, empty hub caches): the scratch model only, as the quick demo form.
    env = {k: v for k, v in env.items() if k not in {"CATDOG_PRETRAINED_FILE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}}
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), HF_HUB_OFFLINE="1")
    workdir = tmp_path / "demo-run"
    _run([str(bin_dir / "catdog"), "demo", "--image-size", "32", "--epochs", "1", "--workdir",
                   str(workdir)], cwd=tmp_path, env=env, timeout=600)  # fmt: skip

    # The configs came from the installed package (there is no ./configs here), and the printed commands
    # name them by a path that exists.
    commands = (workdir / "commands.sh").read_text().splitlines()
    fit_lines = [line for line in commands if line.startswith("catdog fit ")]
    assert fit_lines, commands
    scratch = Path(fit_lines[0].split(" -c ")[1].split()[0])
    assert scratch.name == "scratch.yaml" and scratch.is_file() and scratch.parent == site / "catdog" / "configs"

    assert (workdir / "runs" / "scratch" / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((workdir / "runs" / "scratch" / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert (workdir / "models" / "scratch.onnx").stat().st_size > 1_000_000
    assert "| scratch " in (workdir / "results.md").read_text()
    answers = json.loads((workdir / "answers.json").read_text())  # the served answers for one cat and one dog
    assert [a["status"] for a in answers] == [200, 200]
