"""CatDogDataModule: class order, seeded stratified split, the shared eval transform, robust image reading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catdog import CLASSES, CatDogError
from catdog.data import CatDogDataModule, EpochSampler
from catdog.data.splits import relative_name, split_train, stratified_split, write_file_list
from catdog.data.timm_config import preprocess_config_for
from catdog.data.transforms import ImageDecodeError, preprocess

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
    seen = [len(labels) for _, labels in loader]
    assert seen == [32] * (len(dm.train_set) // 32)  # the incomplete last training batch is dropped


def test_only_the_train_loader_drops_its_incomplete_last_batch(fused_dataset: Path) -> None:
    dm = _datamodule(fused_dataset, batch_size=7)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) % 7 and len(dm.val_set) % 7 and len(dm.test_set) % 7
    assert sum(len(labels) for _, labels in dm.train_dataloader()) == len(dm.train_set) // 7 * 7
    assert sum(len(labels) for _, labels in dm.val_dataloader()) == len(dm.val_set)
    assert sum(len(labels) for _, labels in dm.test_dataloader()) == len(dm.test_set)


def test_a_train_split_of_k_batches_plus_one_image_trains(fused_dataset: Path, tmp_path: Path) -> None:
    """17 training images at batch 8: without drop_last the last batch of one breaks train-mode BatchNorm."""
    import lightning.pytorch as pl

    from catdog.training.module import CatDogClassifier

    data = _small_copy(fused_dataset, tmp_path / "dataset", per_class=10)
    names = sorted(p.relative_to(data).as_posix() for p in (data / "train").rglob("*.jpg"))
    val_files = write_file_list(names[:3], tmp_path / "val.txt")  # 20 - 3 = 17 = 2 * 8 + 1 to train on
    dm = _datamodule(data, batch_size=8, val_files=str(val_files))
    dm.setup("fit")
    assert len(dm.train_set) == 17
    assert sorted(relative_name(p, data) for p in dm.val_set.paths) == names[:3]
    model = CatDogClassifier(image_size=SIZE, bn_recalibration_batches=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2


def test_val_files_choose_exactly_the_validation_images(fused_dataset: Path, tmp_path: Path) -> None:
    names = sorted(p.relative_to(fused_dataset).as_posix() for p in (fused_dataset / "train").rglob("*.jpg"))
    chosen = names[::5]
    dm = _datamodule(fused_dataset, val_files=str(write_file_list(chosen, tmp_path / "val.txt")), seed=99)
    dm.setup("fit")
    assert sorted(relative_name(p, fused_dataset) for p in dm.val_set.paths) == chosen
    assert not {relative_name(p, fused_dataset) for p in dm.train_set.paths} & set(chosen)
    assert len(dm.train_set) + len(dm.val_set) == len(names)
    (tmp_path / "bad.txt").write_text("train/cat/no-such.jpg\n")
    with pytest.raises(CatDogError, match="bad.txt"):
        _datamodule(fused_dataset, val_files=str(tmp_path / "bad.txt")).setup("fit")


def test_val_split_by_breed_is_the_shared_breed_split(fused_dataset: Path) -> None:
    dm = _datamodule(fused_dataset, val_split="breed")
    dm.setup("fit")
    expected = split_train(fused_dataset, 0.2, 3, val_split="breed")
    assert dm.val_set.paths == expected.val_paths and dm.train_set.paths == expected.train_paths
    random = _datamodule(fused_dataset)
    random.setup("fit")
    assert dm.val_set.paths != random.val_set.paths


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


def _first_batch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = next(iter(loader))
    return images, labels


def test_the_training_order_is_a_function_of_the_run_seed_and_the_epoch(
    fused_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) sets
    dm = _datamodule(fused_dataset)
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler) and (sampler.seed, sampler.epoch) == (5, 0)
    assert loader.generator is sampler.generator  # the worker seeds come from (seed, epoch) too
    first = sampler.order()
    assert sorted(first) == list(range(len(dm.train_set)))
    assert first == EpochSampler(len(dm.train_set), seed=5).order() != EpochSampler(len(dm.train_set), 6).order()
    state = torch.get_rng_state()
    images, labels = _first_batch(loader)
    assert torch.equal(torch.get_rng_state(), state), "the training loader drew from torch's global generator"
    assert labels.tolist() == [dm.train_set.labels[i] for i in first[:16]]
    sampler.set_epoch(1)
    assert sampler.order() != first and sampler.order() == EpochSampler(len(dm.train_set), 5, epoch=1).order()


def test_a_resumed_training_loader_starts_at_the_checkpoints_epoch(fused_dataset: Path) -> None:
    """Lightning restores the data module's state before it makes the loader, and calls set_epoch after."""
    dm = _datamodule(fused_dataset)
    dm.setup("fit")
    assert dm.state_dict() == {"train_epoch": 0}
    dm.load_state_dict({"train_epoch": 2})
    assert dm.state_dict() == {"train_epoch": 2}
    resumed = dm.train_dataloader().sampler
    running = _datamodule(fused_dataset).train_dataloader().sampler
    running.set_epoch(1)
    running.set_epoch(2)
    assert resumed.epoch == 2 and resumed.order() == running.order()

    def worker_seed(generator: torch.Generator) -> int:  # what each DataLoader iterator draws
        return int(torch.empty((), dtype=torch.int64).random_(generator=generator))

    assert worker_seed(resumed.generator) == worker_seed(running.generator)  # the epoch's training iterator
    resumed.set_epoch(2)  # Lightning's call after it made the resumed iterator: the same epoch, no reseed
    assert worker_seed(resumed.generator) == worker_seed(running.generator)  # e.g. BatchNorm re-estimation


def test_worker_augmentation_depends_only_on_the_seed_and_the_epoch(fused_dataset: Path) -> None:
    """With worker processes, an epoch's batches are the same whether the loader got there or started there."""
    running = _datamodule(fused_dataset, num_workers=2)
    running.setup("fit")
    loader = running.train_dataloader()
    epoch0 = _first_batch(loader)
    loader.sampler.set_epoch(1)
    epoch1 = _first_batch(loader)
    resumed = _datamodule(fused_dataset, num_workers=2)
    resumed.load_state_dict({"train_epoch": 1})
    resumed.setup("fit")
    again = _first_batch(resumed.train_dataloader())
    assert torch.equal(again[0], epoch1[0]) and torch.equal(again[1], epoch1[1])
    assert not torch.equal(epoch0[0], epoch1[0])
