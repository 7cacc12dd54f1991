"""The full-scale generator (``sample-data --scale kaggle``) at a reduced fraction, fused, and the rehearsal's
benchmark in its quick mode. The figures are the real downloads': 12,500 cats, 12,500 dogs and 12,500 test
images in "Dogs vs. Cats"; 10,222 labelled dogs of 120 breeds (66-126 each) and 10,357 test images in
"Dog Breed Identification"; a default fusion of 8,995 + 3,505 cats and an 86 / 34 breed split."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catdog.data.fusion import fuse
from catdog.data.kaggle_scale import KAGGLE_BREEDS, breed_counts, generate_kaggle

FRACTION = 0.02
ROOT = Path(__file__).resolve().parents[2]


def scaled(count: int) -> int:
    return round(count * FRACTION)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both downloads at 2% of the real counts, in the folder the benchmark reuses (``ROOT/sources``)."""
    root = tmp_path_factory.mktemp("full_scale")
    generate_kaggle(root / "sources", fraction=FRACTION, seed=0, workers=2, progress=False)
    (root / "sources" / "fraction.json").write_text(json.dumps({"fraction": FRACTION}))
    return root


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_full_scale_breed_counts_are_the_real_ones() -> None:
    counts = breed_counts(seed=0)
    assert len(counts) == len(set(KAGGLE_BREEDS)) == 120
    assert sum(counts) == 10_222
    assert (min(counts), max(counts)) == (66, 126)
    assert 80 < sorted(counts)[60] < 90  # the real median is 82; the mean 85.2


def test_dogs_vs_cats_has_the_real_names_and_counts(sources: Path) -> None:
    cats = sources / "sources" / "dogs-vs-cats"
    train = sorted(p.name for p in (cats / "train").iterdir())
    assert sorted(n for n in train if n.startswith("cat.")) == sorted(f"cat.{i}.jpg" for i in range(scaled(12_500)))
    assert sorted(n for n in train if n.startswith("dog.")) == sorted(f"dog.{i}.jpg" for i in range(scaled(12_500)))
    assert len(train) == 2 * scaled(12_500)
    test1 = {p.name for p in (cats / "test1").iterdir()}
    assert test1 == {f"{i}.jpg" for i in range(1, scaled(12_500) + 1)}
    submission = read_csv(cats / "sampleSubmission.csv")
    assert submission[0] == ["id", "label"] and [int(row[0]) for row in submission[1:]] == list(range(1, 251))


def test_dog_breed_identification_has_the_real_layout_and_distribution(sources: Path) -> None:
    dogs = sources / "sources" / "dog-breed-identification"
    labels = read_csv(dogs / "labels.csv")
    assert labels[0] == ["id", "breed"]
    rows = labels[1:]
    assert len(rows) == scaled(10_222)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # sorted by id, as Kaggle's
    assert all(re.fullmatch(r"[0-9a-f]{32}", image_id) for image_id, _ in rows)
    assert {p.name for p in (dogs / "train").iterdir()} == {f"{image_id}.jpg" for image_id, _ in rows}
    per_breed = Counter(breed for _, breed in rows)
    assert set(per_breed) == set(KAGGLE_BREEDS)  # every breed, even at 2%
    assert math.floor(66 * FRACTION) <= min(per_breed.values())
    assert max(per_breed.values()) <= math.ceil(126 * FRACTION)
    test = {p.name for p in (dogs / "test").iterdir()}
    submission = read_csv(dogs / "sample_submission.csv")
    assert len(test) == len(submission) - 1 == scaled(10_357)
    assert submission[0] == ["id", *sorted(KAGGLE_BREEDS)]
    assert {f"{row[0]}.jpg" for row in submission[1:]} == test
    assert all(abs(sum(float(v) for v in row[1:]) - 1.0) < 1e-9 for row in submission[1:4])


def test_photos_vary_as_real_ones_do(sources: Path) -> None:
    modes: Counter[str] = Counter()
    long_sides, progressive = [], 0
    for path in sorted((sources / "sources").rglob("*.jpg")):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            modes[image.mode] += 1
            long_sides.append(max(image.size))
            progressive += bool(image.info.get("progressive") or image.info.get("progression"))
    assert modes["L"] > 0 and modes["CMYK"] > 0 and modes["RGB"] > 0.9 * len(long_sides)
    assert progressive > 0
    typical = sum(300 <= side <= 500 for side in long_sides) / len(long_sides)
    assert 0.85 < typical < 1.0 and min(long_sides) < 300
    sizes = [p.stat().st_size for p in (sources / "sources").rglob("*.jpg")]
    assert 15_000 < sum(sizes) / len(sizes) < 45_000  # the real downloads average 22-34 KB a photo


def test_fusion_at_reduced_scale_keeps_the_proportions_and_breed_split(sources: Path, tmp_path: Path) -> None:
    src = sources / "sources"
    result = fuse(src / "dogs-vs-cats", src / "dog-breed-identification", tmp_path / "dataset",
                  cat_train=scaled(8995), cat_test=scaled(3505), progress=False)  # fmt: skip
    assert result.counts["train"]["cat"] == scaled(8995) and result.counts["test"]["cat"] == scaled(3505)
    assert (len(result.train_breeds), len(result.test_breeds)) == (86, 34)  # as the real 120 split by 3505/12500
    assert not set(result.train_breeds) & set(result.test_breeds)
    with (tmp_path / "dataset" / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    placed_dogs = [r for r in rows if r["label"] == "dog" and r["split"] in ("train", "test")]
    assert {r["breed"] for r in placed_dogs if r["split"] == "test"} == set(result.test_breeds)
    assert {r["breed"] for r in placed_dogs if r["split"] == "train"} == set(result.train_breeds)
    assert len(placed_dogs) == scaled(10_222)
    files = sum(1 for p in src.rglob("*") if p.is_file() and p.name != "fraction.json")
    assert len(rows) == files  # every file of both sources has its row


def test_benchmark_quick_mode_runs(sources: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "full_scale.py"), "--quick", "--root", str(sources)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "fuse copy" in done.stdout and "every file" in done.stdout
    assert re.search(r"decode \+ augment at 260 px +\d", done.stdout)
    assert "estimate on paper" in done.stdout
