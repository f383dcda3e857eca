"""Shared fixtures: the optional real test clips (skipped when absent) and small generated videos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if TYPE_CHECKING:
    from realtime.avatars import AvatarCatalog
    from realtime.worker_pool import RenderPool

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The optional folder of real test clips beside the checkout (``../shared/data``); tests that
    need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"test data folder {SHARED_DATA} is absent (it is not part of the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An avatar dataset (96 px crops) of an 8 s synthetic talking face, built once per run."""
    from offline_training.dataset.builder import prepare_dataset
    from offline_training.dataset.settings import PrepareSettings
    from offline_training.synthetic import generate_talking_face, write_talking_face

    folder = tmp_path_factory.mktemp("train_data")
    video = folder / "face.mp4"
    write_talking_face(video, generate_talking_face(seed=3, duration_s=8.0, size=192))
    out = folder / "ds"
    prepare_dataset(PrepareSettings(video=video, out=out, render_size=96, show_progress=False))
    return out


def _train_tiny(dataset: Path, out: Path, steps: int) -> Path:
    from offline_training.train.settings import TrainSettings
    from offline_training.train.trainer import Trainer

    settings = TrainSettings(
        dataset=dataset,
        out=out,
        preset="tiny",
        steps=steps,
        show_progress=False,
        val_every=1000,
        checkpoint_every=1000,
        stability_report=False,
        voice_augmentation=False,
    )
    Trainer(settings).run()
    return out


@pytest.fixture(scope="session")
def tiny_avatar(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` avatar bundle trained briefly (30 steps per stage) on the synthetic dataset."""
    return _train_tiny(synthetic_dataset, tmp_path_factory.mktemp("tiny_avatar") / "avatar", 30)


@pytest.fixture(scope="session")
def catalog() -> Iterator[AvatarCatalog]:
    """The bundled default avatar as avatar ``face`` (trained, so its rendered mouth follows the
    speech), loaded once for the server tests, batching up to 4 calls."""
    from engines.bundle import DEFAULT_AVATAR_DIR
    from realtime.avatars import AvatarCatalog, AvatarSpec

    loaded = AvatarCatalog.load(
        [AvatarSpec.parse(f"face={DEFAULT_AVATAR_DIR}")], "onnxruntime-cpu", max_batch=4
    )
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render_pool() -> Iterator[RenderPool]:
    """The bundled default avatar as avatar ``face`` in one render worker process (measured at its
    start), shared by the server tests, batching up to 4 calls."""
    from engines.bundle import DEFAULT_AVATAR_DIR
    from realtime.worker_pool import RenderPool

    pool = RenderPool.start([f"face={DEFAULT_AVATAR_DIR}"], "onnxruntime-cpu", max_batch=4)
    yield pool
    pool.close()
