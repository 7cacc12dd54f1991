"""catdog fuse on generated data in the exact Kaggle layouts (folders and zips)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from catdog import CatDogError
from catdog.cli import main as catdog
from catdog.data.fusion import Source, fuse, fusion_arguments, make_plan
from catdog.data.fusion.sources import read_file
from catdog.data.sample_data import generate

SMALL = dict(cats=30, dogs_per_breed=5, breeds=5, size=48, seed=3)


@pytest.fixture
def sources(tmp_path: Path):
    return generate(tmp_path / "kaggle", **SMALL)


def _files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every image under train/ and test/."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for split in ("train", "test")
        for p in sorted((root / split).rglob("*.jpg"))
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_fuse_layout_counts_and_manifest(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = fuse(sources.cats_source, sources.dogs_source, out, cat_train=20, cat_test=8, seed=1, progress=False)

    assert {p.relative_to(out).as_posix() for p in out.glob("*/*")} == {
        "train/cat",
        "train/dog",
        "test/cat",
        "test/dog",
    }
    assert len(list((out / "train/cat").glob("cat.*.jpg"))) == 20
    assert len(list((out / "test/cat").glob("cat.*.jpg"))) == 8
    dogs = len(list((out / "train/dog").glob("*.jpg"))) + len(list((out / "test/dog").glob("*.jpg")))
    assert dogs == SMALL["dogs_per_breed"] * SMALL["breeds"]

    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    placed = manifest[manifest["status"] == "ok"]
    assert len(placed) == 28 + dogs
    for row in placed.itertuples():
        assert hashlib.sha256((out / row.destination).read_bytes()).hexdigest() == row.sha256
        assert Path(row.source).read_bytes() == (out / row.destination).read_bytes()
    assert ((manifest["status"] == "unused") & (manifest["label"] == "cat")).sum() == SMALL["cats"] - 28

    split = json.loads((out / "split.json").read_text())
    assert split["complete"] is True and split["seed"] == 1
    assert split["counts"]["train"]["cat"] == 20 and split["counts"]["test"]["cat"] == 8
    assert result.train_breeds == split["train_breeds"] and result.test_breeds == split["test_breeds"]


def test_breeds_are_disjoint_and_every_image_follows_its_breed(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = fuse(sources.cats_source, sources.dogs_source, out, cat_train=20, cat_test=8, progress=False)
    assert not set(result.train_breeds) & set(result.test_breeds)
    assert result.train_breeds and result.test_breeds
    labels = pd.read_csv(Path(sources.dogs_source) / "labels.csv")
    breed_of = dict(zip(labels["id"], labels["breed"], strict=True))
    for split, breeds in (("train", result.train_breeds), ("test", result.test_breeds)):
        for image in (out / split / "dog").glob("*.jpg"):
            assert breed_of[image.stem] in breeds
    per_breed = labels.groupby("breed").size()
    assert sum(per_breed[b] for b in result.test_breeds) == len(list((out / "test/dog").glob("*.jpg")))


def test_same_seed_same_split_other_seed_other_split(sources, tmp_path: Path) -> None:
    args = (sources.cats_source, sources.dogs_source)
    a = fuse(*args, tmp_path / "a", cat_train=20, cat_test=8, seed=5, progress=False)
    b = fuse(*args, tmp_path / "b", cat_train=20, cat_test=8, seed=5, progress=False)
    c = fuse(*args, tmp_path / "c", cat_train=20, cat_test=8, seed=6, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.test_breeds == b.test_breeds
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    assert c.counts["train"]["cat"] == 20


def test_zip_sources_give_the_same_dataset_as_folders(tmp_path: Path) -> None:
    folders = generate(tmp_path / "folders", **SMALL)
    zips = generate(tmp_path / "zips", as_zip=True, **SMALL)
    assert zipfile.ZipFile(zips.cats_source).namelist() == ["train.zip", "test1.zip", "sampleSubmission.csv"]
    fuse(folders.cats_source, folders.dogs_source, tmp_path / "from_folders", cat_train=20, cat_test=8, progress=False)
    fuse(zips.cats_source, zips.dogs_source, tmp_path / "from_zips", cat_train=20, cat_test=8, progress=False)
    assert _files(tmp_path / "from_folders") == _files(tmp_path / "from_zips")

    # The inner train.zip alone works too.
    inner = tmp_path / "train.zip"
    inner.write_bytes(zipfile.ZipFile(zips.cats_source).read("train.zip"))
    fuse(inner, zips.dogs_source, tmp_path / "from_inner", cat_train=20, cat_test=8, progress=False)
    assert _files(tmp_path / "from_inner") == _files(tmp_path / "from_zips")


def test_corrupt_and_unexpected_files_are_excluded_and_recorded(tmp_path: Path) -> None:
    src = generate(tmp_path / "kaggle", corrupt=2, **SMALL)
    (Path(src.cats_source) / "train" / "notes.txt").write_text("not an image")
    (Path(src.cats_source) / "train" / "cat.999.jpg").write_text("plain text with a jpg name")
    out = tmp_path / "dataset"
    result = fuse(src.cats_source, src.dogs_source, out, cat_train=20, cat_test=8, progress=False)

    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    excluded = manifest[manifest["split"] == "excluded"]
    by_name = {
        Path(s.split("!")[-1]).name: status for s, status in zip(excluded["source"], excluded["status"], strict=True)
    }
    for name in src.corrupt_files:
        assert by_name[Path(name).name] == "corrupt"
    assert by_name["notes.txt"] == "unrecognised"
    assert by_name["cat.999.jpg"] == "not_image"
    assert len(result.excluded) == 2 * 2 + 2
    placed = {Path(p).name for p in manifest.loc[manifest["status"] == "ok", "destination"]}
    assert not placed & set(by_name)
    assert not any((out / "train").rglob("notes.txt"))
    # Every image file of the sources is accounted for in the manifest.
    all_images = {p.name for p in Path(src.dogs_source, "train").glob("*.jpg")}
    all_images |= {p.name for p in Path(src.cats_source, "train").glob("cat.*.jpg")}
    assert all_images <= {Path(s).name for s in manifest["source"]}


def test_rerun_changes_nothing_and_restores_a_deleted_file(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    kwargs = dict(cat_train=20, cat_test=8, seed=2, progress=False)
    fuse(sources.cats_source, sources.dogs_source, out, **kwargs)
    before = _mtimes(out)
    again = fuse(sources.cats_source, sources.dogs_source, out, **kwargs)
    assert again.unchanged
    assert _mtimes(out) == before

    victim = next((out / "test" / "cat").glob("*.jpg"))
    content_hash = _files(out)[victim.relative_to(out).as_posix()]
    victim.unlink()
    fuse(sources.cats_source, sources.dogs_source, out, **kwargs)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == content_hash


def test_other_arguments_refuse_unless_overwrite(sources, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    fuse(sources.cats_source, sources.dogs_source, out, cat_train=20, cat_test=8, progress=False)
    with pytest.raises(CatDogError, match="different arguments.*--overwrite"):
        fuse(sources.cats_source, sources.dogs_source, out, cat_train=10, cat_test=8, progress=False)
    assert len(list((out / "train/cat").glob("*.jpg"))) == 20  # untouched
    fuse(sources.cats_source, sources.dogs_source, out, cat_train=10, cat_test=8, overwrite=True, progress=False)
    assert len(list((out / "train/cat").glob("*.jpg"))) == 10

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(CatDogError, match="not empty"):
        fuse(sources.cats_source, sources.dogs_source, foreign, cat_train=10, cat_test=8, progress=False)


def test_hardlink_and_symlink_modes(sources, tmp_path: Path) -> None:
    hard = tmp_path / "hard"
    fuse(sources.cats_source, sources.dogs_source, hard, cat_train=20, cat_test=8, mode="hardlink", progress=False)
    manifest = pd.read_csv(hard / "manifest.csv", keep_default_na=False)
    for row in manifest[manifest["status"] == "ok"].itertuples():
        assert (hard / row.destination).samefile(row.source)

    soft = tmp_path / "soft"
    fuse(sources.cats_source, sources.dogs_source, soft, cat_train=20, cat_test=8, mode="symlink", progress=False)
    links = list((soft / "train" / "cat").iterdir())
    assert links and all(p.is_symlink() and p.resolve().is_file() for p in links)
    assert _files(soft) == _files(hard)


def test_move_mode_moves_only_verified_files_and_reruns_safely(tmp_path: Path) -> None:
    src = generate(tmp_path / "kaggle", corrupt=1, **SMALL)
    out = tmp_path / "dataset"
    kwargs = dict(cat_train=20, cat_test=8, mode="move", progress=False)
    fuse(src.cats_source, src.dogs_source, out, **kwargs)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    for row in manifest.itertuples():
        if row.status == "ok":
            assert not Path(row.source).exists()
            assert hashlib.sha256((out / row.destination).read_bytes()).hexdigest() == row.sha256
        else:  # corrupt, unused or unrecognised files stay where they were
            assert Path(row.source).exists()
    assert fuse(src.cats_source, src.dogs_source, out, **kwargs).unchanged
    with pytest.raises(CatDogError, match="only copies"):
        fuse(src.cats_source, src.dogs_source, out, cat_train=5, cat_test=5, overwrite=True, progress=False)


def test_modes_other_than_copy_refuse_zip_sources(tmp_path: Path) -> None:
    src = generate(tmp_path / "kaggle", as_zip=True, **SMALL)
    with pytest.raises(CatDogError, match="needs folder sources"):
        fuse(src.cats_source, src.dogs_source, tmp_path / "out", cat_train=5, cat_test=5, mode="hardlink")


def test_test_breeds_file_and_leakage_report(sources, tmp_path: Path) -> None:
    labels = pd.read_csv(Path(sources.dogs_source) / "labels.csv")
    breeds = sorted(labels["breed"].unique())
    chosen = breeds[:2]
    # Plant a byte-identical copy of a test-breed image under a train-breed id: leakage.
    test_id = labels.loc[labels["breed"] == chosen[0], "id"].iloc[0]
    train_id = labels.loc[labels["breed"] == breeds[-1], "id"].iloc[0]
    train_dir = Path(sources.dogs_source) / "train"
    shutil.copyfile(train_dir / f"{test_id}.jpg", train_dir / f"{train_id}.jpg")

    breed_file = tmp_path / "test_breeds.txt"
    breed_file.write_text(f"# held-out breeds\n{chosen[0]}\n{chosen[1]}\n")
    out = tmp_path / "dataset"
    status = catdog(
        ["fuse", "--cats-source", str(sources.cats_source), "--dogs-source", str(sources.dogs_source),
         "--out", str(out), "--cat-train", "20", "--cat-test", "8", "--test-breeds", str(breed_file),
         "--no-progress"]
    )  # fmt: skip
    assert status == 0
    split = json.loads((out / "split.json").read_text())
    assert split["test_breeds"] == chosen
    assert len(split["leaks"]) == 1
    assert f"test/dog/{test_id}.jpg" in split["leaks"][0]["files"]
    assert f"train/dog/{train_id}.jpg" in split["leaks"][0]["files"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda cats, dogs: shutil.rmtree(cats), "no such file or folder"),
        (lambda cats, dogs: (dogs / "labels.csv").unlink(), "labels.csv not found"),
        (lambda cats, dogs: (dogs / "labels.csv").write_text("image,dog\na,b\n"), "needs the columns id,breed"),
        (lambda cats, dogs: next((dogs / "train").glob("*.jpg")).unlink(), "have no image"),
        (lambda cats, dogs: [p.unlink() for p in (cats / "train").glob("cat.*")], "found no cat"),
    ],
    ids=["missing-source", "no-labels", "bad-columns", "missing-image", "no-cats"],
)
def test_bad_sources_get_a_message_naming_the_file(tmp_path: Path, damage, message: str) -> None:
    src = generate(tmp_path / "kaggle", **SMALL)
    damage(Path(src.cats_source), Path(src.dogs_source))
    with pytest.raises(CatDogError, match=message) as info:
        fuse(src.cats_source, src.dogs_source, tmp_path / "out", cat_train=5, cat_test=5, progress=False)
    assert str(tmp_path) in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before the sources are known good


def test_not_a_zip_and_too_many_cats(sources, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "dogs-vs-cats.zip"
    fake.write_text("not a zip")
    with pytest.raises(CatDogError, match="not a valid zip"):
        fuse(fake, sources.dogs_source, tmp_path / "out", cat_train=5, cat_test=5)
    status = catdog(
        ["fuse", "--cats-source", str(sources.cats_source), "--dogs-source", str(sources.dogs_source),
         "--out", str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert "asked for 8995 train + 3505 test" in err and "holds only 30" in err
    assert "Traceback" not in err


def test_the_plan_places_every_file_before_anything_is_written(sources, tmp_path: Path) -> None:
    arguments = fusion_arguments(sources.cats_source, sources.dogs_source, 20, 8, None, None, 2, "copy", "quick")
    with Source(sources.cats_source, "cats") as cats, Source(sources.dogs_source, "dogs") as dogs:
        plan = make_plan(cats, dogs, arguments, workers=2, progress=False)

    placed = plan.placed
    train_dogs = sum(1 for i in placed if i.split == "train" and i.label == "dog")
    assert plan.counts()["train"] == {"cat": 20, "dog": train_dogs}
    assert plan.counts()["test"]["cat"] == 8
    assert len({i.destination for i in placed}) == len(placed)
    for item in placed:
        assert item.destination == f"{item.split}/{item.label}/{Path(item.file.name).name}"
        assert item.sha256 == hashlib.sha256(item.file.read()).hexdigest()
        if item.label == "dog":
            assert item.split == ("train" if item.breed in plan.train_breeds else "test")
    assert not set(plan.train_breeds) & set(plan.test_breeds)

    # fuse() writes exactly the plan.
    out = tmp_path / "dataset"
    fuse(sources.cats_source, sources.dogs_source, out, cat_train=20, cat_test=8, seed=2, progress=False)
    assert _files(out) == {i.destination: i.sha256 for i in placed}
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(manifest["source"]) == [i.file.ref for i in plan.items]


def test_a_source_that_fails_the_plan_leaves_an_existing_output_untouched(tmp_path: Path) -> None:
    """Even with ``overwrite``: the plan reads and checks every file (two corrupt cats leave 28 usable, one too
    few) before anything under ``out`` changes."""
    src = generate(tmp_path / "kaggle", corrupt=2, **SMALL)
    out = tmp_path / "dataset"
    fuse(src.cats_source, src.dogs_source, out, cat_train=20, cat_test=8, progress=False)
    before = {name: (mtime, (out / name).read_bytes()) for name, mtime in _mtimes(out).items()}
    folders = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_dir())
    with pytest.raises(CatDogError, match="only 28 usable cats"):
        fuse(src.cats_source, src.dogs_source, out, cat_train=20, cat_test=9, overwrite=True, progress=False)
    assert {name: (mtime, (out / name).read_bytes()) for name, mtime in _mtimes(out).items()} == before
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_dir()) == folders
    assert json.loads((out / "split.json").read_text())["arguments"]["cat_test"] == 8


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * (1 << 20) + 7])
def test_read_file_returns_every_byte(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    (tmp_path / "f").write_bytes(data)
    assert read_file(str(tmp_path / "f")) == data


def test_linked_folders_in_a_source_are_followed_once(sources, tmp_path: Path) -> None:
    cats = Path(sources.cats_source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("x")
    (cats / "train" / "loop").symlink_to(cats / "train", target_is_directory=True)  # a link to its own folder
    (cats / "extra").symlink_to(elsewhere, target_is_directory=True)
    with Source(cats, "cats") as source:
        names = [f.name for f in source.files()]
    assert len(names) == len(set(names))
    assert "train/cat.0.jpg" in names and "extra/notes.txt" in names
    assert not any(name.startswith("train/loop/") for name in names)
