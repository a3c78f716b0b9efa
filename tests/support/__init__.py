"""Helpers of the test suite, imported as ``tests.support.<module>`` (see tests/README.md)."""

from pathlib import Path

#: the repository's root folder, and the example bank committed under it
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_BANK = ROOT / "examples" / "bank"
