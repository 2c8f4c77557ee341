"""Sampling trained generators: from a run (latest/best checkpoint or a snapshot ensemble)."""

from breastgan.generation.loader import LoadedGenerator, load_generator
from breastgan.generation.writer import write_images

__all__ = ["LoadedGenerator", "load_generator", "write_images"]
