"""`make wheelhouse`: which wheels an offline node gets (pure selection over a dependency
graph), and an offline install of such a wheelhouse into a fresh venv that already has torch."""

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.utils import canonicalize_name

from fer_lab.core.wheelhouse import (
    OPENCV,
    Package,
    check_node_torch,
    main,
    node_packages,
    platform_tags,
    select_wheels,
    target_environment,
)

from .helpers import REPO_ROOT

LEAVES = (
    *("numpy", "fsspec", "packaging", "mpmath", "filelock", "nvidia-cublas", "triton"),
    *("pillow", "psycopg-binary", "tzdata", "tomli"),
)
GRAPH = {
    package.name: package
    for package in (
        Package(
            "fer-lab",
            "0.1.0",
            (
                "torch>=2.4",
                "torchvision>=0.19",
                "pytorch-lightning<3,>=2.4",
                "numpy>=1.26",
                "opencv-python-headless<5,>=4.9",
                "psycopg[binary]>=3.1",
                'tomli>=1; python_version < "3.11"',
            ),
        ),
        Package("pytorch-lightning", "2.6.0", ("torch>=2.1", "fsspec", "packaging")),
        Package(
            "torch",
            "2.11.0",
            ('nvidia-cublas; platform_system == "Linux"', "triton", "sympy", "filelock", "fsspec"),
        ),
        Package("torchvision", "0.26.0", ("torch==2.11.0", "numpy", "pillow")),
        Package("psycopg", "3.3.0", ('psycopg-binary==3.3.0; extra == "binary"', "tzdata")),
        Package("opencv-python-headless", "4.14.0", ("numpy>=2",)),
        Package("sympy", "1.14.0", ("mpmath",)),
        *(Package(name, "1.0") for name in LEAVES),
    )
}
NODE_312 = target_environment("3.12", "manylinux_2_28_x86_64")
ROOTS = ["fer_lab", OPENCV]


def test_platform_tags_reach_back_to_older_glibc_and_the_legacy_names() -> None:
    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert tags[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert tags.index("manylinux_2_17_x86_64") + 1 == tags.index("manylinux2014_x86_64")
    assert {"manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    legacy = platform_tags("manylinux2014_aarch64")
    assert legacy[:2] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert target_environment("3.12", "manylinux2014_aarch64")["platform_machine"] == "aarch64"
    with pytest.raises(ValueError, match="WHEEL_PLATFORM=macosx_11_0_arm64"):
        platform_tags("macosx_11_0_arm64")
    with pytest.raises(ValueError, match="WHEEL_PYTHON=312"):
        target_environment("312", "manylinux_2_28_x86_64")


def test_torch_and_what_only_it_needs_are_left_out() -> None:
    selection = select_wheels(GRAPH, ROOTS, NODE_312, node={})
    assert set(selection.download) == {
        "fer-lab", "pytorch-lightning", "numpy", "opencv-python-headless", "psycopg",
        "psycopg-binary", "tzdata", "fsspec", "packaging",
    }  # fmt: skip
    assert selection.left_out == {"torch", "torchvision"}
    assert selection.missing == []
    # On the node's Python, not this machine's: tomli only below 3.11.
    older = select_wheels(GRAPH, ROOTS, target_environment("3.10", "manylinux2014_x86_64"), {})
    assert set(older.download) - set(selection.download) == {"tomli"}


def test_the_node_keeps_what_meets_every_pin_and_what_only_that_needed() -> None:
    node = {
        "numpy": "2.1.0",
        "pytorch-lightning": "2.6.0",
        "opencv-python-headless": "5.0.0",  # breaks <5: the wheelhouse brings 4.x
        "tzdata": "2024.1",
        "torch": "2.11.0+cu130",
    }
    selection = select_wheels(GRAPH, ROOTS, NODE_312, node)
    assert selection.on_node == {"numpy": "2.1.0", "pytorch-lightning": "2.6.0", "tzdata": "2024.1"}
    # fsspec and packaging were needed by Lightning alone, which the node keeps.
    assert set(selection.download) == {
        "fer-lab", "opencv-python-headless", "psycopg", "psycopg-binary",
    }  # fmt: skip
    check_node_torch(selection, node)
    too_old = select_wheels(GRAPH, ROOTS, NODE_312, {**node, "numpy": "1.24.0"})
    assert "numpy" in too_old.download and "numpy" not in too_old.on_node
    with pytest.raises(SystemExit, match=r"node's torch 2\.3\.0 does not meet .*>=2\.4"):
        check_node_torch(too_old, {"torch": "2.3.0"})


def test_requirements_the_resolution_skipped_are_reported() -> None:
    graph = {name: package for name, package in GRAPH.items() if name != "tomli"}
    selection = select_wheels(graph, ROOTS, target_environment("3.10", "manylinux2014_x86_64"), {})
    assert selection.missing == ["tomli>=1"]


def test_a_pip_freeze_is_read_by_canonical_name() -> None:
    freeze = "\n".join(
        [
            "# the node's packages",
            "Jinja2==3.1.6",
            "torch==2.11.0+cu130",
            "opencv-python===5.0.0",
            "mlflow @ file:///wheels/mlflow-3.0-py3-none-any.whl",
            "-e git+https://example.invalid/x.git#egg=x",
        ]
    )
    assert node_packages(freeze) == {
        "jinja2": "3.1.6",
        "torch": "2.11.0+cu130",
        "opencv-python": "5.0.0",
    }


def test_bad_arguments_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"WHEEL_NODE_FREEZE=.*no such file"):
        main(["--python", "3.12", "--platform", "manylinux_2_28_x86_64", "--out", str(tmp_path),
              "--node-freeze", str(tmp_path / "absent.txt")])  # fmt: skip
    with pytest.raises(SystemExit, match="WHEEL_PLATFORM=win_amd64"):
        main(["--python", "3.12", "--platform", "win_amd64", "--out", str(tmp_path)])


def repack(distribution: metadata.Distribution, folder: Path) -> Path:
    """An installed pure-Python distribution as a wheel again (what the index served)."""
    root = Path(str(distribution.locate_file("")))
    files = [
        file
        for file in distribution.files or []
        if file.parts[0] != ".." and "__pycache__" not in file.parts
    ]
    dist_info = next(file.parts[0] for file in files if file.parts[0].endswith(".dist-info"))
    path = folder / f"{dist_info.removesuffix('.dist-info')}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for file in files:
            if file.parts[0] == dist_info and file.name in {"RECORD", "INSTALLER", "REQUESTED"}:
                continue
            data = (root / file).read_bytes()
            wheel.writestr(str(file), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{file},sha256={digest.decode()},{len(data)}")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join([*record, f"{dist_info}/RECORD,,"]))
    return path


def fresh_node(folder: Path, provided: list[metadata.Distribution]) -> Path:
    """A fresh venv (no pip) whose Python also sees `provided`, as a GPU node's venv sees the
    image's own packages (--system-site-packages); returns its python."""
    shared = folder / "image-packages"
    shared.mkdir(parents=True)
    for distribution in provided:
        root = Path(str(distribution.locate_file("")))
        for top in {file.parts[0] for file in distribution.files or [] if file.parts[0] != ".."}:
            if not (shared / top).exists() and (root / top).exists():
                (shared / top).symlink_to(root / top)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "image.pth").write_text(f"{shared}\n")
    return venv / "bin" / "python"


@pytest.mark.slow
def test_an_offline_node_installs_fer_lab_from_the_wheelhouse(tmp_path: Path) -> None:
    """This machine's installed packages as the dependency graph; the node has all of them
    but fer_lab and Hydra's three, so the wheelhouse must hold exactly those four, and
    `pip install --no-index --find-links` must bring a working `python -m fer_lab.train`."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    graph = {
        name: Package(name, d.version, tuple(d.requires or [])) for name, d in installed.items()
    }
    missing_on_node = {"fer-lab", "hydra-core", "omegaconf", "antlr4-python3-runtime"}
    node = {name: d.version for name, d in installed.items() if name not in missing_on_node}
    selection = select_wheels(graph, ROOTS, dict(default_environment()), node)
    assert set(selection.download) == missing_on_node
    assert {"torch", "torchvision"} <= selection.left_out
    assert selection.on_node["opencv-python-headless"].startswith("4.")

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name in missing_on_node - {"fer-lab"}:
        repack(installed[name], wheelhouse)
    project = tmp_path / "project"  # a copy, so the build leaves the checkout as it is
    shutil.copytree(REPO_ROOT, project, ignore=shutil.ignore_patterns(
        ".*", "tests", "experiments", "logs", "build", "*.egg-info", "__pycache__", "mlflow.db*",
    ))  # fmt: skip
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # no index, no find-links but ours
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(wheelhouse), str(project)],
        check=True, env=env,
    )  # fmt: skip
    python = fresh_node(tmp_path / "node", [installed[name] for name in node])
    installing = subprocess.run(
        [*pip, "--python", str(python), "install", "--no-index", "--find-links", str(wheelhouse),
         "--no-compile", "fer_lab"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert installing.returncode == 0, installing.stdout + installing.stderr
    for name in ("fer_lab", "hydra_core", "omegaconf", "antlr4_python3_runtime"):
        assert name in installing.stdout.split("Successfully installed", 1)[1].replace("-", "_")
    check = subprocess.run(
        [str(python), "-m", "fer_lab.train", "experiment=demo", "--cfg", "job"],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "PYTHONPATH": ""},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert "fer_lab.models" in check.stdout
    where = subprocess.run(
        [str(python), "-c", "import fer_lab, hydra, cv2; print(fer_lab.__file__, hydra.__file__,"
         " cv2.data.haarcascades)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env={**env, "PYTHONPATH": ""},
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(tmp_path / "node" / "venv")) for path in where[:2])
    assert (Path(where[2]) / "haarcascade_frontalface_default.xml").is_file()
