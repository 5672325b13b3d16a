"""`train arena --report`: win-rate matrix, battle counts, Elo and Bradley-Terry ratings with bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import ratings as R


def compute(votes: list[dict], rounds: int = 1000, seed: int = 0, elo_k: float = 4.0) -> dict:
    """Everything the report shows, as plain data; models ordered by Bradley-Terry rating."""
    models = sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    a, b, y = R.encode(votes, models)
    bt = R.to_rating(R.bradley_terry(a, b, y, len(models)))
    lo, hi = R.bootstrap_bt(a, b, y, len(models), rounds=rounds, seed=seed)
    el = R.elo(votes, models, k=elo_k)
    order = np.argsort(-bt, kind="stable")
    models = [models[i] for i in order]
    t = R.pair_tables(votes, models)
    wr = R.win_rates(t["wins"])
    rows = [{"model": m, "bt_rating": float(bt[i]), "bt_ci": [float(lo[i]), float(hi[i])], "elo": float(el[i]),
             "battles": int(t["battles"][k].sum())} for k, (m, i) in enumerate(zip(models, order))]
    return {"votes": len(votes), "models": models, "ratings": rows,
            "battles": t["battles"].tolist(), "wins": t["wins"].tolist(), "ties": t["ties"].tolist(),
            "both_bad": t["both_bad"].tolist(), "win_rate": [[None if np.isnan(x) else float(x) for x in r] for r in wr],
            "method": {"scores": "a wins 1, b wins 0, tie and both-bad 0.5 each", "bt": "maximum likelihood (Newton), "
                       f"ridge {R.RIDGE}, Elo scale 1000 + 400 log10(e) theta", "bootstrap_rounds": rounds,
                       "bootstrap_seed": seed, "interval": "95% percentile", "elo_k": elo_k, "elo_order": "vote order",
                       "win_rate": "row model's share of the decided (not tied) battles against the column model"}}


def markdown(res: dict) -> str:
    ms = res["models"]
    out = [f"# Arena report: {res['votes']} votes", "", "| rank | model | Bradley-Terry | 95% CI | Elo (vote order) | battles |",
           "|---:|---|---:|---|---:|---:|"]
    out += [f"| {k + 1} | {r['model']} | {r['bt_rating']:.0f} | {r['bt_ci'][0]:.0f} – {r['bt_ci'][1]:.0f} | {r['elo']:.0f} | {r['battles']} |"
            for k, r in enumerate(res["ratings"])]
    out += ["", "Win rate of the row model against the column model (decided battles; ties and both-bad left out):", "",
            "| | " + " | ".join(ms) + " |", "|---|" + "---:|" * len(ms)]
    out += [f"| {m} | " + " | ".join("–" if x is None else f"{x:.2f}" for x in row) + " |" for m, row in zip(ms, res["win_rate"])]
    out += ["", "Battles (ties / both bad) per pair:", "", "| | " + " | ".join(ms) + " |", "|---|" + "---:|" * len(ms)]
    out += [f"| {m} | " + " | ".join(f"{n} ({t}/{bb})" if n else "–" for n, t, bb in zip(res["battles"][i], res["ties"][i], res["both_bad"][i])) + " |"
            for i, m in enumerate(ms)]
    out += ["", "![win rates](win_rate.png) ![battles](battle_count.png) ![ratings](ratings.png)", ""]
    return "\n".join(out)


def plots(res: dict, out: Path) -> list[Path]:
    from ..plots import heatmap, intervals

    ms = res["models"]
    wr = np.array([[np.nan if x is None else x for x in r] for r in res["win_rate"]], dtype=float)
    return [heatmap(wr, out / "win_rate.png", "Win rate of model A (row) against model B (column)", "win rate",
                    xlabel="model B", ylabel="model A", cmap="RdBu", labels=(ms, ms), fmt="{:.2f}", vmin=0.0, vmax=1.0),
            heatmap(np.array(res["battles"], dtype=float), out / "battle_count.png", "Battle count of each pair",
                    "battles", xlabel="model B", ylabel="model A", cmap="Blues", labels=(ms, ms), fmt="{:.0f}"),
            intervals(ms, [r["bt_rating"] for r in res["ratings"]], [r["bt_ci"] for r in res["ratings"]],
                      out / "ratings.png", "Bradley-Terry rating with 95% bootstrap interval", "rating")]


def write_report(votes: list[dict], out: Path, rounds: int = 1000, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    res = compute(votes, rounds=rounds, seed=seed)
    (out / "arena_report.json").write_text(json.dumps(res, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "arena_report.md").write_text(markdown(res), encoding="utf-8")
    plots(res, out)
    return res
