"""Dataset adapters: each turns one dataset's published layout into :class:`ImageRecord` s.

An adapter is a function registered in ``ADAPTERS`` with a pydantic model of its arguments;
``ADAPTERS.build(name, args)`` returns a :class:`DatasetListing`. Adding a dataset is one module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem
from breastgan.registry import Registry

ADAPTERS: Registry[Any] = Registry("dataset adapter")


def default_data_root() -> Path:
    """The shared real data: ``$BREASTGAN_DATA`` or ``<repo root>/../shared/data``."""
    env = os.environ.get("BREASTGAN_DATA")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[4]
    return repo_root.parent / "shared" / "data"


# one module per dataset; importing registers it
from breastgan.data.adapters import busi, cbis_ddsm, csv_manifest, inbreast, minimias, vindr  # noqa: E402,F401

__all__ = ["ADAPTERS", "Annotation", "DatasetListing", "ImageRecord", "InputProblem", "default_data_root"]
