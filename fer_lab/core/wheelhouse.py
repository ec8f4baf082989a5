"""`make wheelhouse`: every wheel fer_lab needs on a GPU node without internet, downloaded here
for the node's Python and platform, less torch and whatever the node already has.

    make wheelhouse WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64 \\
        WHEEL_NODE_FREEZE=node-freeze.txt WHEEL_DIR=/tmp/wheelhouse
    python -m fer_lab.core.wheelhouse --python 3.12 --platform manylinux_2_28_x86_64 \\
        --node-freeze node-freeze.txt --out /tmp/wheelhouse

The folder holds fer_lab's own wheel, its dependencies resolved for the node (Requires-Python,
wheel tags and environment markers all for its Python, not this machine's),
`opencv-python-headless<5` (the node image's OpenCV 5 has no Haar cascades, which `predict`
needs), and the build requirements, so that an editable install builds offline too. Left out:
torch, torchvision and what only they need (nvidia-*, cuda-*, triton), and every package in the
node's `pip freeze` whose version meets all the requirements on it. On the node, in a venv that
sees the node's own torch:

    python -m venv --system-site-packages ~/fer_lab_env
    ~/fer_lab_env/bin/pip install --no-index --find-links /path/to/wheelhouse fer_lab
    # or, from a checkout: ~/fer_lab_env/bin/pip install --no-index --find-links ... -e .

The venv's packages come before the node's on sys.path, so its OpenCV 4 shadows the node's 5.
wheelhouse.json in the folder lists its wheels, what the node keeps and what was left out.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
# The node brings these (its CUDA build of torch); so does what only they require.
TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"})
TORCH_PREFIXES = ("nvidia-", "cuda-")
OPENCV = "opencv-python-headless<5"
LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
RESOLVE_ROUNDS = 3


@dataclass(frozen=True)
class Package:
    """One resolved distribution: what pip's installation report says of it."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


@dataclass
class Selection:
    """What the wheelhouse gets (name -> version), what the node keeps (name -> its version),
    the torch-family names that were met and left out, and requirements the resolution did not
    cover (pip evaluates markers for this machine's Python; the selection, for the node's)."""

    download: dict[str, str] = field(default_factory=dict)
    on_node: dict[str, str] = field(default_factory=dict)
    left_out: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    requirements: dict[str, list[Requirement]] = field(default_factory=dict)


def is_left_out(name: str, exclude: Iterable[str] = ()) -> bool:
    name = canonicalize_name(name)
    excluded = TORCH_FAMILY | {canonicalize_name(n) for n in exclude}
    return name in excluded or name.startswith(TORCH_PREFIXES)


def parse_platform(platform: str) -> tuple[int, int, str] | None:
    """(glibc major, minor, machine) of a manylinux tag; None for a plain linux_<machine>."""
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", platform)
    if match:
        return int(match[1]), int(match[2]), match[3]
    if legacy:
        return 2, LEGACY_MANYLINUX[legacy[1]], legacy[2]
    if re.fullmatch(r"linux_\w+", platform):
        return None
    raise ValueError(
        f"WHEEL_PLATFORM={platform}: give a Linux wheel tag such as manylinux_2_28_x86_64 "
        "or manylinux2014_x86_64 (the node's glibc: `ldd --version`)"
    )


def platform_tags(platform: str) -> list[str]:
    """pip's --platform values for a Linux node, best first. pip matches a manylinux_2_28 tag
    only as written, so every older glibc's tag (and the legacy aliases) is listed too."""
    parsed = parse_platform(platform)
    if parsed is None:
        return [platform]
    major, minor, machine = parsed
    aliases = {glibc: f"{name}_{machine}" for name, glibc in LEGACY_MANYLINUX.items()}
    tags = []
    for glibc in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{glibc}_{machine}")
        if major == 2 and glibc in aliases:
            tags.append(aliases[glibc])
    return tags


def target_environment(python: str, platform: str) -> dict[str, str]:
    """Environment markers as the node's CPython evaluates them."""
    if not re.fullmatch(r"3\.\d+", python):
        raise ValueError(f"WHEEL_PYTHON={python}: give the node's Python as MAJOR.MINOR, e.g. 3.12")
    parsed = parse_platform(platform)
    machine = parsed[2] if parsed else platform.removeprefix("linux_")
    environment = dict(default_environment())
    environment.update(
        python_version=python,
        python_full_version=f"{python}.0",
        implementation_name="cpython",
        implementation_version=f"{python}.0",
        platform_python_implementation="CPython",
        sys_platform="linux",
        os_name="posix",
        platform_system="Linux",
        platform_machine=machine,
    )
    return environment


def node_packages(freeze: str) -> dict[str, str]:
    """name -> version from a node's `pip freeze`. Lines without a version (`name @ url`,
    `-e ...`) are left out: their wheels stay in the wheelhouse, where pip ignores them."""
    found = {}
    for line in freeze.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)", line)
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def satisfies(version: str, requirements: Sequence[Requirement]) -> bool:
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return all(req.specifier.contains(parsed, prereleases=True) for req in requirements)


def _walk(
    packages: Mapping[str, Package],
    roots: Sequence[str],
    environment: Mapping[str, str],
    stop: Mapping[str, str],
    exclude: Iterable[str],
) -> Selection:
    """Follow requirements from `roots` through `packages`, not into the torch family nor
    into the packages in `stop` (kept on the node, whose own dependencies it has)."""
    selection = Selection()
    extras: dict[str, set[str]] = {}
    queue = [Requirement(root) for root in roots]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        selection.requirements.setdefault(name, []).append(requirement)
        if is_left_out(name, exclude):
            selection.left_out.add(name)
            continue
        if name in stop:
            continue
        package = packages.get(name)
        if package is None:
            selection.missing.append(str(requirement))
            continue
        wanted = {canonicalize_name(extra) for extra in requirement.extras}
        if name in selection.download and wanted <= extras[name]:
            continue
        selection.download[name] = package.version
        extras.setdefault(name, set()).update(wanted)
        contexts = [{**environment, "extra": extra} for extra in ("", *sorted(extras[name]))]
        for text in package.requires:
            dependency = Requirement(text)
            marker = dependency.marker
            if marker is None or any(marker.evaluate(context) for context in contexts):
                dependency.marker = None
                queue.append(dependency)
    return selection


def select_wheels(
    packages: Mapping[str, Package],
    roots: Sequence[str],
    environment: Mapping[str, str],
    node: Mapping[str, str],
    exclude: Iterable[str] = (),
) -> Selection:
    """The wheels an offline node needs: everything `roots` require on the node, less the torch
    family and the node's packages whose versions meet every requirement on them. Keeping a
    node package drops what only it required, which may let another one be kept: repeated
    until nothing changes."""
    kept: dict[str, str] = {}
    while True:
        selection = _walk(packages, roots, environment, kept, exclude)
        newly_kept = {
            name: version
            for name, version in node.items()
            if name in selection.requirements
            and name not in kept
            and not is_left_out(name, exclude)
            and satisfies(version, selection.requirements[name])
        }
        if not newly_kept:
            selection.on_node = kept
            return selection
        kept.update(newly_kept)


def report_packages(report: Mapping) -> dict[str, Package]:
    """pip's `--report` JSON as name -> Package."""
    packages = {}
    for item in report["install"]:
        metadata = item["metadata"]
        name = canonicalize_name(metadata["name"])
        packages[name] = Package(
            name, metadata["version"], tuple(metadata.get("requires_dist", []))
        )
    return packages


def pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"pip {arguments[0]} failed (exit {done.returncode}): {' '.join(command)}\n"
            + (done.stdout + done.stderr)[-4000:]
        )


def resolve(requirements: Sequence[str], target: Sequence[str], folder: Path) -> dict:
    """pip's resolution (metadata only, nothing installed) as its installation report;
    `target` restricts it to the node's wheels, [] resolves for this machine."""
    with tempfile.TemporaryDirectory() as temp:
        report = Path(temp) / "report.json"
        pip(
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--find-links",
            str(folder),
            *target,
            *requirements,
        )
        return json.loads(report.read_text())


def build_requirements(project: Path) -> list[str]:
    return tomllib.loads((project / "pyproject.toml").read_text())["build-system"]["requires"]


def wheel_files(folder: Path) -> dict[Path, tuple[str, Version]]:
    """Each wheel in `folder` with its (canonical name, version)."""
    return {path: parse_wheel_filename(path.name)[:2] for path in folder.glob("*.whl")}


def build_from_source(
    folder: Path,
    requirements: Sequence[str],
    roots: Sequence[str],
    node: Mapping[str, str],
    exclude: Sequence[str],
) -> None:
    """Wheels for the pure-Python packages the index has only as source (antlr4-python3-runtime
    for omegaconf): pip resolves for another platform from wheels alone."""
    report = resolve(requirements, [], folder)
    host = select_wheels(report_packages(report), roots, default_environment(), node, exclude)
    for item in report["install"]:
        metadata = item["metadata"]
        name = canonicalize_name(metadata["name"])
        if name not in host.download or item["download_info"]["url"].endswith(".whl"):
            continue
        pip(
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(folder),
            f"{metadata['name']}=={metadata['version']}",
        )
        built = [path for path, (found, _) in wheel_files(folder).items() if found == name]
        if not all(path.name.endswith("-none-any.whl") for path in built):
            raise SystemExit(
                f"{metadata['name']} {metadata['version']} has no wheel on the index and builds "
                f"only for this machine ({built[0].name}): build it on a machine like the node"
            )


def build(
    out: Path,
    python: str,
    platform: str,
    node: Mapping[str, str],
    exclude: Sequence[str] = (),
    project: Path = REPO_ROOT,
) -> dict:
    """Fill `out` and return its manifest (also written to out/wheelhouse.json)."""
    out.mkdir(parents=True, exist_ok=True)
    environment = target_environment(python, platform)
    pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(project))
    (own,) = [path for path, (name, _) in wheel_files(out).items() if name == "fer-lab"]
    target = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for tag in platform_tags(platform):
        target += ["--platform", tag]
    roots = ["fer_lab", OPENCV]
    build_from_source(out, [str(own), OPENCV], roots, node, exclude)
    extra: list[str] = []
    for _ in range(RESOLVE_ROUNDS):
        packages = report_packages(resolve([str(own), OPENCV, *extra], target, out))
        selection = select_wheels(packages, [*roots, *extra], environment, node, exclude)
        if not selection.missing:
            break
        extra += selection.missing
    else:
        raise SystemExit(f"Requirements for Python {python} not resolved: {selection.missing}")
    check_node_torch(selection, node)
    pins = [f"{name}=={version}" for name, version in selection.download.items()]
    pip(
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(out),
        "--find-links",
        str(out),
        *target,
        *[pin for pin in pins if not pin.startswith("fer-lab==")],
    )
    for path, (name, version) in wheel_files(out).items():
        if name not in selection.download or Version(selection.download[name]) != version:
            path.unlink()  # built from source but not needed there, or left by an earlier run
    absent = sorted(set(selection.download) - {name for name, _ in wheel_files(out).values()})
    if absent:
        raise SystemExit(f"Wheels not downloaded into {out}: {absent}")
    # What pip's build isolation installs for `pip install -e .` (not subject to the node's).
    pip("download", "--quiet", "-d", str(out), *target, *build_requirements(project))
    present = sorted(wheel_files(out))
    manifest = {
        "python": python,
        "platform": platform,
        "wheels": [path.name for path in present],
        "mib": sum(path.stat().st_size for path in present) / 2**20,
        "on_node": dict(sorted(selection.on_node.items())),
        "left_out": sorted(selection.left_out),
        "install": f"pip install --no-index --find-links {out} fer_lab",
    }
    (out / "wheelhouse.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def check_node_torch(selection: Selection, node: Mapping[str, str]) -> None:
    """The node's torch and torchvision must meet fer_lab's and its dependencies' pins."""
    for name in ("torch", "torchvision"):
        wanted = selection.requirements.get(name, [])
        if name in node and not satisfies(node[name], wanted):
            pins = ", ".join(sorted({str(req.specifier) for req in wanted}))
            raise SystemExit(f"The node's {name} {node[name]} does not meet {pins}")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer_lab.core.wheelhouse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--python", required=True, help="the node's Python, e.g. 3.12")
    parser.add_argument("--platform", required=True, help="e.g. manylinux_2_28_x86_64")
    parser.add_argument("--out", type=Path, required=True, help="the wheelhouse folder")
    parser.add_argument("--node-freeze", type=Path, help="the node's `pip freeze` output")
    parser.add_argument("--exclude", action="append", default=[], help="a name to leave out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    node = {}
    if args.node_freeze is not None:
        if not args.node_freeze.is_file():
            raise SystemExit(f"WHEEL_NODE_FREEZE={args.node_freeze}: no such file")
        node = node_packages(args.node_freeze.read_text())
    try:
        manifest = build(args.out.resolve(), args.python, args.platform, node, args.exclude)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(
        f"{len(manifest['wheels'])} wheels, {manifest['mib']:.1f} MiB in {args.out}; "
        f"the node keeps {len(manifest['on_node'])} of its packages; left out: "
        f"{', '.join(manifest['left_out']) or 'nothing'}.\nOn the node: {manifest['install']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
