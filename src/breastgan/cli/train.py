from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def train(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run configuration (see configs/). Default: DCGAN on built-in phantom patches."),
        set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: --set train.max_steps=500 --set loss.name=hinge (repeatable)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run directory from its latest checkpoint (exact continuation)."),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Write the run here instead of <output_dir>/<name>-<timestamp>."),
        sites: Optional[str] = typer.Option(None, "--sites", help="dm-GAN across sites: host:port where this coordinator hosts the rendezvous "
                                            "(each site runs `breastgan site`); sets recipe.sites.address."),
        num_sites: Optional[int] = typer.Option(None, "--num-sites", min=1, help="How many sites join (recipe.sites.num_sites); with --sites."),
        sites_mode: Optional[str] = typer.Option(None, "--sites-mode", help="sync (every site, every step) or async (answers by the deadline)."),
    ) -> None:
        """Train a GAN and write a run directory (config, checkpoints, sample grids, logs).

        Works the same under torchrun: `torchrun --nproc_per_node=2 -m breastgan train --config ...`.
        """
        from breastgan.training.trainer import train as train_api

        if resume is not None and config is not None:
            raise typer.BadParameter("use either --config (new run) or --resume (existing run), not both")
        if (sites is None) != (num_sites is None) or (sites_mode is not None and sites is None):
            raise typer.BadParameter("--sites and --num-sites go together (and --sites-mode needs them)")
        if sites is not None:
            set_ = [*set_, f"recipe.sites.address={sites}", f"recipe.sites.num_sites={num_sites}",
                    *([f"recipe.sites.mode={sites_mode}"] if sites_mode else [])]
        result = train_api(config, overrides=set_, run_dir=run_dir, resume=resume)
        err_console.print(f"run directory: {result.run_dir}  (step {result.step}, epoch {result.epoch}{', stopped early' if result.stopped_early else ''})",
                          markup=False, highlight=False)
        if result.stop_signal:
            import signal

            name = signal.Signals(result.stop_signal).name
            # a scheduler must see that the run did not finish: the shell's convention for "killed by a signal"
            err_console.print(f"stopped by {name} at step {result.step}; the final checkpoint was written; continue with "
                              f"`breastgan train --resume {result.run_dir}` (exit code {128 + result.stop_signal})", markup=False, highlight=False)
            raise SystemExit(128 + result.stop_signal)
