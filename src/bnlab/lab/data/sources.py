"""The official files of each downloadable dataset: names, sizes, checksums, mirrors.

Checksums are those published for the official files:

* MD5: published by the dataset authors / used by torchvision for the same files
  (MNIST, Fashion-MNIST: the authors' README; CIFAR-10: the authors' page).
* SHA-256 and sizes: TensorFlow Datasets' ``tensorflow_datasets/url_checksums/``
  (``mnist.txt``, ``fashion_mnist.txt``, ``cifar10.csv``), which record the same files.

Downloads are verified against the SHA-256 (and the MD5 and size as well); see
:func:`bnlab.lab.data.download.verify_file`.

For Fashion-MNIST the SHA-256 of each file's *decompressed* IDX bytes is recorded as well
(``raw_sha256``/``raw_size``), so that copies recompressed by a distribution verify too.
Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``) ships
each ``.gz`` with its gzip header rewritten (the stored file name dropped, hence 23-24 bytes
shorter, and a new timestamp), so its ``.gz`` SHA-256 differs from the official one while
the IDX content is byte-identical. The raw SHA-256 values were computed from the
decompressed files of that package (version 0.0~git20200523.55506a9-1); they agree with the
MD5s of the decompressed official files that circulate with open-source loaders
(``f4a8712d...`` train images, ``9018921c...`` train labels, ``8181f547...`` test images,
``15d48437...`` test labels) and with the sizes every IDX header implies
(16 + N·28·28 and 8 + N bytes).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpec:
    """One official file: its name, byte size and checksums (hex digests; None = unknown).

    ``raw_size``/``raw_sha256`` describe the decompressed content of a ``.gz`` file (None
    where not recorded); a file whose own SHA-256 differs is still accepted when its
    decompressed bytes match them.
    """

    name: str
    size: int | None
    sha256: str | None
    md5: str | None
    raw_size: int | None = None
    raw_sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from: the files and the HTTPS base URLs that serve them."""

    dataset: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    homepage: str

    def file(self, name: str) -> FileSpec:
        for spec in self.files:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.dataset} has no file {name!r}")


MNIST = Source(
    dataset="mnist",
    files=(
        FileSpec("train-images-idx3-ubyte.gz", 9912422,
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        FileSpec("train-labels-idx1-ubyte.gz", 28881,
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 "d53e105ee54ea40749a09fcbcd1e9432"),
        FileSpec("t10k-images-idx3-ubyte.gz", 1648877,
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 "9fb629c4189551a2d022fa330f9573f3"),
        FileSpec("t10k-labels-idx1-ubyte.gz", 4542,
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                 "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ),
    homepage="https://yann.lecun.com/exdb/mnist/",
)

FASHION_MNIST = Source(
    dataset="fashion-mnist",
    files=(
        FileSpec("train-images-idx3-ubyte.gz", 26421880,
                 "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                 "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 47040016,
                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        FileSpec("train-labels-idx1-ubyte.gz", 29515,
                 "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                 "25c81989df183df01b3e8a0aad5dffbe", 60008,
                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        FileSpec("t10k-images-idx3-ubyte.gz", 4422102,
                 "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                 "bef4ecab320f06d8554ea6380940ec79", 7840016,
                 "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        FileSpec("t10k-labels-idx1-ubyte.gz", 5148,
                 "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                 "bb300cfdad3c16e7a12a480ee83cd310", 10008,
                 "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)

CIFAR10 = Source(
    dataset="cifar10",
    files=(
        FileSpec("cifar-10-python.tar.gz", 170498071,
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                 "c58f30108f718f92721af3b95e74349a"),
    ),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
)

SOURCES: dict[str, Source] = {s.dataset: s for s in (MNIST, FASHION_MNIST, CIFAR10)}
