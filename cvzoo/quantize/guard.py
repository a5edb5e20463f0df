"""The guard's measurement: how far a quantized model's predictions are from fp32 on held-out images.

The expected top-1 drop: where int8 picks class b over fp32's a, the expected change in accuracy is p(a) - p(b)
under fp32's own probabilities, so a flip between two classes fp32 could not tell apart costs almost nothing and a
flip away from a sure class costs a whole image. It needs no labels, and it does not let flips in both directions
cancel out: with labels, the measured drop (fp32 right and int8 wrong: +1, the reverse: -1) came out 0.0 on 200
ImageNet photos where 11% of them flipped and int8 lost 6.4 points on the next 500 (docs/quantization.md). So the
expected drop is what the target is held to, and where labels exist the measured drop must not be significantly
above it (its 95% interval starting above the target). The expected drop trusts fp32's probabilities: where they are
underconfident (label smoothing: tf_efficientnet_lite0's mean top-1 probability is 0.74 on photos it gets 91% right)
it counts a flip at a fraction of its cost, so where the held-out images have labels fp32's logits are first
calibrated by one temperature fitted to them (lite0: T = 0.68, and the expected drop doubles, closer to the
measured one). Recovery steps are judged by the mean KL divergence of the softmax, which moves smoothly where
top-1 changes by whole images.

Unlabelled held-out photos whose activations lie far beyond the calibrated ranges (the rule that names calibration
outliers, against the median calibration image) can be measured and reported but not judged (`judged`; the rule is
plan._judged): int8 clips them by design, as the robust ranges leave such photos out, and on photos of other classes
a few of them carried a whole guard (dla34 at 224 px: three of 200, at 8-364x, were 85% of the expected drop and 82%
of the KL; docs/quantization.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..postprocess import softmax

Z95 = 1.96
TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 161))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The one temperature that makes softmax(logits / T) best predict the labels (least NLL, on a log grid)."""
    z, rows = logits.astype(np.float64), np.arange(len(labels))
    nll = [-np.log(softmax(z / t)[rows, labels] + 1e-12).mean() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def one_image_points(images: int) -> float:
    """What one image is worth in points of top-1 on `images` held-out images: the finest drop the guard can hold."""
    return 100.0 / max(images, 1)


def _mean_ci(per_image: np.ndarray, lowest: float) -> tuple[float, tuple[float, float]]:
    """Mean (points) and its 95% interval, within what a per-image value can be (`lowest` .. 1). Where every image
    gave the same value (no flip at all) the normal interval has no width; the rule of three bounds the rate of
    flips that n images did not show by 3 / n."""
    n = len(per_image)
    mean = 100.0 * float(per_image.mean())
    if n < 2:
        half = float("inf")
    else:
        std = float(per_image.std(ddof=1))
        half = 100.0 * (Z95 * std / float(np.sqrt(n)) if std > 0 else 3.0 / n)
    return mean, (max(mean - half, 100.0 * lowest), min(mean + half, 100.0))


@dataclass
class Fidelity:
    images: int
    labelled: bool
    agreement: float  # top-1 agreement with fp32
    expected_drop: float  # points of top-1, from fp32's probabilities: what the target holds
    expected_ci95: tuple[float, float]
    kl: float  # mean KL(fp32 || int8) of the softmax
    max_abs_diff: float
    mean_abs_diff: float
    top1_drop: Optional[float] = None  # points, measured where the images have labels
    drop_ci95: Optional[tuple[float, float]] = None
    top1_fp32: Optional[float] = None
    top1: Optional[float] = None
    temperature: float = 1.0  # fp32's calibration for the expected drop, fitted where there are labels
    beyond_ranges: int = 0  # held-out images beyond the calibrated ranges, measured apart: not in the numbers above
    beyond_expected_drop: Optional[float] = None  # points, on those images alone

    def tolerance(self, max_top1_drop: float) -> float:
        """The target, but never finer than one image: one flipped photo cannot fail the guard by itself."""
        return max(max_top1_drop, one_image_points(self.images))

    def passes(self, max_top1_drop: float, min_agreement: Optional[float] = None) -> bool:
        tol = self.tolerance(max_top1_drop) + 1e-9
        ok = self.expected_drop <= tol and (self.drop_ci95 is None or self.drop_ci95[0] <= tol)
        return ok and (min_agreement is None or self.agreement >= min_agreement - 1e-9)

    def summary(self) -> str:
        lo, hi = self.expected_ci95
        text = f"expected top-1 drop {self.expected_drop:+.2f} (95% CI {lo:+.2f}..{hi:+.2f}"
        text += f", fp32 calibrated T={self.temperature:.2f})" if self.temperature != 1.0 else ")"
        if self.top1_drop is not None:
            text += f", measured {self.top1_drop:+.2f} ({self.drop_ci95[0]:+.2f}..{self.drop_ci95[1]:+.2f})"
        text += f" on {self.images} held-out images, agreement {100 * self.agreement:.1f}%, KL {self.kl:.3g}"
        if self.beyond_ranges:
            text += (f" ({self.beyond_ranges} more beyond the calibrated ranges, not judged: expected drop "
                     f"{self.beyond_expected_drop:+.2f} on them)")
        return text

    def as_dict(self) -> dict:
        d = asdict(self)
        d["expected_ci95"] = list(self.expected_ci95)
        d["drop_ci95"] = list(self.drop_ci95) if self.drop_ci95 else None
        return d


def per_image(ref: np.ndarray, got: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the expected-drop cost of int8's answer (p(a) - p(b) under fp32's probabilities at `temperature`)
    and the KL(fp32 || int8) of the softmax."""
    a, b, rows = ref.argmax(1), got.argmax(1), np.arange(len(ref))
    p, q = softmax(ref.astype(np.float64)), softmax(got.astype(np.float64))
    pt = softmax(ref.astype(np.float64) / temperature) if temperature != 1.0 else p
    return pt[rows, a] - pt[rows, b], np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)


def measure_fidelity(ref: np.ndarray, got: np.ndarray, labels: Optional[np.ndarray] = None,
                     temperature: Optional[float] = None, judged: Optional[np.ndarray] = None) -> Fidelity:
    """`temperature`: fp32's, where the caller has fitted it already (it depends on `ref` and `labels` only).
    `judged`: a mask of the images the numbers are taken on (the others: beyond the calibrated ranges, whose expected
    drop is reported apart); all of them by default."""
    judged = np.ones(len(ref), bool) if judged is None else np.asarray(judged, bool)
    a, b = ref.argmax(1), got.argmax(1)
    t = temperature or (fit_temperature(ref[judged], labels[judged]) if labels is not None else 1.0)
    cost, kls = per_image(ref, got, t)
    expected, expected_ci = _mean_ci(cost[judged], 0.0)  # fp32's class is its most probable: a cost is >= 0
    kl = float(np.mean(kls[judged]))
    diff = np.abs(ref - got)[judged]
    f = Fidelity(images=int(judged.sum()), labelled=labels is not None, agreement=float((a == b)[judged].mean()),
                 expected_drop=expected, expected_ci95=expected_ci, kl=kl, max_abs_diff=float(diff.max()),
                 mean_abs_diff=float(diff.mean()), temperature=t, beyond_ranges=int((~judged).sum()),
                 beyond_expected_drop=100.0 * float(cost[~judged].mean()) if (~judged).any() else None)
    if labels is not None:
        right, right8 = (a == labels)[judged], (b == labels)[judged]
        f.top1_drop, f.drop_ci95 = _mean_ci(right.astype(float) - right8.astype(float), -1.0)
        f.top1_fp32, f.top1 = 100.0 * float(right.mean()), 100.0 * float(right8.mean())
    return f
