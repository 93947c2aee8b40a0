"""Parameters reach every step however they are given: papermill's -p and -f, several
``--set key=value`` after one flag, and enumerated values checked when they are read."""

import ast
from pathlib import Path

import nbformat
import pytest
import yaml
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from ham_utils.cli import build_parser, main
from ham_utils.config import (
    BACKBONES,
    CHOICES,
    HEADS,
    MODELS,
    PARAMETER_NAMES,
    ParamsError,
    load_params,
)
from ham_utils.report.notebook import setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _papermill_namespace(notebook: Path, parameters: dict) -> dict:
    """What a kernel holds after papermill's parameters and injected cells have run."""
    nb = parameterize_notebook(load_notebook_node(str(notebook)), parameters)
    namespace: dict = {}
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            exec(cell.source, namespace)
    return namespace


def _setup_params(notebook: Path, parameters: dict):
    namespace = _papermill_namespace(notebook, parameters)
    return setup(namespace["params_file"], namespace["overrides"], namespace)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_p_sets_one_parameter_in_every_notebook(notebook):
    params = _setup_params(notebook, {"image_size": 96, "seed": 7})
    default = load_params(ROOT / "params" / "smoke.yaml")
    assert (params.image_size, params.seed) == (96, 7)
    assert params.backbone == default.backbone  # the rest comes from params_file


@pytest.mark.parametrize("recipe", ["b3.yaml", "cpu.yaml"])
def test_papermill_f_with_a_recipe_gives_that_recipe(recipe):
    path = ROOT / "params" / recipe
    params = _setup_params(NOTEBOOKS[2], yaml.safe_load(path.read_text()))
    assert params.as_dict() == load_params(path).as_dict()


def test_a_parameter_given_twice_with_different_values_is_refused():
    with pytest.raises(ParamsError, match="both by name and in `overrides`"):
        _setup_params(NOTEBOOKS[0], {"image_size": 96, "overrides": {"image_size": 64}})


def test_a_misspelt_name_is_not_silently_a_parameter():
    with pytest.raises(ParamsError, match="unknown parameter"):
        _setup_params(NOTEBOOKS[0], {"overrides": {"imagesize": 96}})


def _assigned_names(source: str) -> set[str]:
    code = "\n".join(line for line in source.splitlines() if line.lstrip()[:1] not in "%!")
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_never_use_a_parameter_name_as_a_variable(notebook):
    """setup() reads every parameter name in the namespace as injected by papermill, so a
    notebook variable with such a name would silently become a parameter."""
    nb = nbformat.read(notebook, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assigned = set().union(*(_assigned_names(source) for source in code))
    assert not assigned & set(PARAMETER_NAMES)
    assert any("setup(params_file, overrides, globals())" in source for source in code)


def _parse(*argv: str):
    return build_parser().parse_args(argv)


def test_one_set_flag_takes_several_overrides(monkeypatch, tmp_path):
    from ham_utils.cli import _params

    args = _parse("train", "--params", "params/cpu.yaml", "--set", "seed=3", "finetune_lr=0.0003")
    monkeypatch.chdir(ROOT)
    params = _params(args)
    assert (params.seed, params.finetune_lr) == (3, 0.0003)


def test_image_paths_after_set_stay_images(monkeypatch):
    from ham_utils import cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_predict", lambda args: seen.update(vars(args)) or 0)
    monkeypatch.setitem(cli.COMMANDS, "predict", (cli.cmd_predict, "predict"))
    assert main(["predict", "a.jpg", "--set", "tta=2", "batch_size=8", "b.jpg", "c.png"]) == 0
    assert seen["images"] == ["a.jpg", "b.jpg", "c.png"]
    assert seen["set"] == ["tta=2", "batch_size=8"]


def test_a_word_without_equals_sign_is_refused_where_no_images_are_taken(capsys):
    assert main(["split", "--set", "seed=3", "oops"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_an_unknown_backbone_is_refused_when_the_parameters_are_read():
    with pytest.raises(ParamsError, match="unknown backbone 'efficientnetb9'"):
        load_params(None, {"backbone": "efficientnetb9"})


def test_each_list_of_allowed_values_has_one_owner():
    import ham_utils.model.build as models

    assert CHOICES["head"] is HEADS and models.HEADS is HEADS
    assert models.BACKBONES is BACKBONES
    choices = {a.dest: a.choices for a in build_parser()._subparsers._group_actions[0]
               .choices["evaluate"]._actions}  # fmt: skip
    assert tuple(choices["which"]) == MODELS


@pytest.mark.parametrize("command", ["evaluate", "gradcam", "predict", "export", "compare"])
def test_commands_that_use_a_run_do_not_offer_a_parameter_file(command, capsys):
    with pytest.raises(SystemExit) as exit_code:
        extra = ["--format", "onnx"] if command == "export" else []
        build_parser().parse_args([command, *extra, "--params", "params/missing.yaml"])
    assert exit_code.value.code == 2
    assert "unrecognized arguments: --params" in capsys.readouterr().err
    if command == "compare":  # it reads the runs' test predictions and nothing else
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--set", "tta=2"])


def test_an_unknown_key_on_a_run_command_is_called_unknown_not_a_training_setting(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.yaml").write_text("seed: 1\n")
    (run / "classes.json").write_text('["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]')
    (run / "state.json").write_text('{"finished": true}')
    for command in ("predict", "evaluate"):
        assert main([command, "--run", str(run), "--set", "tta_views=2"]) == 2
        err = capsys.readouterr().err
        assert "unknown parameter(s) ['tta_views']" in err and "training setting" not in err
    assert main(["evaluate", "--run", str(run), "--set", "seed=2"]) == 2
    assert "['seed'] are training settings of the run" in capsys.readouterr().err
