"""When do a down-sampled forest's species pay for a second thread? CPU and wall seconds, side by side.

``MultiSpeciesModel(estimator="rf_down")`` fits one down-sampled forest per species; species may run in parallel
threads. A tree on 2 x n_presences rows is mostly Python overhead, which holds the GIL, until the rows are many.
This script fits the same species three ways in one run: every species threaded, the shipped plan (species with
fewer than ``_MIN_PRESENCES_PER_THREAD`` presences one after another, the rest threaded), and all serially, and
prints the median over repeats of process CPU (all threads) and wall seconds:

- synthetic species of a given presence count against 10,000 background rows (the crossover);
- the disdat training records (``../shared/data/occurrences/disdat_dev``): every species of a region, as the
  default ensemble's forest member fits them on all rows.

    python benchmarks/bench_species_threads.py                 # 2 threads, 3 repeats
    python benchmarks/bench_species_threads.py --threads 4 --repeats 5

Measured (2-core AMD EPYC, 2026-12-02; CPU s / wall s, median of 3):

    case                                   all threaded    shipped (< 50 serial)   all serial
    synthetic 52 species x 20 presences    0.77 / 0.63     0.33 / 0.33             0.34 / 0.34
    synthetic 52 species x 40 presences    0.94 / 0.69     0.48 / 0.48             0.45 / 0.45
    synthetic 52 species x 55 presences    1.05 / 0.68     0.81 / 0.53             0.59 / 0.59
    synthetic 52 species x 300 presences   3.26 / 1.69     3.23 / 1.69             3.05 / 3.05
    disdat AWT, NZ, SA (122 species)       2.41 / 1.56     1.89 / 1.31             1.68 / 1.69
                                                           0.78x / 0.84x           0.70x / 1.08x

Through the default ensemble (``bench_sdm_disdat.py --methods ensemble``, same machine): 34.1 CPU s threaded before,
28.1 s with the shipped plan, 26.7 s with ``--n-jobs 1``; the same predictions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sdm_disdat import DATA, NOT_PREDICTORS, tasks  # noqa: E402  (the same regions)

PLANS = {"all threaded": 0, "shipped": None, "all serial": 10**9}  # _MIN_PRESENCES_PER_THREAD per plan


def timed_fit(X: np.ndarray, Y: np.ndarray, threads: int, min_presences_per_thread: int | None,
              repeats: int) -> tuple[float, float]:
    """Median (CPU s, wall s) of fitting the forest member (75 trees per species) on X, Y."""
    import ecoalign.sdm.estimators as est

    shipped = est._MIN_PRESENCES_PER_THREAD
    est._MIN_PRESENCES_PER_THREAD = shipped if min_presences_per_thread is None else min_presences_per_thread
    cpu, wall = [], []
    try:
        for _ in range(repeats):
            model = est.MultiSpeciesModel(estimator="rf_down", params={"n_estimators": 75}, task="presence",
                                          min_presences=1, n_jobs=threads, missing_targets="ignore")
            c, w = time.process_time(), time.perf_counter()
            model.fit(X, Y)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
    finally:
        est._MIN_PRESENCES_PER_THREAD = shipped
    return statistics.median(cpu), statistics.median(wall)


def synthetic(n_presences: int, n_species: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n_species species of n_presences records each (shifted Gaussians) beside 10,000 background rows."""
    rng = np.random.default_rng(seed)
    n_bg = 10_000
    X = rng.normal(size=(n_bg + n_species * n_presences, 13))
    Y = np.full((len(X), n_species), np.nan)
    Y[:n_bg] = 0
    for s in range(n_species):
        rows = slice(n_bg + s * n_presences, n_bg + (s + 1) * n_presences)
        X[rows] += rng.normal(scale=0.5, size=13)
        Y[rows, s] = 1
    return X, Y


def disdat(region_names: list[str]):
    """(name, X, Y) per region and group: presence records of every species against the 10,000 background points
    (other species' records NaN for a species, the random background 0)."""
    for region, group, po, bg, _test in tasks(DATA, region_names):
        cols = [c for c in bg.columns if c not in NOT_PREDICTORS and np.issubdtype(bg[c].dtype, np.number)]
        species = sorted(po["spid"].unique())
        X = np.r_[po[cols].to_numpy(float), bg[cols].to_numpy(float)]
        Y = np.full((len(X), len(species)), np.nan)
        Y[len(po):] = 0
        for j, s in enumerate(species):
            Y[np.flatnonzero(po["spid"].to_numpy() == s), j] = 1
        yield f"{region}/{group} ({len(species)} species, median {int(np.median(po['spid'].value_counts()))} " \
              f"presences)", X, Y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--regions", default="AWT,NZ,SA")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import ecoalign.sdm.estimators as est

    print(f"{a.threads} threads; shipped plan: species with < {est._MIN_PRESENCES_PER_THREAD} presences serially; "
          f"median of {a.repeats}; CPU s / wall s")
    cases = [(f"synthetic: 52 species x {n} presences", *synthetic(n, 52)) for n in (20, 40, 55, 100, 300)]
    totals = {plan: [0.0, 0.0] for plan in PLANS}
    for name, X, Y in [*cases, *disdat(a.regions.split(","))]:
        timed_fit(X, Y[:, :2], a.threads, None, 1)  # warm-up: imports and first allocations
        cells = []
        for plan, minimum in PLANS.items():
            cpu, wall = timed_fit(X, Y, a.threads, minimum, a.repeats)
            cells.append(f"{plan} {cpu:5.2f} / {wall:5.2f}")
            if not name.startswith("synthetic"):
                totals[plan][0] += cpu
                totals[plan][1] += wall
        print(f"{name:52s} " + "   ".join(cells), flush=True)
    base_cpu, base_wall = totals["all threaded"]
    for plan, (cpu, wall) in totals.items():
        print(f"disdat total, {plan:12s}: CPU {cpu:6.2f} s ({cpu / base_cpu:.2f}x all threaded), wall {wall:6.2f} s "
              f"({wall / base_wall:.2f}x)")


if __name__ == "__main__":
    main()
