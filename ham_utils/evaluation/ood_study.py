"""How often the out-of-distribution check flags each probe, as it is and as it was.

    python -m ham_utils.evaluation.ood_study --run RUN --originals DIR

fits the check twice on the run's training and validation images: as it was (every stage
at the model's resolution) and as it is (:data:`ham_utils.evaluation.ood.VIEW_SCALE`,
:data:`~ham_utils.evaluation.ood.FIRST_STAGE`). It prints the share each flags of the
validation lesions, of the lesion photographs in ``DIR`` under every acquisition shift of
:mod:`ham_utils.evaluation.ood_probes`, and of the fifteen pictures that are not lesions.
The README's table comes from it. The probes are what the check was chosen on, so they
measure its fit, not its performance on unseen shifts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ham_utils.data.images import is_image_file, resize_square
from ham_utils.errors import DataError
from ham_utils.evaluation.ood import FIRST_STAGE, VIEW_SCALE, FeatureExtractor, fit_detector
from ham_utils.evaluation.ood_probes import SHIFTS, acquisition_shifts, not_lesions
from ham_utils.runs import Run, open_run

CHECKS = {
    "every stage, full resolution (before)": (1, 0),
    f"block {FIRST_STAGE} up, 1/{VIEW_SCALE} resolution (now)": (VIEW_SCALE, FIRST_STAGE),
}


def probe_images(run: Run, originals: Path) -> dict[str, np.ndarray]:
    """The model's inputs for each probe: the originals under each shift, the far pictures."""
    params = run.params
    paths = sorted(p for p in originals.rglob("*") if is_image_file(p))
    if not paths:
        raise FileNotFoundError(f"no image in {originals}; give the folder of lesion photographs")
    shifted: dict[str, list[np.ndarray]] = {shift: [] for shift in SHIFTS}
    for path in paths:
        with Image.open(path) as image:
            for shift, picture in acquisition_shifts(image).items():
                shifted[shift].append(resize_square(picture, params.image_size, params.resize_mode))
    probes = {f"lesion photographs, {shift}": np.stack(images) for shift, images in shifted.items()}
    far = [resize_square(p, params.image_size, params.resize_mode) for p in not_lesions().values()]
    return probes | {"pictures that are not lesions": np.stack(far)}


def flag_rates(run: Run, originals: Path, progress: bool = True) -> pd.DataFrame:
    """One row per probe set, one column per check: the share of its images flagged."""
    from ham_utils.data.cache import build_split_cache
    from ham_utils.evaluation.ood import fit_subset

    params = run.params
    splits = run.splits()
    images = {
        split: build_split_cache(
            splits[splits["split"] == split], split, params.cache_dir, params.image_size,
            params.resize_mode, progress=progress,
        ).images
        for split in ("train", "val")
    }  # fmt: skip
    train = images["train"][fit_subset(len(images["train"]), params.seed)]
    probes = probe_images(run, originals)
    model = run.load_model("best")
    table = {}
    for name, (view_scale, first_stage) in CHECKS.items():
        extractor = FeatureExtractor(model, view_scale, first_stage)
        val = extractor.features(images["val"], params.batch_size)
        train_features = extractor.features(train, params.batch_size)
        detector = fit_detector(train_features, val, params.ood_flag_rate, extractor)
        table[name] = {"validation lesions": float(detector.flags(val).mean())} | {
            probe: float(detector.flags(extractor.features(x, params.batch_size)).mean())
            for probe, x in probes.items()
        }
    frame = pd.DataFrame(table)
    frame.insert(0, "images", [len(images["val"]), *(len(x) for x in probes.values())])
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ham_utils.evaluation.ood_study")
    parser.add_argument("--run", required=True, help="a finished run folder")
    parser.add_argument("--originals", required=True, help="folder of lesion photographs")
    args = parser.parse_args(argv)
    try:
        table = flag_rates(open_run(args.run), Path(args.originals))
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.to_string(float_format=lambda share: f"{share:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
