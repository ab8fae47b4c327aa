#!/usr/bin/env python
"""Install detectron2 v0.6 (pure Python) into the running interpreter's environment.

detectron2 is not published on PyPI under its own name. The PyPI sdist ``pb1-detectron2==0.6``
carries the upstream v0.6 ``detectron2/`` Python tree (plus ``model_zoo/configs``) but not the
C++/CUDA sources, so its own ``setup.py`` cannot build. This script:

1. downloads that sdist (with pip < 26: newer pip refuses the package's metadata), into a cache;
2. checks its sha256 against the value pinned below;
3. repackages ``detectron2/`` as a wheel of a distribution named ``detectron2`` (version 0.6) with
   v0.6's runtime requirements, and installs it with pip, so that ``pip show detectron2`` and
   ``pip uninstall detectron2`` work as for any distribution.

The missing compiled ops are served by ``lgdkd.compat`` (see its docstring). When a detectron2
with compiled ops is already importable, nothing is done.

Usage: python tools/install_detectron2.py [--cache DIR] [--force]
"""
import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# pip >= 26 refuses to download the sdist ("cannot declare direct URL dependencies").
BOOTSTRAP_PIP = "pip==25.3"

# detectron2 v0.6's install_requires, minus the formatting/caffe2-only ones (black, future, pydot)
INSTALL_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

SETUP_PY = """\
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    author="FAIR",
    url="https://github.com/facebookresearch/detectron2",
    description="detectron2 v0.6 Python sources (no compiled ops), repackaged from the PyPI "
    "sdist pb1-detectron2==0.6 by lgdkd/tools/install_detectron2.py",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    include_package_data=False,
    python_requires=">=3.7",
    install_requires={requires!r},
)
"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compiled_detectron2_present():
    """True when an importable detectron2 has its compiled ``_C`` extension."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return False
    for d in spec.submodule_search_locations:
        if any(n.startswith("_C.") and n.endswith((".so", ".pyd")) for n in os.listdir(d)):
            return True
    return False


def installed_version():
    try:
        from importlib.metadata import version

        return version("detectron2")
    except Exception:
        return None


def pip_cmd():
    return [sys.executable, "-m", "pip"]


def download_sdist(cache):
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, SDIST_FILE)
    if os.path.exists(target) and sha256(target) == SDIST_SHA256:
        return target
    if os.path.exists(target):
        os.remove(target)
    bootstrap = [f for f in os.listdir(cache) if f.startswith("pip-25.3") and f.endswith(".whl")]
    if not bootstrap:
        subprocess.check_call(
            pip_cmd() + ["download", "-q", "--no-deps", "-d", cache, BOOTSTRAP_PIP]
        )
        bootstrap = [
            f for f in os.listdir(cache) if f.startswith("pip-25.3") and f.endswith(".whl")
        ]
    old_pip = os.path.join(cache, bootstrap[0], "pip")
    # --no-build-isolation: the sdist's setup.py imports torch just to read its metadata.
    subprocess.check_call(
        [sys.executable, old_pip, "download", "-q", "--no-deps", "--no-build-isolation"]
        + ["-d", cache, f"{SDIST_NAME}=={SDIST_VERSION}"]
    )
    digest = sha256(target)
    if digest != SDIST_SHA256:
        os.remove(target)
        raise SystemExit(
            f"{SDIST_FILE}: sha256 {digest} does not match the pinned {SDIST_SHA256}. "
            "The archive on PyPI changed; refusing to install it."
        )
    return target


def build_and_install(sdist):
    with tempfile.TemporaryDirectory(prefix="lgdkd-d2-") as tmp:
        with tarfile.open(sdist) as tar:
            members = [
                m for m in tar.getmembers() if m.name.startswith("pb1-detectron2-0.6/detectron2/")
            ]
            tar.extractall(tmp, members=members, filter="data")
        src = os.path.join(tmp, "pb1-detectron2-0.6")
        with open(os.path.join(src, "setup.py"), "w") as f:
            f.write(SETUP_PY.format(requires=INSTALL_REQUIRES))
        wheel_dir = os.path.join(tmp, "wheel")
        subprocess.check_call(
            pip_cmd() + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheel_dir, src]
        )
        wheel = [os.path.join(wheel_dir, f) for f in os.listdir(wheel_dir) if f.endswith(".whl")]
        subprocess.check_call(
            pip_cmd() + ["install", "-q", "--force-reinstall", "--no-deps"] + wheel
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), "..", ".cache"))
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args()

    if compiled_detectron2_present():
        print("install_detectron2: a detectron2 with compiled ops is installed; leaving it as is.")
        return
    if installed_version() == "0.6" and not args.force:
        print("install_detectron2: detectron2 0.6 (pure Python) already installed.")
        return
    sdist = download_sdist(os.path.abspath(args.cache))
    build_and_install(sdist)
    shutil.rmtree(os.path.join(os.path.abspath(args.cache), "build"), ignore_errors=True)
    print(f"install_detectron2: installed detectron2 {installed_version()} from {SDIST_FILE}")


if __name__ == "__main__":
    main()
