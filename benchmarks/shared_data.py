"""Where the benchmark scripts find ../shared/data (CVZOO_SHARED overrides, as it does for the tests)."""
import os
from pathlib import Path

SHARED = Path(os.environ.get("CVZOO_SHARED", Path(__file__).resolve().parents[2] / "shared")).resolve() / "data"
