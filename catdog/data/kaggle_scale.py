"""Generated data at the real Kaggle downloads' size and shape (``catdog sample-data --scale kaggle``).

* "Dogs vs. Cats": 12,500 ``train/cat.<n>.jpg``, 12,500 ``train/dog.<n>.jpg``, 12,500 unlabelled
  ``test1/<n>.jpg`` (1-based) and ``sampleSubmission.csv`` (``id,label``); with ``--zip``, ``dogs-vs-cats.zip``
  holding ``train.zip``, ``test1.zip`` and the CSV, as Kaggle ships it.
* "Dog Breed Identification": ``labels.csv`` (``id,breed``, sorted by id) with 10,222 rows over 120 breeds
  of 66 to 126 images each, ``train/<id>.jpg``, 10,357 unlabelled ``test/<id>.jpg`` and
  ``sample_submission.csv`` (``id`` and one column per breed).

The photos vary as real ones do: the long side mostly 300-500 px, a few small ones and a few of thousands
of pixels, landscape and portrait aspect ratios, some grayscale, CMYK and progressive JPEGs, and file sizes
near the real ones (photo grain). Each image is drawn from its own seeded stream, so the output is the
same for a seed whatever the number of worker processes. ``fraction`` scales every count (the same code
path, for tests and quick rehearsals).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops
from tqdm.auto import tqdm

from catdog import CatDogError
from catdog.data.sample_data import BREED_NAMES, CATS_DIRNAME, DOGS_DIRNAME, SampleData, breed_style, draw_cat, draw_dog


@dataclass(frozen=True)
class KaggleFigures:
    """The real downloads' counts."""

    cats: int = 12_500
    competition_dogs: int = 12_500
    cats_test: int = 12_500
    dogs: int = 10_222
    breeds: int = 120
    dogs_test: int = 10_357
    min_per_breed: int = 66
    max_per_breed: int = 126


REAL = KaggleFigures()

#: The 120 breeds of Dog Breed Identification (the 60 of small sample data first).
KAGGLE_BREEDS = (*BREED_NAMES,
    "italian_greyhound", "japanese_spaniel", "keeshond", "kelpie", "kerry_blue_terrier", "komondor", "kuvasz",
    "labrador_retriever", "lakeland_terrier", "leonberg", "lhasa", "malamute", "malinois", "maltese_dog",
    "mexican_hairless", "miniature_pinscher", "miniature_poodle", "miniature_schnauzer", "newfoundland",
    "norfolk_terrier", "norwegian_elkhound", "norwich_terrier", "old_english_sheepdog", "otterhound", "papillon",
    "pekinese", "pembroke", "pomeranian", "pug", "redbone", "rhodesian_ridgeback", "rottweiler", "saint_bernard",
    "saluki", "samoyed", "schipperke", "scotch_terrier", "scottish_deerhound", "sealyham_terrier",
    "shetland_sheepdog", "shih-tzu", "siberian_husky", "silky_terrier", "soft-coated_wheaten_terrier",
    "staffordshire_bullterrier", "standard_poodle", "standard_schnauzer", "sussex_spaniel", "tibetan_mastiff",
    "tibetan_terrier", "toy_poodle", "toy_terrier", "vizsla", "walker_hound", "weimaraner",
    "welsh_springer_spaniel", "west_highland_white_terrier", "whippet", "wire-haired_fox_terrier",
    "yorkshire_terrier",
)  # fmt: skip
_DRAW_PX = 80  # the subject is drawn this high, then scaled to the photo's size and given grain
_GRAIN_PX = 512  # side of the grain tile each process makes once
_CHUNK = 64  # images per worker task


@dataclass(frozen=True)
class Job:
    """One image to draw: its name inside the source, what it shows and its seeded stream."""

    name: str
    kind: str  # "cat" or "dog"
    breed: int
    stream: tuple[int, ...]


def breed_counts(seed: int = 0, fraction: float = 1.0) -> list[int]:
    """Images per breed (in :data:`KAGGLE_BREEDS` order): 66-126 each, 10,222 in all, scaled by ``fraction``.

    At full scale the smallest breed has exactly 66 and the largest 126; a fraction keeps the total at
    ``round(10222 * fraction)`` (largest remainders) and every breed at least one image.
    """
    rng = np.random.default_rng([seed, 11])
    low, high, total = REAL.min_per_breed, REAL.max_per_breed, REAL.dogs
    counts = np.rint(low + (high - low) * rng.beta(1.6, 3.2, REAL.breeds)).astype(int)
    counts[np.argmin(counts)], counts[np.argmax(counts)] = low, high
    fixed = {int(np.argmin(counts)), int(np.argmax(counts))}
    free = [i for i in range(REAL.breeds) if i not in fixed]
    while (gap := total - int(counts.sum())) != 0:
        i = free[int(rng.integers(len(free)))]
        step = 1 if gap > 0 else -1
        if low < counts[i] + step < high:
            counts[i] += step
    if fraction == 1.0:
        return counts.tolist()
    scaled = counts * fraction
    result = np.maximum(1, np.floor(scaled).astype(int))
    order = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
    for i in order[: max(0, scaled_count(total, fraction) - int(result.sum()))]:
        result[i] += 1
    return result.tolist()


def scaled_count(count: int, fraction: float) -> int:
    """``count`` scaled by ``fraction``, at least 1."""
    return max(1, round(count * fraction))


def plan_jobs(seed: int, fraction: float) -> tuple[list[Job], list[Job], list[tuple[str, str]], list[str]]:
    """(Dogs vs. Cats jobs, Dog Breed jobs, labels.csv rows sorted by id, test ids) for ``seed`` and ``fraction``."""
    cats_jobs = [Job(f"train/cat.{n}.jpg", "cat", 0, (seed, 1, n)) for n in range(scaled_count(REAL.cats, fraction))]
    competition = scaled_count(REAL.competition_dogs, fraction)
    rng = np.random.default_rng([seed, 2])
    cats_jobs += [Job(f"train/dog.{n}.jpg", "dog", int(rng.integers(REAL.breeds)), (seed, 2, n))
                  for n in range(competition)]  # fmt: skip
    for n in range(1, scaled_count(REAL.cats_test, fraction) + 1):  # unlabelled, half cats, half dogs
        cats_jobs.append(Job(f"test1/{n}.jpg", "cat" if rng.random() < 0.5 else "dog", int(rng.integers(120)),
                             (seed, 3, n)))  # fmt: skip
    id_rng = np.random.default_rng([seed, 4])
    rows = [(uuid.UUID(bytes=id_rng.bytes(16), version=4).hex, breed)
            for breed, count in zip(KAGGLE_BREEDS, breed_counts(seed, fraction), strict=True)
            for _ in range(count)]  # fmt: skip
    rows.sort()
    index = {breed: i for i, breed in enumerate(KAGGLE_BREEDS)}
    dog_jobs = [Job(f"train/{image_id}.jpg", "dog", index[breed], (seed, 5, n))
                for n, (image_id, breed) in enumerate(rows)]  # fmt: skip
    test_ids = sorted(uuid.UUID(bytes=id_rng.bytes(16), version=4).hex
                      for _ in range(scaled_count(REAL.dogs_test, fraction)))  # fmt: skip
    dog_jobs += [Job(f"test/{image_id}.jpg", "dog", int(rng.integers(REAL.breeds)), (seed, 6, n))
                 for n, image_id in enumerate(test_ids)]  # fmt: skip
    return cats_jobs, dog_jobs, rows, test_ids


def photo_shape(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): long side mostly 300-500 px, 3% smaller, 0.5% of 1,000-3,500 px; 1 in 4 portrait."""
    draw = rng.random()
    long_side = int(rng.integers(1000, 3500) if draw < 0.005 else rng.integers(100, 300) if draw < 0.035
                    else rng.integers(300, 501))  # fmt: skip
    short_side = max(32, round(long_side / rng.choice([1.0, 1.25, 1.33, 1.33, 1.33, 1.5, 1.78, rng.uniform(1, 2)])))
    return (short_side, long_side) if rng.random() < 0.25 else (long_side, short_side)


#: Grain strengths (Gaussian sigma): photos differ in noise, which sets much of their JPEG size.
GRAIN_SIGMAS = (3, 4, 6, 8)
_grain: dict[int, np.ndarray] = {}


def _grain_tile(height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """Gaussian grain (mean 128) of the asked size: a random crop of this process's tile (tiled when larger)."""
    sigma = GRAIN_SIGMAS[int(rng.integers(len(GRAIN_SIGMAS)))]
    if sigma not in _grain:
        _grain[sigma] = np.asarray(Image.effect_noise((_GRAIN_PX, _GRAIN_PX), sigma).convert("RGB"))
    tile = _grain[sigma]
    if height > _GRAIN_PX or width > _GRAIN_PX:
        tile = np.tile(tile, (-(-height // _GRAIN_PX) + 1, -(-width // _GRAIN_PX) + 1, 1))
    y, x = int(rng.integers(tile.shape[0] - height + 1)), int(rng.integers(tile.shape[1] - width + 1))
    return Image.fromarray(np.ascontiguousarray(tile[y : y + height, x : x + width]))


def render(job: Job, seed: int) -> bytes:
    """The JPEG bytes of one job: drawn small, scaled to a photo's size, grain added, saved in a photo's format."""
    rng = np.random.default_rng(job.stream)
    subject = draw_cat(rng, _DRAW_PX) if job.kind == "cat" else draw_dog(rng, _DRAW_PX, breed_style(job.breed, seed))
    width, height = photo_shape(rng)
    image = subject.resize((width, height), Image.Resampling.BILINEAR)
    image = ImageChops.add(image, _grain_tile(height, width, rng), scale=1.0, offset=-128)
    draw = rng.random()
    if draw < 0.02:
        image = image.convert("L")
    elif draw < 0.025:
        image = image.convert("CMYK")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 91)), progressive=bool(rng.random() < 0.05))
    return buffer.getvalue()


def _render_chunk(args: tuple[list[Job], int]) -> list[tuple[str, bytes]]:
    jobs, seed = args
    return [(job.name, render(job, seed)) for job in jobs]


def generate_kaggle(
    out: str | Path,
    fraction: float = 1.0,
    seed: int = 0,
    as_zip: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> SampleData:
    """Write both downloads at ``fraction`` of the real counts under ``out`` (folders, or zips with ``as_zip``).

    Prints the disk space it needs first and refuses (writing nothing) when ``out`` has less free.
    """
    if not 0.0 < fraction <= 1.0:
        raise CatDogError(f"--fraction must be in (0, 1], got {fraction}")
    if round(REAL.dogs * fraction) < REAL.breeds:
        raise CatDogError(f"--fraction {fraction} leaves fewer dogs than the {REAL.breeds} breeds; use at least 0.012")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cats_jobs, dog_jobs, rows, test_ids = plan_jobs(seed, fraction)
    check_disk(out, estimate_bytes(cats_jobs + dog_jobs, seed, as_zip), len(cats_jobs) + len(dog_jobs))
    workers = workers or os.cpu_count() or 1
    cats_root, dogs_root = out / CATS_DIRNAME, out / DOGS_DIRNAME
    for root in (cats_root, dogs_root):
        _ArchiveWriter.remove_partial(root)
    with _pool(workers) if workers > 1 else _InProcess() as pool:
        with _ArchiveWriter(cats_root, as_zip, ("train", "test1")) as writer:
            _write_images(pool, cats_jobs, seed, writer, "Dogs vs. Cats", progress)
            submission = "id,label\n" + "".join(
                f"{n},0\n" for n in range(1, scaled_count(REAL.cats_test, fraction) + 1)
            )
            writer.write("sampleSubmission.csv", submission.encode())
        with _ArchiveWriter(dogs_root, as_zip, ()) as writer:
            _write_images(pool, dog_jobs, seed, writer, "Dog Breed Identification", progress)
            writer.write("labels.csv", _csv([("id", "breed"), *rows]))
            breeds = sorted(KAGGLE_BREEDS)
            share = repr(1 / len(breeds))
            writer.write(
                "sample_submission.csv", _csv([("id", *breeds), *((i, *[share] * len(breeds)) for i in test_ids)])
            )
    suffix = ".zip" if as_zip else ""
    return SampleData(cats_root.with_name(cats_root.name + suffix), dogs_root.with_name(dogs_root.name + suffix))


def estimate_bytes(jobs: list[Job], seed: int, as_zip: bool, sample: int = 96) -> int:
    """Disk space the jobs need: the mean size of an evenly spread sample of them, times their count, plus 25%
    (the sample's spread and the file system's blocks); zips need the inner archives twice while the outer
    one is written."""
    step = max(1, len(jobs) // sample)
    sizes = [len(render(job, seed)) for job in jobs[::step][:sample]]
    total = int(sum(sizes) / len(sizes) * len(jobs) * 1.25)
    return total * 2 if as_zip else total


def check_disk(out: Path, needed: int, images: int) -> None:
    """Print what the generation needs; refuse when ``out``'s file system has less free."""
    free = shutil.disk_usage(out).free
    print(f"sample-data --scale kaggle: {images:,} images, about {_size(needed)} in {out} ({_size(free)} free)",
          flush=True)  # fmt: skip
    if needed > free:
        raise CatDogError(f"--out {out}: needs about {_size(needed)} but only {_size(free)} are free; "
                          "free some space, choose another --out or pass a --fraction below 1")  # fmt: skip


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def _csv(rows: Iterator[tuple[str, ...]] | list[tuple[str, ...]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _write_images(pool, jobs: list[Job], seed: int, writer: _ArchiveWriter, what: str, progress: bool) -> None:
    chunks = [(jobs[i : i + _CHUNK], seed) for i in range(0, len(jobs), _CHUNK)]
    with tqdm(total=len(jobs), desc=f"sample-data: {what}", unit="img", disable=not progress,
              mininterval=2.0) as bar:  # fmt: skip
        for rendered in pool.imap(_render_chunk, chunks):
            for name, data in rendered:
                writer.write(name, data)
            bar.update(len(rendered))


def _pool(workers: int):  # noqa: ANN202
    """Worker processes: forked where the platform can (no re-import of a ``__main__`` without a guard)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(workers)


class _InProcess:
    """A stand-in for a pool of one: maps in this process."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, function, iterable):  # noqa: ANN001, ANN201
        return map(function, iterable)


class _ArchiveWriter:
    """Writes a source as a folder, or as ``<root>.zip`` whose top folders in ``inner`` become inner zips
    (``train.zip``, ``test1.zip``), streamed to disk as they are written."""

    def __init__(self, root: Path, as_zip: bool, inner: tuple[str, ...]) -> None:
        self.root, self.as_zip, self.inner = root, as_zip, inner
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._made: set[Path] = set()
        if as_zip:
            root.mkdir(parents=True, exist_ok=True)  # the inner zips wait here until the outer one is written
            self._outer = zipfile.ZipFile(root.with_name(root.name + ".zip.partial"), "w", zipfile.ZIP_STORED)

    @staticmethod
    def remove_partial(root: Path) -> None:
        for path in (root, root.with_name(root.name + ".zip"), root.with_name(root.name + ".zip.partial")):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def write(self, name: str, data: bytes) -> None:
        if not self.as_zip:
            path = self.root / name
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            path.write_bytes(data)
            return
        top = name.split("/", 1)[0]
        if top in self.inner:
            if top not in self._zips:
                self._zips[top] = zipfile.ZipFile(self.root / f"{top}.zip", "w", zipfile.ZIP_STORED)
            self._zips[top].writestr(name, data)
        else:
            self._outer.writestr(name, data)

    def __enter__(self) -> _ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.as_zip:
            return
        for top, archive in self._zips.items():
            archive.close()
            self._outer.write(self.root / f"{top}.zip", f"{top}.zip")
        self._outer.close()
        shutil.rmtree(self.root)
        if exc[0] is None:
            os.replace(self._outer.filename, self.root.with_name(self.root.name + ".zip"))  # type: ignore[arg-type]
