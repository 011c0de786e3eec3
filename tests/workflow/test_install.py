"""The package as a user installs it: a wheel built from this checkout, installed in a fresh venv
outside it, trains and predicts with `unetpipe train --config` and `unetpipe predict`: the config
schema (the defaults) ships inside the wheel."""

from __future__ import annotations

import os
import site
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO


def run(cmd: list[str], cwd, env=None) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_trains_and_predicts_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)], cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("unetpipe-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    # The dependencies (torch ...) come from this environment's site-packages, added as a plain
    # path: its .pth files, the editable install of the checkout among them, are not read.
    purelib = next(venv.glob("lib/python*/site-packages"))
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([str(venv / "bin" / "python"), "-c", "import unetpipe; print(unetpipe.__file__)"],
                tmp_path, env)  # fmt: skip
    assert where.startswith(str(purelib)), where
    unetpipe = str(venv / "bin" / "unetpipe")
    run([unetpipe, "synth", "data.zarr", "--n-slices", "3", "--shape", "64", "64",
         "--test-slices", "1", "--test-shape", "80", "80"], tmp_path, env)  # fmt: skip
    run([unetpipe, "weights", "data.zarr"], tmp_path, env)
    config = {
        "model": {"depth": 2, "base_channels": 4, "dropout": 0.0},
        "augment": {"tile": 44, "bank_size": 0},
        "train": {"iterations": 3, "val_every": 3, "device": "cpu", "workers": 0},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run([unetpipe, "train", "data.zarr", "run", "--config", "config.yaml"], tmp_path, env)
    run([unetpipe, "predict", "run/model.pt", "data.zarr/test", "pred.zarr", "--no-progress"],
        tmp_path, env)  # fmt: skip
    assert (tmp_path / "pred.zarr" / "zarr.json").is_file()
