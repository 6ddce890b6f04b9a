"""HEIC/HEIF (pillow-heif) and AVIF (Pillow) decoding: upright pixels as for the JPEG they came from,
the same keypoints through fkpbatch.predict, and errors that name the missing package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, features

import fkpbatch
from fkpbatch.decode import load_image, load_reduced, missing_codec, register_codecs
from fkpbatch.errors import DecodeError
from fkpbatch.keypoints import KAGGLE_POINTS, coordinate_columns

from conftest import REPO, need_data

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed (pip install pillow-heif)")
needs_heic_encoder = pytest.mark.skipif(
    not pillow_heif.libheif_info().get("HEIF"), reason="this pillow-heif build has no HEVC encoder to write test files"
)
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow is built without AVIF support")

PORTRAIT = ("photos", "img10.jpg")  # 408x594, one face
SELFIE = ("photos", "selfie-many-people.jpg")  # 600x604, six faces


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # pillow-heif reads orientation from bytes only (an Image.Exif is not parsed)


def _assert_same_picture(decoded: Image.Image, reference: Image.Image, tolerance: float = 3.0):
    assert decoded.mode == "RGB" and decoded.size == reference.size
    difference = np.abs(np.asarray(decoded, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    assert difference.mean() < tolerance, difference.mean()


@pytest.fixture(scope="module")
def portrait():
    return load_image(need_data(*PORTRAIT))


@needs_heic_encoder
@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
def test_heic_decodes_upright_like_the_jpeg(tmp_path, portrait, orientation):
    """A copy stored turned, with the orientation that shows it upright, decodes upright (pillow-heif
    writes the orientation as HEIF's irot box, as iPhones do) through both decode paths."""
    stored = {
        1: portrait,
        6: portrait.transpose(Image.Transpose.ROTATE_90),  # 6: turn 90 degrees clockwise to display
        3: portrait.transpose(Image.Transpose.ROTATE_180),
        8: portrait.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    path = tmp_path / "photo.heic"
    save_heic(stored, path, quality=95, exif=_exif(orientation))
    _assert_same_picture(load_image(path), portrait)
    reduced, full = load_reduced(path, min_side=100)
    assert full == portrait.size
    _assert_same_picture(reduced, portrait)


@needs_avif
@pytest.mark.parametrize("orientation", [1, 6])
def test_avif_decodes_upright_like_the_jpeg(tmp_path, portrait, orientation):
    stored = portrait if orientation == 1 else portrait.transpose(Image.Transpose.ROTATE_90)
    path = tmp_path / "photo.avif"
    stored.save(path, quality=95, exif=_exif(orientation))
    _assert_same_picture(load_image(path), portrait)
    reduced, full = load_reduced(path, min_side=100)
    assert full == portrait.size
    _assert_same_picture(reduced, portrait)


def save_heic(image: Image.Image, path, **params) -> None:
    """Write HEIC with pillow-heif's encoder (fkpbatch registers pi-heif, which only decodes)."""
    pillow_heif.from_pillow(image).save(path, **params)


def test_registering_is_idempotent_and_leaves_pillow_settings_alone():
    before = (Image.MAX_IMAGE_PIXELS, pillow_heif.options.QUALITY, pillow_heif.options.THUMBNAILS)
    assert register_codecs() and register_codecs()
    assert Image.registered_extensions()[".heic"] == "HEIF"
    assert (Image.MAX_IMAGE_PIXELS, pillow_heif.options.QUALITY, pillow_heif.options.THUMBNAILS) == before


@needs_heic_encoder
def test_a_truncated_heic_is_an_error(tmp_path, portrait):
    path = tmp_path / "whole.heic"
    save_heic(portrait, path, quality=90)
    cut = tmp_path / "cut.heic"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DecodeError, match="cannot decode"):
        load_image(cut)


_WITHOUT_CODECS = """
    import sys
    sys.modules["pillow_heif"] = sys.modules["pi_heif"] = None  # neither importable
    sys.modules["PIL._avif"] = None  # Pillow without AVIF
    from fkpbatch.decode import load_image
    from fkpbatch.errors import DecodeError
    for path in sys.argv[1:]:
        try:
            load_image(path)
            print("decoded")
        except DecodeError as exc:
            print(exc)
"""


@needs_heic_encoder
def test_without_the_codec_the_error_names_the_package(tmp_path, portrait):
    heic = tmp_path / "photo.heic"
    save_heic(portrait, heic, quality=80)
    names = [str(heic)]
    if features.check("avif"):
        avif = tmp_path / "photo.avif"
        portrait.save(avif, quality=80)
        names.append(str(avif))
    text = tmp_path / "notes.heic"
    text.write_text("not a picture")
    names.append(str(text))
    script = textwrap.dedent(_WITHOUT_CODECS)
    run = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "HEIC/HEIF needs the pi-heif package: pip install pi-heif"
    if len(names) == 3:
        assert lines[1].startswith("AVIF needs Pillow built with AVIF support") and "pip install" in lines[1]
    assert lines[-1] == "not an image Pillow can read"  # a .heic name is not enough: the content decides
    assert missing_codec(text) is None and missing_codec(heic) is None  # here the codec is installed


@needs_heic_encoder
def test_a_fresh_process_opens_heic_through_open_image_too(tmp_path, portrait):
    """open_image (what merge --check and the datasets use to tell images from other files) registers
    the codec itself: no decode needs to have run first."""
    path = tmp_path / "photo.heic"
    save_heic(portrait, path, quality=80)
    script = "import sys; from fkpbatch.decode import open_image; print(open_image(sys.argv[1]).format)"
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == "HEIF", run.stderr


@needs_heic_encoder
def test_predict_on_a_heic_copy_gives_the_faces_and_keypoints_of_the_jpeg(tmp_path):
    """Through the library, on HEIC copies stored turned (orientation 6, as phones store them): the
    same faces, keypoints within 2 px; within 1 % of the box for a big face (a 300-px face of
    quality 0.25 in the group selfie moves an eyebrow by 2.1 px: HEVC at quality 95 vs the JPEG)."""
    paths = []
    for part in (PORTRAIT, SELFIE):
        jpeg = need_data(*part)
        heic = tmp_path / (jpeg.stem + ".heic")
        save_heic(load_image(jpeg).transpose(Image.Transpose.ROTATE_90), heic, quality=95, exif=_exif(6))
        paths += [jpeg, heic]
    frame = fkpbatch.predict(paths, workers=0)
    columns = coordinate_columns(KAGGLE_POINTS)
    for jpeg, heic in zip(paths[::2], paths[1::2]):
        first, second = frame[frame["image"] == str(jpeg)], frame[frame["image"] == str(heic)]
        assert len(first) == len(second) >= 1 and set(first["status"]) == set(second["status"]) == {"ok"}
        assert list(first[["width", "height"]].iloc[0]) == list(second[["width", "height"]].iloc[0])
        moved = np.abs(first[columns].to_numpy(dtype=float) - second[columns].to_numpy(dtype=float)).max(axis=1)
        allowed = np.maximum(2.0, 0.01 * first["box_w"].to_numpy(dtype=float))
        assert (moved < allowed).all(), (jpeg.name, moved)
    assert len(frame[frame["image"] == str(paths[2])]) == 6
