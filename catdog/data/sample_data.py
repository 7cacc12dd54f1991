"""Generated sample data in the exact layouts of the two Kaggle competitions.

* "Dogs vs. Cats": ``dogs-vs-cats/{train/{cat,dog}.<n>.jpg, test1/<n>.jpg, sampleSubmission.csv}``
  or, with ``--zip``, ``dogs-vs-cats.zip`` holding ``train.zip``, ``test1.zip`` and the CSV.
* "Dog Breed Identification": ``dog-breed-identification/{labels.csv, train/<id>.jpg, test/<id>.jpg,
  sample_submission.csv}`` or ``dog-breed-identification.zip``.

Images are real JPEG files. Cats and dogs are drawn so that a CNN can tell them apart (cats: pointed
ears and stripes; dogs: drooping ears and spots) and every breed has its own colours, proportions and
background, so a breed-disjoint test split is a real generalisation test. Output is deterministic for
a seed.
"""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from catdog import CatDogError

CATS_DIRNAME = "dogs-vs-cats"
DOGS_DIRNAME = "dog-breed-identification"

#: Breed names as in the Kaggle "Dog Breed Identification" labels (a subset of its 120).
BREED_NAMES = (
    "affenpinscher", "afghan_hound", "african_hunting_dog", "airedale", "american_staffordshire_terrier",
    "appenzeller", "australian_terrier", "basenji", "basset", "beagle", "bedlington_terrier",
    "bernese_mountain_dog", "black-and-tan_coonhound", "blenheim_spaniel", "bloodhound", "bluetick",
    "border_collie", "border_terrier", "borzoi", "boston_bull", "bouvier_des_flandres", "boxer",
    "brabancon_griffon", "briard", "brittany_spaniel", "bull_mastiff", "cairn", "cardigan",
    "chesapeake_bay_retriever", "chihuahua", "chow", "clumber", "cocker_spaniel", "collie",
    "curly-coated_retriever", "dandie_dinmont", "dhole", "dingo", "doberman", "english_foxhound",
    "english_setter", "english_springer", "entlebucher", "eskimo_dog", "flat-coated_retriever",
    "french_bulldog", "german_shepherd", "german_short-haired_pointer", "giant_schnauzer",
    "golden_retriever", "gordon_setter", "great_dane", "great_pyrenees", "greater_swiss_mountain_dog",
    "groenendael", "ibizan_hound", "irish_setter", "irish_terrier", "irish_water_spaniel",
    "irish_wolfhound",
)  # fmt: skip


@dataclass(frozen=True)
class SampleData:
    """Where the generated sources are: pass them to ``catdog fuse``."""

    cats_source: Path
    dogs_source: Path
    corrupt_files: tuple[str, ...] = ()


def _background(rng: np.random.Generator, width: int, height: int, tint: np.ndarray) -> Image.Image:
    """A smooth two-colour gradient with a little noise."""
    start = np.clip(tint + rng.normal(0, 30, 3), 0, 255)
    end = np.clip(255 - tint + rng.normal(0, 30, 3), 0, 255)
    ramp = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height, dtype=np.float32)
    if ramp.size == width:
        grid = np.broadcast_to(ramp[None, :, None], (height, width, 1))
    else:
        grid = np.broadcast_to(ramp[:, None, None], (height, width, 1))
    array = start * (1 - grid) + end * grid + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, base: np.ndarray, spread: float = 25) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(base + rng.normal(0, spread, 3), 0, 255))  # type: ignore[return-value]


def draw_cat(rng: np.random.Generator, size: int) -> Image.Image:
    """A cat: round head with pointed triangular ears, stripes across the face, whiskers."""
    width = int(size * rng.uniform(0.9, 1.3))
    height = size
    fur_base = rng.uniform(40, 230, 3)
    image = _background(rng, width, height, rng.uniform(0, 255, 3))
    draw = ImageDraw.Draw(image)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.5, 0.62)
    r = size * rng.uniform(0.24, 0.32)
    fur, stripe = _colour(rng, fur_base), _colour(rng, fur_base * 0.35, 10)
    for side in (-1, 1):  # pointed ears
        draw.polygon(
            [(cx + side * r * 0.95, cy - r * 0.35), (cx + side * r * 0.2, cy - r * 0.8),
             (cx + side * r * 0.8, cy - r * 1.75)],
            fill=fur, outline=stripe,
        )  # fmt: skip
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur)
    line = max(1, size // 24)
    for k in range(-2, 3):  # tabby stripes
        y = cy + k * r * 0.3
        draw.line([(cx - r * 0.85, y - r * 0.15), (cx + r * 0.85, y + r * 0.15)], fill=stripe, width=line)
    for side in (-1, 1):  # eyes and whiskers
        draw.ellipse([cx + side * r * 0.45 - r * 0.12, cy - r * 0.35, cx + side * r * 0.45 + r * 0.12,
                      cy - r * 0.1], fill=(40, 200, 60))  # fmt: skip
        for dy in (-0.1, 0.05, 0.2):
            draw.line([(cx + side * r * 0.3, cy + r * 0.3), (cx + side * r * 1.5, cy + r * (0.3 + dy * 2))],
                      fill=(250, 250, 250), width=max(1, line // 2))  # fmt: skip
    return image.filter(ImageFilter.GaussianBlur(radius=size / 256))


@dataclass(frozen=True)
class BreedStyle:
    """What makes one breed look unlike another."""

    fur: np.ndarray
    spot: np.ndarray
    background: np.ndarray
    head_ratio: float
    ear_length: float
    spots: int


def breed_style(index: int, seed: int) -> BreedStyle:
    rng = np.random.default_rng([seed, 7919, index])
    return BreedStyle(
        fur=rng.uniform(30, 240, 3),
        spot=rng.uniform(0, 120, 3),
        background=rng.uniform(0, 255, 3),
        head_ratio=float(rng.uniform(0.8, 1.35)),
        ear_length=float(rng.uniform(0.9, 1.6)),
        spots=int(rng.integers(2, 7)),
    )


def draw_dog(rng: np.random.Generator, size: int, style: BreedStyle) -> Image.Image:
    """A dog: long head with drooping ears hanging beside it, dark spots, a big nose."""
    width = int(size * rng.uniform(0.9, 1.3))
    height = size
    image = _background(rng, width, height, style.background)
    draw = ImageDraw.Draw(image)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.42, 0.55)
    rx = size * rng.uniform(0.2, 0.27)
    ry = rx * style.head_ratio
    fur, spot = _colour(rng, style.fur, 15), _colour(rng, style.spot, 10)
    for side in (-1, 1):  # drooping ears
        ear_x = cx + side * rx * 0.95
        draw.ellipse([ear_x - rx * 0.35, cy - ry * 0.6, ear_x + rx * 0.35, cy + ry * style.ear_length * 0.9],
                     fill=spot)  # fmt: skip
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fur)
    for _ in range(style.spots):  # spots
        sx, sy = cx + rng.uniform(-0.6, 0.6) * rx, cy + rng.uniform(-0.7, 0.3) * ry
        sr = rx * rng.uniform(0.12, 0.25)
        draw.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=spot)
    draw.ellipse([cx - rx * 0.25, cy + ry * 0.45, cx + rx * 0.25, cy + ry * 0.75], fill=(20, 20, 20))  # nose
    for side in (-1, 1):
        draw.ellipse([cx + side * rx * 0.4 - rx * 0.1, cy - ry * 0.3, cx + side * rx * 0.4 + rx * 0.1,
                      cy - ry * 0.1], fill=(60, 30, 10))  # fmt: skip
    return image.filter(ImageFilter.GaussianBlur(radius=size / 256))


def _jpeg_bytes(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue()


def _corrupt(data: bytes) -> bytes:
    """A JPEG cut in the middle of its data, as an interrupted download leaves it."""
    return data[: max(16, len(data) // 3)]


class _Writer:
    """Writes files into a folder, or into an in-memory zip written out on close."""

    def __init__(self, root: Path, as_zip: bool) -> None:
        self.root, self.as_zip = root, as_zip
        self._buffer = io.BytesIO()
        self._zip = zipfile.ZipFile(self._buffer, "w", zipfile.ZIP_STORED) if as_zip else None

    def write(self, name: str, data: bytes) -> None:
        if self._zip is not None:
            self._zip.writestr(name, data)
        else:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def getvalue(self) -> bytes:
        assert self._zip is not None
        self._zip.close()
        return self._buffer.getvalue()


@dataclass(frozen=True)
class _Jpegs:
    """Draws the JPEGs of one ``generate`` call from its one random stream (so the order of calls matters)."""

    rng: np.random.Generator
    size: int
    seed: int

    def cat(self) -> bytes:
        return _jpeg_bytes(draw_cat(self.rng, self.size), self.rng)

    def dog(self, breed: int) -> bytes:
        return _jpeg_bytes(draw_dog(self.rng, self.size, breed_style(breed, self.seed)), self.rng)


def generate(
    out: str | Path,
    cats: int = 200,
    dogs_per_breed: int = 20,
    breeds: int = 10,
    size: int = 64,
    seed: int = 0,
    as_zip: bool = False,
    corrupt: int = 0,
) -> SampleData:
    """Write both Kaggle layouts under ``out``; ``corrupt`` truncated JPEGs are planted among each.

    Returns the two paths to give ``catdog fuse`` (folders, or zips with ``as_zip``).
    """
    if cats < 1 or dogs_per_breed < 1 or breeds < 2:
        raise CatDogError("sample-data needs --cats >= 1, --dogs-per-breed >= 1 and --breeds >= 2")
    if breeds > len(BREED_NAMES):
        raise CatDogError(f"--breeds can be at most {len(BREED_NAMES)}, got {breeds}")
    if corrupt > min(cats, dogs_per_breed * breeds):
        raise CatDogError(f"--corrupt {corrupt} is more than the number of cats or dogs generated")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bad = set(rng.choice(cats, size=corrupt, replace=False).tolist()) if corrupt else set()
    jpegs = _Jpegs(rng, size, seed)  # the cats first, then the dogs
    cats_source, bad_cats = _write_cats_source(out / CATS_DIRNAME, as_zip, jpegs, cats, bad)
    bad = set(np.random.default_rng([seed, 3]).choice(breeds * dogs_per_breed, size=corrupt, replace=False).tolist())
    dogs_source, bad_dogs = _write_dogs_source(out / DOGS_DIRNAME, as_zip, jpegs, breeds, dogs_per_breed, bad)
    return SampleData(cats_source, dogs_source, tuple(bad_cats + bad_dogs))


def _write_cats_source(root: Path, as_zip: bool, jpegs: _Jpegs, cats: int, bad: set[int]) -> tuple[Path, list[str]]:
    """Dogs vs. Cats: ``train/{cat,dog}.<n>.jpg``, ``test1/<n>.jpg``, ``sampleSubmission.csv``.

    The cats numbered in ``bad`` are truncated. Returns the source to fuse (``root`` or ``root.zip``) and
    the truncated files.
    """
    corrupt_files: list[str] = []
    train = _Writer(root, as_zip)
    for n in range(cats):
        data = jpegs.cat()
        if n in bad:
            data = _corrupt(data)
            corrupt_files.append(f"train/cat.{n}.jpg")
        train.write(f"train/cat.{n}.jpg", data)
    for n in range(max(2, cats // 10)):  # the competition's own dogs; fusion ignores them
        train.write(f"train/dog.{n}.jpg", jpegs.dog(n))
    test1 = _Writer(root, as_zip)
    for n in range(1, 4):
        test1.write(f"test1/{n}.jpg", jpegs.cat())
    submission = "id,label\n" + "".join(f"{n},0\n" for n in range(1, 4))
    if not as_zip:
        (root / "sampleSubmission.csv").write_text(submission)
        return root, corrupt_files
    source = root.with_name(f"{root.name}.zip")
    with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as outer:
        outer.writestr("train.zip", train.getvalue())
        outer.writestr("test1.zip", test1.getvalue())
        outer.writestr("sampleSubmission.csv", submission)
    return source, corrupt_files


def _write_dogs_source(
    root: Path, as_zip: bool, jpegs: _Jpegs, breeds: int, dogs_per_breed: int, bad: set[int]
) -> tuple[Path, list[str]]:
    """Dog Breed Identification: ``labels.csv`` (id,breed), ``train/<id>.jpg``, ``test/<id>.jpg``, a submission.

    ``dogs_per_breed`` dogs of each of the first ``breeds`` breeds; the dogs numbered in ``bad`` (in drawing
    order) are truncated. Returns the source to fuse (``root`` or ``root.zip``) and the truncated files.
    """
    dogs = _Writer(root, as_zip)
    id_rng = np.random.default_rng([jpegs.seed, 1])
    rows: list[tuple[str, str]] = []  # (id, breed)
    corrupt_files: list[str] = []
    for breed in range(breeds):
        for _ in range(dogs_per_breed):
            image_id = uuid.UUID(bytes=id_rng.bytes(16), version=4).hex
            data = jpegs.dog(breed)
            if len(rows) in bad:
                data = _corrupt(data)
                corrupt_files.append(f"train/{image_id}.jpg")
            rows.append((image_id, BREED_NAMES[breed]))
            dogs.write(f"train/{image_id}.jpg", data)
    order = np.random.default_rng([jpegs.seed, 2]).permutation(len(rows))
    labels = io.StringIO()
    writer = csv.writer(labels, lineterminator="\n")
    writer.writerow(["id", "breed"])
    writer.writerows(rows[i] for i in order)
    dogs.write("labels.csv", labels.getvalue().encode())
    test_ids = [uuid.UUID(bytes=id_rng.bytes(16), version=4).hex for _ in range(3)]
    for image_id in test_ids:
        dogs.write(f"test/{image_id}.jpg", jpegs.dog(0))
    header = "id," + ",".join(BREED_NAMES[:breeds]) + "\n"
    dogs.write("sample_submission.csv", (header + "".join(f"{i}{',0' * breeds}\n" for i in test_ids)).encode())
    if not as_zip:
        return root, corrupt_files
    source = root.with_name(f"{root.name}.zip")
    source.write_bytes(dogs.getvalue())
    return source, corrupt_files
