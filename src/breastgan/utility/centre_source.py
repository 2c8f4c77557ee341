"""The images of one centre (optionally one class and split) as a ``data.source`` for ``breastgan train``.

A centre cut from a public dataset by patient exists only inside the experiment config; the GAN
that this centre shares must be trained on exactly its images and no others. This names them by
item id in the prepared dataset, so the GAN config cannot drift from the experiment's partition.
"""

from __future__ import annotations

from typing import Any

from breastgan.utility.data import PreparedCentre, load_centre
from breastgan.utility.experiment import ExperimentConfig


def centre_training_source(cfg: ExperimentConfig, centre: str, label: str | None = None, split: str | None = None) -> dict[str, Any]:
    if centre not in cfg.centres:
        raise ValueError(f"--centre-source: {centre!r} is not a centre; centres are {sorted(cfg.centres)}")
    spec = cfg.centres[centre]
    if not isinstance(spec, PreparedCentre):
        raise ValueError(f"--centre-source: centre {centre!r} is a {spec.dataset} centre; use its own dataset options in the GAN config")
    if label is not None and label not in cfg.classes:
        raise ValueError(f"--label {label!r} is not one of classes {cfg.classes}")
    pool = load_centre(spec, cfg.classes, centre)
    keep = [i for i in range(len(pool))
            if (label is None or cfg.classes[int(pool.labels[i])] == label) and (split is None or pool.splits[i] == split)]
    if not keep:
        raise ValueError(f"centre {centre}: no images with label={label!r}, split={split!r}")
    where = {k: list(v) for k, v in spec.where.items()}
    where["item_id"] = sorted(pool.items[i] for i in keep)
    return {"dataset": "prepared", "path": str(spec.path.expanduser().resolve()), "split": None, "label_column": spec.label_column, "where": where}
