"""environment.yml (conda cannot run here) must name the same packages as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> PyPI name


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    want = {_name(d) for d in meta["dependencies"]}
    for extra in meta["optional-dependencies"].values():
        want |= {_name(d) for d in extra}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    got = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            got |= {_name(d) for d in dep["pip"] if not d.startswith("-e")}
        elif _name(dep) not in ("python", "pip"):
            got.add(CONDA_NAMES.get(_name(dep), _name(dep)))
    assert got == want


def test_torch_ranges_admit_gpu_machine_and_local_versions():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if _name(d) == "torch")
    tv_spec = next(d for d in deps if _name(d) == "torchvision")
    from packaging.specifiers import SpecifierSet

    for v in ("2.11.0", "2.14.1"):
        assert v in SpecifierSet(torch_spec[len("torch") :])
    for v in ("0.26.0", "0.29.1"):
        assert v in SpecifierSet(tv_spec[len("torchvision") :])
