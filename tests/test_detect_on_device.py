"""Detection on the model's device (``--detect-on device``) gives the rows
of the workers' path: forced on the CPU here; on a GPU by the tests marked ``gpu``."""

import shutil

import numpy as np
import pytest
import torch

from fkpbatch import device_detect
from fkpbatch.cropping import FaceCropper
from fkpbatch.decode import load_image
from fkpbatch.detect import Decode, FaceDetector, Pass, make_canvas
from fkpbatch.engine import PredictOptions, Predictor
from fkpbatch.errors import DecodeError

from conftest import REPO, gradient_image, invoke, need_data

EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
# two faces, a group, small background faces (second passes on a bigger decode: img54, img31), a
# false face, a face cropped from a bigger decode (img57), large, ~800-px and small portraits
PHOTOS = [
    "couple.jpg",
    "selfie-many-people.jpg",
    "img54.jpg",
    "img31.jpg",
    "img57.jpg",
    "img1.jpg",
    "img11.jpg",
    "img10.jpg",
]
# Boxes and scores come from the same network in both paths (onnxruntime's graph and its PyTorch
# port agree within 1e-4 px). Keypoints are measured on 8-bit crops: a box 1e-4 px away can move
# one crop pixel to the next grey level, which moves a keypoint by a few hundredths of a crop pixel
# (0.02 of one, 0.17 px on an 832-px face, the most seen with the 0.3.0 `fast` model): keypoints
# must agree within 0.05 % of the face box (a twentieth of a crop pixel at 96 px).
BOX_PX, SCORE, KEYPOINT_OF_BOX = 1e-3, 1e-4, 5e-4


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(device="cpu")


def _mixed_folder(root):
    """The examples, a non-face picture, a small square picture (the crop fallback), a broken .jpg."""
    root.mkdir()
    for path in EXAMPLES:
        shutil.copy(path, root / path.name)
    gradient_image((600, 500)).save(root / "wall.png")
    gradient_image((90, 96)).save(root / "tiny_square.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def assert_same_rows(a, b, box_px=BOX_PX, score=SCORE, keypoint_of_box=KEYPOINT_OF_BOX):
    assert [(r.image, r.status, r.error, r.width, r.height, len(r.faces)) for r in a] == [
        (r.image, r.status, r.error, r.width, r.height, len(r.faces)) for r in b
    ]
    for x, y in zip(a, b):
        for f, g in zip(x.faces, y.faces):
            assert np.abs(np.subtract(f.box.as_list(), g.box.as_list())).max() < box_px, x.image
            assert (f.score is None) == (g.score is None), x.image
            if f.score is not None:
                assert abs(f.score - g.score) < score, x.image
            assert np.abs(f.keypoints - g.keypoints).max() < keypoint_of_box * f.box.size, x.image
            assert (f.quality is None) == (g.quality is None)
            if f.quality is not None:
                assert abs(f.quality - g.quality) < 0.01, x.image


def _both(predictor, inputs, workers=0, **options):
    on_workers = list(predictor.predict_paths(inputs, PredictOptions(workers=workers, **options)))
    on_device = list(predictor.predict_paths(inputs, PredictOptions(workers=workers, detect_on="device", **options)))
    return on_workers, on_device


def test_auto_detects_in_the_workers_on_the_cpu(predictor):
    assert not predictor.detects_on_device(PredictOptions())
    assert predictor.detects_on_device(PredictOptions(detect_on="device"))
    assert not predictor.detects_on_device(PredictOptions(detect_on="device", detect="never"))  # nothing to detect


def test_device_detection_gives_the_workers_rows_on_the_examples(predictor, tmp_path):
    a, b = _both(predictor, [_mixed_folder(tmp_path / "in")], workers=2)
    assert {r.status for r in a} == {"ok", "no_face", "error"}
    assert any(f.score is None for r in a for f in r.faces)  # the crop fallback is exercised
    assert_same_rows(a, b)


@pytest.mark.slow
def test_workers_started_by_forkserver_give_the_same_rows(predictor, tmp_path, monkeypatch):
    """On CUDA the workers start from a forkserver: both sources and their batches must pickle."""
    from fkpbatch import cropping

    assert cropping.worker_start_method(torch.device("cuda")) == "forkserver"
    assert cropping.worker_start_method(torch.device("cpu")) is None
    folder = _mixed_folder(tmp_path / "in")
    forked = _both(predictor, [folder], workers=2)
    monkeypatch.setattr(cropping, "worker_start_method", lambda device: "forkserver")
    started = _both(predictor, [folder], workers=2)
    for a, b in zip(forked, started):
        assert_same_rows(a, b)


def test_device_detection_gives_the_workers_rows_on_shared_photos(predictor):
    paths = [need_data("photos", name) for name in PHOTOS]
    a, b = _both(predictor, paths)
    assert sum(len(r.faces) for r in a) >= 10
    assert_same_rows(a, b)


@pytest.mark.parametrize("options", [{"passes": "two"}, {"faces": "largest"}, {"detect": "always", "min_face": 60}])
def test_device_detection_follows_the_same_policy_options(predictor, options):
    paths = [need_data("photos", name) for name in ("couple.jpg", "selfie-many-people.jpg", "img54.jpg")]
    paths += EXAMPLES
    a, b = _both(predictor, paths, **options)
    assert_same_rows(a, b)


def test_device_detection_of_in_memory_pictures(predictor):
    images = [load_image(path) for path in EXAMPLES] + [np.zeros((20, 20, 3), np.uint8)]
    a = list(predictor.predict_images(images, PredictOptions(workers=0)))
    b = list(predictor.predict_images(images, PredictOptions(workers=0, detect_on="device")))
    assert [r.status for r in a] == ["ok"] * len(EXAMPLES) + ["no_face"]
    assert_same_rows(a, b)


def test_a_failed_bigger_decode_in_the_main_process_is_that_images_error_row(predictor, monkeypatch):
    """A face too small for the first decode is cropped from a bigger one, decoded by the main
    process on the device path; when that fails, the image is an error row and the run goes on."""
    photo = need_data("photos", "img54.jpg")  # its second pass needs a bigger decode

    answer = FaceCropper.answer

    def refuse(cropper, request):  # the workers' own decodes go through FaceCropper.load, untouched
        if isinstance(request, Decode):
            raise DecodeError("cannot decode: truncated")
        return answer(cropper, request)

    monkeypatch.setattr(FaceCropper, "answer", refuse)
    results = list(predictor.predict_paths([photo, *EXAMPLES], PredictOptions(workers=0, detect_on="device")))
    assert (results[0].status, results[0].error) == ("error", "cannot decode: truncated")
    assert [r.status for r in results[1:]] == ["ok"] * len(EXAMPLES)


def test_a_batch_canvas_searches_each_image_as_if_alone():
    """Pictures of different sizes on one canvas: the network masks each one's padding after every
    layer, so its candidates equal the unbatched ones (not just the same faces)."""
    images = [load_image(path) for path in EXAMPLES] + [gradient_image((77, 45))]
    detector = FaceDetector(backend="torch")
    for image, together in zip(images, detector.detect_batch(images, detector.coarse)):
        alone = detector.candidates(image, detector.coarse)
        assert len(alone.scores) == len(together.scores)
        order_a, order_t = np.argsort(-alone.scores, kind="stable"), np.argsort(-together.scores, kind="stable")
        assert np.abs(alone.scores[order_a] - together.scores[order_t]).max(initial=0) < 1e-5
        assert np.abs(alone.boxes[order_a] - together.boxes[order_t]).max(initial=0) < 1e-3
        assert np.abs(alone.points[order_a] - together.points[order_t]).max(initial=0) < 1e-3


def test_a_canvas_is_a_multiple_of_32_padded_with_the_mean_colour():
    canvas, sizes = make_canvas([np.full((33, 40, 3), 7, np.uint8), np.full((20, 70, 3), 9, np.uint8)])
    assert canvas.dtype == torch.uint8 and tuple(canvas.shape) == (2, 64, 96, 3)
    assert sizes.tolist() == [[33, 40], [20, 70]]
    assert canvas[0, :33, :40].eq(7).all() and canvas[1, :20, :70].eq(9).all()
    assert canvas[0, 40, 50].tolist() == [123, 117, 104]  # RGB means: zero once the network's mean is off


def test_later_rounds_are_split_to_fit_the_canvas_budget(monkeypatch):
    monkeypatch.setattr(device_detect, "CANVAS_PIXELS", 3 * 100 * 100)
    sizes = {0: (50, 50), 1: (60, 60), 2: (100, 100), 3: (100, 90), 4: (40, 40)}
    chunks = device_detect._chunks(sorted(sizes, key=sizes.get), sizes.get)
    assert sorted(row for chunk in chunks for row in chunk) == list(range(5))
    for chunk in chunks:
        tallest, widest = max(sizes[r][0] for r in chunk), max(sizes[r][1] for r in chunk)
        assert len(chunk) == 1 or len(chunk) * tallest * widest <= 3 * 100 * 100


def test_a_worker_sends_the_first_pass_and_the_grayscale_picture(predictor):
    from fkpbatch.inputs import input_files

    source = device_detect.FrameSource(input_files(EXAMPLES), predictor.spec, PredictOptions(workers=0))
    records = [source[0], source[1]]
    images = [load_image(path) for path in EXAMPLES[:2]]
    firsts = [FaceDetector().prepare(Pass(image, 480)) for image in images]
    for record, image, first in zip(records, images, firsts):
        assert record.gray.dtype == torch.uint8 and tuple(record.gray.shape) == (image.height, image.width)
        assert np.array_equal(record.first.pixels.numpy(), first.pixels)
    batch = device_detect.collate_frames(records)
    assert batch.searched == [0, 1] and batch.canvas.dtype == torch.uint8 and batch.gray.dim() == 1
    assert all(r.gray is None and r.first.pixels is None for r in records)  # on the batch's tensors now
    batch.unpack()
    for slot, (record, image, first) in enumerate(zip(records, images, firsts)):
        assert np.array_equal(record.gray.numpy(), np.asarray(image.convert("L")))
        assert np.array_equal(batch.first_pixels(slot), first.pixels)


def test_a_later_pass_fetches_the_picture_a_worker_decoded(predictor, tmp_path):
    """Small pictures without a face get a padded pass, photos with small faces a second pass at
    the same scale: the main process takes the pixels from the canvas or decodes the file again."""
    folder = tmp_path / "in"
    folder.mkdir()
    gradient_image((300, 280)).save(folder / "small_no_face.png")  # padded pass, pixels from the canvas
    photos = [need_data("photos", name) for name in ("selfie-many-people.jpg", "img59.jpg")]  # second passes
    a, b = _both(predictor, [folder, *photos])
    assert a[0].faces[0].score is None  # the crop fallback, after the padded pass found nothing
    assert_same_rows(a, b)


def test_cli_detect_on_device_and_the_ray_refusal(tmp_path, tiny_weights):
    folder = _mixed_folder(tmp_path / "in")
    rows = {}
    for where in ("workers", "device"):
        out = tmp_path / f"{where}.csv"
        args = ["predict", str(folder), "-o", str(out), "--weights", str(tiny_weights), "--detect-on", where]
        result = invoke(*args, "--workers", "0", "-v")
        assert result.exit_code == 0, result.output
        rows[where] = out.read_text().splitlines()
        assert ("detection on cpu" in result.output) == (where == "device")
    assert len(rows["workers"]) == len(rows["device"])
    assert [r.split(",")[:4] for r in rows["workers"]] == [r.split(",")[:4] for r in rows["device"]]
    refused = invoke("predict", folder, "-o", tmp_path / "shards", "--engine", "ray", "--detect-on", "device")
    assert refused.exit_code != 0 and "--detect-on device" in refused.output


# ---- on a CUDA GPU (benchmarks/gpu_check.sh runs these) ----------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_cuda_predict_gives_the_cpu_rows_with_either_detection():
    cpu, gpu = Predictor.load(device="cpu"), Predictor.load(device="cuda")
    assert not gpu.detects_on_device(PredictOptions()) and gpu.onnx is None
    inputs = list(EXAMPLES) + [need_data("photos", name) for name in PHOTOS]
    a = list(cpu.predict_paths(inputs, PredictOptions(workers=2)))
    for detect_on in ("auto", "device"):
        b = list(gpu.predict_paths(inputs, PredictOptions(workers=2, detect_on=detect_on)))
        # fp32 with TF32 convolutions on the GPU: the same faces, boxes within a pixel
        assert_same_rows(a, b, box_px=1.0, score=0.01, keypoint_of_box=0.01)


@pytest.mark.gpu
@cuda
def test_cuda_predict_end_to_end_cli(tmp_path):
    import pandas as pd

    folder = _mixed_folder(tmp_path / "in")
    frames = {}
    for where in ("device", "workers"):
        out = tmp_path / f"{where}.csv"
        result = invoke("predict", folder, "-o", out, "--device", "cuda", "--detect-on", where, "-v")
        assert result.exit_code == 0, result.output
        assert ("detection on cuda" in result.output) == (where == "device")
        frames[where] = pd.read_csv(out)
    a, b = frames["device"], frames["workers"]
    assert list(a["status"]) == list(b["status"]) and list(a["image"]) == list(b["image"])
    assert np.abs(a["box_x"].fillna(0) - b["box_x"].fillna(0)).max() < 1.0


@pytest.mark.gpu
@cuda
def test_cuda_canvas_detection_matches_the_cpu_canvas():
    images = [load_image(path) for path in EXAMPLES]
    cpu, gpu = FaceDetector(backend="torch"), FaceDetector(backend="torch", device="cuda")
    for x, y in zip(cpu.detect_batch(images, 480), gpu.detect_batch(images * 1, 480)):
        faces_x, faces_y = cpu.merge([x]), gpu.merge([y])
        assert len(faces_x) == len(faces_y) > 0
        for f, g in zip(faces_x, faces_y):
            assert np.abs(np.subtract(f.box, g.box)).max() < 1.0 and abs(f.score - g.score) < 0.01
