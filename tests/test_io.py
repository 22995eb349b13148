"""Readers and writers: round trips over formats, dtypes and stacks; bad files."""

import logging
import os
import stat
import threading

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unetile import UserInputError
from unetile.io import list_images, read_image, write_image

FS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FS
@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16]), hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_png_round_trip(tmp_path, array):
    write_image(tmp_path / "a.png", array)
    back = read_image(tmp_path / "a.png")
    assert back.shape == (1, 1, *array.shape) and back.dtype == array.dtype
    assert np.array_equal(back[0, 0], array)


@FS
@given(
    hnp.arrays(
        st.sampled_from([np.uint8, np.uint16, np.float32]),
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=20),
        elements={"allow_nan": False, "allow_infinity": False},
    )
)
def test_tiff_stack_round_trip(tmp_path, stack):
    write_image(tmp_path / "s.tif", stack, axes="QYX")
    back = read_image(tmp_path / "s.tif")
    assert back.shape == (stack.shape[0], 1, *stack.shape[1:]) and back.dtype == stack.dtype
    assert np.array_equal(back[:, 0], stack)


def test_rgb_tiff_and_png_give_three_channels(tmp_path, rng):
    rgb = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    write_image(tmp_path / "c.png", np.moveaxis(rgb, -1, 0))
    for name in ("c.tif", "c.png"):
        back = read_image(tmp_path / name)
        assert back.shape == (1, 3, 10, 12)
        assert np.array_equal(np.moveaxis(back[0], 0, -1), rgb)


def test_imagej_style_stack(tmp_path, rng):
    stack = (rng.random((5, 16, 16)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    assert read_image(tmp_path / "v.tif").shape == (5, 1, 16, 16)


def test_folder_listing_is_sorted_and_filtered(tmp_path):
    for name in ("b.png", "a.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.png"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no image files"),
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "not an image file"),
        (lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage") and d / "bad.png", "cannot read"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserInputError, match=message) as e:
        read_image(list_images(path)[0])
    assert str(path) in str(e.value)


def test_truncated_tiff_is_a_user_error(tmp_path, rng):
    write_image(tmp_path / "t.tif", rng.random((3, 64, 64)).astype(np.float32), axes="QYX")
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="t.tif"):
        read_image(tmp_path / "t.tif")


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.png"
    write_image(target, np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError):
        write_image(target, np.zeros((4, 4), np.float64))  # PNG cannot hold float64
    assert np.all(read_image(target) == 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_written_files_get_the_usual_mode_not_a_private_one(tmp_path):
    """atomic_path writes through mkstemp (mode 0600); the result must be readable as any new file is."""
    umask = os.umask(0o022)  # the usual one, whatever CI's is: there 0600 would differ from 0644
    try:
        write_image(tmp_path / "out.png", np.zeros((4, 4), np.uint8))
        (tmp_path / "plain").touch()
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o644


def test_another_threads_tifffile_warning_does_not_blame_this_file(tmp_path):
    """tiff_checked holds back only this thread's tifffile lines (napari trains while it reads)."""
    from unetile.io import tiff_checked

    write_image(tmp_path / "good.tif", np.zeros((2, 8, 8), np.uint8))
    other = threading.Thread(target=logging.getLogger("tifffile").warning, args=("<TiffPages> invalid page offset 8",))
    with tiff_checked(tmp_path / "good.tif"):
        other.start()
        other.join()
    with pytest.raises(UserInputError, match="pages are missing"), tiff_checked(tmp_path / "good.tif"):
        logging.getLogger("tifffile").warning("<TiffPages> invalid page offset 8")  # this thread's: the file's fault
