"""`python -m fer_lab.data.download fer2013 [--dest DIR]`: fetch FER2013 with Kaggle credentials.

Needs `pip install kaggle` and an API token (~/.kaggle/kaggle.json or KAGGLE_USERNAME and
KAGGLE_KEY); the competition's rules must have been accepted on its Kaggle page.
"""

import argparse
import io
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

from fer_lab.data.fer2013 import HOW_TO_GET

COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"


def extract_fer2013_csv(archive: Path, dest: Path) -> Path:
    """Find `fer2013.csv` in the competition zip (it sits inside fer2013.tar.gz) and write it."""
    target = dest / "fer2013.csv"

    def from_tar(data: bytes) -> bool:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if Path(member.name).name == "fer2013.csv" and member.isfile():
                    with tar.extractfile(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    return True
        return False

    with zipfile.ZipFile(archive) as bundle:
        for name in bundle.namelist():
            if Path(name).name == "fer2013.csv":
                target.write_bytes(bundle.read(name))
                return target
        for name in bundle.namelist():
            if name.endswith((".tar.gz", ".tgz")) and from_tar(bundle.read(name)):
                return target
    raise FileNotFoundError(f"{archive}: no fer2013.csv inside")


def download_fer2013(dest: Path) -> Path:
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        sys.exit(f"The kaggle package is not installed (pip install kaggle). {HOW_TO_GET}")
    api = KaggleApi()
    api.authenticate()
    dest.mkdir(parents=True, exist_ok=True)
    api.competition_download_files(COMPETITION, path=str(dest), quiet=False)
    return extract_fer2013_csv(dest / f"{COMPETITION}.zip", dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["fer2013"])
    parser.add_argument("--dest", type=Path, default=Path("data"), help="default: ./data")
    args = parser.parse_args(argv)
    path = download_fer2013(args.dest)
    print(f"Wrote {path}; train with dataset.path={path}")


if __name__ == "__main__":
    main()
