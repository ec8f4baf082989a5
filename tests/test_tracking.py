"""MLflow glue without a run: config flattening, run-name filtering, confusion-matrix files."""

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from fer_lab.tracking.confusion import write_confusion_matrix
from fer_lab.tracking.run_config import flatten_config
from fer_lab.tracking.run_identity import _is_bookkeeping


def test_flatten_config_uses_slashes_and_skips_repeated_nodes() -> None:
    cfg = OmegaConf.create(
        {"model": {"dropout": 0.5, "hidden": [256, 128]}, "data": {"source": "${model}", "bs": 8}}
    )
    assert flatten_config(cfg) == {
        "model/dropout": 0.5,
        "model/hidden": "[256, 128]",
        "data/bs": 8,
    }


def test_run_names_leave_out_paths_and_logger_settings() -> None:
    assert _is_bookkeeping("dataset.path")
    assert _is_bookkeeping("logger.tracking_uri")
    assert _is_bookkeeping("+paths.data_dir")
    assert not _is_bookkeeping("optimizer.lr")
    assert not _is_bookkeeping("dataset")


def test_confusion_matrix_csv_has_true_rows_and_predicted_columns(tmp_path: Path) -> None:
    matrix = np.array([[5, 1], [2, 7]])
    csv_path, png_path = write_confusion_matrix(matrix, ["happy", "sad"], tmp_path / "cm", "t")
    frame = pd.read_csv(csv_path, index_col=0)
    assert frame.index.name == "true\\predicted"
    assert frame.loc["sad", "happy"] == 2
    assert png_path.stat().st_size > 5000
