"""``python -m ham_utils <command>``: the pipeline steps from a shell.

Every command reads the same flat parameter file as the notebooks (``--params``) with
``--set key=value`` overrides. Errors in the input data end with one clear line and exit
code 2, not a stack trace.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ham_utils.config import MODELS, Params, ParamsError, load_params, parse_override
from ham_utils.errors import DataError, capture_warnings, filter_native_noise
from ham_utils.report.runner import NotebookFailed

DEFAULT_PARAMS = "params/smoke.yaml"
log = logging.getLogger("ham_utils")


def _params_file(args: argparse.Namespace) -> str | None:
    """``--params``, or None (the built-in defaults) for the default file outside the project
    folder."""
    if args.params == DEFAULT_PARAMS and not Path(args.params).is_file():
        return None
    return args.params


def _params(args: argparse.Namespace) -> Params:
    overrides = dict(parse_override(s) for s in args.set)
    return load_params(_params_file(args), overrides)


def cmd_synth(args: argparse.Namespace) -> None:
    from ham_utils.data.prepare import ensure_demo_data
    from ham_utils.data.synthetic import generate_dataset

    params = _params(args)
    if args.out:
        out = generate_dataset(
            Path(args.out),
            n_images=params.demo_images,
            width=params.demo_width,
            height=params.demo_height,
            seed=params.demo_seed,
        )
    else:
        out = ensure_demo_data(dataclasses.replace(params, data_dir=""))
    print(out)


def cmd_split(args: argparse.Namespace) -> None:
    import pandas as pd

    from ham_utils.data.prepare import load_splits, prepare_splits
    from ham_utils.data.split import SPLITS, class_table, max_share_deviation, read_split_info

    params = _params(args)
    path = prepare_splits(params)
    splits = load_splits(params)
    info = read_split_info(path)
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(class_table(splits))
    # The gap is computed over the table's rows: extra images of val/test lesions are in
    # neither (they are never trained or evaluated on).
    extra = int((~splits["split"].isin(SPLITS)).sum())
    extra_note = f" ({extra} extra images of val/test lesions not counted)" if extra else ""
    print(
        f"\n{info['images']} images of {info['lesions']} lesions; no lesion in two splits; "
        f"largest class-share gap to overall in the table {max_share_deviation(splits):.2f} "
        f"pp{extra_note}; {info['dropped_rows']} metadata rows dropped "
        f"(see {info['dropped_rows_csv']})"
    )
    if info["synthetic"]:
        print(
            "NOTE: this is the SYNTHETIC demo dataset; no medical conclusion may be drawn from it."
        )
    print(path)


def cmd_cache(args: argparse.Namespace) -> None:
    from ham_utils.data.prepare import cached_split
    from ham_utils.data.split import SPLITS

    params = _params(args)
    for split in SPLITS:
        start = time.perf_counter()
        cached = cached_split(params, split)
        seconds = time.perf_counter() - start
        print(f"{split:5s} {len(cached):6d} images  {seconds:6.1f} s  {cached.path}")


def cmd_train(args: argparse.Namespace) -> None:
    from ham_utils.train.loop import train

    with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines: stdout is the result's
        run_dir = train(_params(args))
    print(run_dir)


def _run(args: argparse.Namespace):
    """The run of ``--run`` (default: the latest), with evaluation-time ``--set`` overrides."""
    from ham_utils.config import PARAMETER_NAMES, coerce_value
    from ham_utils.runs import EVALUATION_SETTINGS, open_run

    overrides = dict(parse_override(s) for s in args.set)
    unknown = sorted(set(overrides) - set(PARAMETER_NAMES))
    if unknown:
        raise ParamsError(
            f"unknown parameter(s) {unknown}; the settings that can be changed for a run are "
            f"{EVALUATION_SETTINGS}"
        )
    run = open_run(args.run)
    training = sorted(set(overrides) - set(EVALUATION_SETTINGS))
    if training:
        raise ParamsError(
            f"{training} are training settings of the run; only {EVALUATION_SETTINGS} can be "
            "changed at evaluation (train a new run for the others)"
        )
    values = {k: coerce_value(k, v) for k, v in overrides.items()}
    return run.with_settings(**values)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ham_utils.evaluation.evaluate import evaluate_run

    run = _run(args)
    results = evaluate_run(run, external=args.external, which=args.which)
    for name, metrics in results.items():
        print(
            f"{name}: {metrics['n_images']} images, balanced accuracy "
            f"{metrics['balanced_accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}, "
            f"melanoma sensitivity {metrics['melanoma']['sensitivity']}"
        )
    if run.synthetic:
        print("NOTE: trained and evaluated on SYNTHETIC demo data; these numbers mean nothing.")
    print(run.evaluation(args.which).root)


def cmd_gradcam(args: argparse.Namespace) -> None:
    from ham_utils.explain.explainer import RunExplainer, class_grids, explain_files

    run = _run(args)
    if args.class_name and args.class_name not in run.classes:
        raise ParamsError(f"--class must be one of {run.classes}, got {args.class_name!r}")
    explainer = RunExplainer(run, args.which)
    evaluation = run.evaluation(args.which)
    out_dir = Path(args.out) if args.out else evaluation.gradcam_dir
    if args.images:
        for path in explain_files(explainer, args.images, out_dir, args.class_name):
            print(path)
        return
    predictions = evaluation.predictions_file()
    if not predictions.is_file():
        raise DataError(
            f"{predictions} not found; run `python -m ham_utils evaluate --which {args.which}` "
            "first"
        )
    for path in class_grids(explainer, predictions, out_dir, args.per_class).values():
        print(path)


def cmd_predict(args: argparse.Namespace) -> int:
    """One JSON line per image; exit code 1 when any image could not be predicted."""
    import json

    from ham_utils.serve.predict import Predictor, image_paths, predict_paths

    run = _run(args)
    if not args.images:
        raise ParamsError("give at least one image file or folder to predict")
    paths = image_paths(args.images)  # before the model is loaded: no image is an error
    predictor = Predictor(run, args.which)
    if predictor.missing:
        log.warning("%s", predictor.missing)
    gradcam_dir = Path(args.gradcam) if args.gradcam else None
    failed = 0
    for record in predict_paths(predictor, paths, gradcam_dir):
        failed += "error" in record
        print(json.dumps(record, ensure_ascii=False), flush=True)
    if failed:
        log.warning('%d image(s) could not be predicted; see their "error" lines', failed)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> None:
    from ham_utils.serve.export import RUNTIMES, export_run

    run = _run(args)
    exported = export_run(run, args.format, Path(args.out) if args.out else None, args.which)
    print(
        f"{args.format} export of {run.name} ({args.which}), run in {RUNTIMES[args.format]}: "
        f"max abs difference to the Keras model {exported.max_difference:.2g}"
    )
    print(f"inputs, outputs and classes: {exported.sidecar}")
    print(exported.path)


def cmd_report(args: argparse.Namespace) -> None:
    from ham_utils.report.runner import run_report

    params = _params(args)
    overrides = dict(parse_override(s) for s in args.set)
    params_file = Path(args.params).resolve() if params.extra.get("source") else None
    print(run_report(params, params_file, overrides))


def cmd_compare(args: argparse.Namespace) -> None:
    import pandas as pd

    from ham_utils.runs import open_run
    from ham_utils.studies.compare import comparable_runs, compare, data_note

    runs = args.runs
    if not runs:  # the latest run and every finished run comparable with it
        runs, left_out = comparable_runs(open_run(None), args.which)
        for name, reason in left_out.items():
            print(f"left out {name}: {reason}")
    comparison = compare(runs, args.which, args.reference, args.resamples)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        n = len(comparison.runs)
        runs_of = f"{n} run{'' if n == 1 else 's'} ({args.which} model{'' if n == 1 else 's'})"
        print(f"{runs_of} on {data_note(comparison.runs)}")
        if len(comparison.parameters):
            print("\nParameters that differ:\n" + comparison.parameters.to_string())
        print(
            f"\nTest metrics, {comparison.level:.0%} bootstrap intervals "
            f"({comparison.resamples} resamples):\n" + comparison.metrics_table().to_string()
        )
        if len(comparison.differences):
            print(
                "\nPaired differences (the same resamples for every run):\n"
                + comparison.differences_table().to_string(index=False)
            )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        comparison.parameters.to_csv(out / "parameters.csv")
        comparison.metrics.to_csv(out / "metrics.csv", index=False)
        comparison.recall.to_csv(out / "recall.csv", index=False)
        comparison.differences.to_csv(out / "differences.csv", index=False)
        comparison.plot(out / "comparison.png")
        if len(comparison.differences):
            comparison.plot_differences(out / "differences.png")
        print(out)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and evaluate every variant of a grid; exit code 1 when any variant failed."""
    from ham_utils.studies.sweep import failed, run_sweep, summary

    overrides = dict(parse_override(s) for s in args.set)
    with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines: stdout is the summary's
        sweep = run_sweep(_params_file(args), args.grid, overrides)
    print(summary(sweep))
    print(sweep.file)
    return 1 if failed(sweep) else 0


def cmd_download(args: argparse.Namespace) -> None:
    from ham_utils.data.download import download_kaggle

    print(download_kaggle(Path(args.dest)))


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int | None], str]] = {
    "synth": (cmd_synth, "generate the SYNTHETIC demo dataset (HAM10000 layout)"),
    "split": (cmd_split, "read and validate the data, write the lesion-aware splits.csv"),
    "cache": (cmd_cache, "decode and resize every image once into the uint8 cache"),
    "train": (cmd_train, "train (or resume) the two-phase recipe; prints the run folder"),
    "evaluate": (cmd_evaluate, "predict the test split (and an external set): metrics, figures"),
    "gradcam": (cmd_gradcam, "Grad-CAM overlays of images, or per-class grids of test images"),
    "predict": (cmd_predict, "classify image files or folders: one JSON line per image"),
    "export": (cmd_export, "write the model as TFLite, ONNX or SavedModel, checked against Keras"),
    "compare": (cmd_compare, "compare runs on the same test images: intervals, paired tests"),
    "sweep": (cmd_sweep, "train and evaluate every variant of a grid file (resumable)"),
    "report": (cmd_report, "run the numbered notebooks with papermill into reports/<run_id>/"),
    "download": (cmd_download, "download HAM10000 from Kaggle and verify its layout"),
}

# Commands that read a parameter file (--params, --set), and commands that use a finished run,
# whose parameters are its own (--set: its evaluation settings only). compare and download
# take neither.
PARAMS_COMMANDS: tuple[str, ...] = ("synth", "split", "cache", "train", "report", "sweep")
RUN_COMMANDS: tuple[str, ...] = ("evaluate", "gradcam", "predict", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ham_utils",
        description="HAM10000 skin-lesion pipeline: data, splits, cache and more.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name in PARAMS_COMMANDS:
            p.add_argument(
                "--params",
                default=DEFAULT_PARAMS,
                help=f"parameter YAML (default {DEFAULT_PARAMS})",
            )
        if name in PARAMS_COMMANDS or name in RUN_COMMANDS:
            p.add_argument(
                "--set",
                nargs="+",
                action="extend",
                default=[],
                metavar="KEY=VALUE",
                help="override parameters: --set image_size=96 seed=7 (repeatable)"
                if name in PARAMS_COMMANDS
                else "evaluation settings and this machine's paths: --set tta=4 "
                "data_dir=/path/to/HAM10000 (repeatable; the run's other settings are fixed)",
            )
        else:
            p.set_defaults(set=[])
        if name == "synth":
            p.add_argument("--out", help="write to this folder instead of data/demo/...")
        if name in ("evaluate", "gradcam", "predict"):
            p.add_argument("--run", default="", help="run folder (default: the latest run)")
            p.add_argument("--which", default="best", choices=MODELS, help="model")
        if name == "evaluate":
            p.add_argument("--external", default=None, help="ISIC 2018 ground truth CSV or dir")
        if name == "gradcam":
            p.add_argument("images", nargs="*", help="image files (default: test-set grids)")
            p.add_argument("--class", dest="class_name", default=None, help="class to explain")
            p.add_argument("--out", default=None, help="output folder")
            p.add_argument("--per-class", type=int, default=3, help="images per group in grids")
        if name == "predict":
            p.add_argument("images", nargs="*", help="image files or folders of images")
            p.add_argument("--gradcam", default=None, help="write Grad-CAM overlays here")
        if name == "export":
            from ham_utils.serve.export import FORMATS

            p.add_argument("--run", default="", help="run folder (default: the latest run)")
            p.add_argument("--format", required=True, choices=FORMATS, help="export format")
            p.add_argument("--out", default=None, help="output folder (default: RUN/export)")
            p.add_argument("--which", default="best", choices=MODELS, help="model")
        if name == "compare":
            p.add_argument(
                "runs",
                nargs="*",
                help="run folders (default: the latest run and "
                "every finished run on the same data and split)",
            )
            p.add_argument("--which", default="best", choices=MODELS, help="model")
            p.add_argument("--reference", default="", help="compare every run against this one")
            p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
            p.add_argument("--out", default=None, help="also write tables (CSV) and figures here")
        if name == "sweep":
            p.add_argument("--grid", required=True, help="grid file, e.g. params/grids/demo.yaml")
        if name == "download":
            p.add_argument("--dest", default="data/ham10000", help="target folder")
    return parser


def configure_logging() -> None:
    """INFO and above to stderr; each warning as one line ``WARNING: Category: message``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    capture_warnings()


def _take_stray_set_values(args: argparse.Namespace) -> None:
    """``--set`` takes every word after it, so ``predict --set tta=2 a.jpg`` gives it the image
    path too: words without ``=`` go back to the command's images (or are an error)."""
    stray = [word for word in args.set if "=" not in word]
    if not stray:
        return
    if not hasattr(args, "images"):
        raise ParamsError(f"--set takes key=value pairs; {stray} are not of that form")
    args.set = [word for word in args.set if "=" in word]
    args.images = [*args.images, *stray]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        _take_stray_set_values(args)
        code = args.func(args)
    except (DataError, ParamsError, FileNotFoundError, NotebookFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code or 0


def entry_point() -> int:
    """``python -m ham_utils`` and the ``ham-utils`` script: :func:`main` without TensorFlow's
    native start-up lines (:func:`ham_utils.errors.filter_native_noise`)."""
    filter_native_noise()
    return main()
