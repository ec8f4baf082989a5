"""Fixtures: small datasets written in the real formats, and an MLflow client per test."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fer_lab.data.fer2013 import FER2013_CLASSES

from .helpers import run_train, write_image

# Fixtures that start one of the machine's services; `make test` runs their tests in one
# pytest-xdist process (`--dist loadgroup`), so no two processes start the same service.
MACHINE_SERVICES = {"postgres_port", "slurm_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the machine's services in one xdist group; slow tests first, so the two
    processes finish together rather than one ending on a long test while the other idles."""
    for item in items:
        if MACHINE_SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("machine_services"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def dataset_cache_in_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Parsed-dataset caches (paths.cache_dir) go to a temp folder, not the repository's
    .cache, for in-process configs and the commands the tests start alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def fer2013_folder(tmp_path: Path) -> Path:
    """train/ and test/ with capitalised class folders of 48x48 JPEGs (10 and 3 per class),
    each file name used once, as in the Kaggle release."""
    root = tmp_path / "fer2013"
    for split, count in (("train", 10), ("test", 3)):
        for c, name in enumerate(FER2013_CLASSES):
            for i in range(count):
                path = root / split / name.capitalize() / f"{split}_{c * 100 + i}.jpg"
                write_image(path, 48, 48, False, c * 100 + i)
    return root


@pytest.fixture
def legend_dataset(tmp_path: Path) -> Path:
    """Seed 002's layout: legend.csv (user.id,image,emotion, mixed-case labels) and photos of
    several sizes, colour and grey, beside it."""
    labels = ["anger", "HAPPINESS", "Neutral ", "sadness", "surprise"]
    lines = ["user.id,image,emotion"]
    for i in range(60):
        name = f"img_{i}.{'png' if i % 3 else 'jpg'}"
        write_image(tmp_path / "images" / name, 60 + 7 * (i % 5), 50 + 11 * (i % 4), i % 2 == 0, i)
        lines.append(f"user{i % 4},images/{name},{labels[i % len(labels)]}")
    csv_path = tmp_path / "legend.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture
def mlflow_client(tmp_path: Path) -> Callable:
    def client():
        import mlflow

        return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    return client


def train_tiny_checkpoint(folder: Path) -> Path:
    """The best checkpoint of a one-epoch convnet0 run on tiny synthetic faces (7 classes),
    trained in `folder`; its run folder is `checkpoint.parent.parent`."""
    run_train(
        folder,
        "dataset=synthetic",
        "dataset.train_per_class=20",
        "dataset.val_per_class=5",
        "dataset.test_per_class=5",
        "model=convnet0",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "hydra.run.dir=run",
    )
    (best,) = (folder / "run" / "checkpoints").glob("epoch*.ckpt")
    return best


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`train_tiny_checkpoint`, once per test session (process) and shared by its tests."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def own_trained_checkpoint(tmp_path: Path) -> Path:
    """`train_tiny_checkpoint` for one test, whose MLflow run no other test logs into."""
    folder = tmp_path / "trained"
    folder.mkdir()
    return train_tiny_checkpoint(folder)


@pytest.fixture(scope="session")
def postgres_port() -> int:
    """The machine's PostgreSQL cluster, running (tests/postgres.py)."""
    from .postgres import start_cluster

    return start_cluster()


@pytest.fixture
def postgres_url(postgres_port: int) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    from .postgres import fresh_database

    return fresh_database(postgres_port)
