"""``breastgan site``: run one dm-GAN site (its discriminator and its real images) for a remote coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def site(
        config: Path = typer.Option(..., "--config", "-c", help="site.yaml: site_id, coordinator host:port, discriminator, loss, optim, batch_size, seed, checkpoint_every, data."),
        data: Path = typer.Option(..., "--data", help="This site's real images: a prepared dataset folder (manifest.csv; data.split/shard select rows) or an image folder."),
        site_dir: Optional[Path] = typer.Option(None, "--site-dir", help="Checkpoint, ledger and log folder (overrides site_dir; default sites/site<id>)."),
    ) -> None:
        """Serve a dm-GAN coordinator: update this site's discriminator on local real images; only gradients and scalars leave."""
        from breastgan.training.sites.site_worker import load_site_config, run_site

        cfg = load_site_config(config, site_dir=site_dir)
        summary = run_site(cfg, data)
        err_console.print(f"site {summary['site_id']}: {summary['answered']} answers, last step {summary['last_step']}; "
                          f"sent {summary['ledger'].get('bytes_sent', 0)} bytes ({', '.join(sorted(summary['ledger'].get('kinds_sent', {})))})")
