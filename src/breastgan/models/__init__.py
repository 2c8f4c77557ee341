"""Generator and discriminator registries.

Every architecture is a module that registers its classes with an argument model. Later recipes
(progressive GAN, dm-GAN, CycleGAN/pix2pix, DGAN-WP-TL) add modules here; the training loop only
relies on the small :class:`GeneratorBase` / discriminator call contract below.
"""

from breastgan.models.registry import DISCRIMINATORS, GENERATORS, GeneratorBase
from breastgan.models import dcgan  # noqa: F401  (registers dcgan, wgan_gp_critic)
from breastgan.models import dgan_wp_tl, projected  # noqa: F401  (register dgan_wp_tl G/D, projected D)
from breastgan.models import progan  # noqa: F401  (registers progan)
from breastgan.models import resnet_generator, unet, patchgan  # noqa: F401,E402  (registers resnet_generator, unet, patchgan)
from breastgan.models import dmgan  # noqa: F401,E402  (registers dmgan: G1 multi-code inversion + G2 refiner)

__all__ = ["GENERATORS", "DISCRIMINATORS", "GeneratorBase"]
