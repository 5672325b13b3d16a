"""Pair-wise statistics and ratings of arena votes: win rates, battle counts, Elo in vote order, Bradley-Terry.

A vote is (model_a, model_b, choice) with choice `a`, `b`, `tie` or `both_bad`; for ratings a tie and
"both bad" count as half a win for each side (as Chatbot Arena counts ties). Bradley-Terry strengths
theta maximise sum_k [y_k log s(t_a - t_b) + (1 - y_k) log s(t_b - t_a)] - ridge/2 |t|^2 (s = logistic;
the tiny ridge keeps a model that never lost finite and makes the strengths sum to zero); ratings are
reported on the Elo scale, 1000 + 400 log10(e) theta.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
ELO_SCALE = 400.0 / math.log(10.0)
RIDGE = 1e-3


def encode(votes: Sequence[dict], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Votes as index arrays (a, b) and the score of a (1, 0.5 or 0), in vote order."""
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[v["model_a"]] for v in votes], dtype=np.int64)
    b = np.array([index[v["model_b"]] for v in votes], dtype=np.int64)
    y = np.array([SCORE[v["choice"]] for v in votes], dtype=np.float64)
    return a, b, y


def pair_tables(votes: Sequence[dict], models: Sequence[str]) -> dict[str, np.ndarray]:
    """battles[i, j] (symmetric), wins[i, j] (i preferred to j), ties[i, j] and both_bad[i, j] (symmetric)."""
    n = len(models)
    t = {k: np.zeros((n, n), dtype=np.int64) for k in ("battles", "wins", "ties", "both_bad")}
    a, b, _ = encode(votes, models)
    for i, j, v in zip(a, b, votes):
        t["battles"][i, j] += 1
        t["battles"][j, i] += 1
        if v["choice"] == "a":
            t["wins"][i, j] += 1
        elif v["choice"] == "b":
            t["wins"][j, i] += 1
        else:
            key = "ties" if v["choice"] == "tie" else "both_bad"
            t[key][i, j] += 1
            t[key][j, i] += 1
    return t


def win_rates(wins: np.ndarray) -> np.ndarray:
    """win_rate[i, j]: share of the decided (not tied) battles of i against j that i won; NaN where none."""
    decided = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(decided > 0, wins / np.maximum(decided, 1), np.nan)


def elo(votes: Sequence[dict], models: Sequence[str], k: float = 4.0, init: float = 1000.0) -> np.ndarray:
    """Online Elo in vote order (base 10, scale 400): each vote moves both ratings by k (score - expected)."""
    r = np.full(len(models), init, dtype=np.float64)
    a, b, y = encode(votes, models)
    for i, j, s in zip(a, b, y):
        expected = 1.0 / (1.0 + 10.0 ** ((r[j] - r[i]) / 400.0))
        r[i] += k * (s - expected)
        r[j] -= k * (s - expected)
    return r


def bradley_terry(a: np.ndarray, b: np.ndarray, y: np.ndarray, n: int, weights: np.ndarray | None = None,
                  ridge: float = RIDGE, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Maximum-likelihood strengths (natural-log scale, sum zero) by Newton's method on the concave log-likelihood.

    Newton on an n x n system is a few lines and exact; a logistic-regression library would add a dependency."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    theta = np.zeros(n)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
        r = w * (p - y)
        grad = ridge * theta
        np.add.at(grad, a, r)
        np.add.at(grad, b, -r)
        h = w * p * (1.0 - p)
        hess = ridge * np.eye(n)
        np.add.at(hess, (a, a), h)
        np.add.at(hess, (b, b), h)
        np.add.at(hess, (a, b), -h)
        np.add.at(hess, (b, a), -h)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta


def to_rating(theta: np.ndarray) -> np.ndarray:
    return 1000.0 + ELO_SCALE * theta


def bootstrap_bt(a: np.ndarray, b: np.ndarray, y: np.ndarray, n: int, rounds: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of each Bradley-Terry rating: the votes resampled with replacement `rounds` times."""
    rng = np.random.default_rng(seed)
    rows, counts = np.unique(np.stack([a, b, y * 2]).T, axis=0, return_counts=True)  # identical votes, counted
    ua, ub, uy = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2] / 2
    draws = np.empty((rounds, n))
    for k in range(rounds):
        w = rng.multinomial(len(y), counts / len(y)).astype(np.float64)
        draws[k] = to_rating(bradley_terry(ua, ub, uy, n, weights=w))
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi
