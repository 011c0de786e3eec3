"""The conda environments: one per rule family, each holding what its rules' scripts import.

No conda here, so `snakemake --use-conda` itself is not run: these tests read the rules, the
scripts and (transitively) the unetpipe modules they import, and the environment files.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
ENVS = REPO / "workflow" / "envs"

FAMILIES = {
    "synth": "data",
    "download": "data",
    "convert": "data",
    "weights": "preprocess",
    "augment": "preprocess",
    "train": "torch",
    "predict": "torch",
    "segment": "evaluate",
    "evaluate": "evaluate",
    "report": "evaluate",
    "crossval": "evaluate",
    "export_bioimageio": "torch",
}
# Top-level import name -> conda-forge package.
CONDA_NAME = {
    "numpy": "numpy",
    "scipy": "scipy",
    "skimage": "scikit-image",
    "zarr": "zarr",
    "tifffile": "tifffile",
    "PIL": "pillow",
    "torch": "pytorch",
    "dask": "dask",
    "distributed": "distributed",
    "dask_jobqueue": "dask-jobqueue",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib-base",
    "yaml": "pyyaml",
    "jsonschema": "jsonschema",
    "bioimageio": "bioimageio.core",
    "mwatershed": "mwatershed",  # from PyPI (pip section of the env; a dependency in pyproject)
}
SPEC = re.compile(r"^(?P<name>[a-z0-9_.-]+)(?: (?P<version>[^ ]+))?(?: (?P<build>[^ ]+))?$")


def rule_directives() -> dict[str, dict[str, str]]:
    """For every rule of workflow/rules/*.smk (whatever the config): its conda and script paths."""
    rules = {}
    for smk in sorted(RULES.glob("*.smk")):
        blocks = re.split(r"^\s*rule\s+(\w+)\s*:", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            rules[name] = {
                key: (RULES / m.group(1)).resolve()
                for key in ("conda", "script")
                if (m := re.search(rf"^\s*{key}:\s*\n\s*\"([^\"]+)\"", body, flags=re.M))
            }
    return rules


def read_env(path: Path) -> dict[str, str]:
    """An environment file's conda packages, name -> full spec (validated)."""
    env = yaml.safe_load(path.read_text())
    assert set(env) <= {"name", "channels", "dependencies"}, path
    assert env["channels"][0] == "conda-forge", path
    specs = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"] and all(isinstance(d, str) for d in dep["pip"]), dep
            continue
        match = SPEC.match(dep)
        assert match, f"{path.name}: {dep!r} is not a conda match spec 'name [version [build]]'"
        specs[match["name"]] = dep
    return specs


def pip_packages(path: Path) -> set[str]:
    """The names of an environment file's pip requirements."""
    env = yaml.safe_load(path.read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return {re.split(r"[<>=! ]", req)[0] for req in sum(pip, [])}


def imported_modules(script: Path) -> set[str]:
    """Top-level modules imported by a script and, transitively, by the unetpipe modules it uses."""
    found, todo, seen = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                found.add(parts[0])
                if parts[0] == "unetpipe":  # the module and its packages' __init__.py
                    for i in range(1, len(parts) + 1):
                        module = REPO.joinpath(*parts[:i])
                        todo += [module.with_suffix(".py"), module / "__init__.py"]
        todo = [p for p in todo if p.is_file()]
    return found - {"unetpipe", "__future__"} - set(sys.stdlib_module_names)


def test_every_rule_has_its_family_env_and_script():
    rules = rule_directives()
    assert set(rules) == set(FAMILIES), "rules in workflow/rules/ differ from the rule families"
    for name, directives in rules.items():
        assert directives.get("conda") == ENVS / f"{FAMILIES[name]}.yaml", name
        assert directives["conda"].is_file(), name
        assert directives.get("script") and directives["script"].is_file(), name


@pytest.mark.parametrize("rule", sorted(FAMILIES))
def test_env_holds_what_the_rule_imports(rule):
    directives = rule_directives().get(rule)
    if directives is None:
        pytest.fail(f"rule {rule} is missing from workflow/rules/")
    env = read_env(directives["conda"])
    modules = imported_modules(directives["script"])
    unknown = modules - set(CONDA_NAME)
    assert not unknown, f"{rule} imports {unknown}: add their conda packages to CONDA_NAME + envs"
    missing = {CONDA_NAME[m] for m in modules} - set(env) - pip_packages(directives["conda"])
    assert not missing, f"{directives['conda'].name} lacks {missing}, imported by rule {rule}"
    assert "python" in env


def test_rule_envs_agree_with_environment_yml():
    """environment.yml (the driver's env) holds every rule env's packages with the same versions."""
    full = read_env(REPO / "environment.yml")
    assert {"snakemake", "snakemake-executor-plugin-slurm", "pip"} <= set(full)
    dependencies = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict))
    assert pip == ["--editable ."]
    project = (REPO / "pyproject.toml").read_text()  # environment.yml installs it with its deps
    for path in sorted(ENVS.glob("*.yaml")):
        for name in pip_packages(path):
            assert f'"{name}>=' in project, f"{path.name}: {name} is not in pyproject.toml"
        for name, spec in read_env(path).items():
            assert name in full, f"{path.name}: {name} is not in environment.yml"
            assert SPEC.match(spec)["version"] == SPEC.match(full[name])["version"], spec
