"""Where the repository is, for the jobs and components that read its files or run its code."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
