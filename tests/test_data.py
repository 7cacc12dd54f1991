"""CatDogDataModule: class order, seeded stratified split, the shared eval transform, robust image reading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catdog import CLASSES, CatDogError
from catdog.data import CatDogDataModule, stratified_split
from catdog.model import preprocess_config_for
from catdog.transforms import ImageDecodeError, preprocess

SIZE = 32


def _datamodule(data_dir: Path, **kwargs) -> CatDogDataModule:
    options = dict(image_size=SIZE, batch_size=16, num_workers=0, val_fraction=0.2, seed=3)
    options.update(kwargs)
    return CatDogDataModule(data_dir, **options)


def _small_copy(fused_dataset: Path, out: Path, per_class: int = 4) -> Path:
    """A writable copy of a few images per class and split."""
    for split in ("train", "test"):
        for name in CLASSES:
            target = out / split / name
            target.mkdir(parents=True)
            for path in sorted((fused_dataset / split / name).glob("*.jpg"))[:per_class]:
                shutil.copy(path, target / path.name)
    return out


def test_loaders_yield_float_nchw_and_int64_labels_in_class_order(fused_dataset: Path) -> None:
    dm = _datamodule(fused_dataset)
    dm.setup("fit")
    dm.setup("test")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (16, 3, SIZE, SIZE)
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    # labels follow the folder names through CLASSES: 0 = cat, 1 = dog
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        assert dataset is not None
        for path, label in zip(dataset.paths, dataset.labels, strict=True):
            assert path.parent.name == CLASSES[label]
    test_counts = np.bincount(dm.test_set.labels, minlength=2).tolist()
    assert test_counts == [len(list((fused_dataset / "test" / name).glob("*.jpg"))) for name in CLASSES]


def test_validation_split_is_stratified_seeded_and_disjoint(fused_dataset: Path) -> None:
    first, second, other = _datamodule(fused_dataset), _datamodule(fused_dataset), _datamodule(fused_dataset, seed=4)
    for dm in (first, second, other):
        dm.setup("fit")
    assert first.val_set.paths == second.val_set.paths
    assert first.val_set.paths != other.val_set.paths
    assert not set(first.val_set.paths) & set(first.train_set.paths)
    all_train = sorted(p for name in CLASSES for p in (fused_dataset / "train" / name).glob("*.jpg"))
    assert sorted(first.val_set.paths + first.train_set.paths) == all_train
    for cls in (0, 1):
        total = sum(1 for p in all_train if p.parent.name == CLASSES[cls])
        in_val = first.val_set.labels.count(cls)
        assert in_val == round(total * 0.2)


def test_stratified_split_rejects_bad_fraction() -> None:
    with pytest.raises(CatDogError, match="val_fraction"):
        stratified_split([0, 1, 0, 1], 1.0, seed=0)


def test_eval_batches_equal_the_shared_preprocess(fused_dataset: Path) -> None:
    dm = _datamodule(fused_dataset)
    dm.setup("test")
    config = preprocess_config_for("tf_efficientnetv2_b2", SIZE)
    assert dm.preprocess_config == config
    images, _ = next(iter(dm.test_dataloader()))
    for row in (0, 5):
        expected = preprocess(dm.test_set.paths[row], config)
        np.testing.assert_array_equal(images[row].numpy(), expected)


def test_train_augmentation_is_random_but_seeded(fused_dataset: Path) -> None:
    def first_image(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        dm = _datamodule(fused_dataset)
        dm.setup("fit")
        return dm.train_set[0][0]

    a, b, c = first_image(1), first_image(1), first_image(2)
    assert a.shape == (3, SIZE, SIZE) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_worker_processes_load_batches(fused_dataset: Path) -> None:
    dm = _datamodule(fused_dataset, num_workers=2, persistent_workers=True, batch_size=32)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    seen = sum(len(labels) for _, labels in loader)
    assert seen == len(dm.train_set)


def test_grayscale_and_rgba_images_become_rgb(fused_dataset: Path, tmp_path: Path) -> None:
    data = _small_copy(fused_dataset, tmp_path / "dataset")
    Image.new("L", (40, 30), 128).save(data / "test" / "cat" / "grey.png")
    Image.new("RGBA", (30, 40), (10, 200, 30, 100)).save(data / "test" / "dog" / "alpha.png")
    Image.new("CMYK", (30, 30), (0, 50, 100, 0)).save(data / "test" / "dog" / "cmyk.jpg")
    dm = _datamodule(data)
    dm.setup("test")
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (len(dm.test_set), 3, SIZE, SIZE)
    assert torch.isfinite(images).all()
    assert labels.tolist().count(1) == 6


def test_unreadable_image_error_names_the_file(fused_dataset: Path, tmp_path: Path) -> None:
    data = _small_copy(fused_dataset, tmp_path / "dataset")
    broken = data / "test" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dm = _datamodule(data)
    dm.setup("test")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        for _ in dm.test_dataloader():
            pass


def test_missing_folders_are_clear_errors(fused_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CatDogError, match="catdog fuse"):
        _datamodule(tmp_path / "nowhere").setup("fit")
    data = _small_copy(fused_dataset, tmp_path / "dataset")
    shutil.rmtree(data / "train" / "dog")
    with pytest.raises(CatDogError, match="train/dog"):
        _datamodule(data).setup("fit")
