"""dm-GAN (Jiao, Xiao, Li 2023): G = G2 o G1 against N site discriminators, on one machine or across sites.

Networks: ``generator`` (:class:`~breastgan.models.dmgan.DmGANGenerator`: G1, the multi-code
inversion of a pretrained breastgan noise generator ``recipe.g1.generator``, frozen; G2, the ResNet
refiner of ``model.generator`` (``resnet_generator``, 9 blocks, dropout)), ``discriminators`` (a
:class:`~breastgan.training.sites.bank.DiscriminatorBank` of N ``model.discriminator`` PatchGANs,
one per shard; one machine only) and ``codes`` (the code sets and alphas G1 fitted to the training
images: patient data, never part of the model file or a package).

One machine (Algorithm 1 of the seed): the training set is cut into N shards (``recipe.shards``:
by breast area, any manifest column, or a shard file; pi_j = shard fractions). Before the first
step G1 inverts every training image (``recipe.g1.fit``: mGANprior's SGD lr 1 x 3000 steps by
default); the alpha prior of the sampling rule is fitted to the inverted alphas. Each step draws a
batch from every shard; G renders the codes of those images; every D_j is updated on its shard's
real batch vs its fakes, then returns d g_loss_j / d fake_j under the updated D_j (the AsynDGAN
order); the generator loss is sum_j pi_j g_loss_j (Eq. 2), back-propagated through the returned
gradients (the split backward, identical to one autograd graph). An optional L1 term to the
inverted image (``recon_weight``, not in the paper, default 0) is added to G's loss.

Across sites (``recipe.sites``, or ``breastgan train --sites host:port --num-sites N``): the
discriminators and the real images stay at the sites (``breastgan site``); the coordinator holds no
images, so G2 reads codes from the sampling rule (``g1_input: sampled``) instead of codes fitted to
images it cannot see; it sends generated batches and receives losses and gradients only
(training/sites/remote.py). Asynchronous mode uses the answers that arrive by the deadline; an
answer to an earlier step's fakes is applied by re-rendering those fakes' inputs with the current G
(bounded staleness).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from breastgan.config import ConfigError
from breastgan.data.base import TensorDataset, build_dataset
from breastgan.losses import LOSSES, AdversarialLoss
from breastgan.models.dmgan import DmGANArgs, DmGANGenerator
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, resolve_args
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.logger import get_logger
from breastgan.training.recipes.base import RECIPES, OptimizerSpec, Recipe, RecipeArgs, StepOutput, StreamSpec, render_in_eval
from breastgan.training.recipes.gan import to_model_range
from breastgan.training.sites.combine import renormalise, weighted_backward
from breastgan.training.sites.remote import SitesOptions
from breastgan.training.sites.shards import ShardBy, Shards, make_shards


class FitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(3000, ge=1, le=1_000_000, description="optimisation steps per image (mGANprior: 3000)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="mGANprior: SGD")
    lr: float = Field(1.0, gt=0, le=100, description="mGANprior: 1 with SGD; ~0.05 with Adam")
    batch_size: int = Field(16, ge=1, le=4096, description="images optimised together (each with its own codes)")
    perceptual_weight: float = Field(0.0, ge=0, description="optional perceptual term (needs local backbone weights); 0: pixel MSE only")
    seed: int = 0


class G1Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generator: str = Field(description="the pretrained noise generator: a breastgan run, checkpoint or package (the paper: a progressive GAN)")
    checkpoint: str = "latest"
    layer: int = Field(8, ge=0, le=64, description="split layer (paper: 8; `breastgan models` / docs/inversion.md list a generator's split points)")
    n_codes: int = Field(20, ge=1, le=256, description="latent codes per image (paper: 20)")
    fit: FitOptions = Field(default_factory=FitOptions)
    train_codes: bool = Field(False, description="keep optimising the fitted codes and alphas with G's adversarial loss")


class DmGANRecipeArgs(RecipeArgs):
    g1: G1Options
    g2_input: Literal["image", "features"] = Field("image", description="what G2 reads: G1's image or its fused layer-l features")
    g1_input: Literal["inverted", "sampled"] | None = Field(
        None, description="G's training input: codes fitted to the training images (one machine; the paper) or codes of the sampling "
                          "rule (default across sites, where the coordinator holds no images)")
    sampling: Literal["alpha_gaussian", "interpolate"] = Field("alpha_gaussian", description="the rule for new images (models/dmgan.py)")
    n_discriminators: int = Field(10, ge=1, le=256, description="N site discriminators and shards (paper: 10)")
    shards: ShardBy = Field(default_factory=ShardBy)
    bank_mode: str = Field("auto", description="how one machine runs the N discriminators: loop, grouped, vmap or auto")
    recon_weight: float = Field(0.0, ge=0, description="L1 of G's image to the inverted training image (not in the paper)")
    sites: SitesOptions | None = Field(None, description="train against remote sites (breastgan site) instead of local discriminators")
    alpha_prior: str | None = Field(None, description="g1_input 'sampled': a `breastgan invert` output (folder or codes.safetensors) "
                                                      "whose alphas give the alpha_gaussian rule its statistics, e.g. the coordinator's own or "
                                                      "public images (default: unfitted, alpha 1)")


class _NoImages(TensorDataset):
    """The coordinator's primary stream across sites: as many items as the sites hold, no pixels.

    The loop counts epochs over its primary stream; across sites an epoch is then one pass over the
    sites' images (reported at join time), while the coordinator never holds one."""

    def __init__(self, count: int, channels: int, size: tuple[int, int], fingerprint: str):
        from breastgan.data.base import DatasetInfo

        info = DatasetInfo(name="sites", image_size=tuple(size), channels=channels)
        super().__init__(torch.zeros(count, channels, 1, 1), torch.zeros(count, dtype=torch.long), info, fingerprint)


def shard_dataset(ds: Any, indices: list[int], j: int) -> TensorDataset:
    idx = torch.as_tensor(indices, dtype=torch.long)
    images, labels = ds.get_batch(idx)
    return TensorDataset(images, labels, ds.info, source=f"{ds.fingerprint()}:shard{j}")


def read_alphas(path: str, G: DmGANGenerator) -> torch.Tensor:
    """The fitted alphas (M, N, C_l) of a `breastgan invert` output, checked against G1's codes and layer."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = Path(path)
    f = f / "codes.safetensors" if f.is_dir() else f
    if not f.is_file():
        raise ConfigError(f"recipe.alpha_prior: {f} not found (a `breastgan invert` output folder or its codes.safetensors)")
    try:
        tensors = load_file(str(f))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"recipe.alpha_prior: {f}: not a safetensors file ({exc})") from None
    a = tensors.get("alphas")
    want = (G.n_codes, G.feature_channels)
    if a is None or a.ndim != 3 or tuple(a.shape[1:]) != want or a.shape[0] < 2 or not torch.isfinite(a).all():
        got = tuple(a.shape) if a is not None else "no tensor 'alphas'"
        raise ConfigError(f"recipe.alpha_prior: {f}: expected finite 'alphas' of shape (M >= 2, {want[0]}, {want[1]}) for "
                          f"{G.n_codes} codes at layer {G.layer}, got {got}")
    return a.float()


class FittedCodes(nn.Module):
    """G1's code sets and alphas fitted to the training images (M, N, latent) / (M, N, C_l): patient data."""

    def __init__(self, count: int, n_codes: int, latent_dim: int, channels: int, trainable: bool):
        super().__init__()
        self.codes = nn.Parameter(torch.zeros(count, n_codes, latent_dim), requires_grad=trainable)
        self.alphas = nn.Parameter(torch.full((count, n_codes, channels), 1.0 / n_codes), requires_grad=trainable)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))
        self.register_buffer("psnr_db", torch.zeros(count))


@RECIPES.register("dmgan", args=DmGANRecipeArgs,
                  summary="dm-GAN: multi-code inversion G1 + ResNet G2 against N PatchGAN site discriminators (one machine or `breastgan site`s)")
class DmGANRecipe(Recipe):
    default_loss = "nonsaturating"  # the seed's log D / log(1 - D) objective (Eq. 2), in its non-saturating form for G
    kind = "noise"

    def __init__(self, cfg, args: DmGANRecipeArgs, env):
        super().__init__(cfg, args, env)
        if env.ctx.world_size > 1:
            raise ConfigError("recipe dmgan runs in one process: its discriminators are spread over sites (recipe.sites / "
                              "`breastgan site`), not over torchrun ranks")
        self.remote = None
        self.input_mode = args.g1_input or ("sampled" if args.sites else "inverted")
        if args.sites and self.input_mode == "inverted":
            raise ConfigError("recipe.g1_input: 'inverted' needs the training images where G is; across sites the coordinator holds "
                              "none (sending codes fitted at a site would send a reconstruction of its images). Use 'sampled'")
        if self.input_mode == "sampled" and (args.sampling == "interpolate" or args.recon_weight):
            raise ConfigError("recipe.g1_input 'sampled' fits no codes: sampling 'interpolate' (which interpolates fitted code sets) "
                              "and recon_weight (an L1 to the inverted image) need g1_input 'inverted'")
        if args.alpha_prior is not None and self.input_mode != "sampled":
            raise ConfigError("recipe.alpha_prior is for g1_input 'sampled'; with 'inverted' the prior is fitted to the training images")
        self.loss: AdversarialLoss = LOSSES.build(cfg.loss.name, cfg.loss.args)
        self.pretrained = self._load_pretrained(args.g1)
        m = cfg.model
        if m.generator.component != "resnet_generator":
            raise ConfigError(f"model.generator.arch: dm-GAN's G2 is the ResNet encoder-decoder ('resnet_generator'), got {m.generator.component!r}")
        if m.discriminator.component != "patchgan":
            raise ConfigError(f"model.discriminator.arch: dm-GAN's site discriminators are PatchGANs ('patchgan'), got {m.discriminator.component!r}")
        channels = int(self.pretrained.channels)
        self.image_size = tuple(int(v) for v in self.pretrained.image_size)
        g2 = resolve_args(GENERATORS, "resnet_generator", m.generator.args, {"channels": channels}, "model.generator")
        self.d_args = resolve_args(DISCRIMINATORS, "patchgan", m.discriminator.args, {"channels": channels}, "model.discriminator")
        self.shards: Shards | None = None
        if args.sites is None:
            self.dataset = build_dataset(cfg.data.source.component, cfg.data.source.args)
            if tuple(self.dataset.info.image_size) != self.image_size or self.dataset.info.channels != channels:
                raise ConfigError(f"data.source: images are {self.dataset.info.channels}x{tuple(self.dataset.info.image_size)} but the "
                                  f"pretrained generator {args.g1.generator} makes {channels}x{self.image_size}")
            self.shards = make_shards(self.dataset, args.n_discriminators, args.shards)
            self.shard_sets = [shard_dataset(self.dataset, idx, j) for j, idx in enumerate(self.shards.indices)]
            small = min(len(s) for s in self.shard_sets)
            if small < cfg.train.batch_size:
                raise ConfigError(f"train.batch_size {cfg.train.batch_size} is larger than the smallest shard ({small} images); "
                                  f"lower it or use fewer discriminators (recipe.n_discriminators)")
        count = len(self.dataset) if args.sites is None else 0
        self.g_args = DmGANArgs.model_validate({
            "renderer": {"arch": self.pretrained.meta["arch"], "args": dict(self.pretrained.meta["args"])},
            "layer": args.g1.layer, "n_codes": args.g1.n_codes, "g2_input": args.g2_input, "sampling": args.sampling,
            "bank_size": count if args.sampling == "interpolate" else 0,
            "refiner": {k: g2[k] for k in ("ngf", "n_blocks", "norm", "dropout")},
            # the noise-generator contract, stated so loaders can check the model file without building it
            "image_size": list(self.image_size), "channels": channels,
        }).model_dump()
        self.pending: dict[tuple[int, int], torch.Tensor] = {}  # (site, step) -> z of fakes awaiting an answer (async)
        self.fit_report: dict[str, Any] = {}
        if args.sites is not None:
            from breastgan.training.sites.remote import RemoteSites

            shape = (channels, *self.image_size)
            ledger = getattr(env, "run_dir", None)
            self.remote = RemoteSites(args.sites, image_shape=shape, ledger_path=(ledger / "sites_ledger.jsonl") if ledger else None,
                                      log=get_logger())
            self.site_sizes = self.remote.start()
            total = sum(self.site_sizes.values())
            self.site_pi = {j: n / total for j, n in self.site_sizes.items()}
            self.dataset = _NoImages(total, channels, shape[1:], f"sites:{sorted(self.site_sizes.items())}")

    # -- the pretrained generator ---------------------------------------------------------------------
    @staticmethod
    def _load_pretrained(g1: G1Options):
        from breastgan.generation import LoadedGenerator, load_generator

        try:
            gen = load_generator(g1.generator, checkpoint=int(g1.checkpoint) if g1.checkpoint.isdigit() else g1.checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"recipe.g1.generator: {exc}") from None
        if not isinstance(gen, LoadedGenerator) or len(gen.models) != 1:
            raise ConfigError(f"recipe.g1.generator: {g1.generator} is a {gen.kind} model; G1 needs one noise generator (a run or package)")
        if gen.meta.get("arch") == "dmgan":
            raise ConfigError("recipe.g1.generator: a dm-GAN run cannot be G1's pretrained generator; give the generator it was built on")
        return gen

    # -- what is trained ---------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        from breastgan.training.recipes.cyclegan import init_normal

        G = DmGANGenerator(**self.g_args)
        init_normal(G.g2)  # pix2pix's init_weights('normal', 0.02) for what is trained; G1 keeps the pretrained weights
        G.load_renderer(self.pretrained.models[0].state_dict())
        if self.args.alpha_prior is not None:
            G.set_alpha_prior(read_alphas(self.args.alpha_prior, G))
        out: dict[str, nn.Module] = {"generator": G}
        if self.remote is None:
            from breastgan.training.sites.bank import DiscriminatorBank

            out["discriminators"] = init_normal(DiscriminatorBank(self.args.n_discriminators, self.d_args, mode=self.args.bank_mode))
        if self.input_mode == "inverted":
            out["codes"] = FittedCodes(len(self.dataset), G.n_codes, G.code_dim, G.feature_channels, self.args.g1.train_codes)
        return out

    def arch_args(self):
        out = {"generator": ("dmgan", self.g_args)}
        if self.remote is None:
            out["discriminators"] = ("patchgan", self.d_args)
        return out

    def optimizers(self) -> dict[str, OptimizerSpec]:
        o = self.cfg.optim

        def adam(lr: float):
            return lambda params: torch.optim.Adam(params, lr=lr, betas=o.betas)

        g_modules = ("generator", "codes") if self.input_mode == "inverted" else ("generator",)
        out = {"generator": OptimizerSpec(g_modules, adam(o.lr_g))}
        if self.remote is None:
            out["discriminators"] = OptimizerSpec(("discriminators",), adam(o.lr_d))  # elementwise Adam = one Adam per D_j
        return out

    def streams(self) -> dict[str, StreamSpec]:
        b = self.cfg.train.batch_size
        if self.remote is not None:
            return {"sites": StreamSpec(self.dataset, b * len(self.site_sizes))}
        # shard 0 is the primary stream: shards have equal counts (+-1), so its passes are the run's epochs
        return {f"shard{j}": StreamSpec(ds, b) for j, ds in enumerate(self.shard_sets)}

    def eval_reference(self):
        if self.remote is not None:
            raise ConfigError("train.eval: the coordinator holds no real images across sites; evaluate the run afterwards at a site")
        return self.dataset

    # -- G1's fit -------------------------------------------------------------------------------------
    def _fit_codes(self, env) -> None:
        from breastgan.generation.multicode_inversion import invert_multicode

        codes: FittedCodes = env.module("codes")  # type: ignore[assignment]
        G: DmGANGenerator = env.module("generator")  # type: ignore[assignment]
        f = self.args.g1.fit
        t0 = time.perf_counter()
        images = self.dataset.get_batch(torch.arange(len(self.dataset)))[0]
        fit = invert_multicode(G.g1, images.to(env.device), steps=f.steps, optimizer=f.optimizer, lr=f.lr,
                               perceptual_weight=f.perceptual_weight, seed=f.seed, batch_size=f.batch_size)
        with torch.no_grad():
            codes.codes.copy_(fit.codes.to(codes.codes.device))
            codes.alphas.copy_(fit.alphas.to(codes.alphas.device))
            codes.psnr_db.copy_(fit.psnr_db.to(codes.psnr_db.device))
            codes.fitted.fill_(1)
            G.set_alpha_prior(fit.alphas.to(G.alpha_mean.device))
            if G.sampling == "interpolate":
                G.set_bank(fit.codes.to(G.alpha_mean.device), fit.alphas.to(G.alpha_mean.device))
        psnr = fit.psnr_db.float()
        self.fit_report = {"images": int(psnr.numel()), "psnr_db_mean": float(psnr.mean()), "psnr_db_min": float(psnr.min()),
                           "seconds": round(time.perf_counter() - t0, 1), **fit.settings}
        get_logger().info(f"G1 inverted {psnr.numel()} training images with {G.n_codes} codes at layer {G.layer}: "
                       f"PSNR {float(psnr.mean()):.2f} dB mean ({self.fit_report['seconds']} s)")

    # -- the step -----------------------------------------------------------------------------------
    def train_step(self, env) -> StepOutput:
        if self.remote is not None:
            return self._remote_step(env)
        inverted = self.input_mode == "inverted"
        if inverted and int(env.module("codes").fitted) == 0:
            self._fit_codes(env)
        G = env.train_module("generator")
        codes: FittedCodes | None = env.module("codes") if inverted else None  # type: ignore[assignment]
        reals, fakes, picked = [], [], []
        for j in range(len(self.shard_sets)):
            batch = env.batch(f"shard{j}")
            reals.append(env.to_device(to_model_range(batch.images.float())))
            if codes is not None:  # the paper: G renders the codes G1 fitted to these very images
                gidx = torch.as_tensor(self.shards.indices[j], dtype=torch.long)[batch.indices].to(codes.codes.device)
                fakes.append(G.refine(codes.codes[gidx], codes.alphas[gidx]))
                picked.append(gidx)
            else:  # the sampling rule's codes, as generation will feed G
                fakes.append(G(env.to_device(env.randn(len(batch.indices), G.latent_dim))))
        fake = torch.stack(fakes)
        bank = env.module("discriminators")
        d_losses, g_losses, grads = bank.update(env.optimizers["discriminators"], self.loss, torch.stack(reals), fake.detach())
        pi = self.shards.pi
        d_total = sum(p * d for p, d in zip(pi, d_losses.tolist()))
        g_total = sum(p * g for p, g in zip(pi, g_losses.tolist()))
        env.check_finite(torch.tensor([d_total, g_total]), "discriminator/generator loss")
        out = {"loss_d": torch.tensor(d_total), "loss_g": torch.tensor(g_total)}
        opt = env.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        if self.args.recon_weight and codes is not None:
            with torch.no_grad():
                target = torch.stack([G.g1(codes.codes[g], codes.alphas[g]) for g in picked])
            recon = F.l1_loss(fake, target)
            out["recon_l1"] = recon.detach()
            # the adversarial part through its returned gradients (a surrogate with the same gradient) plus the L1 term
            surrogate = sum(p * (fake[j] * grads[j]).sum() for j, p in enumerate(pi))
            (surrogate + self.args.recon_weight * recon).backward()
        else:
            weighted_backward([fake[j] for j in range(fake.shape[0])], [grads[j] for j in range(grads.shape[0])], pi)
        opt.step()
        return StepOutput(out)

    def _remote_step(self, env) -> StepOutput:
        G = env.train_module("generator")
        assert self.remote is not None
        b, step = self.cfg.train.batch_size, env.step
        targets = self.remote.idle_sites() if self.args.sites.mode == "async" else self.remote.live_sites()
        fakes: dict[int, torch.Tensor] = {}
        for j in sorted(self.site_sizes):  # one draw per site in a fixed order: the draws do not depend on who is idle
            z = env.randn(b, G.latent_dim)
            if j in targets:
                self.pending[(j, step)] = z
                fakes[j] = G(env.to_device(z))
        answers = self.remote.exchange({j: f.detach().cpu() for j, f in fakes.items()}, step)
        for key in [k for k in self.pending if k[1] < step - self.args.sites.max_staleness]:
            del self.pending[key]
        if not answers:
            return StepOutput({"sites_answered": torch.tensor(0.0)}, completed_step=False)
        weights = renormalise(self.site_pi, set(answers))
        used, grads, w = [], [], []
        for j, ans in sorted(answers.items()):
            z = self.pending.pop((j, ans.step), None)
            if ans.step == step and j in fakes:
                used.append(fakes[j])
            elif z is not None:
                used.append(G(env.to_device(z)))  # a stale answer: its fakes' inputs re-rendered with the current G
            else:
                continue
            grads.append(ans.grad.to(env.device))
            w.append(weights[j])
        d_total = sum(weights[j] * a.d_loss for j, a in answers.items())
        g_total = sum(weights[j] * a.g_loss for j, a in answers.items())
        env.check_finite(torch.tensor([d_total, g_total]), "site losses")
        opt = env.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        if used:
            weighted_backward(used, grads, w)
            opt.step()
        return StepOutput({"loss_d": torch.tensor(d_total), "loss_g": torch.tensor(g_total),
                           "sites_answered": torch.tensor(float(len(answers))),
                           "stale_answers": torch.tensor(float(sum(a.step != step for a in answers.values())))})

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # the loop asks for the recipe's state exactly when it writes a checkpoint: the sites checkpoint theirs then too
        if self.remote is not None:
            self.remote.request_checkpoint(self.env.step)
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def on_finish(self) -> None:
        if self.remote is not None:
            self.remote.close()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dmgan": {"g1_input": self.input_mode, "sampling": self.args.sampling}}
        if self.shards is not None:
            out["dmgan"]["shards"] = {"by": self.shards.by, "sizes": [len(i) for i in self.shards.indices], "pi": self.shards.pi}
        if self.fit_report:
            out["dmgan"]["g1_fit"] = self.fit_report
        if self.remote is not None:
            out["dmgan"]["sites"] = {"sizes": self.site_sizes, "ledger": self.remote.ledger_totals()}
        return out

    # -- outputs --------------------------------------------------------------------------------------
    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        G = modules["generator"]
        z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
        return render_in_eval(G, z, self.env.device)  # G2's dropout is for training only

    def model_file(self, arch_args) -> ModelFile:
        G_args = arch_args["generator"][1]
        return ModelFile(
            kind="noise", components={"generator": ComponentSpec(arch="dmgan", args=G_args, module="generator")},
            inputs={"latent": {"dim": int(self.env.module("generator").latent_dim), "distribution": "standard_normal"}},
            output={"value_range": [0.0, 1.0], "channels": int(self.pretrained.channels), "image_size": list(self.image_size),
                    "bit_depth": self.dataset.info.bit_depth},
        )
