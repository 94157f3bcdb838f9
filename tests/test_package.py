"""The package as users install it: metadata, and a fresh-venv `pip install --no-build-isolation .` that works
outside the repository folder (slow: it builds the extension)."""
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

import eimn_kernels

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_project_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    p = meta["project"]
    assert p["name"] == "eimn-kernels" and "version" in p["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eimn_kernels.__version__"}
    assert p["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    assert not any(d.split("[")[0].strip().startswith("torch") for d in p["dependencies"])  # never pull a torch
    assert {"onnx", "spandrel", "peers", "dev"} <= set(p["optional-dependencies"])
    assert p["scripts"]["eimn"] == "eimn.cli:main"
    include = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "benchmarks" not in include and not any(i.startswith("benchmarks") for i in include)
    assert eimn_kernels.__version__.count(".") == 2


@pytest.mark.slow
def test_fresh_venv_install_works_outside_the_repo(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0", "setuptools>=77", "wheel", "ninja", "pybind11"], check=True)
    env = dict(os.environ, MAX_JOBS="2")
    subprocess.run(pip + ["--no-build-isolation", str(REPO)], check=True, cwd=tmp_path, env=env)
    smoke = ("import importlib.util, torch, eimn, eimn_kernels as ek\n"
             "assert 'cpu' in ek.available_backends('cpu'), ek.backend_status('cpu')\n"
             "assert importlib.util.find_spec('benchmarks') is None\n"
             "m = ek.optimize_for_inference(eimn.EIMN_A(scale=2))\n"
             "with torch.no_grad():\n"
             "    assert m(torch.rand(1, 3, 12, 10)).shape == (1, 3, 24, 20)\n"
             "print('smoke ok', ek.__version__, eimn.__file__)\n")
    out = subprocess.run([py, "-c", smoke], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "smoke ok" in out and str(REPO) not in out
    cli = subprocess.run([str(venv / "bin" / "eimn"), "--help"], capture_output=True, text=True, check=True)
    assert "upscale" in cli.stdout
