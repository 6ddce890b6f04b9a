"""Throughput of fkpbatch on this machine: where the time goes, and how close end-to-end gets.

    python benchmarks/throughput.py [--images 2000] [--weights FILE] [--json OUT] [--baselines PYTHON]
    python benchmarks/throughput.py --photos [--repeats 4] [--json OUT]

The JSON goes to ``--json``, by default benchmarks/results/<fkpbatch version>/throughput_<model>.json
(``throughput_<model>_photos.json`` with --photos; <model>: the shipped model's name, else the
weights file's stem).

Measures images/s for (1) decode + crop/resize only, as predict does it, with the same workers
(and decode + detect + crop), (2) the model alone on preloaded tensors at the default batch size,
(3) `fkpbatch predict` end-to-end with --detect never and --detect auto (by the wall clock, and the
steady rate from a second run on N/4 images, i.e. without the fixed start-up), plus the peak memory
(PSS) of the whole process tree. Inputs are faces15 photos (../shared/data), linked N times under
new names. The ONNX graph cache is warm (as from a user's second run on).

``--device`` (default auto) is passed to every run; `fkpbatch predict` detects faces in the CPU
workers (``--detect-on auto``), and ``--compare-device`` adds end-to-end runs with
``--detect-on device`` (the detector batched on --device, e.g. the GPU) for comparison. ``--images 40 --device cpu``
or ``--photos --limit 3 --repeats 4`` make a quick dry run.

``--photos``: real photos instead. Two sets: the shared photos as they are (up to 4352x2903), and
an ~800-px set derived from them into a temporary folder (photos of >= 800 px resized to 800 px,
those of 600-800 px copied), each linked ``--repeats`` times. Beside `fkpbatch predict` (the
default search policy, and ``--passes two``, the 0.2 policy), the same run times the bare detector:
one process, onnxruntime on all cores, decode + one pass at full resolution (the longest side capped
at 1600 px for the full-size set) + box decoding, no start-up, no keypoints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fkpbatch, installed or not

from fkpbatch import __version__
from fkpbatch.cropping import ImageSource, collate_images, worker_loader
from fkpbatch.discover import discover
from fkpbatch.engine import PredictOptions, Predictor
from fkpbatch.options import cpu_count, default_workers
from fkpbatch.zoo import SHIPPED_MODELS, model_path

REPO = Path(__file__).resolve().parents[1]


def default_json(weights: Path, photos: bool) -> Path:
    """benchmarks/results/<version>/throughput_<model>[_photos].json (see the module docstring)."""
    model = next((n for n in SHIPPED_MODELS if model_path(n).resolve() == weights.resolve()), weights.stem)
    return REPO / "benchmarks" / "results" / __version__ / f"throughput_{model}{'_photos' if photos else ''}.json"


def make_inputs(source: Path, count: int, folder: Path) -> Path:
    photos = sorted(source.resolve().glob("*.jpg"))  # absolute targets: relative links would dangle
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:06d}.jpg").symlink_to(photos[i % len(photos)])
    return folder


def pipeline_rate(predictor: Predictor, folder: Path, options: PredictOptions, frames: bool = False) -> float:
    """Images/s through the DataLoader stage alone (decode, [detect], crop), model skipped;
    ``frames``: the workers of the device-detection path (decode and prepare the first pass)."""
    from fkpbatch.device_detect import FrameSource, collate_frames

    files = discover([folder]).files
    source = FrameSource(files, predictor.spec, options) if frames else ImageSource(files, predictor.spec, options)
    loader = worker_loader(source, collate_frames if frames else collate_images, options, predictor.device)
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(files) / (time.perf_counter() - started)


def model_rate(predictor: Predictor, batch_size: int, batches: int = 20) -> float:
    size = predictor.spec.input_size
    crops = torch.randint(0, 256, (batch_size, 1, size, size), dtype=torch.uint8)
    torch.set_num_threads(cpu_count())
    predictor.predict_crops(crops)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        predictor.predict_crops(crops)
    return batch_size * batches / (time.perf_counter() - started)


def _tree_memory_kb(root: int) -> int:
    """Memory of a process and all its descendants (Linux /proc): the sum of their PSS, so pages
    that forked DataLoader workers share with the main process are counted once, not per worker."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


DEVICE: list[str] = []  # ["--device", NAME] from the command line, for every predict run


def _run_predict(folder: Path, weights: Path, extra: list[str]) -> tuple[float, int]:
    """Wall-clock seconds and peak PSS (kB, sampled over the process tree) of one predict run."""
    command = [
        sys.executable,
        "-m",
        "fkpbatch",
        "predict",
        str(folder),
        "-o",
        os.devnull,
        "--format",
        "csv",
        "--overwrite",
        "--quiet",
        "--weights",
        str(weights),
        *DEVICE,
        *extra,
    ]
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command)

    def sample():
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_memory_kb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process.wait()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"predict failed with exit code {process.returncode}")
    return time.perf_counter() - started, peak


def end_to_end(
    folder: Path, quarter: Path, count: int, weights: Path, extra: list[str], quarter_count: int | None = None
) -> dict:
    """Run the real CLI on all images and on a quarter of them: images/s by the wall clock
    (start-up included) and the steady rate the difference gives (what long runs approach)."""
    seconds, peak = _run_predict(folder, weights, extra)
    quarter_seconds, _ = _run_predict(quarter, weights, extra)
    quarter_count = count // 4 if quarter_count is None else quarter_count
    # runs less than half a second apart (a dry run on a few images) give no steady rate
    difference = seconds - quarter_seconds
    steady = (count - quarter_count) / difference if difference >= 0.5 else None
    return {
        "images_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 1),
        "steady_images_per_s": round(steady, 1) if steady else None,
        "start_up_s": round(seconds - count / steady, 1) if steady else None,
        "peak_memory_pss_mb": round(peak / 1024, 1),
    }


def baseline(python: str, tool: str, folder: Path, count: int) -> dict:
    """Another tool (benchmarks/baselines.py, one process) on the same images, by wall clock."""
    started = time.perf_counter()
    subprocess.run(
        [python, str(REPO / "benchmarks" / "baselines.py"), tool, str(folder), "-o", os.devnull],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    return {"images_per_s": round(count / seconds, 1), "seconds": round(seconds, 1)}


def derive_800(originals: list[Path], folder: Path) -> list[Path]:
    from PIL import Image

    from fkpbatch.decode import load_image

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for path in originals:
        image = load_image(path)
        if max(image.size) < 600:
            continue
        scale = min(1.0, 800 / max(image.size))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        image.save(folder / f"{path.stem}.jpg", quality=90)
        made.append(folder / f"{path.stem}.jpg")
    return made


def link_repeats(photos: list[Path], repeats: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(repeats):
        for photo in photos:
            (folder / f"{r}_{photo.stem}.jpg").symlink_to(photo.resolve())
    return folder


def bare_detector_rate(photos: list[Path], cap: int) -> dict:
    """Decode + one detector pass at full resolution (longest side <= cap) per photo, in-process."""
    from fkpbatch.decode import load_image
    from fkpbatch.detect import FaceDetector

    detector = FaceDetector(threads=cpu_count())
    detector.candidates(load_image(photos[0]), 320)  # session built outside the timing
    started, faces = time.perf_counter(), 0
    for path in photos:
        image = load_image(path)
        faces += len(detector.merge([detector.candidates(image, min(cap, max(image.size)))]))
    seconds = time.perf_counter() - started
    return {"images_per_s": round(len(photos) / seconds, 1), "seconds": round(seconds, 1), "faces": faces}


def _machine(predictor: Predictor) -> dict:
    """Where a figure was measured: cores, processor, versions, the load at the start, the device."""
    return {
        "cpu_cores": cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        **_device_info(predictor),
    }


def _device_info(predictor: Predictor) -> dict:
    info = {"device": str(predictor.device), "detection_on_device": predictor.detects_on_device(PredictOptions())}
    if predictor.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(predictor.device)
    return info


def photos_mode(args, weights: Path) -> dict:
    source = args.data / "photos"
    if not source.is_dir():
        raise SystemExit(f"needs the shared photos at {source}")
    predictor = Predictor.load(weights, args.device)
    report = {
        "machine": _machine(predictor),
        "workers": default_workers(),
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory() as tmp:
        originals = sorted(source.iterdir())[: args.limit]
        sets = {}
        if "photos_800" in args.sets:
            sets["photos_800"] = derive_800(originals, Path(tmp) / "p800")
        if "photos_full" in args.sets:
            sets["photos_full"] = originals
        for name, photos in sets.items():
            folder = link_repeats(photos, args.repeats, Path(tmp) / f"{name}_all")
            quarter = link_repeats(photos, max(1, args.repeats // 4), Path(tmp) / f"{name}_quarter")
            count = len(photos) * args.repeats
            if args.repeats // 4 >= args.repeats:
                raise SystemExit("--repeats must be at least 2")
            entry = {"photos": len(photos), "images": count}
            bare_repeats = max(1, args.repeats // 2 if args.bare_repeats is None else args.bare_repeats)
            entry["bare_detector_full_resolution"] = bare_detector_rate(photos * bare_repeats, 1600)
            runs = [("predict", [])]
            if not args.skip_passes_two:
                runs.append(("predict_passes_two", ["--passes", "two"]))
            if args.compare_device:
                runs.append(("predict_detect_on_device", ["--detect-on", "device"]))
            for label, extra in runs:
                runs = end_to_end(
                    folder, quarter, count, weights, extra, quarter_count=len(photos) * max(1, args.repeats // 4)
                )
                entry[label] = runs
                bare = entry["bare_detector_full_resolution"]["images_per_s"]
                entry[f"ratio_{label}_vs_bare"] = round(runs["images_per_s"] / bare, 2)
                steady = runs["steady_images_per_s"]
                entry[f"steady_ratio_{label}_vs_bare"] = round(steady / bare, 2) if steady else None
            report[name] = entry
            print(name, json.dumps(entry), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("FKPBATCH_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--weights", type=Path, default=model_path())
    parser.add_argument("--json", type=Path, help="where the report goes (default: see above)")
    parser.add_argument("--skip-auto", action="store_true", help="only --detect never")
    parser.add_argument(
        "--model-only", action="store_true", help="only (2), e.g. to compare --weights of two architectures"
    )
    parser.add_argument(
        "--baselines",
        metavar="PYTHON",
        help="also time dlib and mediapipe (benchmarks/baselines.py) with this "
        "interpreter, one that has dlib-bin, face_recognition_models and mediapipe==0.10.14 installed",
    )
    parser.add_argument("--photos", action="store_true", help="real photos (see above) instead of faces15")
    parser.add_argument("--repeats", type=int, default=4, help="--photos: each photo is linked this many times")
    parser.add_argument("--device", default="auto", help="--device of the model and of every predict run")
    parser.add_argument(
        "--compare-device",
        action="store_true",
        help="also run predict with --detect-on device (the detector batched on --device)",
    )
    parser.add_argument("--limit", type=int, help="--photos: only the first N shared photos (a quick dry run)")
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=("photos_800", "photos_full"),
        default=["photos_800", "photos_full"],
        help="--photos: which sets",
    )
    parser.add_argument(
        "--bare-repeats", type=int, help="--photos: repeats of the bare-detector reference (default: --repeats / 2)"
    )
    parser.add_argument("--skip-passes-two", action="store_true", help="--photos: no --passes two runs")
    args = parser.parse_args()
    DEVICE[:] = ["--device", args.device]
    out = args.json or default_json(args.weights, args.photos)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.photos:
        report = photos_mode(args, args.weights)
        out.write_text(json.dumps(report, indent=2) + "\n")
        return
    source = args.data / "faces15" / "images"
    if not source.is_dir():
        raise SystemExit(f"needs the faces15 photos at {source}")
    predictor = Predictor.load(args.weights, args.device)
    options = PredictOptions(detect="never")
    report = {
        "machine": _machine(predictor),
        "images": args.images,
        "workers": default_workers(),
        "batch_size": options.batch_size,
    }
    if args.model_only:
        print(
            json.dumps(
                {
                    "weights": str(args.weights),
                    "model_only": round(model_rate(predictor, options.batch_size), 1),
                    "runtime": "torch" if predictor.onnx is None else "onnxruntime",
                }
            )
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_inputs(source, args.images, Path(tmp) / "all")
        quarter = make_inputs(source, args.images // 4, Path(tmp) / "quarter")
        report["decode_crop_only"] = round(pipeline_rate(predictor, folder, options), 1)
        report["model_only"] = round(model_rate(predictor, options.batch_size), 1)
        report["end_to_end_detect_never"] = end_to_end(
            folder, quarter, args.images, args.weights, ["--detect", "never"]
        )
        bound = min(report["decode_crop_only"], report["model_only"])
        report["ratio_never_vs_min_stage"] = round(report["end_to_end_detect_never"]["images_per_s"] / bound, 3)
        steady = report["end_to_end_detect_never"]["steady_images_per_s"]
        report["steady_ratio_never_vs_min_stage"] = round(steady / bound, 3) if steady else None
        if not args.skip_auto:
            report["decode_detect_crop_only"] = round(
                pipeline_rate(predictor, folder, PredictOptions(detect="auto")), 1
            )
            report["end_to_end_detect_auto"] = end_to_end(folder, quarter, args.images, args.weights, [])
            report["ratio_auto_vs_detect_stage"] = round(
                report["end_to_end_detect_auto"]["images_per_s"] / report["decode_detect_crop_only"], 3
            )
            # the workers of the device-detection path: decode + first-pass input only
            report["decode_prepare_only"] = round(
                pipeline_rate(predictor, folder, PredictOptions(detect="auto"), frames=True), 1
            )
            if args.compare_device:
                report["end_to_end_detect_auto_on_device"] = end_to_end(
                    folder, quarter, args.images, args.weights, ["--detect-on", "device"]
                )
        for tool in ("dlib", "mediapipe") if args.baselines else ():
            report[f"baseline_{tool}"] = baseline(args.baselines, tool, folder, args.images)
            if "end_to_end_detect_auto" in report:
                report[f"ratio_auto_vs_{tool}"] = round(
                    report["end_to_end_detect_auto"]["images_per_s"] / report[f"baseline_{tool}"]["images_per_s"], 2
                )
    print(json.dumps(report, indent=2))
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
