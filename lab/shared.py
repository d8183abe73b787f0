"""Where the project's shared material lives: ``shared/`` beside the repository (as in CI's fresh
clone), overridable with environment variables for other layouts."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CLUSTERMESH_SHARED_DIR", REPO_ROOT.parent / "shared"))
CONFORMANCE_DIR = Path(os.environ.get("CILIUM_CONFORMANCE_DIR", SHARED_DIR / "conformance" / "cilium"))
REFERENCE_DOC = Path(os.environ.get("CILIUM_REFERENCE_DOC", SHARED_DIR / "reference" / "cilium-clustermesh.md"))
