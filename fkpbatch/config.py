"""Frozen settings passed through training and prediction instead of a mutable ``args``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside checkpoints."""

    data: tuple[str, ...]
    arch: str = "seed"
    points: str = "15"
    input_size: int = 96
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mse"  # mse (seed recipe) | l1
    schedule: str = "constant"  # constant (seed recipe) | cosine
    val_split: float = 0.1
    group_by: str | None = None
    augment: str = "seed"  # none | seed | strong
    vflip: bool = False
    jitter: float = 0.06
    framing_scale: float = 1.29
    framing_shift: float = 0.27
    images_dir: str | None = None
    # Per data file: where its labels sit relative to a mirror-consistent pixel grid, (dx, dy) in
    # pixels; e.g. (1, 1) for 1-based coordinates. Empty = all (0, 0).
    label_offsets: tuple[tuple[float, float], ...] = ()
    init: str | None = None  # start from these weights (fine-tuning) instead of a random init
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    strict: bool = False

    def __post_init__(self):
        """Normalise what the CLI (strings 'DX,DY') and config.json (lists) give, in one place."""
        offsets = tuple(parse_label_offset(value) for value in self.label_offsets)
        if offsets and len(offsets) != len(self.data):
            raise UsageError(
                f"give --label-offset once per training CSV ({len(self.data)}), or not at all; got {len(offsets)}"
            )
        object.__setattr__(self, "data", tuple(self.data))
        object.__setattr__(self, "label_offsets", offsets)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_label_offset(value) -> tuple[float, float]:
    """'DX,DY' (pixels) -> (dx, dy); also accepts a pair, as saved in config.json."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        dx, dy = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--label-offset takes DX,DY in pixels, e.g. 1,1; not {value!r}") from None
    return dx, dy


RECIPES = {
    # The Kaggle notebook: seed network, MSE, Adam 1e-3, 100 epochs, batch 64, flip + brightness.
    "seed": dict(
        arch="seed",
        points="15",
        input_size=96,
        epochs=100,
        batch_size=64,
        lr=1e-3,
        loss="mse",
        schedule="constant",
        augment="seed",
        framing_scale=1.29,
        framing_shift=0.27,
    ),
    # The shipped models' recipe (their architectures: fkpnet_small, fkpnet_wide): heatmap network,
    # L1, cosine schedule, strong augmentation, a looser frame so that the jaw line (68 points) fits.
    "fkpnet": dict(
        arch="fkpnet",
        points="15",
        input_size=96,
        epochs=60,
        batch_size=32,
        lr=2e-3,
        loss="l1",
        schedule="cosine",
        augment="strong",
        framing_scale=1.55,
        framing_shift=0.4,
    ),
}


def recipe_values(key: str) -> str:
    """What each recipe sets ``key`` to, for help texts: ``'seed 64, fkpnet 32'``."""
    return ", ".join(
        f"{name} {values[key]:g}" if isinstance(values[key], float) else f"{name} {values[key]}"
        for name, values in RECIPES.items()
    )
