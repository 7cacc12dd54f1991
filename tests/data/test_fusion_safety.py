"""catdog fuse off the happy path: outputs in the wrong place, damaged sources, failed writes, interrupted runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catdog import CatDogError
from catdog.cli import main as catdog
from catdog.data.fusion import check_image, command, fuse, placement
from catdog.data.fusion.sources import jpeg_structure_problem
from catdog.data.sample_data import generate

SMALL = dict(cats=30, dogs_per_breed=5, breeds=5, size=48, seed=3)
KWARGS = dict(cat_train=20, cat_test=8, seed=2, progress=False)


@pytest.fixture
def sources(tmp_path: Path):
    return generate(tmp_path / "kaggle", **SMALL)


def _snapshot(*folders: Path) -> dict[str, str]:
    """Path -> sha256 of every file under ``folders``."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def _fuse_cli(sources, out: Path, *extra: str) -> int:
    return catdog(
        ["fuse", "--cats-source", str(sources.cats_source), "--dogs-source", str(sources.dogs_source),
         "--out", str(out), "--cat-train", "20", "--cat-test", "8", "--seed", "2", "--no-progress", *extra]
    )  # fmt: skip


@pytest.mark.parametrize("where", ["inside-cats", "inside-dogs", "equal-to-cats", "holding-the-sources"])
def test_out_inside_or_holding_a_source_is_refused_before_writing(sources, where: str) -> None:
    cats, dogs = Path(sources.cats_source), Path(sources.dogs_source)
    out = {"inside-cats": cats / "dataset", "inside-dogs": dogs / "train" / "out", "equal-to-cats": cats,
           "holding-the-sources": cats.parent}[where]  # fmt: skip
    before = _snapshot(cats, dogs)
    with pytest.raises(CatDogError, match="outside both sources") as info:
        fuse(cats, dogs, out, **KWARGS)
    assert str(out) in str(info.value)
    assert _snapshot(cats, dogs) == before  # nothing written, nothing read as output
    assert not (out / "split.json").exists()


def test_out_under_a_regular_file_is_a_clear_cli_error(sources, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    assert _fuse_cli(sources, blocker / "dataset") == 2
    err = capsys.readouterr().err
    assert err.startswith("catdog fuse: error: --out ") and str(blocker) in err and "not a folder" in err
    assert "Traceback" not in err
    assert blocker.read_text() == "a file"


def test_out_where_even_root_cannot_write_is_a_clear_cli_error(sources, capsys) -> None:
    out = Path("/sys/catdog-fuse-test/dataset")  # sysfs: mkdir fails with EPERM, also for root
    try:
        out.parent.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys would make this case meaningless
        out.parent.rmdir()
        pytest.skip("/sys is writable here")
    assert _fuse_cli(sources, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("catdog fuse: error: --out /sys/catdog-fuse-test/dataset") and "Traceback" not in err


def test_too_few_usable_cats_names_the_corrupt_ones_and_writes_nothing(tmp_path: Path) -> None:
    src = generate(tmp_path / "kaggle", corrupt=2, **SMALL)
    out = tmp_path / "dataset"
    with pytest.raises(CatDogError, match="only 28 usable cats") as info:
        fuse(src.cats_source, src.dogs_source, out, cat_train=20, cat_test=9, progress=False)
    corrupt_cats = [name for name in src.corrupt_files if Path(name).name.startswith("cat.")]
    assert len(corrupt_cats) == 2
    for name in corrupt_cats:
        assert str(Path(src.cats_source) / name) in str(info.value)
    assert not out.exists()
    # The corrected command works without --overwrite.
    result = fuse(src.cats_source, src.dogs_source, out, cat_train=20, cat_test=8, progress=False)
    assert result.counts["train"]["cat"] == 20 and result.counts["test"]["cat"] == 8


def test_rerun_completes_an_interrupted_run_and_says_how_many_files_it_wrote(sources, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dataset"
    assert _fuse_cli(sources, out) == 0
    assert "fused:" in capsys.readouterr().out
    expected = _snapshot(out / "train", out / "test")
    # An interrupted run: split.json not yet complete, two files missing, one cut short.
    split = json.loads((out / "split.json").read_text())
    (out / "split.json").write_text(json.dumps({**split, "complete": False}))
    images = sorted((out / "train" / "dog").glob("*.jpg"))
    images[0].unlink()
    images[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:100])

    assert _fuse_cli(sources, out) == 0
    printed = capsys.readouterr().out
    assert "unchanged" not in printed and "3 file(s) written" in printed
    assert _snapshot(out / "train", out / "test") == expected  # the truncated file is repaired too
    assert json.loads((out / "split.json").read_text())["complete"] is True

    assert _fuse_cli(sources, out) == 0
    assert capsys.readouterr().out.startswith("unchanged (same arguments)")

    (out / "manifest.csv").write_text("damaged")  # records only: rewritten, and said so
    assert _fuse_cli(sources, out) == 0
    assert capsys.readouterr().out.startswith("updated manifest.csv and split.json")
    assert len(pd.read_csv(out / "manifest.csv")) > 0


def test_a_rerun_repairs_a_truncated_output(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    fuse(sources.cats_source, sources.dogs_source, out, **KWARGS)
    victim = next((out / "test" / "cat").glob("*.jpg"))
    original = victim.read_bytes()
    victim.write_bytes(original[: len(original) // 2])
    again = fuse(sources.cats_source, sources.dogs_source, out, **KWARGS)
    assert (again.written, again.unchanged) == (1, False)
    assert victim.read_bytes() == original


@pytest.mark.parametrize("as_zip", [False, True], ids=["folders", "zips"])
def test_manifest_lists_every_source_file(tmp_path: Path, as_zip: bool) -> None:
    src = generate(tmp_path / "kaggle", as_zip=as_zip, **SMALL)
    out = tmp_path / "dataset"
    fuse(src.cats_source, src.dogs_source, out, **KWARGS)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    if as_zip:
        expected = set()
        for archive in (src.cats_source, src.dogs_source):
            expected |= _zip_members(Path(archive), str(archive))
    else:
        expected = {str(p) for folder in (src.cats_source, src.dogs_source) for p in Path(folder).rglob("*")
                    if p.is_file()}  # fmt: skip
    assert set(manifest["source"]) == expected
    assert len(manifest) == len(expected)
    dogs = manifest[manifest["source"].str.contains("/dog.", regex=False)]
    assert len(dogs) == max(2, SMALL["cats"] // 10)
    assert set(dogs["status"]) == {"unused"} and set(dogs["detail"]) == {"dogs come from Dog Breed Identification"}
    assert set(dogs["label"]) == {"dog"} and set(dogs["split"]) == {"excluded"}
    split = json.loads((out / "split.json").read_text())
    assert split["counts"]["competition_dogs_ignored"]["dog"] == len(dogs)


def _zip_members(path: Path, ref: str, data: bytes | None = None) -> set[str]:
    import zipfile

    members = set()
    with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as archive:
        for name in archive.namelist():
            if name.endswith(".zip"):
                members |= _zip_members(path, f"{ref}!{name}", archive.read(name))
            elif not name.endswith("/"):
                members.add(f"{ref}!{name}")
    return members


def _fail_on_call(n: int, failure):
    """A stand-in for placement.write_bytes that does ``failure`` on its n-th call and writes otherwise."""
    real, calls = placement.write_bytes, []

    def write(target: str, data: bytes) -> None:
        calls.append(target)
        if len(calls) == n:
            failure(target, data, real)
        else:
            real(target, data)

    return write


def _disk_full(target: str, data: bytes, real) -> None:
    raise OSError(28, "No space left on device")


def _flipped_byte(target: str, data: bytes, real) -> None:
    real(target, data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])


@pytest.mark.parametrize("failure", [_disk_full, _flipped_byte], ids=["failed-write", "hash-mismatch"])
def test_move_keeps_every_source_when_a_write_fails(tmp_path: Path, monkeypatch, failure) -> None:
    src = generate(tmp_path / "kaggle", **SMALL)
    before = _snapshot(src.cats_source, src.dogs_source)
    out = tmp_path / "dataset"
    kwargs = dict(KWARGS, mode="move", workers=1)
    monkeypatch.setattr(placement, "write_bytes", _fail_on_call(7, failure))
    with pytest.raises(CatDogError, match="No space left|does not match the source") as info:
        fuse(src.cats_source, src.dogs_source, out, **kwargs)
    assert str(out) in str(info.value)
    assert _snapshot(src.cats_source, src.dogs_source) == before
    assert json.loads((out / "split.json").read_text())["complete"] is False

    monkeypatch.undo()  # the disk is fine again: the same command completes the move
    result = fuse(src.cats_source, src.dogs_source, out, **kwargs)
    assert result.completed and result.written > 0
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    for row in manifest.itertuples():
        if row.status == "ok":
            assert not Path(row.source).exists()
            assert hashlib.sha256((out / row.destination).read_bytes()).hexdigest() == before[row.source]
        else:
            assert Path(row.source).exists()


@pytest.mark.parametrize("kept", [True, False], ids=["bytes-kept-by-the-plan", "bytes-read-again"])
def test_a_source_changed_after_planning_is_never_deleted(tmp_path: Path, monkeypatch, kept: bool) -> None:
    src = generate(tmp_path / "kaggle", **SMALL)
    real_plan = command.make_plan
    changed = {}

    def plan_then_change_a_source(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        item = plan.placed[3]
        Path(item.file.path).write_bytes(item.file.read() + b"\0")
        changed["source"] = item.file.path
        return plan

    monkeypatch.setattr(command, "make_plan", plan_then_change_a_source)
    if not kept:
        monkeypatch.setattr(command, "KEEP_BYTES", 0)
    before = _snapshot(src.cats_source, src.dogs_source)
    with pytest.raises(CatDogError, match="changed"):
        fuse(src.cats_source, src.dogs_source, tmp_path / "dataset", mode="move", **KWARGS)
    after = _snapshot(src.cats_source, src.dogs_source)
    assert set(after) == set(before)  # every source kept
    assert [p for p in before if before[p] != after[p]] == [changed["source"]]


def test_full_verify_rejects_a_jpeg_damaged_in_the_middle(sources, tmp_path: Path) -> None:
    victim = Path(sources.cats_source) / "train" / "cat.4.jpg"
    data = victim.read_bytes()
    # A block of another file lands in the middle (a resumed download, cross-linked clusters): same length,
    # the end marker intact.
    block = (Path(sources.cats_source) / "train" / "cat.5.jpg").read_bytes()[:300]
    middle = len(data) // 2
    damaged = data[:middle] + block + data[middle + len(block) :]
    assert damaged.endswith(b"\xff\xd9") and len(damaged) == len(data)
    victim.write_bytes(damaged)
    assert check_image(damaged) is None  # the quick check cannot see it
    assert "corrupt JPEG" in check_image(damaged, full=True)

    rows = {}
    for verify in ("quick", "full"):
        out = tmp_path / verify
        fuse(sources.cats_source, sources.dogs_source, out, verify=verify, **KWARGS)
        manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
        rows[verify] = manifest[manifest["source"] == str(victim)].iloc[0]
    assert rows["full"]["status"] == "corrupt" and rows["full"]["split"] == "excluded"
    assert rows["quick"]["status"] in {"ok", "unused"}


@pytest.mark.parametrize(
    "options",
    [{}, {"progressive": True}, {"optimize": True}, {"restart_marker_blocks": 3},
     {"restart_marker_rows": 1, "progressive": True}, {"quality": 40, "subsampling": 0},
     {"exif": b"Exif\0\0" + bytes(40), "comment": b"a comment"}],
    ids=["baseline", "progressive", "optimized", "restarts", "progressive-restarts", "no-subsampling", "exif"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_full_verify_accepts_every_kind_of_valid_jpeg(options: dict, mode: str) -> None:
    rng = np.random.default_rng(len(options))
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    assert jpeg_structure_problem(buffer.getvalue()) is None
    assert check_image(buffer.getvalue(), full=True) is None
    cut = buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3]
    assert jpeg_structure_problem(cut) is not None and check_image(cut, full=True) is not None


def test_out_that_is_a_file_is_refused(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.write_text("keep me")
    with pytest.raises(CatDogError, match="not a folder"):
        fuse(sources.cats_source, sources.dogs_source, out, **KWARGS)
    assert out.read_text() == "keep me"
    assert os.path.isfile(out)


def test_an_image_in_a_format_fusion_does_not_write_is_recorded_as_unsupported(sources, tmp_path: Path) -> None:
    victim = Path(sources.cats_source) / "train" / "cat.0.bmp"
    Image.new("RGB", (8, 8)).save(victim, "BMP")
    result = fuse(sources.cats_source, sources.dogs_source, tmp_path / "dataset", **KWARGS)
    rows = [row for row in result.excluded if row["source"] == str(victim)]
    assert [(r["status"], r["detail"]) for r in rows] == [("unsupported", "unsupported image format BMP")]
