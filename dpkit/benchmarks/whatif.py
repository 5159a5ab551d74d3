"""`dpkit bench whatif`: the cost model at cluster scale (no processes are started).

For each link preset (and this machine's calibration, if `dpkit bench calibrate` left one next
to this folder): the worker count beyond which a synchronous parameter server with k shards is
slower than a ring all-reduce, per model size; and the seconds per synchronisation of every
pattern up to 1,024 workers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.whatif import MODEL_SIZES, comm_scan, crossover_table, ps_ring_crossover
from ..cost.model import PRESETS, Link

KS = (1, 2, 4, 8, 16, 64, 256)


def links_for(out: Path) -> dict[str, Link]:
    links = dict(PRESETS)
    calib = out.parent / "bench-calibrate" / "calibration.json"
    if calib.exists():
        links["this machine"] = Link.load(calib)
    return links


def main(out: Path, args: argparse.Namespace) -> None:
    from ..viz.cost_plots import crossover_plot, whatif_plot

    links = links_for(out)
    n_max = 1024
    table = crossover_table(MODEL_SIZES, KS, links, n_max)
    table.to_csv(out / "crossover.csv", index=False)
    wide = table.pivot_table(
        index=["link", "model"], columns="servers", values="crossover_workers", aggfunc="first", dropna=False
    )
    print(f"workers beyond which a k-shard sync parameter server is slower than a ring all-reduce (n <= {n_max}; NaN: never)")
    print(wide.to_string(float_format=lambda v: f"{v:.0f}"))
    for name, link in links.items():
        slug = name.replace(" ", "_")
        crossover_plot(table, name).savefig(out / f"crossover_{slug}.png", dpi=110, bbox_inches="tight")
        size = MODEL_SIZES["100M params"]
        scan = comm_scan(size, link, ks=(1, 16, 256))
        scan.to_csv(out / f"scan_{slug}.csv", index=False)
        marks = {f"ps k={k}": ps_ring_crossover(size, k, link, n_max) for k in (1, 16, 256)}
        whatif_plot(scan, f"100M parameters on {link.describe()}", marks).savefig(
            out / f"scan_{slug}.png", dpi=110, bbox_inches="tight"
        )
    print(f"results: {out}/crossover.csv, crossover_*.png, scan_*.csv/png")
