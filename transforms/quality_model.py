"""``quality``: one number per removal candidate, fitted to how far removals really are from the truth.

No single model-free score ranks removals the way ground truth does (on composites with an
exact target, the best one, ``seam``, reached |rho| 0.37). Together they do: the hole's
size, depth and surroundings say how hard the object is to remove, and the candidate's
agreement with its siblings, its texture and colour match and its seam say how well this
fill went. The model is deliberately small, so it generalises from a few hundred
ground-truth candidates and anyone can read it:

1. a ridge regression from the standardised :data:`FEATURES` (transforms of recorded
   scores; a missing one counts as the training mean) to the true PSNR inside the hole
   (dB, ``counterfactory evaluate``'s measure), then
2. a logistic calibration of that prediction against "PSNR >= ``good_db``":
   ``quality = 1 / (1 + exp(-slope * (predicted_db - pivot_db)))``, the estimated
   probability that the removal is good.

The packaged weights (``quality_model.json``, fitted by ``counterfactory evaluate --fit``
on the composites of the bundled samples, with the command in its ``fitted_on``) are the
default; ``QualityConfig.quality_model`` names another file.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from importlib import resources
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from schemas import CandidateScores
from transforms.io.files import read_bytes

#: Packaged weights, next to this module.
PACKAGED_MODEL = "quality_model.json"


def _log_floor(value: float) -> float:
    return math.log(max(value, 1e-5))


#: Model inputs: name -> (recorded score, transform). Logs where a score spans decades.
FEATURES: Mapping[str, tuple[str, Callable[[float], float]]] = {
    "log_hole_fraction": ("hole_fraction", _log_floor),
    "hole_depth": ("hole_depth", float),
    "log_surround_texture": ("surround_texture", math.log1p),
    "log_surround_contrast": ("surround_contrast", math.log1p),
    "agreement": ("agreement", float),
    "texture_gap": ("texture_gap", float),
    "log_colour_gap": ("colour_gap", math.log1p),
    "seam": ("seam", float),
    "change_inside": ("change_inside", float),
}


def feature_vector(scores: Mapping[str, Optional[float]], names: Sequence[str]) -> list[Optional[float]]:
    """The named features of one candidate's scores; ``None`` where the score was not computed."""
    values = []
    for name in names:
        score, transform = FEATURES[name]
        value = scores.get(score)
        values.append(None if value is None or not math.isfinite(value) else transform(value))
    return values


@dataclasses.dataclass(frozen=True)
class QualityModel:
    """Standardised ridge weights to predicted PSNR, and its logistic calibration to "good"."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept_db: float
    slope: float
    pivot_db: float
    good_db: float
    fitted_on: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.features if name not in FEATURES]
        if unknown:
            raise ValueError(f"unknown quality features {unknown}; known: {', '.join(FEATURES)}")
        if not len(self.features) == len(self.mean) == len(self.scale) == len(self.coef):
            raise ValueError("features, mean, scale and coef must have one entry per feature")
        if any(s <= 0 for s in self.scale) or self.slope <= 0:
            raise ValueError("feature scales and the calibration slope must be positive")

    def predicted_db(self, scores: Mapping[str, Optional[float]]) -> float:
        total = self.intercept_db
        for value, mean, scale, coef in zip(feature_vector(scores, self.features), self.mean, self.scale, self.coef):
            if value is not None:
                total += coef * (value - mean) / scale
        return total

    def quality(self, scores: Mapping[str, Optional[float]]) -> float:
        z = self.slope * (self.predicted_db(scores) - self.pivot_db)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "QualityModel":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown quality model fields {unknown}")
        tuples = {name: tuple(data[name]) for name in ("features", "mean", "scale", "coef")}
        return cls(**{**data, **tuples})


@functools.lru_cache(maxsize=8)
def load_model(path: Optional[str] = None) -> QualityModel:
    """The model at ``path`` (a JSON file), or the packaged one; read once per process."""
    if path is None:
        text = resources.files(__package__).joinpath(PACKAGED_MODEL).read_text(encoding="utf-8")
    else:
        text = read_bytes(path).decode("utf-8")
    return QualityModel.from_json(json.loads(text))


def with_quality(scores: CandidateScores, model: Optional[QualityModel]) -> CandidateScores:
    """The scores with ``quality`` filled by ``model`` (left ``None`` without one)."""
    if model is None:
        return scores
    return dataclasses.replace(scores, quality=model.quality(scores.to_json()))


# --------------------------------------------------------------------------- fitting


def _design(rows: Sequence[Mapping[str, Optional[float]]], names: Sequence[str]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in feature_vector(row, names)] for row in rows], dtype=float)


def _calibrate(predicted: np.ndarray, good: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """(slope, pivot) of a 1-D logistic regression of ``good`` on ``predicted`` (Newton, lightly regularised)."""
    x = np.stack([predicted - predicted.mean(), np.ones_like(predicted)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        gradient = x.T @ (p - good) + 1e-3 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    slope = max(float(w[0]), 1e-3)
    return slope, float(predicted.mean() - w[1] / slope)


def fit(rows: Sequence[Mapping[str, Optional[float]]], psnr_db: Sequence[float], *, good_db: float = 20.0,
        ridge: float = 1.0, features: Sequence[str] = tuple(FEATURES),
        fitted_on: Optional[Mapping[str, Any]] = None) -> QualityModel:
    """Fit the model to candidates' scores and their true PSNR; needs both good and bad candidates."""
    y = np.asarray(psnr_db, dtype=float)
    good = (y >= good_db).astype(float)
    if len(rows) != len(y) or len(y) < len(features) + 2:
        raise ValueError(f"need more candidates than features to fit ({len(y)} for {len(features)} features)")
    if good.min() == good.max():
        raise ValueError(f"every candidate is on one side of {good_db} dB: nothing to calibrate against")
    x = _design(rows, features)
    present = (~np.isnan(x)).sum(axis=0)
    mean = np.where(present > 0, np.nansum(x, axis=0) / np.maximum(present, 1), 0.0)  # a never-computed feature: 0
    x = np.where(np.isnan(x), mean, x)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    predicted = y.mean() + z @ coef
    slope, pivot = _calibrate(predicted, good)
    return QualityModel(features=tuple(features), mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                        coef=tuple(map(float, coef)), intercept_db=float(y.mean()), slope=slope, pivot_db=pivot,
                        good_db=float(good_db), fitted_on=dict(fitted_on or {}))
