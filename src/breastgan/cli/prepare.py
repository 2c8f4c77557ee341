"""``breastgan prepare``: raw dataset -> prepared dataset folder (or only the preflight scan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    @friendly_errors(exit_code=1)  # 1: preparation failed; 2: the --check scan excluded files
    def prepare_command(
        config: Path = typer.Option(..., "--config", "-c", help="prepare YAML config (see configs/prepare/)"),
        check: bool = typer.Option(False, "--check", help="only run the preflight scan of every input file"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override a config key, e.g. --set workers=1 --set mode=lenient"),
    ) -> None:
        """Turn a raw dataset into a prepared dataset folder: images, manifest, preflight report, summary."""
        from breastgan.data.prepare import load_config, prepare

        cfg = load_config(config, set_ or [])
        summary = prepare(cfg, check_only=check)
        s = summary.as_dict()
        err_console.print(
            f"{'preflight' if check else 'prepared'} {s['inputs']} input file(s): {s['ok']} ok, {s['warnings']} with warnings, "
            f"{s['excluded']} excluded -> {s['output']}"
        )
        nd = s["near_duplicates"]
        if nd.get("enabled"):
            rules = "; ".join(f"{k}: {v}" for k, v in nd.get("rules", {}).items())
            err_console.print(f"near-duplicate groups: {nd['groups']} ({nd.get('images_in_groups', 0)} images; pairs linked "
                              f"{nd.get('pairs_linked', {})}; rules {rules})")
        err_console.print(f"patient ids: {s['identifiers']['mode']}" + (f" (key {s['identifiers']['key_fingerprint']})"
                                                                         if "key_fingerprint" in s["identifiers"] else ""))
        for ex in s["excluded_files"][:20]:
            err_console.print(f"  excluded {ex['file']}: {ex['reason']}")
        typer.echo(json.dumps({k: s[k] for k in ("items", "counts_by_label", "counts_by_split", "patients_by_split", "excluded")}, indent=2))
        if s["excluded"] and check:
            raise typer.Exit(code=2)
