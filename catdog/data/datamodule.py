"""``CatDogDataModule``: the fused ``dataset/{train,test}/{cat,dog}`` as PyTorch data loaders.

Every loader yields ``(images, labels)``: a float32 tensor of shape (N, 3, size, size) normalised
with the model's mean/std, and int64 labels in :data:`catdog.CLASSES` order (0 = cat, 1 = dog).
Validation is carved out of ``train/`` by :func:`catdog.data.splits.split_train` (stratified and seeded, or a
file list: ``val_files``); ``test/`` is the test set; ``predict``
reads ``predict_dir`` (default ``test/``). Training images go through the albumentations pipeline of
:func:`catdog.data.transforms.train_augmentation`; everything else through the one
:func:`catdog.data.transforms.eval_transform`.

The training order is an :class:`EpochSampler`: a permutation that is a pure function of (run seed, epoch),
sharded across the processes of a distributed run (evaluation loaders: :class:`ShardSampler`, every image once),
moved on by ``set_epoch`` (Lightning's fit loop calls it before every epoch); the training loader's
worker seeds come from the sampler's own generator, seeded from (run seed, epoch) too. Nothing the training
loader does draws from torch's global random generator, and the data module's checkpoint state holds the
epoch a resumed fit starts at, so a resumed epoch sees the data of the same epoch of an uninterrupted fit.

Plain PyTorch use (the Poutyne trainer does this)::

    dm = CatDogDataModule("dataset", image_size=224, batch_size=32)
    dm.setup("fit")
    for images, labels in dm.train_dataloader(): ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from catdog import CLASSES, CatDogError
from catdog.data.splits import labelled_images, list_images, split_train
from catdog.data.timm_config import DEFAULT_MODEL, preprocess_config_for
from catdog.data.transforms import PreprocessConfig, eval_transform, open_image, train_augmentation


def run_seed() -> int:
    """The run's seed: the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0 (as Lightning's samplers)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def epoch_seed(seed: int, epoch: int, stream: int = 0, rank: int = 0) -> int:
    """A 32-bit seed that depends only on (``seed``, ``epoch``, ``stream``) and, from rank 1 on, the process's rank."""
    entropy = [seed, epoch, stream, *([rank] if rank else [])]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """A random order of ``range(size)`` that is a pure function of (``seed``, epoch), sharded across processes.

    ``set_epoch`` chooses the epoch (Lightning's fit loop calls it on the training loader's sampler before
    every epoch; the Poutyne trainer does the same). :attr:`generator`, given to the ``DataLoader``, makes
    the worker seeds (one draw per iterator made): it is reseeded from (``seed``, epoch, ``rank``) whenever the
    epoch changes, so the n-th iterator of an epoch gets the same worker seeds in every run, resumed or not.

    With ``num_replicas`` processes, process ``rank`` reads every ``num_replicas``-th image of the one seeded order
    (cut to a multiple of ``num_replicas``), so step k of the processes together, each with batch B, reads the
    images of step k of one process with batch ``num_replicas * B``. It is a ``DistributedSampler``, so Lightning
    uses it as it is rather than wrapping it in a sampler that reshuffles with its own seed.
    """

    def __init__(self, size: int, seed: int = 0, epoch: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(int(size)), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.size, self.seed = int(size), int(seed)
        self.num_samples = self.size // self.num_replicas
        self.generator = torch.Generator()
        self.epoch = -1
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order from the next iterator on; reseed :attr:`generator` when the epoch changes."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.generator.manual_seed(epoch_seed(self.seed, self.epoch, stream=1, rank=self.rank))

    def order(self) -> list[int]:
        """This epoch's order (of every process together)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[: self.num_samples * self.num_replicas][self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(DistributedSampler):
    """Process ``rank``'s share of ``range(size)`` in order: every ``num_replicas``-th index, none repeated.

    Unlike Lightning's default ``DistributedSampler``, it pads no process's share with repeated images, so
    metrics reduced across processes count every evaluated image once; shares differ by one image at most.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(int(size)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.size = int(size)
        self.num_samples = len(range(self.rank, self.size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class ImageDataset(Dataset):
    """Images and labels; ``augment`` (albumentations) for training, else :func:`eval_transform`."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        config: PreprocessConfig,
        augment: Callable[..., dict[str, Any]] | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.config = config
        self.augment = augment
        self.max_pixels = max_pixels
        self._seeded_in: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _seed_augment(self) -> None:
        """Seed albumentations from torch's seed: once per worker, and again whenever the main process is reseeded
        (:class:`catdog.training.callbacks.EpochSeeds` reseeds every epoch).
        """
        info = torch.utils.data.get_worker_info()
        seed = (info.seed if info is not None else torch.initial_seed()) % (2**32)
        key = (os.getpid(), info.id if info is not None else -1, seed)
        if self._seeded_in != key:
            self.augment.set_random_seed(int(seed))  # type: ignore[union-attr]
            self._seeded_in = key

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = open_image(self.paths[index], max_pixels=self.max_pixels)
        if self.augment is None:
            array = eval_transform(image, self.config)
        else:
            self._seed_augment()
            array = self.augment(image=np.asarray(image))["image"].transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), self.labels[index]


class CatDogDataModule(pl.LightningDataModule):
    """Train/val/test/predict loaders over a fused dataset.

    Args:
        data_dir: folder with ``train/{cat,dog}`` and ``test/{cat,dog}`` (the output of ``catdog fuse``).
        image_size: input size in pixels (the CLI links it to ``model.image_size``).
        batch_size: images per batch (per device).
        val_fraction: part of each class of ``train/`` held out for validation (stratified, seeded).
        val_split: ``random`` (stratified by class) or ``breed``: whole dog breeds validate, as whole breeds
            test, so that validation measures the same thing as test (:func:`catdog.data.splits.breed_split`; the
            breeds come from the dataset's ``manifest.csv``).
        val_files: a validation file list (one path per line relative to ``data_dir``, e.g.
            ``train/cat/cat.12.jpg``; see :mod:`catdog.data.splits`): exactly those images validate, and
            ``val_fraction``/``val_split``/``seed`` are not used.
        num_workers: loader worker processes (0 loads in the main process).
        pin_memory: pin batches in page-locked memory (useful with a GPU).
        persistent_workers: keep workers between epochs (only with ``num_workers > 0``).
        seed: seed of the validation split.
        augment_scale: area range of the training random resized crop.
        augment: augment training images; ``False`` gives them the eval transform (a run without random
            preprocessing, e.g. to compare trainers or process counts image for image).
        predict_dir: folder of images for ``predict`` (default ``<data_dir>/test``); labels come from a
            ``cat``/``dog`` parent folder, else -1.
        max_pixels: refuse images with more pixels than this (decompression bomb guard).
        preprocess: the model's eval preprocessing (mean/std/interpolation/crop from its timm data config, at
            ``image_size``): ``catdog fit`` links it from ``model.preprocess_config`` once the model is built;
            without it, that of :data:`catdog.data.timm_config.DEFAULT_MODEL`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "dataset",
        image_size: int = 224,
        batch_size: int = 32,
        val_fraction: float = 0.15,
        val_split: Literal["random", "breed"] = "random",
        val_files: str | os.PathLike[str] | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 42,
        augment_scale: tuple[float, float] = (0.6, 1.0),
        augment: bool = True,
        predict_dir: str | os.PathLike[str] | None = None,
        max_pixels: int | None = 50_000_000,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["preprocess"])
        if batch_size < 1:
            raise CatDogError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise CatDogError(f"data.num_workers must be >= 0, got {num_workers}")
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.val_split = val_split
        self.val_files = val_files
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.augment_scale = tuple(augment_scale)
        self.augment = augment
        self.predict_dir = Path(predict_dir) if predict_dir is not None else None
        self.max_pixels = max_pixels
        if preprocess is not None and preprocess.image_size != image_size:
            raise CatDogError(f"data.image_size {image_size} differs from the preprocessing's {preprocess.image_size}")
        self._preprocess = preprocess
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None
        self.predict_set: ImageDataset | None = None
        self._first_train_epoch = 0  # the epoch a resumed fit starts at (load_state_dict)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The eval preprocessing: the model's (``preprocess``), else the default model's."""
        if self._preprocess is None:
            self._preprocess = preprocess_config_for(DEFAULT_MODEL, self.image_size)
        return self._preprocess

    def _check_data_dir(self) -> None:
        if not self.data_dir.is_dir():
            raise CatDogError(
                f"data.data_dir {self.data_dir}: folder not found; create it with `catdog fuse ... --out "
                f"{self.data_dir}` (or `catdog sample-data` then `catdog fuse` for generated data)"
            )

    def setup(self, stage: str | None = None) -> None:
        self._check_data_dir()
        config = self.preprocess_config
        # the validation split at test too: the test writes val_predictions.csv with the same weights (calibration)
        if stage in (None, "fit", "validate", "test") and self.train_set is None:
            split = split_train(self.data_dir, self.val_fraction, self.seed, self.val_files, self.val_split)
            augment = train_augmentation(config, scale=self.augment_scale) if self.augment else None  # type: ignore[arg-type]
            self.train_set = ImageDataset(split.train_paths, split.train_labels, config, augment, self.max_pixels)
            self.val_set = ImageDataset(split.val_paths, split.val_labels, config, None, self.max_pixels)
        if stage in (None, "test") and self.test_set is None:
            paths, labels = labelled_images(self.data_dir / "test")
            self.test_set = ImageDataset(paths, labels, config, None, self.max_pixels)
        if stage in (None, "predict") and self.predict_set is None:
            folder = self.predict_dir or self.data_dir / "test"
            if not folder.is_dir():
                raise CatDogError(f"data.predict_dir {folder}: folder not found")
            paths = list_images(folder)
            if not paths:
                raise CatDogError(f"data.predict_dir {folder}: no images found")
            labels = [CLASSES.index(p.parent.name) if p.parent.name in CLASSES else -1 for p in paths]
            self.predict_set = ImageDataset(paths, labels, config, None, self.max_pixels)

    def _loader(self, dataset: ImageDataset | None, shuffle: bool, stage: str) -> DataLoader:
        if dataset is None:
            self.setup(stage)
            dataset = {"fit": self.train_set, "validate": self.val_set, "test": self.test_set}.get(
                stage, self.predict_set
            )
        replicas, rank = self._processes()
        sampler: DistributedSampler | None = None
        if shuffle:
            # Lightning makes the training iterator before it calls set_epoch (and, when resuming, before it
            # restores the fit loop), so the sampler starts at the epoch the fit starts at.
            sampler = EpochSampler(len(dataset), run_seed(), self._first_train_epoch, replicas, rank)  # type: ignore[arg-type]
        elif replicas > 1:
            sampler = ShardSampler(len(dataset), replicas, rank)  # type: ignore[arg-type]
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=default_collate,
            drop_last=stage == "fit",  # a last training batch of one image breaks train-mode BatchNorm
            generator=sampler.generator if isinstance(sampler, EpochSampler) else None,
        )

    def _processes(self) -> tuple[int, int]:
        """(number of processes, this one's global rank) of the trainer running the loaders; (1, 0) without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: ``train_epoch``, the epoch a fit resumed from this checkpoint starts at."""
        if self.trainer is None:
            return {"train_epoch": self._first_train_epoch}
        # the epoch Lightning's fit loop passes to set_epoch next (when the fit goes on from here)
        return {"train_epoch": int(self.trainer.fit_loop.epoch_progress.current.processed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Start the training order at the checkpoint's ``train_epoch`` (Lightning restores this before the loaders)."""
        self._first_train_epoch = int(state_dict.get("train_epoch", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, "fit")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, False, "predict")
