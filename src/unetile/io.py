"""Reading and writing images: PNG, TIFF pages and stacks, folders of them; atomic writes.

Every image is returned as an array (N, C, H, W) in its stored dtype: N slices (1 for a
single image, the pages of a multi-page TIFF stack), C channels. What cannot be read
raises `UserInputError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .errors import UserInputError, reading

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

# Refuse images whose header declares more pixels than this (a "decompression bomb": a
# small file that would expand to more memory than the machine has). Pillow's own check
# is replaced by this one, which also covers TIFF; `set_max_pixels` (--max-pixels) raises it.
DEFAULT_MAX_PIXELS = 1_000_000_000
MAX_PIXELS = DEFAULT_MAX_PIXELS
Image.MAX_IMAGE_PIXELS = None


def set_max_pixels(n: int) -> None:
    """Change the largest accepted image (pixels per image, header-declared)."""
    global MAX_PIXELS
    MAX_PIXELS = int(n)


def _check_size(path: Path, height: int, width: int, count: int = 1) -> None:
    if height * width * count > MAX_PIXELS:
        raise UserInputError(
            f"{path}: {count} x {height} x {width} pixels exceeds the limit of {MAX_PIXELS:,} "
            "(a decompression-bomb guard; raise it with --max-pixels)"
        )
TIFF_SUFFIXES = (".tif", ".tiff")


def list_images(path: str | Path) -> list[Path]:
    """A file or a zarr store -> [it]; a folder -> its image files and ``*.zarr`` stores sorted
    by name. Errors name the path."""
    from .slides.chunked import is_zarr

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    if is_zarr(path):  # a zarr store is one image, though a folder
        return [path]
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserInputError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    files = sorted(p for p in path.iterdir()
                   if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or p.suffix == ".zarr")
    if not files:
        raise UserInputError(f"{path}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file -> (N, C, H, W) in its stored dtype.

    PNG/JPEG/BMP: N = 1; grey gives C = 1, RGB(A) C = 3 (4). TIFF: the first series, with
    tifffile's axes: samples/channels ('S', 'C') become C, any other leading axes
    (pages, Z, time) become N.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    with reading(path, "cannot read the image"):  # any decoder failure is a bad file for the user
        array = _read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _read_pil(path)
    if array.shape[-1] == 0 or array.shape[-2] == 0:
        raise UserInputError(f"{path}: the image is empty (shape {array.shape[-2:]})")
    return array


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        _check_size(path, im.height, im.width)
        im.load()
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if im.mode == "1" else "RGB")
        array = np.asarray(im)
    if array.ndim == 2:
        return array[None, None]
    return np.moveaxis(array, -1, 0)[None]  # (H, W, C) -> (1, C, H, W)


class _Held(logging.Filter):
    """Holds back the records this thread makes on the logger it filters (kept in ``records``);
    other threads' records (another file read at the same time) pass as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.records.append(record)
        return False


# What tifffile logs (and then carries on, TiffPages) when a TIFF's chain of pages is broken:
# the pages after the break are silently missing, as in a truncated stack.
_BROKEN_TIFF = ("invalid page offset", "invalid offset to page", "corrupted tag list of page")


@contextlib.contextmanager
def tiff_checked(path: Path) -> Iterator[None]:
    """Read the TIFF ``path`` inside: tifffile's log lines are held back (a failure is then
    one line, ours), and a broken chain of pages is a `UserInputError`, not a shorter stack.
    After a good read the other lines are logged as tifffile would have."""
    logger = logging.getLogger("tifffile")
    held = _Held()
    logger.addFilter(held)
    try:
        yield
    finally:
        logger.removeFilter(held)
    messages = [r.getMessage() for r in held.records]
    broken = next((m for m in messages if any(b in m for b in _BROKEN_TIFF)), None)
    if broken is not None:
        raise UserInputError(f"{path}: a truncated or damaged TIFF: pages are missing "
                             f"(tifffile: {broken.split('> ', 1)[-1]})")
    for record in held.records:
        logger.handle(record)


def _read_tiff(path: Path) -> np.ndarray:
    with tiff_checked(path), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        if "Y" in axes and "X" in axes:
            shape = dict(zip(axes, series.shape))
            _check_size(path, shape["Y"], shape["X"], int(np.prod(series.shape)) // (shape["Y"] * shape["X"]))
        array = series.asarray()
    if "Y" not in axes or "X" not in axes:
        raise UserInputError(f"{path}: TIFF has no Y/X axes (axes {axes!r})")
    # Move channel axes next to Y, X and fold every other axis into N.
    channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
    other = [i for i, a in enumerate(axes) if a not in "SCYX"]
    order = other + channel_axes + [axes.index("Y"), axes.index("X")]
    array = np.transpose(array, order)
    h, w = array.shape[-2:]
    n = int(np.prod([array.shape[i] for i in range(len(other))])) if other else 1
    c = int(np.prod(array.shape[len(other) : -2])) if channel_axes else 1
    return array.reshape(n, c, h, w)


def match_channels(image: np.ndarray, channels: int, path: str | Path, convert: bool) -> np.ndarray:
    """(..., C, H, W) -> the model's channel count. Without ``convert`` a mismatch is an error;
    with it, RGB(A) becomes grey (ITU-R 601 luma, alpha dropped) and grey is repeated."""
    have = image.shape[-3]
    if have == channels:
        return image
    if convert and channels == 1 and have in (3, 4):
        rgb = image[..., :3, :, :].astype(np.float32)
        grey = 0.299 * rgb[..., 0, :, :] + 0.587 * rgb[..., 1, :, :] + 0.114 * rgb[..., 2, :, :]
        return grey[..., None, :, :]
    if convert and have == 1:
        return np.repeat(image, channels, axis=-3)
    hint = "" if convert else " (--channels convert turns RGB into grey)"
    raise UserInputError(f"{path}: the image has {have} channel(s) but the model expects {channels}{hint}")


def match_channels_first(image: np.ndarray, channels: int, path: str | Path, convert: bool) -> np.ndarray:
    """(C, *spatial) -> the model's channels, as `match_channels` (which wants channels third
    from last): a volume (C, Z, Y, X) is matched as a stack of (C, Y, X) planes."""
    if image.ndim == 3:
        return match_channels(image, channels, path, convert)
    return np.moveaxis(match_channels(np.moveaxis(image, 0, -3), channels, path, convert), -3, 0)


def _process_umask() -> int:
    """The process's umask, from /proc where it can be read without changing it (setting and
    restoring it, the portable way, races with files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    A crash or error leaves ``path`` as it was (or absent) and no temporary file behind.
    """
    path = Path(path)
    # Temporary files left by a process killed mid-write (SIGKILL skips `finally`).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part{glob.escape(path.suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_process_umask())  # mkstemp makes it private (0600); give the usual mode
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def label_dtype(labels: np.ndarray) -> type:
    """The smallest of uint16 / uint32 that holds these cell ids."""
    return np.uint16 if labels.max(initial=0) < 2**16 else np.uint32


def write_image(path: str | Path, array: np.ndarray, axes: str | None = None) -> None:
    """Write atomically: (H, W), (C, H, W) or a stack (N, H, W) / (N, C, H, W).

    ``.png``: one 8- or 16-bit image (grey, or C = 3/4). ``.tif``: any dtype, one page per
    slice; ``axes`` (tifffile's letters, e.g. "QYX" for a stack, "CYX" for class maps)
    is recorded so that `read_image` reads the array back with the same meaning.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".png":
            if array.ndim == 3 and array.shape[0] in (3, 4):
                array = np.moveaxis(array, 0, -1)
            elif array.ndim == 3 and array.shape[0] == 1:
                array = array[0]
            if array.ndim not in (2, 3) or array.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"PNG needs a 2D 8/16-bit image, got {array.shape} {array.dtype}")
            Image.fromarray(array).save(tmp, format="PNG")
        elif suffix in TIFF_SUFFIXES:
            metadata = {"axes": axes} if axes else {}
            tifffile.imwrite(tmp, array, photometric="minisblack", metadata=metadata)
        else:
            raise ValueError(f"cannot write {path}: unknown format {suffix!r} (use .png or .tif)")


def write_volume(path: str | Path, volume: np.ndarray, voxel: tuple[float, float, float] | None = None) -> None:
    """Write a volume (Z, Y, X) or (C, Z, Y, X) atomically as an OME-TIFF, with its voxel size
    (z, y, x) um where known: `voxel_size` and `read_image` read it back (pages are z; OME
    rather than ImageJ TIFF, which cannot hold the uint32 labels of many cells)."""
    axes = "ZYX" if volume.ndim == 3 else "CZYX"
    metadata: dict = {"axes": axes}
    if voxel is not None:
        metadata.update({f"PhysicalSize{a}": float(v) for a, v in zip("ZYX", voxel)})
        metadata.update({f"PhysicalSize{a}Unit": "\u00b5m" for a in "ZYX"})
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, volume, photometric="minisblack", metadata=metadata, ome=True)


# Length units -> micrometres (micro written with the micro sign or the Greek mu).
_MICROMETRE = {"um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
               "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3}


def voxel_size(path: str | Path) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size of a TIFF volume in micrometres (as stored where the unit is not
    known), from OME-XML (``PhysicalSizeZ/Y/X``) or ImageJ's metadata (``spacing`` for z, the
    resolution tags for y and x); None where the file does not say (or is not a volume)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    with reading(path, "cannot read the TIFF's metadata"), tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            return _ome_voxel_size(tif.ome_metadata)
        meta = tif.imagej_metadata or {}
        x_res, y_res = (tif.pages[0].tags.get(name) for name in ("XResolution", "YResolution"))
        if "spacing" not in meta or x_res is None or y_res is None:
            return None
        scale = _MICROMETRE.get(str(meta.get("unit", "")).lower(), 1.0)
        (x_num, x_den), (y_num, y_den) = x_res.value, y_res.value
        return float(meta["spacing"]) * scale, y_den / y_num * scale, x_den / x_num * scale


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    """PhysicalSizeZ/Y/X (and their units) of the first image's Pixels element."""
    import xml.etree.ElementTree as ElementTree

    pixels = next((e for e in ElementTree.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None or any(f"PhysicalSize{a}" not in pixels.attrib for a in "ZYX"):
        return None
    return tuple(float(pixels.attrib[f"PhysicalSize{a}"])  # type: ignore[return-value]
                 * _MICROMETRE.get(pixels.attrib.get(f"PhysicalSize{a}Unit", "um").lower(), 1.0) for a in "ZYX")
