"""dm-GAN's site discriminators: one site's update (AsynDGAN protocol), the N-discriminator bank
for one machine, dataset shards and the coordinator's weighted backward.

Import the submodules directly (``breastgan.training.sites.discriminator``, ``.bank``, ``.shards``,
``.combine``); this package exports nothing so that importing it stays cheap.
"""
