"""The PyTorch port of the detector gives the ONNX graph's faces; the GPU path where CUDA exists."""

import numpy as np
import pytest
import torch
from PIL import Image

from fkpbatch.decode import load_image
from fkpbatch.detect import FaceDetector, _network_input

from conftest import REPO, need_data

EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
PHOTOS = ["couple.jpg", "selfie-many-people.jpg", "img54.jpg", "img31.jpg"]  # two, group, background, false face


def _pairs(image: Image.Image):
    onnx, port = FaceDetector(), FaceDetector(backend="torch")
    for side in (onnx.coarse, onnx.fine):
        yield onnx.candidates(image, side), port.candidates(image, side)


def _same(a, b):
    assert len(a.scores) == len(b.scores) > 0
    order_a, order_b = np.argsort(-a.scores, kind="stable"), np.argsort(-b.scores, kind="stable")
    assert np.abs(a.scores[order_a] - b.scores[order_b]).max() < 1e-4
    assert np.abs(a.boxes[order_a] - b.boxes[order_b]).max() < 1e-3  # px of the searched image
    assert np.abs(a.points[order_a] - b.points[order_b]).max() < 1e-3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_torch_port_gives_the_onnx_graphs_faces_on_the_examples(path):
    for a, b in _pairs(load_image(path)):
        _same(a, b)


@pytest.mark.parametrize("name", PHOTOS)
def test_torch_port_gives_the_onnx_graphs_faces_on_shared_photos(name):
    for a, b in _pairs(load_image(need_data("photos", name))):
        _same(a, b)


def test_batched_detection_finds_each_images_faces():
    images = [load_image(p) for p in EXAMPLES]
    detector = FaceDetector(backend="torch")
    for image, batched in zip(images, detector.detect_batch(images, detector.coarse)):
        alone = detector.merge([detector.candidates(image, detector.coarse)])
        together = detector.merge([batched])
        assert len(alone) == len(together) > 0
        for x, y in zip(alone, together):
            assert abs(x.score - y.score) < 0.02 and np.abs(np.subtract(x.box, y.box)).max() < 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_detector_matches_the_cpu_one():
    image = load_image(EXAMPLES[0])
    cpu, gpu = FaceDetector(backend="torch"), FaceDetector(backend="torch", device="cuda")
    x = _network_input(image.resize((320, 240)))
    for u, v in zip(cpu._run(x), gpu._run(x)):
        assert np.abs(u - v).max() < 1e-2
    assert len(gpu.detect_batch([image] * 8, 480)) == 8
