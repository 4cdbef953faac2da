"""DeepMaxent: one neural network for all species of a region, trained with MaxEnt's normalised Poisson loss.

After Ryckewaert et al. (arXiv 2412.19217). A shared trunk (MLP over covariates and/or embeddings) feeds one
linear output per species, ``f_s(x)``. For species ``s`` the loss is MaxEnt's: minus the mean over its
presences of ``log softmax_i f_s(x_i)``, the softmax running over every site that takes part for ``s``
(presences of all species plus background: so the other species' records act as a target-group background,
the bias correction Phillips et al. 2009 showed on this very benchmark). Rare species borrow the trunk that the
common species shape. Prediction is MaxEnt's cloglog, ``1 - exp(-exp(H_s) p_s(x))`` with ``p_s`` the fitted
distribution over the background and ``H_s`` its entropy.

Written here rather than taken from a library: no maintained package ships a multi-species MaxEnt network. The
fitted weights are plain numpy arrays (prediction needs no torch), so a bundle holds data, not code.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ecoalign.sdm.species_model import (
    SpeciesModelMixin,
    as_features,
    as_targets,
    resolve_n_jobs,
)

log = logging.getLogger(__name__)


@contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_UNUSED = -1e9  # logit offset of the rows a species does not use (see fit)


@lru_cache(maxsize=1)
def _bank_dropout():
    """Dropout for full-batch training whose masks are rows of a bank drawn once and reassigned to the rows at
    random every step: each element is still kept with probability 1 - p, at a small fraction of the cost of a
    fresh Bernoulli draw per element per step (a third of the fit before). Built lazily: torch is imported only
    when a network is trained; prediction is numpy."""
    import torch

    class BankDropout(torch.nn.Module):
        def __init__(self, rows: int, width: int, p: float):
            super().__init__()
            self.register_buffer("bank", (torch.rand(rows, width) >= p).to(torch.float32) / (1.0 - p))

        def forward(self, h):
            if not self.training:
                return h
            return h * self.bank[torch.randint(0, self.bank.shape[0], (h.shape[0],))]

    return BankDropout


class DeepMaxent(SpeciesModelMixin, BaseEstimator):
    """Multi-species presence-only model (normalised Poisson loss over presences and background), scikit-learn style.

    ``fit(X, Y)``: ``Y`` (n, S) with 1 = presence of that species at the row, 0 = background (or another
    species' record, target-group background), NaN = row not used for that species (e.g. inside a
    pseudo-absence exclusion buffer). Features are standardised inside the model.

    Parameters: ``hidden`` (trunk widths), ``epochs`` (full-batch AdamW steps), ``learning_rate``,
    ``weight_decay``, ``dropout``, ``clamp`` (covariates outside the range of the fitted rows predict as at its
    edge, MaxEnt's default: the network's linear pieces would otherwise extrapolate without bound),
    ``min_presences`` (fewer: species skipped with the reason), ``random_state``, ``n_jobs`` (torch threads, at
    most the cores available to this process; problems under ~20,000 rows use one).
    """

    # 100 steps at 6e-3 matched 200 at 3e-3 in out-of-fold AUC on the disdat training records, at half the cost
    def __init__(self, hidden: Sequence[int] = (64, 64), epochs: int = 100, learning_rate: float = 6e-3,
                 weight_decay: float = 1e-4, dropout: float = 0.1, clamp: bool = True, min_presences: int = 2,
                 random_state: int = 0, n_jobs: int | None = None):
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.clamp = clamp
        self.min_presences = min_presences
        self.random_state = random_state
        self.n_jobs = n_jobs

    task = "presence"

    def __setstate__(self, state):
        # networks saved before clamping existed were fitted and predict without it: keep them so (and clone-able)
        state = dict(state)
        state.setdefault("clamp", False)
        super().__setstate__(state)

    def fit(self, X, Y, species: Sequence[str] | None = None, sample_weight=None):
        import torch

        Xa, names = as_features(X)
        Ya, species_names, one_d = as_targets(Y, Xa.shape[0], species, allow_nan=True)
        self._set_feature_names(Xa, names)
        used = np.isfinite(Ya)
        pres = np.where(used, Ya > 0, False)
        n_pres = pres.sum(axis=0)
        skipped = {s: f"{int(n)} presences < min {self.min_presences}"
                   for s, n in zip(species_names, n_pres) if n < self.min_presences}
        for s, u, p in zip(species_names, used.T, pres.T):
            if s not in skipped and int(u.sum() - p.sum()) < 1:
                skipped[s] = "no background rows"
        keep = [j for j, s in enumerate(species_names) if s not in skipped]
        self._finish_species(species_names, skipped, keep, one_d)
        # standardised over every row given (the landscape, thinned background included), then rows no species
        # uses are left out of training: they add nothing to the loss but cost
        self.x_mean_ = Xa.mean(axis=0)
        self.x_min_, self.x_max_ = Xa.min(axis=0), Xa.max(axis=0)
        sd = Xa.std(axis=0)
        self.x_scale_ = np.where(sd > 0, sd, 1.0)
        rows = used[:, keep].any(axis=1)
        if not rows.all():
            Xa, used, pres = Xa[rows], used[rows], pres[rows]
        Z = (Xa - self.x_mean_) / self.x_scale_
        W = pres[:, keep] / n_pres[keep][None, :]                      # presence weights: 1/n_s at each record
        mask = used[:, keep]
        rng = np.random.default_rng(self.random_state)
        # small problems run single-threaded: below ~20,000 rows thread hand-offs cost more than they save
        threads = min(resolve_n_jobs(self.n_jobs), max(1, len(Z) // 20_000))
        with _torch_threads(threads):
            torch.manual_seed(int(rng.integers(2**31)))
            layers, width = [], Z.shape[1]
            for h in self.hidden:
                layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU()]
                if self.dropout:
                    layers.append(_bank_dropout()(len(Z), int(h), float(self.dropout)))
                width = int(h)
            layers.append(torch.nn.Linear(width, len(keep)))
            net = torch.nn.Sequential(*layers)
            opt = torch.optim.AdamW(net.parameters(), lr=float(self.learning_rate),
                                    weight_decay=float(self.weight_decay))
            xt = torch.as_tensor(Z, dtype=torch.float32)
            # species x rows: each species' distribution over its rows is a contiguous row for the softmax (a
            # softmax down the columns of a rows x species array is a strided reduction, slower in torch)
            wt = torch.as_tensor(W.T, dtype=torch.float32).contiguous()
            # rows not used for a species: a logit offset whose exp underflows to 0 (out of the softmax) and which,
            # unlike -inf, stays finite times their zero weight, so the loss needs no masking pass
            off = torch.as_tensor(np.where(mask.T, 0.0, _UNUSED), dtype=torch.float32).contiguous()
            net.train()
            for _ in range(int(self.epochs)):
                opt.zero_grad(set_to_none=True)
                logp = torch.log_softmax(net(xt).T + off, dim=1)  # each species: a distribution over its rows
                loss = -(wt * logp).sum(1).mean()
                loss.backward()
                opt.step()
            self.weights_ = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                             for m in net if isinstance(m, torch.nn.Linear)]
        self.loss_ = float(loss.detach())
        log.debug("DeepMaxent: %d species, %d rows, %d epochs, final loss %.4f", len(keep), len(Z), self.epochs,
                  self.loss_)
        # cloglog calibration per species, from the fitted distribution over its background rows
        F = self._raw(Xa)
        bg = mask & ~pres[:, keep]
        self.log_norm_ = np.empty(len(keep))
        self.entropy_ = np.empty(len(keep))
        for j in range(len(keep)):
            f = F[bg[:, j], j]
            m = f.max()
            lse = m + np.log(np.exp(f - m).sum())
            p = np.exp(f - lse)
            self.log_norm_[j] = lse
            self.entropy_[j] = float(-(p * np.log(np.maximum(p, 1e-300))).sum())
        return self

    def _raw(self, Xa: np.ndarray) -> np.ndarray:
        h = (Xa - self.x_mean_) / self.x_scale_
        for i, (w, b) in enumerate(self.weights_):
            h = h @ w + b
            if i < len(self.weights_) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict_proba(self, X) -> np.ndarray:
        """cloglog suitability in [0, 1], shape (n, len(species_))."""
        check_is_fitted(self, "weights_")
        Xa = self._features(X)
        if self.clamp:
            Xa = np.clip(Xa, self.x_min_, self.x_max_)
        log_p = self._raw(Xa) - self.log_norm_[None, :]
        return -np.expm1(-np.exp(np.minimum(log_p + self.entropy_[None, :], 50.0)))

