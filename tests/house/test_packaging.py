"""The package as users get it: a wheel that carries the schemas, the console script, --version,
--help, ``python -m mptkit``."""

import email
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mptkit
from tests.support import ROOT
from tests.support.commands import run_mptkit


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from the repository. With hatchling installed (the test extra has it) the build
    runs offline, without build isolation; otherwise pip fetches hatchling into an isolated build env."""
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(5, "--no-build-isolation")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("mptkit-*.whl")
    return whl


def test_wheel_carries_every_schema_and_the_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        schemas = sorted((ROOT / "schemas").glob("*.json"))
        assert schemas
        for s in schemas:
            assert f"mptkit/schemas/{s.name}" in names
            assert z.read(f"mptkit/schemas/{s.name}") == s.read_bytes()
        assert {
            "mptkit/__init__.py",
            "mptkit/__main__.py",
            "mptkit/cli/__init__.py",
            "mptkit/hub/__init__.py",
            "mptkit/formats/_safetensors.py",
        } <= names
        assert not any(n.startswith(("tests/", "examples/")) for n in names)
        dist = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(dist))
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert meta["Name"] == "mptkit" and meta["Version"] == mptkit.__version__
    assert meta["Requires-Python"] == ">=3.10"
    requires = " ".join(meta.get_all("Requires-Dist"))
    for dep in (
        "torch",
        "safetensors",
        "huggingface-hub",
        "click",
        "jsonschema",
        "pytest",
        "hypothesis",
        "peft",
        "transformers",
    ):
        assert dep in requires, dep
    assert "test" in meta.get_all("Provides-Extra")
    assert "mptkit = mptkit.cli:main" in entry


def test_installed_wheel_finds_its_schemas_from_anywhere(wheel, tmp_path, example_bank):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bank = elsewhere / "bank"
    shutil.copytree(example_bank, bank)
    env = dict(os.environ, PYTHONPATH=str(site))
    code = (
        "import mptkit, mptkit._schema as s, mptkit._io as i\n"
        "print(mptkit.__file__)\n"
        "print(s.schema_dir())\n"
        "print(i.validate('bank')['valid'])\n"
        "print(s.check_tensors({'prompt_embeddings': {'dtype': 'F32', 'shape': [4]}}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    file, sdir, valid, problems = r.stdout.splitlines()
    assert Path(file).is_relative_to(site), file
    assert Path(sdir) == site / "mptkit" / "schemas"
    assert valid == "True"
    assert "expected 2 dimensions, found 1" in problems
    r = subprocess.run(
        [sys.executable, "-m", "mptkit", "validate", "bank"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "bank: valid (bank)\n", r.stderr


def test_version_and_help_list_every_command():
    r = run_mptkit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mptkit, version {mptkit.__version__}"
    from mptkit.cli import main

    r = run_mptkit("--help")
    assert r.returncode == 0
    listed = r.stdout.split("Commands:")[1]
    for name, cmd in main.commands.items():
        if not cmd.hidden:
            assert f"\n  {name} " in listed, name
    assert {"validate", "inspect"} <= set(main.commands)
    for name in main.commands:
        r = run_mptkit(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, name


def test_console_script_and_python_m(example_bank):
    script = Path(sys.executable).parent / "mptkit"
    assert script.exists(), "the mptkit console script is installed beside python"
    r = subprocess.run([str(script), "inspect", str(example_bank)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "tasks T          4" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mptkit", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Usage:" in r.stdout and "validate" in r.stdout
    r = run_mptkit("no-such-command")
    assert r.returncode == 2 and "No such command" in r.stderr
