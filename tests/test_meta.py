"""What the code relies on: pinned versions, the Makefile's installs, the test suite's own
rules, and no private Keras API."""

import ast
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = REPO / "requirements.lock"
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt")


def requirements(name: str) -> list[Requirement]:
    """The requirements a requirements file names itself (not those of its ``-r`` files)."""
    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def all_requirements() -> list[Requirement]:
    return [r for name in REQUIREMENT_FILES for r in requirements(name)]


def locked() -> dict[str, Version]:
    """The lock's pins, by canonical name; every line is ``name==version`` or a comment."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and not requirement.marker, line
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = Version(specifier.version)
    return pins


# --- the lock file ---------------------------------------------------------------------------


def test_the_lock_pins_every_requirement_within_its_lower_bound():
    pins = locked()
    for requirement in all_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is required but not in requirements.lock (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement.specifier}"
        )
    assert "ham-utils" not in pins  # the project itself is installed from the folder


def test_requirement_files_keep_lower_bounds_for_colab():
    """Colab installs requirements*.txt into its own interpreter without the lock: no pins."""
    for requirement in all_requirements():
        operators = {s.operator for s in requirement.specifier}
        assert operators <= {">=", "!=", "<"}, f"{requirement} pins; pins go in the lock"


def make_dry_run(*args: str) -> str:
    """The commands ``make`` would run from scratch (``-B -n``), into a venv that is not there."""
    env = {**os.environ, "MAKEFLAGS": ""}
    result = subprocess.run(
        ["make", "-B", "-n", "VENV=/nonexistent-venv", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def pip_installs(commands: str) -> list[str]:
    return [line for line in commands.splitlines() if "-m pip install" in line and " -r " in line]


def test_make_all_installs_the_runtime_requirements_only_with_the_lock():
    (install,) = pip_installs(make_dry_run("all"))
    assert "-r requirements.txt -c requirements.lock" in install
    for target in ("app", "demo", "bench", "mlflow-ui"):
        assert "requirements-dev.txt" not in make_dry_run(target), target


def test_make_test_adds_the_development_requirements_with_the_same_lock():
    runtime, dev = pip_installs(make_dry_run("test"))
    assert "-r requirements.txt -c requirements.lock" in runtime
    assert "-r requirements-dev.txt -c requirements.lock" in dev


def test_system_python_installs_without_the_lock():
    """Colab (SYSTEM_PYTHON=1) keeps its preinstalled TensorFlow: lower bounds only."""
    for install in pip_installs(make_dry_run("test", "SYSTEM_PYTHON=1")):
        assert "requirements.lock" not in install and " -c " not in install


# --- the test suite's own rules --------------------------------------------------------------


def imported_distributions(module: str) -> set[str]:
    """Canonical names of the installed distributions that provide ``module``'s package."""
    top = module.split(".")[0]
    names = metadata.packages_distributions().get(top, [])
    return {canonicalize_name(n) for n in names} | {canonicalize_name(top)}


def importorskip_calls(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``importorskip("module")`` call in a Python file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "importorskip":
            argument = node.args[0] if node.args else None
            module = argument.value if isinstance(argument, ast.Constant) else "<not a literal>"
            calls.append((node.lineno, str(module)))
    return calls


def test_no_test_skips_when_a_module_it_should_have_is_missing():
    """The project's own modules and the declared requirements are always there: a failed
    import is a bug to see, not a skip (``importorskip`` is for truly optional packages)."""
    required = {canonicalize_name(r.name) for r in all_requirements()} | {"ham-utils"}
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for line, module in importorskip_calls(path):
            if module.startswith("ham_utils") or imported_distributions(module) & required:
                offenders.append(f"{path.name}:{line} importorskip({module!r})")
            elif module == "<not a literal>":
                offenders.append(f"{path.name}:{line} importorskip of a computed name")
    assert not offenders, offenders


def test_importorskip_scan_finds_the_calls(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import pytest\n"
        "from pytest import importorskip\n"
        "def test_a():\n"
        "    synthetic = pytest.importorskip('ham_utils.data.synthetic')\n"
        "    importorskip('jax')\n"
    )
    assert importorskip_calls(sample) == [(4, "ham_utils.data.synthetic"), (5, "jax")]
    assert "jax" in imported_distributions("jax.numpy")


# --- private APIs ------------------------------------------------------------------------------

# Public names that begin with an underscore (namedtuple's API).
PUBLIC_UNDERSCORED = {"_asdict", "_replace", "_fields", "_make"}


def private_attributes(path: Path) -> list[str]:
    """``line: expression`` of every ``x._name`` where ``x`` is not ``self`` or ``cls``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") or node.attr in PUBLIC_UNDERSCORED:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_package_and_the_app_use_no_private_attributes_of_other_objects():
    """Private Keras (or other libraries') API changes without notice; where one is ever
    needed, it gets a test here that fails when it changes, and an entry in this test."""
    files = sorted([*(REPO / "ham_utils").rglob("*.py"), *(REPO / "app").glob("*.py")])
    offenders = [hit for path in files for hit in private_attributes(path)]
    assert not offenders, offenders


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    """Models of every preprocessing kind, and the B0 one nested in a functional and in a
    sequential model (as a loaded or wrapped model may be)."""
    import keras

    from ham_utils.model.build import build_model

    built = {
        name: build_model(name, 32, "none")
        for name in ("efficientnetb0", "efficientnet_lite0", "resnet50")
    }
    inner = built["efficientnetb0"]
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(inner(inputs))
    built["nested functional"] = keras.Model(inputs, outputs)
    built["nested sequential"] = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1.0), built["efficientnet_lite0"]]
    )
    return built


def test_all_layers_finds_what_keras_flatten_layers_finds(models):
    """models.all_layers replaces Keras' private ``_flatten_layers()``: both find the same
    layers (input layers aside) in every model here, nested models included. This test
    fails if the models grow a layer whose sublayers only the private walk reaches, and if
    the private method changes."""
    import keras

    from ham_utils.model.build import all_layers

    def ids(layers: list) -> set[int]:
        return {id(x) for x in layers if not isinstance(x, keras.layers.InputLayer)}

    for name, model in models.items():
        public = all_layers(model)
        assert len(public) == len({id(x) for x in public}), name  # each layer once
        assert ids(public) == ids(model._flatten_layers()), name


def test_export_reaches_layers_of_nested_models(models):
    """What export relies on the walk for: every layer to float32, every Normalization."""
    import keras

    from ham_utils.model.build import all_layers
    from ham_utils.serve.export import compute_in_float32

    nested = models["nested functional"]
    norms = [x for x in all_layers(nested) if isinstance(x, keras.layers.Normalization)]
    inner = models["efficientnetb0"]
    assert norms and all(any(n is x for x in inner.layers) for n in norms)  # inside the sub-model
    for layer in all_layers(nested):
        layer.dtype_policy = "mixed_bfloat16"
    compute_in_float32(nested)
    assert {x.dtype_policy.name for x in nested._flatten_layers()} == {"float32"}
