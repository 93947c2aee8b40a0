"""Class order and descriptions, risk groups, project paths, the backbone registry and the
parameter schema.

One flat YAML file of parameters feeds both the notebooks and the command line
(``--params params/x.yaml --set key=value ...``); :func:`load_params` is the single reader.
In a notebook run by papermill, ``-p params_file params/x.yaml`` picks the file, and
``-p key value`` or ``-f params/x.yaml`` set keys over it (:func:`ham_utils.report.notebook.setup`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The order of the model's outputs. Alphabetical, as in the HAM10000 `dx` column.
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

CLASS_DESCRIPTIONS: dict[str, str] = {
    "akiec": "Pre-cancerous scaly patches from sun damage, and carcinoma in situ; can progress "
    "to invasive squamous cell carcinoma.",
    "bcc": "The most common skin cancer; grows slowly and rarely spreads, but destroys tissue "
    "locally if untreated.",
    "bkl": "Benign growths: seborrhoeic keratoses, solar lentigines and lichen-planus-like "
    "keratoses.",
    "df": "A benign firm nodule of the dermis, often on the legs.",
    "mel": "A malignant tumour of melanocytes; the most dangerous skin cancer, curable when "
    "caught early.",
    "nv": "A common mole: a benign proliferation of melanocytes.",
    "vasc": "Benign lesions of blood vessels: angiomas, angiokeratomas, pyogenic granulomas "
    "and haemorrhage.",
}

# Grouping used by the app and the predict command to colour a prediction.
RISK_GROUPS: dict[str, tuple[str, ...]] = {
    "high": ("mel", "bcc"),
    "moderate": ("akiec",),
    "low": ("bkl", "nv", "vasc", "df"),
}
RISK_OF_CLASS: dict[str, str] = {c: g for g, cs in RISK_GROUPS.items() for c in cs}

# Columns of the official HAM10000_metadata.csv.
METADATA_COLUMNS: tuple[str, ...] = (
    "lesion_id",
    "image_id",
    "dx",
    "dx_type",
    "age",
    "sex",
    "localization",
)
# Column order of the ISIC 2018 Task 3 one-hot ground truth files.
ISIC_GROUND_TRUTH_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

PACKAGE_DIR = Path(__file__).resolve().parent


# The project folder's layout. Each is read when called (HAM_PROJECT_ROOT may change while a
# process runs: the tests run the command line in several project folders in one process).
def project_root() -> Path:
    """Where every output goes: ``HAM_PROJECT_ROOT`` if set, else the repository."""
    return Path(os.environ.get("HAM_PROJECT_ROOT", PACKAGE_DIR.parent)).resolve()


def demo_root() -> Path:
    """The synthetic demo datasets, one folder per setting."""
    return project_root() / "data" / "demo"


def processed_root() -> Path:
    """Per data folder: its split and the report of reading it."""
    return project_root() / "data" / "processed"


def cache_root() -> Path:
    """Per data folder: its decoded, resized images."""
    return project_root() / "data" / "cache"


def runs_root() -> Path:
    return project_root() / "runs"


def sweeps_root() -> Path:
    """One folder per sweep of a grid file (ham_utils.studies.sweep): progress and logs."""
    return project_root() / "sweeps"


def reports_root() -> Path:
    """One folder of executed notebooks per run."""
    return project_root() / "reports"


def figures_root() -> Path:
    """The latest report's figures, collected for the README."""
    return project_root() / "figures"


# Pretrained weights converted for Keras (machine-wide, shared by every project folder).
WEIGHTS_CACHE = Path(
    os.environ.get("HAM_WEIGHTS_CACHE", Path.home() / ".cache" / "ham_utils" / "weights")
).expanduser()

RESIZE_MODES: tuple[str, ...] = ("squash", "center_crop")
FOCAL_ALPHA_MODES: tuple[str, ...] = ("inverse_frequency", "balanced_sqrt")
TTA_VIEWS: tuple[int, ...] = (1, 2, 4, 8)
HEADS: tuple[str, ...] = ("simple", "b3")
# Parameters that name a place on one machine: a run moved elsewhere gets them anew.
MACHINE_PATHS: tuple[str, ...] = ("data_dir", "metadata_csv", "external_dir")
# The two models a run keeps: the best epoch by the monitored metric, and the last one.
MODELS: tuple[str, ...] = ("best", "last")


# Parameters that take one of a few values.
CHOICES: dict[str, tuple[str, ...]] = {
    "resize_mode": RESIZE_MODES,
    "head": HEADS,
    "loss": ("focal", "crossentropy"),
    "oversampling": ("none", "sqrt", "balanced"),
    "lr_schedule": ("cosine", "plateau", "constant"),
    "monitor": ("val_balanced_accuracy", "val_macro_f1"),
    "mixed_precision": ("auto", "off", "mixed_float16", "mixed_bfloat16"),
    "jit_compile": ("auto", "true", "false"),
    "loader": ("auto", "tf_data", "py_dataset"),
}


class ParamsError(ValueError):
    """A parameter file or override that cannot be used; the message says which key and why."""


# --- backbones: every allowed ``backbone`` name and what it needs, without Keras, so that
# a name is checked when the parameters are read (ham_utils.model builds the networks) ---

# The ``application`` of the EfficientNet-Lite backbones (built by ham_utils.model.lite).
LITE = "lite"

# (width coefficient, depth coefficient, ImageNet resolution, dropout) of the Lite variants.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


@dataclass(frozen=True)
class Backbone:
    """One backbone and how to feed it 0..255 pixels.

    ``application`` names a ``keras.applications`` constructor, or ``"lite"`` for the
    EfficientNet-Lite networks of :mod:`ham_utils.model.lite` (ImageNet weights from the package
    index).
    """

    name: str
    application: str
    image_size: int  # the resolution it was designed (and ImageNet-trained) for
    preprocessing: Literal["inside", "caffe", "tf", "lite"]
    feature_layer: str | None = None  # last conv feature map; None: found automatically

    @property
    def is_lite(self) -> bool:
        return self.application == LITE


def _efficientnets() -> list[Backbone]:
    sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
    v1 = [
        Backbone(f"efficientnet{v}", f"EfficientNet{v.upper()}", s, "inside", "top_activation")
        for v, s in sizes.items()
    ]
    v2_sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384}
    v2 = [
        Backbone(f"efficientnetv2{v}", f"EfficientNetV2{v.upper()}", s, "inside", "top_activation")
        for v, s in v2_sizes.items()
    ]
    return v1 + v2


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        *_efficientnets(),
        *(
            Backbone(name, LITE, size, "lite", "top_activation")
            for name, (_, _, size, _) in LITE_VARIANTS.items()
        ),
        Backbone("resnet50", "ResNet50", 224, "caffe"),
        Backbone("xception", "Xception", 299, "tf"),
    ]
}


def get_backbone(name: str) -> Backbone:
    """The registry entry of a backbone name (case-insensitive)."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ParamsError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


@dataclass
class Params:
    """Every knob of the pipeline, with the defaults of the demo run.

    Keys are flat so that papermill can inject them as notebook variables unchanged.
    """

    # --- data ---
    data_dir: str = ""  # empty: use (and, once, generate) the synthetic demo dataset
    metadata_csv: str = ""  # empty: find HAM10000_metadata.csv under data_dir
    verify_images: bool = True  # decode every image once when reading, to catch corrupt files
    # --- synthetic demo dataset ---
    demo_images: int = 1500
    demo_width: int = 600
    demo_height: int = 450
    demo_seed: int = 2018
    # --- split ---
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    one_image_per_lesion_eval: bool = True
    # --- image cache ---
    image_size: int = 128
    resize_mode: str = "squash"
    # --- model ---
    backbone: str = "efficientnetb0"
    weights: str = "none"  # none | imagenet (downloaded by Keras) | path to a weights file
    head: str = "simple"  # simple (pool, dropout, dense) | b3 (384-128 dense head)
    dropout: float = 0.3
    # --- class imbalance (each one optional; they multiply) ---
    loss: str = "focal"  # focal | crossentropy
    focal_gamma: float = 2.0
    focal_alpha: str = "none"  # none | inverse_frequency | balanced_sqrt | 7 numbers "a,b,..."
    label_smoothing: float = 0.0
    class_weight_power: float = 0.0  # 0 off, 1 balanced, 1.5 "aggressive"
    class_weight_cap: float = 0.0  # 0: no cap
    oversampling: str = "none"  # none | sqrt | balanced
    # --- augmentation (training only) ---
    augment: bool = True
    flip: bool = True
    rotation: float = 0.25  # fraction of a full turn
    zoom: float = 0.15
    shift: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    rand_augment: bool = False
    mixup_prob: float = 0.0
    mixup_alpha: float = 0.2
    cutmix_prob: float = 0.0
    cutmix_alpha: float = 1.0
    # --- schedule: phase 1 trains the head on a frozen backbone, phase 2 fine-tunes ---
    batch_size: int = 32
    warmup_epochs: int = 2
    warmup_lr: float = 1e-3
    finetune_epochs: int = 3
    finetune_lr: float = 1e-4
    unfreeze: str = "all"  # "all" or the number of top blocks to unfreeze
    weight_decay: float = 1e-5
    lr_schedule: str = "cosine"  # cosine (with linear warm-up) | plateau | constant
    lr_warmup_fraction: float = 0.1
    monitor: str = "val_balanced_accuracy"  # or val_macro_f1
    patience: int = 5
    # --- evaluation ---
    tta: int = 1  # test-time augmentation views: 1 (off), 2, 4 (flips) or 8 (flips, turns)
    temperature_scaling: bool = True  # fitted on validation, applied to test
    # Melanoma (and high-risk) screening threshold: chosen on validation for this sensitivity.
    screening_sensitivity: float = 0.90
    # Share of validation lesions the out-of-distribution check flags (sets its threshold).
    ood_flag_rate: float = 0.05
    external_dir: str = ""  # ISIC 2018 Task 3 ground truth CSV (or its folder) to evaluate
    # --- runtime ---
    mixed_precision: str = "auto"  # auto (on with a GPU) | off | mixed_float16 | mixed_bfloat16
    jit_compile: str = "auto"  # auto | true | false
    workers: int = 2  # threads preparing training batches (py_dataset loader)
    loader: str = "auto"  # auto: tf_data on TensorFlow, py_dataset (no TensorFlow) elsewhere
    track: bool = True  # MLflow tracking into the local store
    run_name: str = ""  # empty: the parameter file's name
    # --- bookkeeping ---
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> Params:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ParamsError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        get_backbone(self.backbone)  # an unknown name fails here, before any split or cache
        self.focal_alpha_values()  # checks the value
        if self.unfreeze != "all" and not (self.unfreeze.isdigit() and int(self.unfreeze) > 0):
            raise ParamsError(f"unfreeze must be 'all' or a positive number, got {self.unfreeze!r}")
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ParamsError("val_fraction and test_fraction must lie strictly between 0 and 1")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ParamsError("val_fraction + test_fraction leaves less than 10% for training")
        if min(self.warmup_epochs, self.finetune_epochs) < 0 or not (
            self.warmup_epochs + self.finetune_epochs
        ):
            raise ParamsError("warmup_epochs and finetune_epochs must be >= 0, not both 0")
        if not 0 < self.screening_sensitivity < 1:
            raise ParamsError(
                f"screening_sensitivity must lie strictly between 0 and 1, got "
                f"{self.screening_sensitivity}"
            )
        if not 0 < self.ood_flag_rate < 0.5:
            raise ParamsError(
                f"ood_flag_rate must lie strictly between 0 and 0.5, got {self.ood_flag_rate}"
            )
        if self.tta not in TTA_VIEWS:
            raise ParamsError(f"tta must be one of {TTA_VIEWS} views, got {self.tta}")
        if self.image_size < 16:
            raise ParamsError(f"image_size must be at least 16 pixels, got {self.image_size}")
        return self

    def focal_alpha_values(self) -> str | list[float] | None:
        """``focal_alpha`` as :func:`ham_utils.model.losses.focal_alpha` takes it (None: off)."""
        if self.focal_alpha in ("none", ""):
            return None
        if self.focal_alpha in FOCAL_ALPHA_MODES:
            return self.focal_alpha
        try:
            values = [float(v) for v in self.focal_alpha.split(",")]
        except ValueError:
            values = []
        if len(values) != len(CLASSES) or min(values) <= 0:
            raise ParamsError(
                f"focal_alpha must be none, one of {FOCAL_ALPHA_MODES} or {len(CLASSES)} "
                f"positive comma-separated numbers in the order {CLASSES}, "
                f"got {self.focal_alpha!r}"
            )
        return values

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @property
    def resolved_data_dir(self) -> Path:
        """The data folder to read: the given one, or the synthetic demo dataset."""
        return resolve_path(self.data_dir) if self.data_dir else self.demo_data_dir

    @property
    def demo_data_dir(self) -> Path:
        """The synthetic dataset these demo settings generate; the name says what it is."""
        name = (
            f"ham10000_synthetic_n{self.demo_images}_{self.demo_width}x{self.demo_height}"
            f"_seed{self.demo_seed}"
        )
        return demo_root() / name

    @property
    def uses_demo_data(self) -> bool:
        return not self.data_dir

    @property
    def processed_dir(self) -> Path:
        """Where the split and the read report of this data folder live."""
        return processed_root() / dataset_slug(self.resolved_data_dir)

    @property
    def splits_csv(self) -> Path:
        return self.processed_dir / "splits.csv"

    @property
    def cache_dir(self) -> Path:
        return cache_root() / dataset_slug(self.resolved_data_dir)


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Resolve a path from a parameter file: relative paths are relative to the project root."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else project_root() / p).resolve()


def dataset_slug(data_dir: Path) -> str:
    """A readable, collision-free folder name for one data folder: its name and a path hash."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{data_dir.name}-{digest}"


_FIELDS = {f.name: f for f in dataclasses.fields(Params) if f.name != "extra"}
PARAMETER_NAMES: tuple[str, ...] = tuple(_FIELDS)


# How a parameter's type is named in an error.
TYPE_NAMES: dict[type, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a string",
}


def coerce_value(key: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the type of the field ``key``."""
    default = _FIELDS[key].default
    if isinstance(value, str) and not isinstance(default, str):
        value = yaml.safe_load(value) if value != "" else value
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ParamsError(f"{key} must be {TYPE_NAMES[type(default)]}, got {value!r}")


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parser's complaint in one line, with the line and column in the file (the
    parser's own message names ``<unicode string>``, not the file)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def parse_override(text: str) -> tuple[str, str]:
    """Split a ``key=value`` command-line override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r} is not of the form key=value")
    return key.strip(), value.strip()


def _check_known(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ParamsError(
            f"unknown parameter(s) {unknown} {where}; known parameters: {sorted(_FIELDS)}"
        )


def load_params(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Params:
    """Read a flat YAML parameter file, apply overrides, check types and values.

    Unknown keys are an error (a typo must not silently fall back to a default).
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"parameter file {path} not found; see params/ for examples")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ParamsError(f"{path} must be a mapping of key: value lines")
        _check_known(loaded, f"in {path}")
        values.update(loaded)
    _check_known(overrides or {}, "in the overrides")
    values.update(overrides or {})
    params = Params(**{k: coerce_value(k, v) for k, v in values.items()})
    params.extra["source"] = str(path) if path else None
    return params.validate()
