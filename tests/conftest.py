import atexit
import os
import shutil
import tempfile

# Hub client settings must be in place before huggingface_hub is first imported, so this folder is
# made at import time (before any fixture exists) and removed when the test process exits.
_HF_HOME = tempfile.mkdtemp(prefix="mptkit-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["MPTKIT_CACHE"] = os.path.join(_HF_HOME, "mptkit-cache")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ.pop("HF_TOKEN", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.support import EXAMPLE_BANK  # noqa: E402
from tests.support.banks import save_peft_bank  # noqa: E402

# Property tests are deterministic: the same examples on every run and machine, no example database.
settings.register_profile("mptkit", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("mptkit")


@pytest.fixture(scope="session")
def example_bank() -> Path:
    return EXAMPLE_BANK


@pytest.fixture(scope="session")
def peft_banks(tmp_path_factory):
    """``peft_banks(kind, dtype, safe)``: a PEFT-saved adapter folder, made once per session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("peft_banks")

    def get(kind="seq2seq", dtype="float32", safe=True):
        key = (kind, dtype, safe)
        if key not in cache:
            cache[key] = save_peft_bank(root / f"{kind}-{dtype}-{'st' if safe else 'bin'}", kind, dtype, safe)
        return cache[key]

    return get


@pytest.fixture
def cli():
    """Run the CLI in-process: ``cli("inspect", path)`` -> click Result (exit_code, stdout, stderr)."""
    from mptkit.cli import main

    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hub (:mod:`tests.fakehub`) that the client and mptkit talk to (``HF_ENDPOINT``), with
    a fresh HF cache (``HF_HOME``) and no token or offline setting from the environment."""
    from tests.fakehub import HubServer

    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.stop()
