"""Live drift statistics: PSI of each feature and of the prediction over a sliding window.

Every served row is binned against the model's ``drift_profile.json`` (docs/interfaces.md). The
prediction's PSI (predicted class frequencies, or the histogram of a regression's values, against
the training split's) exists for every model; a profile with no features (an image model, whose
input is a tensor [batch, C, H, W]) is watched on its outputs alone. The
hot path only appends the batch arrays to a list (rows older than the window are dropped there,
since they could never count); binning happens in bulk (vectorised numpy, one comparison against
all features' padded edges at once) when Prometheus scrapes, on the metrics thread. Measured: a
per-request cost of about 1 us, against 600-800 us every 512 rows when binning ran inline.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

FLOOR = 1e-4


class _Binned:
    """Padded edges of several variables, binning a [rows, vars] matrix in one shot."""

    def __init__(self, edges: list[list[float]]) -> None:
        width = max((len(e) for e in edges), default=0)
        self.n_bins = width + 1
        pad = np.full((len(edges), max(width, 1)), np.inf)
        for i, e in enumerate(edges):
            pad[i, : len(e)] = e
        self.edges = pad  # [vars, width]; +inf never <= x, so padding adds no bin

    def bins(self, x: np.ndarray) -> np.ndarray:
        """Bin index per cell, as numpy.searchsorted(edges, x, side='right') would give."""
        return (self.edges[None, :, :] <= x[:, :, None]).sum(axis=2)


class DriftMonitor:
    """PSI of live traffic against a reference profile, over the last ``window`` rows."""

    def __init__(self, profile: dict[str, Any], window: int = 1000) -> None:
        self.window = window
        self.features = [f["name"] for f in profile["features"]]
        self._fbins = _Binned([f["edges"] for f in profile["features"]])
        self._fexp = self._proportions([f["counts"] for f in profile["features"]], self._fbins.n_bins)
        pred = profile.get("prediction")
        self.prediction_kind = pred["kind"] if pred else None
        if pred:
            self._pbins = _Binned([pred["edges"]])
            self._pexp = self._proportions([pred["counts"]], self._pbins.n_bins)
        n_vars = len(self.features) + 1
        self._ring = np.zeros((window, n_vars), dtype=np.int32)
        self._counts = np.zeros((n_vars, max(self._fbins.n_bins, self._pbins.n_bins if pred else 1)))
        self._occupied = np.zeros(window, dtype=bool)
        self._filled = 0
        self._pos = 0
        self._pending: deque[tuple[np.ndarray, np.ndarray | None]] = deque()
        self._pending_rows = 0
        self._plock = threading.Lock()  # guards the pending queue (hot path)
        self._lock = threading.Lock()  # guards the window (scrape time)

    @classmethod
    def from_file(cls, path: Path, window: int = 1000) -> DriftMonitor:
        return cls(json.loads(path.read_text()), window)

    @staticmethod
    def _proportions(counts: list[list[int]], width: int) -> np.ndarray:
        out = np.zeros((len(counts), width))
        for i, c in enumerate(counts):
            out[i, : len(c)] = np.asarray(c, dtype=float) / max(sum(c), 1)
        return np.maximum(out, FLOOR)

    def observe(self, features: np.ndarray, output: np.ndarray | None) -> None:
        """Queue a served batch (cheap); bins are computed in bulk later.

        A profile without features (an image model's) watches the outputs alone: any input with
        rows counts, one row per item of its first dimension.
        """
        if features.ndim == 0 or features.shape[0] == 0:
            return  # no rows (which would break the bulk reshape)
        if not self.features:
            if self.prediction_kind is None or output is None:
                return
            features = np.empty((features.shape[0], 0))
        elif features.ndim != 2 or features.shape[1] != len(self.features):
            return  # not this profile's layout
        with self._plock:
            self._pending.append((features, output))
            self._pending_rows += features.shape[0]
            while self._pending_rows - self._pending[0][0].shape[0] >= self.window:
                self._pending_rows -= self._pending.popleft()[0].shape[0]

    def flush(self) -> None:
        """Bin the pending rows and slide them into the window."""
        with self._plock:
            pending, self._pending, self._pending_rows = list(self._pending), deque(), 0
        if not pending:
            return
        with self._lock:
            x = np.concatenate([p[0] for p in pending]).astype(np.float64, copy=False)
            bins = np.empty((x.shape[0], len(self.features) + 1), dtype=np.int32)
            bins[:, :-1] = self._fbins.bins(x)
            bins[:, -1] = self._prediction_bins(pending, x.shape[0])
            if bins.shape[0] > self.window:
                bins = bins[-self.window :]
            self._slide(bins)

    def _prediction_bins(self, pending: list[tuple[np.ndarray, np.ndarray | None]], rows: int) -> np.ndarray:
        if self.prediction_kind is None or any(p[1] is None for p in pending):
            return np.full(rows, -1)
        y = np.concatenate([np.asarray(p[1]).reshape(len(p[1]), -1) for p in pending])  # type: ignore[arg-type]
        value = y.argmax(axis=1) if self.prediction_kind == "class" else y[:, 0]
        return self._pbins.bins(value.astype(np.float64)[:, None])[:, 0]

    def _slide(self, bins: np.ndarray) -> None:
        n = bins.shape[0]
        idx = (self._pos + np.arange(n)) % self.window
        old = idx[self._occupied[idx]]
        if old.size:
            self._count(self._ring[old], -1)
        self._ring[idx] = bins
        self._occupied[idx] = True
        self._count(bins, +1)
        self._pos = (self._pos + n) % self.window
        self._filled = min(self.window, self._filled + n)

    def _count(self, bins: np.ndarray, sign: int) -> None:
        n_vars, width = self._counts.shape
        valid = bins >= 0
        flat = (np.arange(n_vars)[None, :] * width + bins)[valid]
        self._counts += sign * np.bincount(flat, minlength=n_vars * width).reshape(n_vars, width)

    def snapshot(self) -> tuple[dict[str, float], float | None, int]:
        """(PSI per feature, PSI of the prediction or None, rows in the window)."""
        fcounts, pcounts, rows = self.window_counts()
        if rows == 0:
            return dict.fromkeys(self.features, 0.0), (0.0 if self.prediction_kind else None), 0
        fpsi = psi(fcounts, self._fexp)
        pred_psi = None if pcounts is None else float(psi(pcounts[None, :], self._pexp)[0])
        return dict(zip(self.features, fpsi.tolist(), strict=True)), pred_psi, rows

    def window_counts(self) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(rows per feature and bin [features, bins], rows per prediction bin or None, rows in
        the window): what replicas of one model export so that PSI is computed over their sum."""
        self.flush()
        with self._lock:
            nf, bf = len(self.features), self._fbins.n_bins
            fcounts = self._counts[:nf, :bf].copy()
            pcounts = None
            if self.prediction_kind is not None:
                pcounts = self._counts[nf, : self._pbins.n_bins].copy()
            return fcounts, pcounts, self._filled

    def expected(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The profile's proportions (floored) per feature and bin, and of the prediction."""
        return self._fexp, (self._pexp[0] if self.prediction_kind is not None else None)


def psi(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """PSI of each row of live bin ``counts`` [vars, bins] against ``expected`` proportions: both
    floored at FLOOR so an empty bin does not make it infinite; a row with no rows reads 0."""
    totals = counts.sum(axis=1, keepdims=True)
    live = np.maximum(counts / np.maximum(totals, 1), FLOOR)
    out = ((live - expected) * np.log(live / expected)).sum(axis=1)
    return np.where(totals[:, 0] > 0, out, 0.0)
