"""Loading trained models of every kind (noise, translation, inversion) and writing what they make.

``load_generator`` reads run directories, checkpoint directories and (through the plug-in that
``breastgan.sharing`` registers) generator packages; see :mod:`breastgan.generation.kinds`.
"""

from breastgan.generation.kinds import KINDS, GeneratorLoadError, LoadedGenerator, LoadedInversion, LoadedModel, LoadedTranslator
from breastgan.generation.loader import load_generator
from breastgan.generation.source_loaders import register_source_loader
from breastgan.generation.writer import write_images

__all__ = ["KINDS", "GeneratorLoadError", "LoadedModel", "LoadedGenerator", "LoadedTranslator", "LoadedInversion",
           "load_generator", "register_source_loader", "write_images", "fit_codes"]


def __getattr__(name: str):
    if name == "fit_codes":
        from breastgan.generation.inversion import fit_codes

        return fit_codes
    raise AttributeError(f"module 'breastgan.generation' has no attribute {name!r}")
