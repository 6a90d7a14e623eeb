"""environment.yml (for conda users) must agree with pyproject.toml, and .ci/run must run `make test`."""

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV = yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_yml_installs_this_package_with_existing_extras():
    pip_sections = [d["pip"] for d in ENV["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs one pip: section"
    installs = [line for line in pip_sections[0] if re.match(r"^(-e\s+)?\"?\.(\[|\"|$)", line)]
    assert installs, "the pip section must install this package (-e \".[extras]\")"
    extras = set(re.findall(r"\[([^\]]*)\]", installs[0])[0].split(",")) if "[" in installs[0] else set()
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert "dev" in extras, "conda users get the test tools too"
    others = [line for line in pip_sections[0] if line not in installs]
    assert not others, f"list dependencies in pyproject.toml, not in environment.yml: {others}"


def test_environment_yml_python_matches_requires_python():
    requires = PYPROJECT["project"]["requires-python"]  # ">=3.10"
    conda_python = [d for d in ENV["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_python == [f"python{requires}"], (conda_python, requires)
    assert "pip" in ENV["dependencies"]


def test_dependencies_cover_the_course_and_torch_is_not_pinned_high():
    deps = {re.split(r"[<>=!~; \[]", d)[0].lower(): d for d in PYPROJECT["project"]["dependencies"]}
    for name in ("torch", "torchvision", "einops", "matplotlib", "ipywidgets", "jupyterlab", "tqdm", "safetensors"):
        assert name in deps, f"{name} missing from pyproject dependencies"
    assert "==" not in deps["torch"], "torch must not be pinned exactly"
    upper = re.search(r"<=?\s*([\d.]+)", deps["torch"])
    assert upper is None or tuple(map(int, upper.group(1).split("."))) <= (2, 14, 1)
    dev = " ".join(PYPROJECT["project"]["optional-dependencies"]["dev"])
    for name in ("pytest", "nbval", "jupytext"):
        assert name in dev


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make lab" in readme
