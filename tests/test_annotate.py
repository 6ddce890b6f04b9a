"""Pictures written beside the output (fkpbatch.annotate, --annotate and --aligned): annotated copies
mirroring the input folders, face labels, the contact sheet and its links, aligned faces, and none
of them ever written over an input or an existing file."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fkpbatch.align import ALIGN_POINTS, aligned_crop
from fkpbatch.annotate import ContactSheet, draw_faces, face_label
from fkpbatch.decode import load_image
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.results import ImageResult

from conftest import FAST, REPO, face_result, gradient_image, invoke

EXAMPLES = REPO / "examples"
FACE = EXAMPLES / "Celso_Lafer_12.jpg"


def test_annotation_labels_each_face_with_its_index_and_quality():
    assert face_label(0, face_result(0.4234)) == "0 q0.42" and face_label(3, face_result(None)) == "3"
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    draw_faces(image, [face_result(0.42, x=20.0), face_result(0.01, x=120.0)], KAGGLE_POINTS)
    pixels = np.asarray(image)
    # each label is a filled tag just above its box: blue for a good face, red for a doubtful one
    good_tag, doubtful_tag = pixels[28:39, 21:28].reshape(-1, 3), pixels[28:39, 121:128].reshape(-1, 3)
    assert (good_tag == (0, 160, 255)).all(axis=1).any() and not (good_tag == (220, 30, 30)).all(axis=1).any()
    assert (doubtful_tag == (220, 30, 30)).all(axis=1).any()
    assert (pixels[24:40, 20:50] > 200).all(axis=2).any()  # light text on the tag
    assert (pixels[:40] == 0).all(axis=2).mean() > 0.5  # the tag is small: most of the picture is untouched


def test_annotated_copies_mirror_the_folder_and_stay_inside(mixed_folder, tiny_weights, tmp_path):
    target = tmp_path / "annotated"
    result = invoke("predict", mixed_folder, "-w", tiny_weights, "--workers", "0", "-q", "--annotate", target)
    assert result.exit_code == 0
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert written == ["faces/a.jpg", "faces/sub/b.jpg", "index.html"]  # index.html: the contact sheet


def test_annotations_never_replace_an_input_or_an_existing_file(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gradient_image((40, 40)).save("x.gif")
    gradient_image((40, 40), "L").save("x.gif.png")  # where x.gif's annotated copy goes with --annotate .
    original = (tmp_path / "x.gif.png").read_bytes()
    for flags in ([], ["--overwrite"]):  # without -q: the warnings are what this checks
        result = invoke("predict", "x.gif", "x.gif.png", "-w", tiny_weights, *FAST, "--annotate", ".", *flags)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "x.gif.png").read_bytes() == original
        assert "would overwrite the input; not written" in result.stderr
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "x.gif.png").write_bytes(b"mine")
    result = invoke("predict", "x.gif", "-w", tiny_weights, *FAST, "--annotate", "ann")
    assert result.exit_code == 0 and "not replaced" in result.stderr
    assert (tmp_path / "ann" / "x.gif.png").read_bytes() == b"mine"
    assert (
        invoke("predict", "x.gif", "-w", tiny_weights, "--annotate", "ann", "--overwrite", *FAST, "-q").exit_code == 0
    )
    assert (tmp_path / "ann" / "x.gif.png").read_bytes()[:4] == b"\x89PNG"
    # no temporary files left; index.html is the contact sheet of --annotate .
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann", "index.html", "x.gif", "x.gif.png"]


def test_annotating_into_the_input_tree_never_overwrites_an_input(tmp_path, tiny_weights, monkeypatch):
    (tmp_path / "faces").mkdir()
    shutil.copy(FACE, tmp_path / "faces" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", "faces", "-w", tiny_weights, "--workers", "0", "--annotate", ".")
    assert result.exit_code == 0
    assert "would overwrite the input; not written" in result.stderr
    assert (tmp_path / "faces" / "a.jpg").read_bytes() == FACE.read_bytes()


def test_contact_sheet_lists_faces_lowest_quality_first_and_keeps_the_worst(tmp_path):
    sheet = ContactSheet(limit=3)
    picture = Image.new("RGB", (200, 80), (90, 90, 90))
    for name, qualities in [("b.jpg", [0.41, 0.02]), ("a.jpg", [None, 0.30]), ("c.jpg", [0.44, 0.001])]:
        faces = [face_result(q, x=10.0 + 50 * i) for i, q in enumerate(qualities)]
        sheet.add(ImageResult(name, "ok", width=200, height=80, faces=faces), picture)
    assert sheet.faces_seen == 6
    assert [(f.image, f.face, f.quality) for f in sheet.faces()] == [
        ("c.jpg", 1, 0.001),
        ("b.jpg", 1, 0.02),
        ("a.jpg", 1, 0.30),
    ]
    sheet.write(tmp_path / "index.html")
    page = (tmp_path / "index.html").read_text()
    assert page.count("<figure") == 3 and page.index("c.jpg") < page.index("b.jpg") < page.index("a.jpg")
    assert "6 faces (the 3 lowest-quality faces shown)" in page
    everything = ContactSheet()
    for name, quality in [("x.jpg", None), ("y.jpg", 0.5), ("z.jpg", 0.1)]:
        everything.add(ImageResult(name, "ok", faces=[face_result(quality)]), picture)
    assert [f.image for f in everything.faces()] == ["z.jpg", "y.jpg", "x.jpg"]  # no quality: last


def test_annotate_writes_the_contact_sheet_beside_the_pictures(tmp_path):
    out = tmp_path / "annotated"
    result = invoke("predict", EXAMPLES, "--annotate", out, "-o", tmp_path / "k.csv", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "k.csv")
    page = (out / "index.html").read_text()
    assert page.count("<figure") == len(table)
    shown = [float(q) for q in re.findall(r"<b>q ([0-9.]+)</b>", page)]
    assert shown == sorted(round(q, 3) for q in table["quality"])
    assert 'href="./examples/couple.jpg"' in page and (out / "examples" / "couple.jpg").exists()


class _Links(HTMLParser):
    """The contact sheet's links (href, text) and image alt texts, as a browser parses them."""

    def __init__(self):
        super().__init__()
        self.links, self.alts, self._href = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self._href = attrs["href"]
            self.links.append([self._href, ""])
        elif tag == "img":
            self.alts.append(attrs["alt"])

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None

    def handle_data(self, data):
        if self._href is not None:
            self.links[-1][1] += data


def test_contact_sheet_links_reach_their_files_whatever_the_names(tmp_path, tiny_weights):
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["javascript:alert(1).jpg", "a#b.jpg", "c?d.jpg", "e%20f.jpg", "<i>.jpg", 'q"uote.jpg', "r&amp;s.jpg"]
    for index, name in enumerate(names):
        Image.new("RGB", (48, 48), (40 * index, 90, 90)).save(folder / name, format="JPEG")
    out = tmp_path / "annotated"
    options = ["-w", tiny_weights, *FAST, "-q", "-o", tmp_path / "k.csv"]
    result = invoke("predict", folder, "--annotate", out, *options)
    assert result.exit_code == 0, result.output
    page = _Links()
    page.feed((out / "index.html").read_text())
    assert sorted(text for _, text in page.links) == sorted(f"{folder}/{name}" for name in names)
    assert sorted(alt.rsplit(" face ", 1)[0] for alt in page.alts) == sorted(f"{folder}/{name}" for name in names)
    for href, text in page.links:
        assert href.startswith("./") and not urlsplit(href).scheme and not urlsplit(href).fragment, href
        assert not urlsplit(href).query, href
        target = out / unquote(href)
        assert target.is_file() and target.name == text.rsplit("/", 1)[1], (href, text)


@pytest.fixture
def photos(tmp_path):
    """The example photos in a folder with a subfolder (the aligned faces mirror the layout)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for path in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    shutil.copy(EXAMPLES / "couple.jpg", folder / "sub" / "pair.jpg")
    return folder


def test_every_face_is_aligned_as_the_template_warp_of_its_rows_five_points(photos, tmp_path):
    out, aligned = tmp_path / "k.csv", tmp_path / "aligned"
    result = invoke("predict", photos, "-o", out, "--aligned", aligned, "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert (table["status"] == "ok").all() and len(table) == 7
    for row in table.itertuples():
        source = photos.parent / row.image
        target = aligned / source.relative_to(photos.parent).parent / f"{source.stem}_{row.face}.png"
        crop = Image.open(target)
        assert crop.size == (112, 112) and crop.mode == "RGB"
        points = np.array([[getattr(row, f"{n}_x"), getattr(row, f"{n}_y")] for n in ALIGN_POINTS])
        expected = aligned_crop(load_image(source), points)  # the row's values are rounded to 0.01 px
        difference = np.abs(np.asarray(crop, dtype=int) - np.asarray(expected, dtype=int))
        assert difference.max() <= 2 and difference.mean() < 0.05, target
    assert sorted(p.name for p in (aligned / "in" / "sub").iterdir()) == ["pair_0.png", "pair_1.png"]


def test_aligned_size_scales_the_template_and_existing_crops_are_kept(photos, tmp_path):
    aligned = photos / "aligned"  # inside the input folder: never read back as input
    predict = ["predict", photos, "--aligned", aligned, "--workers", "0"]
    first = invoke(*predict, "-o", tmp_path / "a.csv", "--aligned-size", "64", "-q")
    assert first.exit_code == 0, first.output
    crop = aligned / "in" / "couple_1.png"
    assert Image.open(crop).size == (64, 64)
    stamp = crop.stat().st_mtime_ns
    again = invoke(*predict, "-o", tmp_path / "b.csv")
    assert again.exit_code == 0, again.output
    assert "exists; not replaced (pass --overwrite)" in again.stderr and crop.stat().st_mtime_ns == stamp
    assert len(pd.read_csv(tmp_path / "b.csv")) == len(pd.read_csv(tmp_path / "a.csv")) == 7, first.output
    result = invoke(*predict, "-o", tmp_path / "c.csv", "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(crop).size == (112, 112)
