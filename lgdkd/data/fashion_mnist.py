"""Fashion-MNIST product photos (the items of the proving-ground set), from Debian's package.

The 70,000 28x28 grey product photos of Fashion-MNIST (Zalando Research, MIT licence) are
read from the four idx files of the Debian package ``dataset-fashion-mnist``
(0.0~git20200523.55506a9-1), which need not be installed::

    apt-get download dataset-fashion-mnist
    dpkg -x dataset-fashion-mnist_*.deb DIR
    # -> DIR/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

The four files are pinned by sha256. :func:`find_fashion_mnist` looks for them in a folder
given explicitly, in ``$LGDKD_FASHION_MNIST``, in ``<datasets root>/fashion-mnist`` (where
:func:`fetch_fashion_mnist` puts them) and in ``/usr/share/datasets/fashion-mnist`` (the
package installed with apt); each folder may hold the files directly or be the target of
``dpkg -x``.
"""

import glob
import gzip
import os
import shutil
import subprocess
import tempfile

import numpy as np

from .errors import DatasetError
from .generated import sha256_file  # noqa: F401  (public here too: the pins' checker)

__all__ = [
    "CLASS_NAMES",
    "FashionMnistError",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
]

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
ENV_VAR = "LGDKD_FASHION_MNIST"
FOLDER = "fashion-mnist"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_DEB_SUBDIR = os.path.join("usr", "share", "datasets", "fashion-mnist")
# file name -> sha256 of the gzip file as shipped in the package
IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
    ),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"
    ),
}
SPLITS = {"train": 60000, "t10k": 10000}


class FashionMnistError(DatasetError):
    """The Fashion-MNIST files are missing, cannot be fetched or are not the pinned ones."""


def how_to_get(root):
    """The instructions printed when the files are missing."""
    dest = os.path.join(root, FOLDER)
    return (
        f"Get them from Debian's package {DEB_PACKAGE} ({DEB_VERSION}, 31 MB; it need not be "
        f"installed):\n"
        f"    apt-get download {DEB_PACKAGE}      # 'sudo apt-get update' first if apt has no "
        f"package lists\n"
        f"    dpkg -x {DEB_PACKAGE}_*.deb DIR\n"
        f"then either copy DIR/{_DEB_SUBDIR}/*-ubyte.gz into {dest}/, or pass "
        f"--items DIR (or set {ENV_VAR}=DIR). Without apt, take the .deb from "
        f"https://packages.debian.org/{DEB_PACKAGE} and unpack it with "
        f"`dpkg -x` or `ar x` + `tar xf data.tar.xz`. "
        f"`python datasets/prepare_proving_ground.py` runs the two commands itself where "
        f"apt-get is available."
    )


def _holds_files(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in IDX_SHA256)


def _candidates(folder):
    return [folder, os.path.join(folder, _DEB_SUBDIR)]


def find_fashion_mnist(items_dir=None, root=None):
    """The folder that holds the four idx files, or None.

    Args:
        items_dir: a folder given by the user (checked first; it must hold the files).
        root: the data sets root, whose ``fashion-mnist/`` folder is searched.

    Looked at in order: ``items_dir``, ``$LGDKD_FASHION_MNIST``, ``<root>/fashion-mnist``,
    ``/usr/share/datasets/fashion-mnist``; each as it is or as the target of ``dpkg -x``.
    An explicit ``items_dir`` or ``$LGDKD_FASHION_MNIST`` without the files is an error.
    """
    for given, what in ((items_dir, "--items"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            for folder in _candidates(os.path.abspath(os.path.expanduser(given))):
                if _holds_files(folder):
                    return folder
            raise FashionMnistError(
                f"{what} names {given}, which holds neither the four Fashion-MNIST idx files "
                f"({', '.join(IDX_SHA256)}) nor {_DEB_SUBDIR}/ with them. "
                + how_to_get(root or ".")
            )
    folders = [os.path.join(root, FOLDER)] if root else []
    for folder in folders + [SYSTEM_DIR]:
        for candidate in _candidates(folder):
            if _holds_files(candidate):
                return candidate
    return None


def fetch_fashion_mnist(root):
    """Download the Debian package with ``apt-get download``, unpack it with ``dpkg -x`` and
    copy the four idx files (checked by sha256) into ``<root>/fashion-mnist``.

    Returns:
        the folder that holds the files.
    """
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg")
    if apt is None or dpkg is None:
        raise FashionMnistError(
            "The Fashion-MNIST files are not here and this machine has no "
            f"{'apt-get' if apt is None else 'dpkg'} to fetch them. " + how_to_get(root)
        )
    dest = os.path.join(root, FOLDER)
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fashion-mnist-", dir=root) as tmp:
        _run([apt, "download", DEB_PACKAGE], tmp, root)
        debs = sorted(glob.glob(os.path.join(tmp, f"{DEB_PACKAGE}_*.deb")))
        if not debs:
            raise FashionMnistError(f"apt-get download left no .deb in {tmp}. " + how_to_get(root))
        _run([dpkg, "-x", debs[-1], os.path.join(tmp, "x")], tmp, root)
        source = os.path.join(tmp, "x", _DEB_SUBDIR)
        _check_files(source, root)
        os.makedirs(dest, exist_ok=True)
        for name in IDX_SHA256:
            shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
    return dest


def _run(cmd, cwd, root):
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        output = proc.stdout.decode("utf-8", "replace").strip()[-1500:]
        raise FashionMnistError(
            f"`{' '.join(cmd)}` failed (exit code {proc.returncode}):\n{output}\n"
            + how_to_get(root)
        )


def _check_files(folder, root):
    for name, expected in IDX_SHA256.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FashionMnistError(f"{path} is missing. " + how_to_get(root))
        actual = sha256_file(path)
        if actual != expected:
            raise FashionMnistError(
                f"{path} has sha256 {actual}, expected {expected} (the file of {DEB_PACKAGE} "
                f"{DEB_VERSION}): it is another version of Fashion-MNIST, or damaged. "
                + how_to_get(root)
            )


def read_idx(path):
    """An idx file (gzip-compressed or not) as a numpy uint8 array of its stated shape."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise FashionMnistError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise FashionMnistError(f"{path}: {len(data) - offset} data bytes for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def load_fashion_mnist(folder, root=None):
    """The two splits of Fashion-MNIST, after checking the files' sha256.

    Returns:
        dict ``"train"`` / ``"t10k"`` -> (images uint8 (N, 28, 28), labels int64 (N,)).
    """
    _check_files(folder, root or ".")
    out = {}
    for split, count in SPLITS.items():
        images = read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
        if images.shape != (count, 28, 28) or labels.shape != (count,):
            raise FashionMnistError(f"{folder}: unexpected shapes {images.shape}, {labels.shape}")
        out[split] = (images, labels.astype(np.int64))
    return out
