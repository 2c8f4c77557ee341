"""Lesion preservation of a translated set: does translation add or remove lesions?

``breastgan evaluate --fake <translate output> --classifier <utility run>``: the folder written by
``breastgan translate`` names every input in its translation.json; each input and its translation go
through the same lesion/healthy classifier, and the report gives the fraction of images whose
predicted class flips and the mean absolute change of P(lesion) (the same computation translate
itself records, generation/translate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from breastgan.data.io import read_image


class LesionCheckError(ValueError):
    pass


def find_translation_record(fake: Path) -> tuple[dict[str, Any], Path]:
    """translation.json of a translate output (``fake`` is the output folder or its images/ folder)."""
    for folder in (fake, fake.parent):
        f = folder / "translation.json"
        if f.is_file():
            return json.loads(f.read_text()), folder
    raise LesionCheckError(f"--classifier: {fake} is not the output of `breastgan translate` (no translation.json in it or its "
                           "parent); the check compares each translated image with its input, which translation.json names")


def lesion_check(fake: str | Path, classifier: Any) -> dict[str, Any]:
    """``classifier``: a utility run directory or a generation.translate.Classifier."""
    import torch

    from breastgan.generation.translate import Classifier, lesion_preservation, lesion_probabilities, list_inputs, load_utility_classifier

    doc, out = find_translation_record(Path(fake))
    clf = classifier if isinstance(classifier, Classifier) else load_utility_classifier(Path(classifier))
    root, _ = list_inputs(Path(doc["input"]), doc.get("split"))
    images_dir = out / doc.get("images_dir", "images")
    before, after = [], []
    for rec in doc["images"]:
        src, dst = root / rec["name"], images_dir / rec["name"]
        if not dst.is_file():
            raise LesionCheckError(f"{dst}: listed in {out / 'translation.json'} but missing")
        before.append(torch.from_numpy(read_image(src).pixels)[None])
        after.append(torch.from_numpy(read_image(dst).pixels)[None])
    p_before = lesion_probabilities(clf.model, before, clf.image_size, clf.positive)
    p_after = lesion_probabilities(clf.model, after, clf.image_size, clf.positive)
    return {**lesion_preservation(p_before, p_after), "classifier": clf.source, "direction": doc.get("direction"),
            "input": doc["input"]}
