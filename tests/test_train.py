"""Training, evaluation and the Kaggle submission (fkpbatch.train, datasets, metrics): the notebook's
recipe on a small Kaggle-format CSV built from faces15, folder CSVs, resumed runs, and every bad
input or environment failure one line, never a run or an input written over."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fkpbatch.augment import hflip_with_swap
from fkpbatch.datasets import FaceDataset, FaceTable, load_kaggle_csv
from fkpbatch.errors import DataError
from fkpbatch.keypoints import KAGGLE_POINTS, coordinate_columns, flip_permutation
from fkpbatch.train import masked_loss
from fkpbatch.transforms import FRAMING_POINTS, Framing, box_from_points, crop_face, to_unit

from conftest import invoke, need_data, one_line_error, random_kaggle_csv

COLUMNS = coordinate_columns(KAGGLE_POINTS)


def make_kaggle_csv(path, rows=48, missing_every=3):
    """faces15 photos framed like Kaggle, as 96x96 grayscale rows; every third row keeps only 4
    keypoints (as 4,755 of Kaggle's 7,049 rows do)."""
    data = need_data("faces15")
    labels = pd.read_csv(data / "keypoints.csv").head(rows)
    out = []
    for i, row in labels.iterrows():
        points = row[COLUMNS].to_numpy(float).reshape(15, 2)
        box = box_from_points(points[[KAGGLE_POINTS.index(n) for n in FRAMING_POINTS]], Framing())
        face = crop_face(Image.open(data / "images" / row["image"]).convert("L"), box, 96)
        kaggle = to_unit(points, box) * 96 - 0.5
        if i % missing_every == 0:
            keep = [
                KAGGLE_POINTS.index(n)
                for n in ("left_eye_center", "right_eye_center", "nose_tip", "mouth_center_bottom_lip")
            ]
            kaggle[[k for k in range(15) if k not in keep]] = np.nan
        record = dict(zip(COLUMNS, kaggle.reshape(-1)))
        record["Image"] = " ".join(map(str, np.asarray(face).reshape(-1)))
        out.append(record)
    pd.DataFrame(out).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory):
    return make_kaggle_csv(tmp_path_factory.mktemp("kaggle") / "training.csv")


@pytest.fixture(scope="module")
def trained_run(kaggle_csv, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "seed"
    result = invoke("train", kaggle_csv, "--epochs", "3", "-b", "16", "--workers", "0", "-o", run, "--quiet")
    assert result.exit_code == 0, result.output
    return run


def test_masked_loss_ignores_missing_coordinates():
    pred = torch.tensor([[[0.5, 0.5], [0.1, 0.9]]])
    target = torch.tensor([[[0.7, 0.5], [float("nan"), float("nan")]]])
    assert masked_loss(pred, target, "mse").item() == pytest.approx(0.2**2 / 2)
    assert masked_loss(pred, target, "l1").item() == pytest.approx(0.2 / 2)


def test_seed_recipe_writes_every_artifact_with_falling_loss(trained_run):
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.json", "loss.png", "val_images.txt"):
        assert (trained_run / name).exists(), name
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) >= {"train_loss", "val_loss", "val_rmse", "seconds"}
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    config = json.loads((trained_run / "config.json").read_text())
    assert (config["arch"], config["loss"], config["lr"], config["augment"]) == ("seed", "mse", 1e-3, "seed")


def test_resume_continues_the_epoch_count(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = invoke("train", "--resume", run, "--epochs", "4", "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 4


def test_resume_refuses_options_it_would_ignore(trained_run, kaggle_csv):
    """A resumed run keeps its saved configuration: options that would change it are refused, not ignored."""
    before = (trained_run / "last.pt").read_bytes()
    for extra in (["--lr", "1e-4"], ["--batch-size", "8"], [str(kaggle_csv)], ["--arch", "fkpnet"]):
        result = invoke("train", "--resume", trained_run, "--epochs", "5", *extra)
        assert result.exit_code == 2, result.output
        assert (
            "saved configuration" in result.stderr
            and (extra[0] if extra[0].startswith("-") else "CSV") in result.stderr
        )
    assert (trained_run / "last.pt").read_bytes() == before


def test_init_fine_tunes_from_given_weights_and_refuses_a_foreign_model(trained_run, kaggle_csv, tmp_path):
    source = trained_run / "best.pt"
    run = tmp_path / "tuned"
    result = invoke(
        "train",
        kaggle_csv,
        "--init",
        source,
        "--lr",
        "0",
        "--epochs",
        "1",
        "-b",
        "16",
        "--workers",
        "0",
        "-o",
        run,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    before = torch.load(source, weights_only=True)["model"]
    after = torch.load(run / "last.pt", weights_only=True)["model"]
    learned = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert learned and all(torch.equal(before[k], after[k]) for k in learned)  # lr 0: the weights are the given ones
    foreign = invoke(
        "train",
        kaggle_csv,
        "--init",
        source,
        "--arch",
        "fkpnet_tiny",
        "--epochs",
        "1",
        "--workers",
        "0",
        "-o",
        tmp_path / "other",
        "--quiet",
    )
    assert foreign.exit_code == 2 and str(source) in foreign.stderr and "seed model with 15 points" in foreign.stderr


def test_trained_weights_drive_predict_evaluate_and_submission(trained_run, kaggle_csv, tmp_path):
    best = trained_run / "best.pt"
    result = invoke("evaluate", kaggle_csv, "-w", best, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "RMSE" in result.stdout and "NME" in result.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["faces"] == 48 and report["rmse"] > 0
    test_csv = tmp_path / "test.csv"
    frame = pd.read_csv(kaggle_csv).head(2)
    pd.DataFrame({"ImageId": [1, 2], "Image": frame["Image"]}).to_csv(test_csv, index=False)
    lookup = tmp_path / "IdLookupTable.csv"
    pd.DataFrame(
        {
            "RowId": [1, 2, 3],
            "ImageId": [1, 1, 2],
            "FeatureName": ["left_eye_center_x", "nose_tip_y", "mouth_left_corner_x"],
        }
    ).to_csv(lookup, index=False)
    out = tmp_path / "submission.csv"
    result = invoke("submission", test_csv, "--lookup", lookup, "-w", best, "-o", out)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(out)
    assert list(submission.columns) == ["RowId", "Location"] and submission["RowId"].tolist() == [1, 2, 3]
    assert submission["Location"].between(0, 96).all()


def test_wrong_pixel_count_names_file_and_line(tmp_path, kaggle_csv):
    frame = pd.read_csv(kaggle_csv).head(3)
    frame.loc[1, "Image"] = "1 2 3"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad.csv, line 3: Image has 3 pixel values, expected 9216"):
        load_kaggle_csv(bad)
    result = invoke("train", bad, "--epochs", "1")
    assert result.exit_code == 2 and "line 3" in result.stderr


def test_non_numeric_keypoint_names_the_column(tmp_path, kaggle_csv):
    frame = pd.read_csv(kaggle_csv).head(3)
    frame["nose_tip_x"] = frame["nose_tip_x"].astype(object)
    frame.loc[2, "nose_tip_x"] = "left"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"line 4: column nose_tip_x is not a number: 'left'"):
        load_kaggle_csv(bad)


def test_missing_columns_are_named(tmp_path, kaggle_csv):
    frame = pd.read_csv(kaggle_csv).head(2).drop(columns=["nose_tip_y"])
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match="missing keypoint columns nose_tip_y"):
        load_kaggle_csv(bad)


def test_failures_count_faces_not_found_and_quality_ranks_errors():
    from fkpbatch.metrics import failure_percent, quality_vs_error

    # 0.05 passes, 0.2 fails, NaN (no eye corners) is not scored, one face was not found at all
    assert failure_percent(np.array([0.05, 0.2, np.nan]), missed=1) == pytest.approx(100 * 2 / 3)
    nme = np.linspace(0.02, 0.08, 20)
    report = quality_vs_error(1 - nme * 10, nme)  # higher quality, lower error
    assert report["quality_vs_nme_spearman"] == pytest.approx(-1.0)
    assert report["nme_percent_lowest_decile_quality"] > report["nme_percent_other_quality"]
    assert quality_vs_error(np.array([0.5, np.nan]), np.array([0.1, 0.2])) == {}


def test_group_split_keeps_each_person_on_one_side():
    from fkpbatch.datasets import split_by_group

    names = [
        f"{person}_{frame:02d}.jpg"
        for person in ("Abdel_Aziz_Al-Hakim", "Celso_Lafer", "Kate_Moss", "X_Y_Z")
        for frame in range(30)
    ]
    mask = split_by_group(names, 0.5, r"^(.+)_[^_]+$", seed=3)
    by_person = {}
    for name, is_val in zip(names, mask):
        by_person.setdefault(name.rsplit("_", 1)[0], set()).add(bool(is_val))
    assert all(len(sides) == 1 for sides in by_person.values())
    assert {True, False} <= set().union(*by_person.values())  # both sides used
    assert (split_by_group(names, 0.5, r"^(.+)_[^_]+$", seed=3) == mask).all()


def test_folder_csv_training_feeds_predict_with_68_points(tmp_path):
    data = need_data("faces15")
    labels = pd.read_csv(data / "keypoints.csv").head(12)
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    for name in labels["image"]:
        (folder / "images" / name).symlink_to(data / "images" / name)
    labels.loc[len(labels)] = ["missing_00.jpg"] + [1.0] * (labels.shape[1] - 1)  # a row whose photo is gone
    labels.to_csv(folder / "keypoints.csv", index=False)
    run = tmp_path / "run"
    result = invoke(
        "train",
        folder / "keypoints.csv",
        "--arch",
        "fkpnet_tiny",
        "--points",
        "68",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--val-split",
        "0.25",
        "--label-offset",
        "1,1",
        "-o",
        run,
    )
    assert result.exit_code == 0, result.output
    assert "1 image(s) missing or unreadable, e.g. line 14: missing_00.jpg" in result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == "l1" and config["label_offsets"] == [[1.0, 1.0]]  # folder data: the fkpnet recipe
    resumed = invoke("train", "--resume", run, "--epochs", "2", "--workers", "0", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "config.json").read_text())["label_offsets"] == [[1.0, 1.0]]
    result = invoke("predict", folder / "images", "-w", run / "best.pt", "--points", "68", "--workers", "0", "-q")
    assert result.exit_code == 0 and "p67_y" in result.stdout.splitlines()[0]
    strict = invoke("train", folder / "keypoints.csv", "--strict", "--epochs", "1", "-o", tmp_path / "r2")
    assert strict.exit_code == 2 and "missing_00.jpg" in strict.stderr


def test_rows_without_usable_framing_points_are_skipped_and_counted_by_train_and_evaluate(tmp_path):
    """An empty, infinite or absurd framing coordinate (the five points that place the crop) used
    to kill train in a DataLoader worker ('cannot convert float NaN to integer')."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "set"
    folder.mkdir()
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(folder / f"f{i}.png")
        rows.append({"image": f"f{i}.png", **dict(zip(COLUMNS, rng.uniform(16, 48, len(COLUMNS))))})
    labels = pd.DataFrame(rows)
    labels.loc[1, "nose_tip_x"] = np.nan  # line 3
    labels.loc[4, "left_eye_center_y"] = np.inf  # line 6
    labels.loc[6, "mouth_left_corner_x"] = 1e12  # line 8: over 100x the image size
    labels.loc[7, "mouth_center_bottom_lip_y"] = np.nan  # not a framing point: the masked loss handles it
    labels.to_csv(folder / "keypoints.csv", index=False)
    warning = "3 row(s) skipped: framing points missing or not finite, e.g. line 3 (f1.png: nose_tip_x empty)"
    run = tmp_path / "run"
    train = ["train", str(folder / "keypoints.csv"), "--arch", "fkpnet_tiny", "--epochs", "1", "--workers", "0"]
    result = invoke(*train, "--val-split", "0.25", "-o", run)
    assert result.exit_code == 0, result.output
    assert warning in result.stderr and "Traceback" not in result.output
    evaluated = invoke("evaluate", folder / "keypoints.csv", "-w", run / "best.pt")
    assert evaluated.exit_code == 0, evaluated.output
    assert warning in evaluated.stderr and warning not in evaluated.stdout  # the same rows, said on stderr
    strict = invoke(*train, "--strict", "-o", tmp_path / "r2")
    assert strict.exit_code == 2 and warning in strict.stderr


def test_label_offset_survives_a_flip():
    """Labels 2 px right of the true positions: a flipped crop must still be labelled 2 px right
    (a plain mirror would put them 2 px left, and the model would learn neither)."""
    mean = pd.read_csv(need_data("kaggle") / "keypoints_only.csv")[COLUMNS].mean().to_numpy().reshape(15, 2) + 52
    table = FaceTable(["face"], mean[None], [Image.new("L", (200, 200), 128)], KAGGLE_POINTS, "synthetic", kaggle=False)
    permutation = flip_permutation(KAGGLE_POINTS)
    flip = lambda image, unit: hflip_with_swap(image, unit, permutation)  # noqa: E731
    offset = np.array([2.0, 0.0])
    dataset = FaceDataset(table, [0], input_size=32, framing=Framing(), augment=flip, label_offset=tuple(offset))
    box = dataset.box(0)
    _, target = dataset[0]
    true = torch.from_numpy(to_unit(mean - offset, box)).float()
    _, mirrored_true = hflip_with_swap(torch.zeros(1, 2, 2), true, permutation)
    assert torch.allclose(target, mirrored_true + torch.tensor(offset / box.size).float(), atol=1e-6)
    _, naive = hflip_with_swap(torch.zeros(1, 2, 2), torch.from_numpy(to_unit(mean, box)).float(), permutation)
    assert torch.allclose(target[:, 0] - naive[:, 0], torch.tensor(2 * offset[0] / box.size).float(), atol=1e-6)


def test_label_offset_is_given_once_per_csv(kaggle_csv, tmp_path):
    result = invoke("train", kaggle_csv, kaggle_csv, "--label-offset", "1,1", "--epochs", "1", "-o", tmp_path / "r")
    assert result.exit_code == 2 and "once per training CSV (2)" in result.stderr
    result = invoke("train", kaggle_csv, "--label-offset", "1;1", "--epochs", "1", "-o", tmp_path / "r")
    assert result.exit_code == 2 and "DX,DY" in result.stderr


def test_a_diverging_loss_stops_with_the_epoch_and_batch(kaggle_csv, tmp_path):
    result = invoke(
        "train",
        kaggle_csv,
        "--arch",
        "fkpnet_tiny",
        "--lr",
        "1e30",
        "--epochs",
        "2",
        "-b",
        "8",
        "--workers",
        "0",
        "-o",
        tmp_path / "run",
        "--quiet",
    )
    assert result.exit_code == 1
    assert "loss became" in result.stderr and "at epoch 1, batch" in result.stderr and "Traceback" not in result.output


def test_a_run_folder_is_self_contained_and_its_log_is_plain_lines(kaggle_csv, tmp_path, monkeypatch):
    """Relative paths in, absolute paths in config.json (so --resume works from elsewhere);
    metrics.csv with the learning rate, loss.png, TensorBoard scalars when it is importable, and
    one unwrapped line per epoch on a stderr that is not a terminal."""
    import re
    import shutil
    import sys
    import types

    scalars = []

    class FakeSummaryWriter:  # stands in for torch.utils.tensorboard, an optional extra
        def __init__(self, log_dir):
            scalars.append(("log_dir", log_dir))

        def add_scalar(self, key, value, step):
            scalars.append((key, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(kaggle_csv, work / "training.csv")
    monkeypatch.chdir(work)
    result = invoke(
        "train",
        "training.csv",
        "--arch",
        "fkpnet_tiny",
        "--epochs",
        "2",
        "-b",
        "16",
        "--workers",
        "0",
        "-o",
        "run",
        "-v",
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    epoch_line = re.compile(
        r"^epoch [12]/2: lr 0\.001, train loss [\d.]+, val loss [\d.]+, val RMSE [\d.]+ px\(96\), "
        r"val NME [\d.]+ %, \d+ s( \(best so far\))?$"
    )
    assert len([line for line in lines if epoch_line.match(line)]) == 2, lines
    assert any(re.match(r"^epoch 2/2: \d+/\d+ batches \(100 %\), [\d.]+ batches/s", line) for line in lines), lines
    prefixes = ("training fkpnet_tiny on", "config: {", "TensorBoard logs in", "epoch ", "best weights: ")
    assert all(line.startswith(prefixes) for line in lines), lines
    run = work / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == [str(work / "training.csv")]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "lr", "train_loss", "val_loss", "val_rmse", "val_nme", "seconds"]
    assert metrics["epoch"].tolist() == [1, 2] and (metrics["lr"] == 1e-3).all()
    assert Image.open(run / "loss.png").size[0] > 600
    assert ("val_nme", 2) in scalars and ("lr", 1) in scalars and scalars[-1] == ("closed", None)
    monkeypatch.chdir(tmp_path)  # another folder: the run still finds its data
    resumed = invoke("train", "--resume", run, "--epochs", "3", "--workers", "0", "-q")
    assert resumed.exit_code == 0 and resumed.stderr == "", resumed.output
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_framing_jitter_changes_every_epoch_with_persistent_workers():
    """Each epoch must frame a face anew, also when DataLoader workers persist between epochs (a
    counter set on the dataset in the main process never reached them: the jitter was frozen)."""
    from fkpbatch.config import TrainConfig
    from fkpbatch.train import _loader

    mean = pd.read_csv(need_data("kaggle") / "keypoints_only.csv")[COLUMNS].mean().to_numpy().reshape(15, 2) + 52
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    table = FaceTable(
        ["a", "b"], np.stack([mean, mean]), [Image.fromarray(noise)] * 2, KAGGLE_POINTS, "synthetic", kaggle=False
    )
    keep = lambda image, unit: (image, unit)  # noqa: E731 - no augmentation: only the framing jitter can differ
    dataset = FaceDataset(table, [0, 1], input_size=32, framing=Framing(), augment=keep, jitter=0.06)
    loader = _loader(dataset, TrainConfig(data=(), batch_size=2, workers=1), shuffle=False, device=torch.device("cpu"))
    assert loader.persistent_workers
    first, second = (next(iter(loader))[0] for _ in range(2))
    assert not torch.equal(first[0], second[0]), "the same face was framed identically in two epochs"
    assert not torch.equal(first[0], first[1]), "two rows of one epoch were framed identically"


def test_config_names_files_absolutely_and_init_takes_a_shipped_model_name(tmp_path, monkeypatch):
    from fkpbatch.train import build_config
    from fkpbatch.zoo import model_path

    monkeypatch.chdir(tmp_path)
    config = build_config(("faces/keypoints.csv",), recipe="fkpnet", points="68", init="accurate", images_dir="imgs")
    assert config.data == (str(tmp_path / "faces" / "keypoints.csv"),) and config.images_dir == str(tmp_path / "imgs")
    assert config.init == str(model_path("accurate"))
    assert build_config(("a.csv",), recipe="fkpnet", init="mine.pt").init == str(tmp_path / "mine.pt")


@pytest.mark.parametrize(("model", "arch", "size"), [("fast", "fkpnet_small", 96), ("accurate", "fkpnet_wide", 128)])
def test_init_implies_the_models_architecture_points_and_size_unless_given(model, arch, size):
    """``train DATA --init accurate`` fine-tunes what ships (the recipe's fkpnet would be refused)."""
    from fkpbatch.train import build_config

    implied = build_config(("a.csv",), init=model)
    assert (implied.arch, implied.points, implied.input_size) == (arch, "68", size)
    given = build_config(("a.csv",), init=model, input_size=160, points="15")
    assert (given.arch, given.points, given.input_size) == (arch, "15", 160)


TRAIN = [
    "--arch",
    "fkpnet_tiny",
    "--input-size",
    "32",
    "--epochs",
    "1",
    "-b",
    "4",
    "--workers",
    "0",
    "--quiet",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch fkpnet_tiny run on random data: its CSV and its run folder."""
    folder = tmp_path_factory.mktemp("run")
    data = random_kaggle_csv(folder / "training.csv")
    run = folder / "run"
    result = invoke("train", data, *TRAIN, "-o", run)
    assert result.exit_code == 0, result.output
    return data, run


def test_training_never_writes_over_a_run_or_through_a_link(tiny_run, tmp_path):
    data, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("precious")
    one_line_error(invoke("train", data, *TRAIN, "-o", run))
    assert (run / "config.json").read_text() == "precious"
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    (run / "metrics.jsonl").symlink_to(victim)
    result = invoke("train", data, *TRAIN, "-o", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "victim"  # the link was replaced, not written through
    assert not (run / "metrics.jsonl").is_symlink() and json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert json.loads((run / "config.json").read_text())["arch"] == "fkpnet_tiny"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_training_is_one_line_and_leaves_no_temporary_file(tiny_run, tmp_path, monkeypatch):
    data, _ = tiny_run

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    line = one_line_error(invoke("train", data, *TRAIN, "-o", run))
    assert "cannot write" in line and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_damaged_metrics_on_resume_is_one_line(tiny_run, tmp_path):
    _, source = tiny_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    for damage in ('{"epoch": 1, "train_loss": 0.1', "[1, 2]\n", "\x00\x01\n"):
        (run / "metrics.jsonl").write_text(damage)
        line = one_line_error(
            invoke("train", "--resume", run, "--epochs", "2", "--workers", "0", "--quiet", "--device", "cpu")
        )
        assert "metrics.jsonl" in line


def test_empty_csvs_are_one_line(tmp_path, tiny_weights):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(coordinate_columns(KAGGLE_POINTS) + ["Image"]) + "\n")
    for data in (empty, header_only):
        one_line_error(invoke("train", data, *TRAIN, "-o", tmp_path / "run"))
        one_line_error(invoke("evaluate", data, "-w", tiny_weights))


def test_training_on_labels_that_are_all_missing_is_refused(tmp_path):
    data = random_kaggle_csv(tmp_path / "unlabelled.csv", labelled=False)
    line = one_line_error(invoke("train", data, *TRAIN, "-o", tmp_path / "run"))
    assert "label" in line and not (tmp_path / "run" / "best.pt").exists()


def test_evaluate_json_and_submission_never_replace_inputs_or_existing_files(tmp_path, tiny_weights):
    data = random_kaggle_csv(tmp_path / "training.csv", rows=4)
    original = data.read_bytes()
    report = tmp_path / "report.json"
    report.write_text("old")
    one_line_error(invoke("evaluate", data, "-w", tiny_weights, "--json", report))
    assert report.read_text() == "old"
    result = invoke("evaluate", data, "-w", tiny_weights, "--json", data, "--overwrite")
    assert result.exit_code == 2 and data.read_bytes() == original
    result = invoke("evaluate", data, "-w", tiny_weights, "--json", report, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "rmse" in json.loads(report.read_text())

    test = tmp_path / "test.csv"
    pd.read_csv(data).assign(ImageId=range(1, 5))[["ImageId", "Image"]].to_csv(test, index=False)
    lookup = tmp_path / "lookup.csv"
    pd.DataFrame({"RowId": [1], "ImageId": [1], "FeatureName": ["nose_tip_x"]}).to_csv(lookup, index=False)
    saved = lookup.read_bytes()
    submission = ["submission", test, "--lookup", lookup, "-w", tiny_weights, "-o"]
    for target in (test, lookup):
        result = invoke(*submission, target, "--overwrite")
        assert result.exit_code == 2 and "input" in result.output
    assert lookup.read_bytes() == saved
    out = tmp_path / "submission.csv"
    out.write_text("old")
    assert invoke(*submission, out).exit_code == 2
    assert out.read_text() == "old"
    result = invoke(*submission, out, "--overwrite")
    assert result.exit_code == 0 and out.read_text().startswith("RowId,Location")
