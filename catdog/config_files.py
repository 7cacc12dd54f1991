"""The YAML configs shipped with the package (``catdog/configs``) and ``catdog configs``.

A ``-c``/``--config`` value of ``catdog fit|validate|test|predict``, ``catdog poutyne`` and ``catdog compare``
is read as follows (:func:`resolve_config`):

1. an existing file is used as given (``-c configs/scratch.yaml``, ``-c my.yaml``);
2. otherwise a packaged config's name, with or without ``.yaml``, reads that file of the package
   (``-c scratch``, ``-c pretrained``, ``-c logger/csv``, ``-c trainer/ddp.yaml``);
3. otherwise a value that looks like a path or a name is an error listing the packaged names; anything
   else (an inline YAML string such as ``'{trainer: {max_epochs: 2}}'``) is passed on unchanged.

``catdog configs`` lists the packaged configs; ``catdog configs --out DIR`` copies them out for editing
(``compare.yaml`` names its siblings relative to itself, so the copied folder works as a whole).
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from catdog import CatDogError

SUFFIX = ".yaml"
#: Options that take a config file.
CONFIG_OPTIONS = ("-c", "--config")
_NAME_OR_PATH = re.compile(r"[\w./\\~+-]+")


def packaged_config_dir() -> Path:
    """The folder of the configs shipped with the package (``catdog/configs``)."""
    return Path(__file__).parent / "configs"


def packaged_config_names() -> list[str]:
    """The packaged configs' names, e.g. ``["compare", "logger/csv", ..., "scratch", "trainer/ddp"]``."""
    folder = packaged_config_dir()
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob(f"*{SUFFIX}"))


def resolve_config(value: str) -> str:
    """A ``-c`` value as a file to read: an existing file, else a packaged config's file (see the module)."""
    if _is_file(value):
        return value
    name = value.replace("\\", "/").removesuffix(SUFFIX)
    names = packaged_config_names()
    if name in names:
        return str(packaged_config_dir() / f"{name}{SUFFIX}")
    if not _NAME_OR_PATH.fullmatch(value):
        return value  # an inline YAML/JSON configuration
    raise CatDogError(
        f"-c {value}: no such file, nor a packaged config; packaged configs: {', '.join(names)} "
        f"(e.g. -c scratch; `catdog configs --out DIR` copies them out for editing)"
    )


def _is_file(value: str) -> bool:
    try:
        return Path(value).expanduser().is_file()
    except (OSError, RuntimeError):  # a name too long for a path (inline YAML), or an unknown ~user
        return False


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every ``-c``/``--config`` option passed through :func:`resolve_config`."""
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg in CONFIG_OPTIONS and index + 1 < len(args):
            args[index + 1] = resolve_config(args[index + 1])
        elif arg.startswith("--config="):
            args[index] = "--config=" + resolve_config(arg.removeprefix("--config="))
    return args


def copy_configs(out: Path, force: bool = False) -> list[Path]:
    """Copy the packaged configs into ``out`` (sub-folders kept); refuses existing files unless ``force``."""
    if out.exists() and not out.is_dir():
        raise CatDogError(f"--out {out}: exists and is not a folder; choose another --out")
    folder = packaged_config_dir()
    pairs = [(folder / f"{name}{SUFFIX}", out / f"{name}{SUFFIX}") for name in packaged_config_names()]
    existing = [target for _, target in pairs if target.exists()]
    if existing and not force:
        raise CatDogError(
            f"--out {out}: {len(existing)} file(s) exist ({', '.join(str(p) for p in existing)}); nothing was "
            "written; pass --force to overwrite them or choose another --out"
        )
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in pairs]


def main(argv: Sequence[str] | None = None) -> int:
    """``catdog configs [--out DIR [--force]]``: list the packaged configs, or copy them out."""
    parser = argparse.ArgumentParser(
        prog="catdog configs",
        description="List the YAML configs shipped with catdog (`-c NAME` reads one), or copy them out for editing.",
    )
    parser.add_argument("--out", type=Path, default=None, help="copy the configs into this folder")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist in --out")
    args = parser.parse_args(argv)
    if args.out is None:
        print(f"packaged configs in {packaged_config_dir()} (use as -c NAME, e.g. catdog fit -c scratch):")
        for name in packaged_config_names():
            print(f"  {name}")
        return 0
    for path in copy_configs(args.out, force=args.force):
        print(f"wrote {path}")
    return 0
