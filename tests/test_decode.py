import io

import numpy as np
import pytest
from PIL import Image

from fkpbatch.decode import load_image
from fkpbatch.errors import DecodeError

from conftest import gradient_image


def _save(tmp_path, image, name, **params):
    path = tmp_path / name
    image.save(path, **params)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "1", "I;16", "P"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    image = gradient_image((40, 30), "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 256)
    else:
        image = image.convert(mode)
    path = _save(tmp_path, image, "x.tiff")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    if mode == "I;16":  # 16-bit scaled down to 8, not clipped to white
        assert np.asarray(out)[0, -1, 0] > 200 and np.asarray(out)[0, 0, 0] < 10


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0] * 256)
    path = _save(tmp_path, image, "t.png", transparency=0)
    assert np.asarray(load_image(path)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    image = gradient_image((60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path, image, "rot.jpg", exif=exif)
    assert load_image(path).size == (20, 60)


def test_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 0, 0]


def test_images_over_the_pixel_limit_are_refused_with_their_size(tmp_path):
    path = _save(tmp_path, gradient_image((100, 100)), "big.png")
    with pytest.raises(DecodeError, match="100x100 = 10,000 pixels, over --max-pixels 5,000"):
        load_image(path, max_pixels=5_000)


@pytest.mark.parametrize("name", ["big.png", "big.jpg", "big.gif", "big.tiff"])
def test_max_pixels_decides_whatever_pillows_own_limit(tmp_path, monkeypatch, name):
    """--max-pixels above Pillow's decompression-bomb limit (179 MP; here made tiny) is honoured, and
    Pillow's setting is left as it was found."""
    from fkpbatch.decode import load_reduced
    from fkpbatch.discover import discover
    from fkpbatch.shard import expected_outputs

    path = _save(tmp_path, gradient_image((100, 60)), name)
    pillows_check = Image._decompression_bomb_check
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # 6,000 pixels: over twice Pillow's limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    image = load_image(path, max_pixels=6_000)
    assert image.size == (100, 60) and image.mode == "RGB"
    assert load_reduced(path, 6_000, min_side=20)[1] == (100, 60)
    with pytest.raises(DecodeError, match="100x60 = 6,000 pixels, over --max-pixels 5,999"):
        load_image(path, max_pixels=5_999)
    assert Image.MAX_IMAGE_PIXELS == 1_000 and Image._decompression_bomb_check is pillows_check  # as found
    assert expected_outputs(discover([tmp_path]).files) == [str(path)]  # merge --check opens it too


def test_truncated_jpeg_is_an_error(tmp_path):
    buffer = io.BytesIO()
    gradient_image((200, 200)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DecodeError, match="cannot decode"):
        load_image(path)


def test_large_jpegs_are_decoded_reduced_but_report_their_full_upright_size(tmp_path):
    from fkpbatch.decode import load_reduced

    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 1000 wide, 2000 high
    path = _save(tmp_path, gradient_image((2000, 1000)), "big.jpg", exif=exif)
    image, full = load_reduced(path, min_side=480)
    assert full == (1000, 2000) and image.size == (250, 500)  # 1/4 scale, longest side still >= 480
    assert load_reduced(path, min_side=1200)[0].size == (1000, 2000)  # 1/2 would be under 1200
    assert load_reduced(_save(tmp_path, gradient_image((2000, 1000)), "big.png"), min_side=480)[0].size == (2000, 1000)
