"""Your own data: arrays in an .npz file, a folder of images, or arrays already in memory.

All three end as the same validated pair of splits. Everything is checked before a run starts
(a bad file never leaves a half-written run directory behind), and every error names the file
and what is wrong with it (``DatasetFileError``).

- ``.npz`` (keras' mnist.npz layout): ``x_train``, ``y_train``, ``x_test``, ``y_test``.
- image folder (torchvision's ImageFolder layout): ``train/<class>/*`` and ``test/<class>/*``,
  decoded with Pillow once and cached as uint8 arrays (see ``read_image_folder``).
- arrays: the ``data=(x_train, y_train, x_test, y_test)`` of ``adt_fast.train.fit``.

Evaluation reads the test split alone (``read_npz_test``, ``read_image_folder_test``): an .npz
then needs only ``x_test``, ``y_test`` and a folder only ``test/``; the number of classes is then
the model's (``datasets.TestSplit``), since test labels need not show every class.

Images are uint8 in 0..255 or floats in [0, 1], shaped N x H x W, N x H x W x C or N x C x H x W
(``detect_layout``); labels are integers 0..C-1, C >= 2, with every class present in the training split.
The content hash (``fingerprint``) is what a run directory records so that evaluation and resume
can tell whether the data changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetFileError, MissingDependencyError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
TEST_KEYS = ("x_test", "y_test")
SPLITS = ("train", "test")
TEST_ONLY = ("test",)
MIN_IMAGE_SIZE = 8             # the classifiers' minimum, adt_fast.models.classifiers.MIN_IMAGE_SIZE
CACHE_DIR_ENV = "ADT_FAST_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/adt_fast/image-folders")
CACHE_FORMAT = "adt_fast.image-folder/2"    # /1 caches hold 16-bit and float grayscale clipped
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})
# Grayscale modes deeper than 8 bits, and the value each gives white. Pillow opens 16-bit PNG and
# TIFF as I;16 (I;16B big-endian), and 16-bit PGM as I, scaled to 0..65535 whatever the file's
# maxval; so I (32-bit integer TIFFs too) is read on the 16-bit scale. Float (F) TIFFs hold [0, 1].
DEEP_GRAYSCALE_WHITE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
GRAYSCALE_MODES = frozenset({"1", "L", "LA", *DEEP_GRAYSCALE_WHITE})
LAYOUT_NAMES = {"NHW": "N x H x W (grayscale)", "NHWC": "N x H x W x C (channels last)",
                "NCHW": "N x C x H x W (channels first)"}


@dataclasses.dataclass(frozen=True)
class Splits:
    """Validated data: uint8 or float32 images (N, C, H, W) and int64 labels, per split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    notes: tuple[str, ...] = ()          # what was detected, for the run's log
    classes: tuple[str, ...] = ()        # class names (image folders)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """sha256 of the arrays as read (dtype, shape and bytes) and of the class names."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class TestArrays:
    """The test split alone, validated as in ``Splits``; labels are checked against the model's
    classes later (``datasets.TestSplit.info``), not against a training split."""

    __test__ = False               # not a pytest test class, despite its name

    x_test: np.ndarray
    y_test: np.ndarray
    notes: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()        # an image folder's test/ class folders, sorted by name


# ------------------------------------------------------------------------------------------------
# Arrays (npz, in memory)
# ------------------------------------------------------------------------------------------------
def detect_layout(shape: tuple[int, ...]) -> tuple[str, bool]:
    """``(layout, ambiguous)`` for an image array's shape, or ValueError.

    Images must be square, which decides the layout: N x H x W x C when axes 1 and 2 are equal,
    N x C x H x W when axes 2 and 3 are. When all three are equal (N x 28 x 28 x 28, say) either
    reading is square; channels last is taken (keras' and numpy's convention) and ``ambiguous``
    is True so the log can say so.
    """
    if len(shape) == 3:
        if shape[1] != shape[2]:
            raise ValueError(f"images must be square, but shape {shape} is N x H x W with H != W")
        return "NHW", False
    if len(shape) != 4:
        raise ValueError(f"images must be N x H x W, N x H x W x C or N x C x H x W; got shape {shape}")
    _, a, b, c = shape
    if a == b:
        return "NHWC", b == c
    if b == c:
        return "NCHW", False
    raise ValueError(f"images must be square, but shape {shape} is neither N x H x W x C with H == W "
                     f"nor N x C x H x W with H == W")


def _images(array: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """Images as (N, C, H, W), uint8 or float32, checked; and a note saying how they were read."""
    try:
        layout, ambiguous = detect_layout(array.shape)
    except ValueError as error:
        raise DatasetFileError(f"{where}: {error}") from None
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
        finite = np.isfinite(array)
        if not finite.all():
            raise DatasetFileError(f"{where}: {int(array.size - finite.sum())} pixel values are NaN or infinite")
        low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        if low < 0.0 or high > 1.0:
            hint = " (divide 0-255 values by 255, or store them as uint8)" if high > 1.0 else ""
            raise DatasetFileError(f"{where}: float pixels must lie in [0, 1], found [{low:g}, {high:g}]{hint}")
    else:
        raise DatasetFileError(f"{where}: pixels must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")
    if layout == "NHW":
        array = array[:, None]
    elif layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    channels, height, width = array.shape[1:]
    if array.shape[0] == 0:
        raise DatasetFileError(f"{where}: holds no images")
    if channels == 0:
        raise DatasetFileError(f"{where}: shape {tuple(array.shape[:1]) + _original_shape(array.shape, layout)} read as "
                               f"{LAYOUT_NAMES[layout]}: images of {height}x{width} with 0 channels")
    if height < MIN_IMAGE_SIZE:
        raise DatasetFileError(f"{where}: images are {height}x{width}; the classifiers need at least "
                               f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    note = (f"{where}: shape {tuple(array.shape[:1]) + tuple(_original_shape(array.shape, layout))} read as "
            f"{LAYOUT_NAMES[layout]}: {array.shape[0]} images of {height}x{width}, {channels} channel(s)")
    if ambiguous:
        note += " (either layout gives square images; channels last was assumed)"
    return np.ascontiguousarray(array), note


def _original_shape(nchw: tuple[int, ...], layout: str) -> tuple[int, ...]:
    _, c, h, w = nchw
    return {"NHW": (h, w), "NHWC": (h, w, c), "NCHW": (c, h, w)}[layout]


def _labels(array: np.ndarray, where: str, num_images: int, label_bound: int | None) -> np.ndarray:
    """int64 labels; ``label_bound`` is the training images' count, None for a test split read alone
    (whose labels the model's class count bounds later)."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        hint = " (one-hot labels? store the class index: y.argmax(1))" if array.ndim == 2 else ""
        raise DatasetFileError(f"{where}: labels must be a vector of N class indices, got shape {array.shape}{hint}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetFileError(f"{where}: labels must be integers 0..C-1, got dtype {array.dtype}")
    if array.shape[0] != num_images:
        raise DatasetFileError(f"{where}: {array.shape[0]} labels for {num_images} images")
    if array.size and array.min() < 0:
        raise DatasetFileError(f"{where}: labels must be integers 0..C-1, found {array.min()}")
    # Every class needs a training example, so no label reaches the number of training images (an
    # "unlabelled" sentinel such as 0xFFFFFFFF, or an unsigned value that int64 would wrap): it is
    # refused here, before the cast, and before bincount would allocate a count per value up to it.
    if label_bound is not None and array.size and array.max() >= label_bound:
        raise DatasetFileError(f"{where}: labels must be integers 0..C-1, with C at most the {label_bound} "
                               f"training images (every class needs one), found {array.max()}")
    if array.size and array.max() > np.iinfo(np.int64).max:      # a test split read alone: a uint64 the cast would wrap
        raise DatasetFileError(f"{where}: labels must be integers 0..C-1, found {array.max()}")
    return array.astype(np.int64)


def splits_from_arrays(arrays: dict, origin: str, classes: tuple[str, ...] = ()) -> Splits:
    """Validate ``x_train, y_train, x_test, y_test`` (numpy arrays) from ``origin`` (a file name)."""
    _require_keys(arrays, origin)
    images, labels, notes = {}, {}, []
    for split in SPLITS:
        images[split], note = _images(np.asarray(arrays[f"x_{split}"]), f"{origin}: x_{split}")
        labels[split] = _labels(np.asarray(arrays[f"y_{split}"]), f"{origin}: y_{split}", images[split].shape[0],
                                label_bound=images["train"].shape[0])
        notes.append(note)
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DatasetFileError(f"{origin}: x_train images are {_chw(images['train'])} but x_test images are "
                               f"{_chw(images['test'])}")
    num_classes = int(labels["train"].max()) + 1
    if num_classes < 2:  # one class: the loss is 0 from the start and the "perfect" model learns nothing
        raise DatasetFileError(f"{origin}: y_train has one class (every label is 0); a classifier needs "
                               f"at least 2 classes, labelled 0..C-1")
    present = np.bincount(labels["train"], minlength=num_classes)
    empty = np.flatnonzero(present == 0)
    if empty.size:
        raise DatasetFileError(
            f"{origin}: y_train has labels up to {num_classes - 1} but no example of class(es) "
            f"{', '.join(map(str, empty[:10]))}; labels must be 0..C-1 with every class present "
            f"(1-based labels? subtract 1)")
    if labels["test"].size and labels["test"].max() >= num_classes:
        raise DatasetFileError(f"{origin}: y_test has label {labels['test'].max()}, but y_train has only "
                               f"{num_classes} classes (0..{num_classes - 1})")
    return Splits(images["train"], labels["train"], images["test"], labels["test"], num_classes,
                  tuple(notes), classes)


def test_split_from_arrays(arrays: dict, origin: str, classes: tuple[str, ...] = ()) -> TestArrays:
    """Validate ``x_test, y_test`` alone (evaluation); any other array is ignored."""
    _require_keys(arrays, origin, TEST_KEYS)
    images, note = _images(np.asarray(arrays["x_test"]), f"{origin}: x_test")
    labels = _labels(np.asarray(arrays["y_test"]), f"{origin}: y_test", images.shape[0], label_bound=None)
    return TestArrays(images, labels, (note,), classes)


def _require_keys(found, origin: str, keys: tuple[str, ...] = NPZ_KEYS) -> None:
    missing = [key for key in keys if key not in found]
    if missing:
        purpose = "as keras' mnist.npz does" if keys == NPZ_KEYS else "the test split that is evaluated"
        raise DatasetFileError(f"{origin}: missing {', '.join(missing)} (found: {', '.join(sorted(found)) or 'nothing'});"
                               f" it must hold {', '.join(keys)}, {purpose}")


def _chw(images: np.ndarray) -> str:
    return "x".join(map(str, images.shape[1:])) + " (C x H x W)"


def read_npz(path: Path) -> Splits:
    """The four arrays of an .npz file (never unpickled), validated."""
    return splits_from_arrays(_npz_arrays(path, NPZ_KEYS), str(path))


def read_npz_test(path: Path) -> TestArrays:
    """An .npz file's ``x_test``, ``y_test`` alone (evaluation); train arrays are not read."""
    return test_split_from_arrays(_npz_arrays(path, TEST_KEYS), str(path))


def holds_npz_test(path: Path) -> bool:
    """Whether ``path`` is an .npz file that holds ``x_test`` and ``y_test``, as read_npz_test would
    read them: the archive's names alone, no array is read."""
    try:
        _npz_arrays(path, TEST_KEYS, read=False)
    except (DatasetFileError, OSError):
        return False
    return True


def _npz_arrays(path: Path, keys: tuple[str, ...], read: bool = True) -> dict:
    """``keys`` of an .npz file, never unpickled (with ``read`` False, only checked to be there: {}).

    The zip check comes first: given anything else, numpy returns an .npy's bare array, or
    takes the file (a .mat, text) for a pickle and suggests allow_pickle, an unsafe fix. Before
    it, a named pipe (or device) is refused: opening one waits for a writer, for ever.
    """
    try:
        _require_regular_file(path, os.stat(path).st_mode)
        with open(path, "rb") as handle:
            if not zipfile.is_zipfile(handle):
                raise DatasetFileError(f"{path}: not an .npz archive, or a truncated one (an .npz is a zip of "
                                       f"{', '.join(NPZ_KEYS)}, as numpy.savez writes them)")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as contents:
                _require_keys(contents.files, str(path), keys)
                return {key: contents[key] for key in keys} if read else {}
    except (FileNotFoundError, DatasetFileError):
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:  # zlib: savez_compressed's
        raise DatasetFileError(f"cannot read {path} as an .npz file: {error}") from error


def _require_regular_file(path, mode: int) -> None:
    """Refuse a named pipe, socket or device: reading one waits for a writer, or never ends."""
    if not stat.S_ISREG(mode):
        raise DatasetFileError(f"{path}: not a regular file (a named pipe or device?); give the data as a file")


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """$ADT_FAST_CACHE_DIR if set, else ~/.cache/adt_fast/image-folders."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _class_files(class_dir: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every visible file under a class folder, sorted by path.

    Linked folders are followed, as ImageFolder follows them; one reached again (a link to a
    folder above it, or a second link to one) is read once. os.walk and os.stat on strings: on
    10,000 files pathlib's rglob and relative_to took seconds, which was most of a cached load.
    """
    files, seen = [], set()
    for folder, subfolders, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                raise DatasetFileError(f"{path}: not an image file (expected one of "
                                       f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
            try:
                status = os.stat(path)
            except OSError as error:  # `ls` lists a broken link, so say that it is one
                broken = os.path.islink(path)
                reason = f"a broken link (to {os.readlink(path)})" if broken else error.strerror
                raise DatasetFileError(f"{path}: cannot be read: {reason}") from None
            _require_regular_file(path, status.st_mode)
            files.append((path, status.st_size, status.st_mtime_ns))
    return sorted(files)


def scan_image_folder(root: Path, splits: tuple[str, ...] = SPLITS
                      ) -> dict[str, list[tuple[str, list[tuple[str, int, int]]]]]:
    """{split: [(class name, its files as (path, size, mtime_ns))]} for ``splits``, classes sorted
    by name, the layout checked; hidden files and folders (a leading dot) are skipped.

    With ``splits=TEST_ONLY`` (evaluation) train/ may be absent; when present only its class
    folders' names are listed, to hold it to test/'s classes, and none of its files.
    """
    layout = ("an image folder holds train/<class>/<image> and test/<class>/<image>" if splits == SPLITS else
              "an image folder to evaluate on holds test/<class>/<image> (train/ is not read)")
    found = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetFileError(f"{root}: no {split}/ folder; {layout}")
        entries = sorted((entry for entry in os.scandir(split_dir) if not entry.name.startswith(".")),
                         key=lambda entry: entry.name)
        strays = [entry.path for entry in entries if not entry.is_dir()]
        if strays:
            raise DatasetFileError(f"{strays[0]}: a file directly in {split}/; {layout}")
        classes = []
        for entry in entries:
            files = _class_files(entry.path)
            if not files:
                raise DatasetFileError(f"{entry.path}: empty class folder (no images)")
            classes.append((entry.name, files))
        if not classes:
            raise DatasetFileError(f"{split_dir}: no class folders; {layout}")
        if split == "train" and len(classes) < 2:  # training only: a test split may show one class
            raise DatasetFileError(f"{root}: train/ has one class folder ({classes[0][0]}); a classifier "
                                   f"needs at least 2 classes, one folder each; {layout}")
        found[split] = classes
    test_names = [name for name, _ in found["test"]]
    if "train" in found:
        train_names = [name for name, _ in found["train"]]
    elif (root / "train").is_dir():
        train_names = sorted(entry.name for entry in os.scandir(root / "train")
                             if entry.is_dir() and not entry.name.startswith("."))
    else:
        train_names = test_names
    if train_names != test_names:
        only_train = sorted(set(train_names) - set(test_names))
        only_test = sorted(set(test_names) - set(train_names))
        raise DatasetFileError(f"{root}: train/ and test/ must have the same class folders; "
                               f"only in train/: {only_train or 'none'}, only in test/: {only_test or 'none'}")
    return found


def _manifest(root: Path, found: dict, image_size: int | None) -> str:
    """A hash of every file's path, size and mtime (and the resize, and which splits were read):
    what a cache must match to be used."""
    digest = hashlib.sha256(f"{CACHE_FORMAT};{image_size}{_splits_tag(tuple(found))}".encode())
    prefix = len(str(root)) + 1
    for split, classes in found.items():
        for _, files in classes:
            for path, size, mtime in files:
                digest.update(f"{path[prefix:]}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _decode(path: str, image_size: int | None, first: dict) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3); ``first`` remembers the first size seen."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise MissingDependencyError("reading a folder of images", "pillow") from error

    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in GRAYSCALE_MODES
            if image_size is None:
                size = image.size
                if size[0] != size[1]:
                    raise DatasetFileError(f"{path}: image is {size[0]}x{size[1]}, not square; pass "
                                           f"--image-size N (image_size=N) to resize every image to N x N")
                if first.setdefault("size", (size, path))[0] != size:
                    (width, height), other = first["size"]
                    raise DatasetFileError(
                        f"{path}: image is {size[0]}x{size[1]} but {other} is {width}x{height}; the images "
                        f"must share one size, or pass --image-size N (image_size=N) to resize them to N x N")
            if image.mode in DEEP_GRAYSCALE_WHITE:
                image = _deep_gray_to_8bit(image, path)
            converted = image.convert("L" if gray else "RGB")
            if image_size is not None and converted.size != (image_size, image_size):
                converted = converted.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(converted)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        if isinstance(error, DatasetFileError):
            raise
        raise DatasetFileError(f"{path}: cannot be read as an image ({error})") from None


def _deep_gray_to_8bit(image, path: str):
    """A 16-bit or float grayscale image as mode L, scaled by its white and rounded to the 8 bits
    every decoded image has; Pillow's convert("L") would clip 16-bit values at 255 and truncate
    [0, 1] floats to 0 or 1."""
    from PIL import Image

    white = DEEP_GRAYSCALE_WHITE[image.mode]
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    if not (0.0 <= low and high <= white):      # NaN fails too
        raise DatasetFileError(f"{path}: a mode {image.mode} image's pixels must lie in [0, {white:g}] "
                               f"({white:g} is white), found [{low:g}, {high:g}]")
    return Image.fromarray(np.rint(pixels * (255 / white)).astype(np.uint8), "L")


def _splits_tag(splits: tuple[str, ...]) -> str:
    """'' for both splits (the cache names and manifests they always had), else the splits read,
    so a test-only decode and a full one never take each other's cache."""
    return "" if splits == SPLITS else "\0" + ",".join(splits)


def _decode_folder(found: dict, image_size: int | None) -> dict:
    first: dict = {}
    arrays = {}
    for split, classes in found.items():
        images, labels = [], []
        for index, (_, files) in enumerate(classes):
            images += [_decode(path, image_size, first) for path, _, _ in files]
            labels += [index] * len(files)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, np.asarray(labels, dtype=np.int64)
    colour = any(image.ndim == 3 for split in found for image in arrays[f"x_{split}"])
    for split in found:
        images = arrays[f"x_{split}"]
        if colour:
            images = [np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image for image in images]
        arrays[f"x_{split}"] = np.stack(images)
    return arrays


def read_image_folder(root: Path, image_size: int | None = None, cache_dir: Path | None = None) -> Splits:
    """An ImageFolder-style tree as validated uint8 splits, decoded once and cached.

    Classes are the train/ subfolders sorted by name (test/ must have the same ones); files are
    read recursively inside a class folder, hidden files and folders (a leading dot) skipped.
    Images are grayscale (1 channel) when every one of them is, else RGB (grayscale ones
    replicated, alpha dropped); 16-bit and float grayscale is scaled to 8 bits
    (``DEEP_GRAYSCALE_WHITE``). The decoded arrays go to ``cache_dir`` (default
    ``default_cache_dir()``) keyed by the folder's path and ``image_size``, and are reused while
    every file's path, size and mtime are unchanged.
    """
    root = Path(root).resolve()
    arrays, classes, cache_note = _decoded_folder(root, image_size, cache_dir, SPLITS)
    splits = splits_from_arrays(arrays, str(root), classes)
    counts = f"{len(splits.y_train)} train / {len(splits.y_test)} test images"
    return dataclasses.replace(splits, notes=(_folder_note(root, classes, counts, splits.x_test, image_size,
                                                           cache_note),))


def read_image_folder_test(root: Path, image_size: int | None = None, cache_dir: Path | None = None) -> TestArrays:
    """An image folder's test/ alone (evaluation), as ``read_image_folder`` reads it: classes are
    test/'s folders sorted by name. train/ is not decoded; when present, its class folders must
    be test/'s. Channels come from test/'s images alone. Cached apart from whole-folder reads."""
    root = Path(root).resolve()
    arrays, classes, cache_note = _decoded_folder(root, image_size, cache_dir, TEST_ONLY)
    test = test_split_from_arrays(arrays, str(root), classes)
    counts = f"{len(test.y_test)} test images (train/ not read)"
    return dataclasses.replace(test, notes=(_folder_note(root, classes, counts, test.x_test, image_size, cache_note),))


def _decoded_folder(root: Path, image_size: int | None, cache_dir: Path | None,
                    splits: tuple[str, ...]) -> tuple[dict, tuple[str, ...], str]:
    """(the ``splits``' arrays, decoded or from the cache; the class names; a note on the cache)."""
    found = scan_image_folder(root, splits)
    if image_size is not None:
        _check_resized_fit_in_memory(root, found, image_size)
    classes = tuple(name for name, _ in found["test"])
    manifest = _manifest(root, found, image_size)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{root}\0{image_size}{_splits_tag(splits)}".encode()).hexdigest()[:24]
    cache_file = cache_dir / f"{key}.npz"
    keys = [f"{kind}_{split}" for split in splits for kind in ("x", "y")]
    arrays = _read_cache(cache_file, manifest, keys)
    if arrays is None:
        arrays = _decode_folder(found, image_size)
        return arrays, classes, _write_cache(cache_file, manifest, arrays)
    return arrays, classes, f"decoded images read from the cache {cache_file}"


def _check_resized_fit_in_memory(root: Path, found: dict, image_size: int) -> None:
    """Refuse an --image-size whose images cannot fit in memory, before decoding one: Pillow
    resizes without a limit, and the process is killed (one 100000 px RGB image is 30 GB)."""
    available = available_memory()
    count = sum(len(files) for classes in found.values() for _, files in classes)
    # the float32 tensors a run holds (3 channels at most), beside the decoded uint8 images
    needed = count * 3 * image_size ** 2 * (4 + 1)
    if available is not None and needed > available:
        raise DatasetFileError(f"{root}: --image-size {image_size} needs about {needed / 2**30:.3g} GiB for its "
                               f"{count} images at {image_size} x {image_size}, more than the "
                               f"{available / 2**30:.3g} GiB of memory available; choose a smaller --image-size")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where the
    system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def class_list(classes: tuple[str, ...]) -> str:
    """The first ten class names, for messages."""
    return ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")


def _folder_note(root: Path, classes: tuple[str, ...], counts: str, images: np.ndarray, image_size: int | None,
                 cache_note: str) -> str:
    channels, size, _ = images.shape[1:]
    resized = " (resized)" if image_size is not None else ""
    return (f"{root}: image folder, {len(classes)} classes sorted by name ({class_list(classes)}), {counts} of "
            f"{size}x{size}{resized}, {channels} channel(s); {cache_note}")


def _read_cache(path: Path, manifest: str, keys: list[str]) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as contents:
            if str(contents["manifest"]) != manifest:
                return None
            return {key: contents[key] for key in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None        # absent, stale or damaged: decode again


def _write_cache(path: Path, manifest: str, arrays: dict) -> str:
    """Write the cache atomically; a cache that cannot be written only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, manifest=np.asarray(manifest), **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as error:
        return f"could not cache the decoded images in {path} ({error}); the next run decodes them again"
    return f"decoded images cached in {path}"
