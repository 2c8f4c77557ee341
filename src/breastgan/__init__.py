"""breastgan: trustworthy synthetic breast images.

Python API (the CLI calls the same functions)::

    import breastgan
    result = breastgan.train("configs/dcgan_phantom.yaml")          # or a RunConfig / dict
    gen = breastgan.load_generator(result.run_dir)
    images = gen.sample(16, seed=0)                                 # (16, 1, H, W) float in [0, 1]
    gen.save("out/", n=1000, seed=0, fmt="png", bit_depth=16)
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imports for type checkers; at run time they load lazily (fast CLI start-up)
    from breastgan.config import RunConfig, load_config
    from breastgan.generation import load_generator
    from breastgan.training.trainer import train

_LAZY = {
    "train": ("breastgan.training.trainer", "train"),
    "load_generator": ("breastgan.generation", "load_generator"),
    "load_config": ("breastgan.config", "load_config"),
    "RunConfig": ("breastgan.config", "RunConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'breastgan' has no attribute {name!r}")


__all__ = ["__version__", "train", "load_generator", "load_config", "RunConfig"]
