"""A tiny dm-GAN coordinator for the site tests: a small conv generator trained through RemoteSites.

Writes ``progress.jsonl`` (one line per step: who answered, who is live) and ``result.json`` in --out;
checkpoints G atomically (``G.pt``) when asked (--checkpoint-at) and at the end. Exit 3 with the
error in result.json when RemoteSites raises (sync mode, dead site).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from breastgan.training.sites.combine import renormalise, weighted_backward
from breastgan.training.sites.remote import RemoteSites, SitesOptions
from breastgan.training.sites.transport import SiteError, sha256_tensor
from breastgan.utils.atomic import atomic_path


class TinyGenerator(nn.Module):
    def __init__(self, nz: int = 8, size: int = 32):
        super().__init__()
        self.nz, self.s = nz, size // 4
        self.fc = nn.Linear(nz, 8 * self.s * self.s)
        self.body = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Upsample(scale_factor=2), nn.Conv2d(8, 1, 3, padding=1), nn.Tanh())

    def forward(self, z):
        return self.body(self.fc(z).view(-1, 8, self.s, self.s))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--num-sites", type=int, default=2)
    ap.add_argument("--mode", default="sync")
    ap.add_argument("--steps", type=int, default=4, help="at least this many steps")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--until-rejoin", type=int, default=None, help="async: keep stepping until this site rejoined and answered twice")
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--checkpoint-at", type=int, default=None)
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--max-staleness", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(msg)
        print(msg, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    G = TinyGenerator()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opts = SitesOptions(address=a.address, num_sites=a.num_sites, mode=a.mode, deadline_s=a.deadline, timeout_s=a.timeout,
                        join_timeout_s=60, max_staleness=a.max_staleness)
    rs = RemoteSites(opts, image_shape=(1, 32, 32), ledger_path=a.out / "ledger.jsonl", log=log)
    result: dict = {"answers": [], "error": None}
    z_of: dict[int, dict[int, torch.Tensor]] = {}  # step -> site -> codes (stale answers are replayed under the current G)
    grad_hashes: list[str] = []
    progress = open(a.out / "progress.jsonl", "a")
    try:
        n_real = rs.start()
        result["n_real"] = n_real
        pi = {j: n / sum(n_real.values()) for j, n in n_real.items()}
        step, rejoined_answers = 0, 0
        while step < a.max_steps:
            targets = rs.live_sites() if a.mode == "sync" else rs.idle_sites()
            z_of[step] = {j: torch.randn(a.batch, G.nz) for j in targets}
            with torch.no_grad():
                fakes = {j: G(z) for j, z in z_of[step].items()}
            answers = rs.exchange(fakes, step)
            inc = rs.incarnations()
            if answers:
                opt.zero_grad(set_to_none=True)
                w = renormalise(pi, set(answers))
                outs = [G(z_of[ans.step][j]) for j, ans in sorted(answers.items())]
                weighted_backward(outs, [ans.grad for _, ans in sorted(answers.items())], [w[j] for j in sorted(answers)])
                opt.step()
            for j, ans in sorted(answers.items()):
                grad_hashes += [sha256_tensor(ans.grad[i]) for i in range(ans.grad.shape[0])]
                result["answers"].append({"step": step, "site": j, "answered_step": ans.step, "incarnation": inc[j],
                                          "d_loss": ans.d_loss, "g_loss": ans.g_loss, "n_real": ans.n_real})
                if a.until_rejoin == j and inc[j] > 1:
                    rejoined_answers += 1
            progress.write(json.dumps({"step": step, "answered": sorted(answers), "live": rs.live_sites(),
                                       "incarnations": inc, "time": time.time()}) + "\n")
            progress.flush()
            z_of.pop(step - a.max_staleness - 1, None)
            if a.checkpoint_at == step:
                rs.request_checkpoint(step)
                with atomic_path(a.out / f"G_step{step}.pt") as tmp:
                    torch.save({"G": G.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            step += 1
            if step >= a.steps and (a.until_rejoin is None or rejoined_answers >= 2):
                break
            time.sleep(a.step_sleep)
        result["steps"] = step
        with atomic_path(a.out / "G.pt") as tmp:
            torch.save({"G": G.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        rc = 0
    except SiteError as exc:
        result["error"] = str(exc)
        rc = 3
    finally:
        try:
            rs.close(timeout_s=20)
        except Exception as exc:  # noqa: BLE001
            log(f"close failed: {exc}")
    result.update(deaths=rs.deaths, joins=rs.joins, stale_dropped=rs.stale_dropped, ledger_totals=rs.ledger_totals(),
                  log=log_lines, grad_sample_sha256=grad_hashes)
    with atomic_path(a.out / "result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
