"""Tables and figures for the EDA and preprocessing notebooks.

The tables take the ``metadata`` of :func:`ham_utils.data.metadata.read_ham10000` (one row per image
with ``lesion_id``, ``dx``, ``age``, ``sex``, ``localization`` and ``path``). Every figure
function returns a :class:`matplotlib.figure.Figure` that shows itself in Jupyter and, given
``path``, is also saved there as a PNG (see :mod:`ham_utils.figures.base`).

Keras (and so TensorFlow) is imported only by the two functions that need it, so that the
metadata tables and plots load quickly.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from ham_utils.config import CLASS_NAMES, CLASSES, Params
from ham_utils.data.images import open_rgb
from ham_utils.figures.base import PathLike, finish, new_figure

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

THUMBNAIL = 64  # pixels: the colour statistics are computed on a thumbnail this large
MIX_MIN_WEIGHT = 0.005  # label weights below this are left out of a mixed panel's title
SEX_ORDER: tuple[str, ...] = ("male", "female", "unknown")
SEX_COLOURS: dict[str, str] = {"male": "tab:blue", "female": "tab:orange", "unknown": "tab:grey"}
COLOUR_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mean_r", "mean red", "tab:red"),
    ("mean_g", "mean green", "tab:green"),
    ("mean_b", "mean blue", "tab:blue"),
    ("std_gray", "std of gray (contrast)", "tab:grey"),
)


# --- tables --------------------------------------------------------------------------------


def class_summary(metadata: pd.DataFrame) -> pd.DataFrame:
    """Images, lesions, share and imbalance per class, one row per class of CLASSES.

    ``imbalance`` is the largest class's image count divided by this class's (1.0 for the
    largest); it and ``images_per_lesion`` are NaN for a class without images.
    """
    images = metadata["dx"].value_counts().reindex(CLASSES, fill_value=0).astype(int)
    lesions = metadata.groupby("dx")["lesion_id"].nunique().reindex(CLASSES, fill_value=0)
    total = int(images.sum())
    present = images.where(images > 0)  # NaN for empty classes: no division by zero
    table = pd.DataFrame(
        {
            "name": [CLASS_NAMES[c] for c in CLASSES],
            "images": images,
            "lesions": lesions.astype(int),
            "share_pct": 100 * images / total if total else 0.0,
            "imbalance": images.max() / present,
            "images_per_lesion": present / lesions.where(lesions > 0),
        },
        index=pd.Index(CLASSES, name="dx"),
    )
    return table


def images_per_lesion(metadata: pd.DataFrame) -> pd.Series:
    """Number of lesions with 1, 2, 3, ... images (every count up to the largest listed)."""
    sizes = metadata.groupby("lesion_id").size()
    if sizes.empty:
        return pd.Series(dtype=int, name="lesions", index=pd.Index([], name="images"))
    counts = sizes.value_counts().reindex(range(1, int(sizes.max()) + 1), fill_value=0)
    counts.index.name = "images"
    return counts.rename("lesions").astype(int)


def image_statistics(
    metadata: pd.DataFrame, sample_per_class: int = 40, seed: int = 0
) -> pd.DataFrame:
    """Size and colour statistics of up to ``sample_per_class`` seeded random images per class.

    One row per sampled image: ``image_id``, ``dx``, ``width`` and ``height`` (from the file
    header, without decoding), ``mean_r``, ``mean_g``, ``mean_b`` and ``std_gray`` (0..255, on a
    thumbnail of at most THUMBNAIL pixels, decoded at a reduced JPEG scale for speed).
    """
    rows = []
    for dx, group in metadata.groupby("dx", sort=False):
        picked = group.sample(n=min(sample_per_class, len(group)), random_state=seed)
        for image_id, path in zip(picked["image_id"], picked["path"], strict=True):
            rows.append({"image_id": image_id, "dx": dx, **_one_image_statistics(path)})
    columns = ["image_id", "dx", "width", "height", "mean_r", "mean_g", "mean_b", "std_gray"]
    stats = pd.DataFrame(rows, columns=columns)
    order = stats["dx"].map({c: i for i, c in enumerate(CLASSES)})
    return stats.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def _one_image_statistics(path: str) -> dict[str, float | int]:
    with Image.open(path) as header:
        width, height = header.size  # read from the header; no pixels decoded yet
    image = open_rgb(path, draft_size=THUMBNAIL)  # DataError naming the file if unreadable
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    rgb = np.asarray(image, dtype=np.float64)
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    mean_r, mean_g, mean_b = rgb.reshape(-1, 3).mean(axis=0)
    return {
        "width": int(width),
        "height": int(height),
        "mean_r": float(mean_r),
        "mean_g": float(mean_g),
        "mean_b": float(mean_b),
        "std_gray": float(gray.std()),
    }


def weights_table(
    train_counts: pd.Series | ArrayLike,
    class_weight_power: float,
    class_weight_cap: float,
    focal_alpha_mode: str | Sequence[float] | None,
) -> pd.DataFrame:
    """Training images, class weight and focal alpha per class, as the training run sets them.

    ``train_counts`` is a Series indexed by class code or one count per class in CLASSES
    order. A power of 0 gives every class weight 1.0 and a cap of 0 means no cap, as in
    :class:`~ham_utils.config.Params`; a focal alpha mode of None, "" or "none" gives 1.0.
    """
    from ham_utils.model.losses import class_weights, focal_alpha  # imports Keras

    if isinstance(train_counts, pd.Series) and not pd.api.types.is_integer_dtype(
        train_counts.index
    ):
        counts = train_counts.reindex(CLASSES, fill_value=0).to_numpy()
    else:
        counts = np.asarray(train_counts)
    counts = counts.astype(np.int64)
    if counts.shape != (len(CLASSES),):
        raise ValueError(f"train_counts needs one count per class of {CLASSES}, got {counts}")
    ones = np.ones(len(CLASSES))
    weights = (
        class_weights(counts, class_weight_power, class_weight_cap or None)
        if class_weight_power
        else ones
    )
    mode = focal_alpha_mode
    if isinstance(mode, str) and "," in mode:
        mode = [float(v) for v in mode.split(",")]
    alpha = ones if mode is None or mode in ("", "none") else focal_alpha(counts, mode)
    return pd.DataFrame(
        {"train_images": counts, "class_weight": weights, "focal_alpha": alpha},
        index=pd.Index(CLASSES, name="dx"),
    )


# --- metadata figures ----------------------------------------------------------------------


def _fill_unknown(column: pd.Series) -> pd.Series:
    return column.astype("string").str.strip().str.lower().fillna("unknown").replace("", "unknown")


def plot_class_distribution(
    counts: pd.Series | pd.DataFrame, path: PathLike = None, title: str = "Images per class"
) -> Figure:
    """Bars of images per class; a DataFrame gives one group of bars per row, one per column."""
    table = counts.to_frame() if isinstance(counts, pd.Series) else counts
    x, width = np.arange(len(table)), 0.8 / table.shape[1]
    fig, axes = new_figure(figsize=(max(6.0, 0.9 * len(table) * table.shape[1] ** 0.5), 4.5))
    ax = axes[0, 0]
    for i, column in enumerate(table.columns):
        offset = (i - (table.shape[1] - 1) / 2) * width
        bars = ax.bar(x + offset, table[column], width, label=str(column))
        ax.bar_label(bars, fontsize="x-small")
    ax.set_xticks(x, [str(c) for c in table.index])
    ax.set_ylabel("images")
    ax.set_title(title)
    if table.shape[1] > 1:
        ax.legend(fontsize="small")
    return finish(fig, path)


def plot_demographics(metadata: pd.DataFrame, path: PathLike = None) -> Figure:
    """Age by class (box plots), sex by class (stacked shares) and body site by class (heatmap).

    Missing ages are left out (the x labels give the images with an age); missing sex and site
    count as "unknown". The site heatmap is the share of each class's images per site.
    """
    fig, axes = new_figure(1, 3, figsize=(20, 5.5), gridspec_kw={"width_ratios": (1, 1, 2.4)})
    age_ax, sex_ax, site_ax = axes[0]
    dx = metadata["dx"]

    ages = [pd.to_numeric(metadata.loc[dx == c, "age"], errors="coerce").dropna() for c in CLASSES]
    age_ax.boxplot(
        [a.to_numpy() for a in ages],
        tick_labels=[f"{c}\n(n={len(a)})" for c, a in zip(CLASSES, ages, strict=True)],
    )
    age_ax.set_ylabel("age (years)")
    age_ax.set_title("Age by class")
    age_ax.grid(axis="y", alpha=0.3)

    sex = pd.crosstab(dx, _fill_unknown(metadata["sex"]), normalize="index")
    extra = [s for s in sex.columns if s not in SEX_ORDER]
    sex = sex.reindex(index=CLASSES, columns=[*SEX_ORDER, *extra], fill_value=0.0).fillna(0.0)
    y, left = np.arange(len(CLASSES)), np.zeros(len(CLASSES))
    for name in sex.columns:
        share = sex[name].to_numpy()
        sex_ax.barh(y, share, left=left, label=name, color=SEX_COLOURS.get(name))
        for i, (start, s) in enumerate(zip(left, share, strict=True)):
            if s >= 0.08:
                sex_ax.text(start + s / 2, i, f"{s:.0%}", ha="center", va="center", fontsize=8)
        left += share
    sex_ax.set_yticks(y, CLASSES)
    sex_ax.invert_yaxis()
    sex_ax.set_xlim(0, 1)
    sex_ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    sex_ax.set_title("Sex by class")
    sex_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=len(sex.columns))

    sites = _fill_unknown(metadata["localization"])
    order = sites.value_counts().index  # most frequent site first
    share = pd.crosstab(dx, sites, normalize="index").reindex(index=CLASSES, columns=order)
    _site_heatmap(fig, site_ax, share)
    return finish(fig, path)


def _site_heatmap(fig: Figure, ax: Axes, share: pd.DataFrame) -> None:
    values = share.to_numpy(dtype=float) * 100  # NaN rows: classes without images
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v) and v >= 0.5:
            colour = "white" if v > 50 else "black"
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(np.arange(share.shape[1]), share.columns, rotation=45, ha="right")
    ax.set_yticks(np.arange(share.shape[0]), share.index)
    ax.set_title("Body site by class (% of the class's images)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of class")


def plot_colour_statistics(stats: pd.DataFrame, path: PathLike = None) -> Figure:
    """Per-class box plots of the :func:`image_statistics` colour means and gray std.

    The title lists the image sizes seen in the sample with their counts.
    """
    present = [c for c in CLASSES if (stats["dx"] == c).any()]
    fig, axes = new_figure(2, 2, figsize=(12, 7.5), sharex=True)
    for ax, (column, label, colour) in zip(axes.flat, COLOUR_COLUMNS, strict=True):
        parts = ax.boxplot(
            [stats.loc[stats["dx"] == c, column].to_numpy() for c in present],
            tick_labels=present,
            patch_artist=True,
        )
        for box in parts["boxes"]:
            box.set(facecolor=colour, alpha=0.35)
        ax.set_title(label)
        ax.set_ylabel("pixel value (0..255)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Colour statistics of {len(stats)} sampled images\n{size_summary(stats)}")
    return finish(fig, path)


def size_summary(stats: pd.DataFrame, top: int = 5) -> str:
    """The distinct image sizes in ``stats`` with their counts, e.g. "sizes: 600x450 (280)"."""
    sizes = (stats["width"].astype(str) + "x" + stats["height"].astype(str)).value_counts()
    listed = ", ".join(f"{size} ({n})" for size, n in sizes.head(top).items())
    rest = len(sizes) - top
    return f"sizes (width x height): {listed}" + (f" and {rest} more" if rest > 0 else "")


def _row_label(dx: str, width: int = 22) -> str:
    return f"{dx}\n" + textwrap.fill(CLASS_NAMES[dx], width)


def _blank(ax: Axes) -> None:
    """No ticks and no frame, but unlike ``axis("off")`` the y label stays visible."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_sample_grid(
    metadata: pd.DataFrame,
    per_class: int = 5,
    seed: int = 0,
    size: int = 128,
    path: PathLike = None,
) -> Figure:
    """A grid of seeded random images: one row per class, up to ``per_class`` images each.

    Images from different lesions are preferred, so a row shows several lesions rather than
    several views of one. Images keep their aspect ratio, scaled to fit ``size`` pixels.
    """
    fig, axes = new_figure(
        len(CLASSES), per_class, figsize=(1.7 * per_class + 1.8, 1.6 * len(CLASSES))
    )
    for row, dx in zip(axes, CLASSES, strict=True):
        group = metadata[metadata["dx"] == dx].sample(frac=1.0, random_state=seed)
        view = group.groupby("lesion_id", sort=False).cumcount().to_numpy()
        picked = group.iloc[np.argsort(view, kind="stable")].head(per_class)
        for ax, image_path in zip(row, [*picked["path"], *[None] * per_class], strict=False):
            _blank(ax)
            if image_path is not None:
                image = open_rgb(image_path, draft_size=size)
                image.thumbnail((size, size))
                ax.imshow(np.asarray(image))
        if picked.empty:
            row[0].text(0.5, 0.5, "no images", ha="center", va="center", transform=row[0].transAxes)
        row[0].set_ylabel(_row_label(dx), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Random images per class (seed {seed})")
    return finish(fig, path)


# --- preprocessing figures -----------------------------------------------------------------


def mix_title(label: np.ndarray, min_weight: float = MIX_MIN_WEIGHT) -> str:
    """A soft label as its classes and weights, largest first, e.g. "nv 0.62 + mel 0.38"."""
    order = np.argsort(-np.asarray(label), kind="stable")
    parts = [f"{CLASSES[k]} {label[k]:.2f}" for k in order if label[k] >= min_weight]
    return " + ".join(parts)


def plot_augmentation_preview(
    images: np.ndarray,
    labels: np.ndarray,
    params: Params,
    n: int = 4,
    path: PathLike = None,
) -> Figure:
    """The first ``n`` images as the training run sees them.

    Rows: the originals, two draws of the random augmentation set by ``params`` (flip,
    rotation, zoom, shift, brightness, contrast, rand_augment), MixUp (``params.mixup_alpha``)
    and CutMix (``params.cutmix_alpha``) of the batch. ``images`` are uint8 (N, S, S, 3) and
    ``labels`` integer class indices. Each mixed panel is titled with its label mix; MixUp and
    CutMix are shown whatever ``mixup_prob`` and ``cutmix_prob`` say, drawn with ``params.seed``.
    """
    import keras  # imported here: TensorFlow loads slowly

    from ham_utils.train.augment import MixUpCutMix, augmenter_from_params

    n = min(n, len(images))
    if n < 1:
        raise ValueError("plot_augmentation_preview needs at least one image")
    batch = np.asarray(images[:n], dtype=np.float32)
    targets = np.asarray(labels[:n], dtype=np.int64)
    one_hot = np.eye(len(CLASSES), dtype=np.float32)[targets]

    augmenter = augmenter_from_params(params)
    mixers = {
        "MixUp": MixUpCutMix(1.0, params.mixup_alpha, 0.0, params.cutmix_alpha, seed=params.seed),
        "CutMix": MixUpCutMix(0.0, params.mixup_alpha, 1.0, params.cutmix_alpha, seed=params.seed),
    }
    note = "" if params.augment else "\n(augment off)"
    rows: list[tuple[str, np.ndarray, list[str]]] = [
        ("original", batch, [CLASSES[k] for k in targets])
    ]
    for i in (1, 2):
        augmented = keras.ops.convert_to_numpy(augmenter(batch, training=True))
        rows.append((f"augmented #{i}{note}", augmented, [""] * n))
    for name, mixer in mixers.items():
        mixed, mixed_labels = mixer(batch, one_hot)
        mixed_labels = keras.ops.convert_to_numpy(mixed_labels)
        rows.append((name, keras.ops.convert_to_numpy(mixed), [mix_title(y) for y in mixed_labels]))

    fig, axes = new_figure(len(rows), n, figsize=(2.3 * n + 1.2, 2.4 * len(rows)))
    for ax_row, (name, pixels, titles) in zip(axes, rows, strict=True):
        for ax, image, title in zip(ax_row, pixels, titles, strict=True):
            _blank(ax)
            ax.imshow(np.clip(np.rint(image), 0, 255).astype(np.uint8))
            ax.set_title(title, fontsize=9)
        ax_row[0].set_ylabel(name)
    return finish(fig, path)
