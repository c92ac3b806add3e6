"""Data sets bundled with scikit-learn, with fixed train/test splits. Nothing is downloaded."""

from __future__ import annotations

import dataclasses

import numpy as np

from thermoeqprop._validation import check_labels, check_probability, require_finite

__all__ = ["DATASETS", "Dataset", "load_dataset"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Features scaled to a fixed range ([0, 1] by default) and integer labels, split once
    into train and test.

    Attributes:
        name: Data set name.
        x_train, x_test: Features (examples, num_features).
        labels_train, labels_test: Integer labels (examples,).
        num_classes: Number of classes.
    """

    name: str
    x_train: np.ndarray
    labels_train: np.ndarray
    x_test: np.ndarray
    labels_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x = require_finite(f"x_{split}", getattr(self, f"x_{split}"))
            labels = getattr(self, f"labels_{split}")
            labels = check_labels(f"labels_{split}", labels, self.num_classes)
            if x.ndim != 2 or x.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"x_{split} must be (examples, features) with one label per example; got "
                    f"x_{split} of shape {x.shape} and {labels.shape[0]} labels"
                )

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def _split(name, x, labels, num_classes, test_fraction, seed):
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def _digits(test_fraction, seed, num_examples):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _split("digits", bunch.data / 16.0, bunch.target, 10, test_fraction, seed)


def _two_class(generator, noise, factor=None):
    def load(test_fraction, seed, num_examples):
        kwargs = {"factor": factor} if factor is not None else {}
        x, labels = generator(n_samples=num_examples, noise=noise, random_state=seed, **kwargs)
        x = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))
        return _split(generator.__name__.removeprefix("make_"), x, labels, 2, test_fraction, seed)

    return load


def _moons(test_fraction, seed, num_examples):
    from sklearn.datasets import make_moons

    return _two_class(make_moons, noise=0.1)(test_fraction, seed, num_examples)


def _circles(test_fraction, seed, num_examples):
    from sklearn.datasets import make_circles

    return _two_class(make_circles, noise=0.08, factor=0.5)(test_fraction, seed, num_examples)


DATASETS = {"digits": _digits, "moons": _moons, "circles": _circles}


def load_dataset(
    name: str = "digits",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_examples: int = 400,
    feature_range: tuple[float, float] = (0.0, 1.0),
) -> Dataset:
    """Load a bundled data set with a fixed, stratified train/test split.

    Args:
        name: ``"digits"`` (8×8 images, 10 classes, 1797 examples, pixels scaled to [0, 1]),
            ``"moons"`` or ``"circles"`` (two classes in 2-D, each feature scaled to [0, 1]
            over all examples).
        test_fraction: Fraction held out for testing, in (0, 1).
        seed: Seed of the split (and of the generated two-class sets).
        num_examples: Size of the generated two-class sets (ignored for digits).
        feature_range: ``(low, high)``: the [0, 1] scale above is mapped affinely onto it, for
            models whose inputs are meant to be centred, such as qubit fields in [−1, 1].

    Example:
        >>> data = load_dataset("digits")
        >>> data.x_train.shape, data.x_test.shape, data.num_classes
        ((1437, 64), (360, 64), 10)
        >>> moons = load_dataset("moons", feature_range=(-1.0, 1.0))
        >>> float(moons.x_train.min()), float(moons.x_train.max())
        (-1.0, 1.0)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets are {sorted(DATASETS)}")
    check_probability("test_fraction", test_fraction)
    if int(num_examples) < 10:
        raise ValueError(f"num_examples must be ≥ 10, got {num_examples!r}")
    try:
        low, high = (float(v) for v in feature_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"feature_range must be a pair (low, high) of numbers, got {feature_range!r}"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"feature_range must be finite with low < high, got {feature_range!r}")
    data = DATASETS[name](test_fraction, int(seed), int(num_examples))
    if (low, high) == (0.0, 1.0):
        return data
    return dataclasses.replace(
        data,
        x_train=low + (high - low) * data.x_train,
        x_test=low + (high - low) * data.x_test,
    )
