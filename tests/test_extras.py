"""catdog's extras installed alone, as the image installs ``catdog[serve]``: a folder holding only the files of an
extra's packages, run with this interpreter's site-packages off. ``serve`` serves right without torch or pandas;
the base install generates data; a command whose extra is missing names it.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from container_helpers import ROOT, check, terminate


def extra_closure(extra: str | None) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``pip install 'catdog[extra]'`` needs (``None``: the base install)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [("catdog", extra or "")]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if (key, wanted) in done:
            continue
        done.add((key, wanted))
        try:
            dist = found.get(key) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} (needed by catdog[{extra}]) is not installed here")
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": wanted}):
                todo += [(requirement.name, "")] + [(requirement.name, e) for e in requirement.extras]
    return list(found.values())


def make_site(extra: str | None, site: Path) -> Path:
    """A folder holding only the files of :func:`extra_closure` (links), plus catdog's source; returns it."""
    site.mkdir(parents=True)
    for dist in extra_closure(extra):
        for top in sorted({f.parts[0] for f in dist.files or []}):
            if top in {"..", "__pycache__"} or top.endswith(".pth") or top.startswith("__editable__"):
                continue
            source = Path(str(dist.locate_file(top)))
            if top == "catdog" or not source.exists() or (site / top).exists():
                continue
            if source.is_dir() and not (source / "__init__.py").exists() and not top.endswith("-info"):
                # A namespace package (``google``) is shared by several distributions: link only this one's part.
                (site / top).mkdir()
                for part in sorted({f.parts[1] for f in dist.files or [] if f.parts[0] == top and len(f.parts) > 1}):
                    if part != "__pycache__":
                        (site / top / part).symlink_to(source / part)
            else:
                (site / top).symlink_to(source)
    (site / "catdog").symlink_to(ROOT / "catdog")
    return site


def restricted_python(site: Path, *argv: str) -> list[str]:
    """A command running this interpreter without its site-packages, on ``site`` only."""
    bootstrap = f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv[0] = 'catdog'; "
    return [sys.executable, "-S", "-c", bootstrap + "from catdog.cli import main; sys.exit(main())", *argv]


@pytest.fixture(scope="module")
def serve_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site("serve", tmp_path_factory.mktemp("serve-only") / "site")


def test_serve_extra_alone_serves_without_torch_or_pandas(
    serve_site: Path, small_models: dict[str, Path], tmp_path: Path
) -> None:
    """With only catdog[serve] importable, ``catdog serve`` answers right; ``fuse``/``fit`` name their extra."""
    probe = (
        f"import sys; sys.path.insert(0, {str(serve_site)!r}); import importlib.util as u; "
        "print(*[u.find_spec(m) is not None for m in ('torch', 'pandas', 'tqdm', 'onnxruntime', 'litserve')])"
    )
    found = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert found.stdout.split() == ["False", "False", "False", "True", "True"], found.stdout + found.stderr

    for command, extra in (("fuse", "data"), ("report", "data"), ("fit", "train")):
        result = subprocess.run(
            restricted_python(serve_site, command, "--help"), capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert result.returncode == 2, result.stdout + result.stderr
        named = re.search(r"catdog \S+: error: this command needs the package '([^']+)'", result.stderr)
        assert named, result.stderr
        # The package named is one the extra installs, and the message says to install that extra.
        in_extra = {dist.metadata["Name"].lower() for dist in extra_closure(extra)}
        assert named.group(1).lower() in in_extra, (named.group(1), extra)
        assert f"pip install 'catdog[{extra}]'" in result.stderr, result.stderr

    port = check.free_port()
    models = [arg for name, path in small_models.items() for arg in ("--model", f"{name}={path}")]
    cmd = restricted_python(serve_site, "serve", *models, "--host", "127.0.0.1", "--port", str(port))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        check.wait_healthy(base_url, timeout=90, alive=lambda: None if proc.poll() is None else "exited")
        image = check.sample_images()["cat.jpg"]
        body, headers = check.multipart("file", "cat.jpg", image, "image/jpeg")
        for name, path in small_models.items():
            status, payload = check.http("POST", f"{base_url}/predict/{name}", body, headers)
            assert status == 200, payload
            check.check_prediction(payload, name, check.expected_probabilities(path, image))
    finally:
        output, _ = terminate(proc)
    assert proc.returncode == 0, output[-3000:]


def test_base_install_generates_data_and_names_the_serve_extra(tmp_path: Path) -> None:
    """The base install (numpy + Pillow) runs ``catdog sample-data``; ``catdog serve`` names catdog[serve]."""
    site = make_site(None, tmp_path / "site")
    out = tmp_path / "kaggle"
    made = subprocess.run(
        restricted_python(
            site, "sample-data", "--out", str(out), "--cats", "4", "--breeds", "2", "--dogs-per-breed", "2"
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert len(list(out.rglob("cat.*.jpg"))) == 4
    probe = (
        "import catdog.data.transforms, catdog.metrics, catdog.data.splits, catdog.utils, sys;"
        " print(sorted(sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    served = subprocess.run(
        restricted_python(site, "serve", "--help"), capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert served.returncode == 2, served.stdout + served.stderr
    assert "pip install 'catdog[serve]'" in served.stderr, served.stderr
