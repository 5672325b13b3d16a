"""`train eval --task lm-eval`: benchmarks run by lm-evaluation-harness on the model `train eval` has loaded.

The loaded model (a `train run` folder's 4-bit base with adapters, or a plain model folder) is handed to the
harness as a model object (its `HFLM` wrapper), so nothing is merged or saved first. Offline: the tasks' data
must be local (a task YAML whose `dataset_path` / `dataset_kwargs` point at files, passed with
`--lm-eval-include FOLDER`, or datasets already in the Hugging Face cache); the Hub is never contacted.
Results: `lm_eval.json` (the harness' results, versions, n-shot and configs) and `lm_eval.md`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from zhdata.errors import InputError
from zhdata.manifest import Manifest


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--lm-eval-tasks", nargs="+", default=[], metavar="TASK",
                   help="lm-evaluation-harness task or group names (e.g. gsm8k ceval-valid, or your own YAML's task)")
    g.add_argument("--lm-eval-include", action="append", default=[], metavar="FOLDER",
                   help="folder of task YAMLs (local data); repeatable")
    g.add_argument("--lm-eval-shots", type=int, default=None, help="few-shot examples (default: each task's own)")
    g.add_argument("--lm-eval-limit", type=float, default=None, help="at most N documents per task (or a fraction < 1)")
    g.add_argument("--lm-eval-batch-size", type=int, default=8, help="batch size for the harness (default 8)")
    g.add_argument("--lm-eval-max-new-tokens", type=int, default=None,
                   help="cap on generated tokens for generation tasks (default: each task's own)")


def evaluate(model: Any, tok: Any, tasks: list[str], include: list[str] | None = None, shots: int | None = None,
             limit: float | None = None, batch_size: int = 8, max_gen_toks: int | None = None, seed: int = 1234) -> dict:
    """The harness' `simple_evaluate` on an already loaded model; returns its result dict (samples left out)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise InputError("--task lm-eval", None, "lm-evaluation-harness is not installed", "pip install 'zh-adapt[eval]'") from None
    for folder in include or []:
        if not Path(folder).is_dir():
            raise InputError(folder, None, "--lm-eval-include: no such folder")
    tm = TaskManager(include_path=list(include), include_defaults=False) if include else None
    if tm is None or any(t not in tm.all_tasks for t in tasks):  # indexing the built-in tasks takes a while: only when needed
        tm = TaskManager(include_path=list(include) if include else None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise InputError("--lm-eval-tasks", None, f"unknown lm-eval task(s) {', '.join(unknown)}",
                         "pass the folder of your task YAMLs with --lm-eval-include, or see `lm_eval --tasks list`")
    kwargs = {"max_length": int(getattr(model.config, "max_position_embeddings", 0) or 2048)}
    if max_gen_toks:
        kwargs["max_gen_toks"] = max_gen_toks
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, **kwargs)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, num_fewshot=shots, limit=limit,
                                  log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    if res is None:  # non-zero rank of a distributed run
        return {}
    return {k: res.get(k) for k in ("results", "groups", "versions", "n-shot", "n-samples", "higher_is_better", "configs")
            if res.get(k) is not None}


def _markdown(res: dict) -> str:
    out = [f"# lm-evaluation-harness: `{res['model']}`", "", "| task | metric | value | stderr |", "|---|---|---:|---:|"]
    for task, metrics in res["results"].items():
        for key, v in metrics.items():
            if "," not in key or key.split(",")[0].endswith("_stderr") or not isinstance(v, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            se = metrics.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric} ({filt})"
            out.append(f"| {task} | {name} | {v:.4f} | {se:.4f} |" if isinstance(se, (int, float)) else f"| {task} | {name} | {v:.4f} | |")
    return "\n".join(out + ["", f"lm-eval {res['lm_eval_version']}; shots {res.get('n-shot')}", ""])


def run_lm_eval(model: Any, tok: Any, name: str, opts: Any, man: Manifest, out: Path) -> dict[str, Any]:
    """The `train eval` stage: `opts` is its EvalOptions (the lm_eval_* fields)."""
    if not opts.lm_eval_tasks:
        raise InputError("--task lm-eval", None, "needs --lm-eval-tasks TASK [TASK ...]")
    for folder in opts.lm_eval_include:
        if Path(folder).is_dir():
            man.add_inputs(sorted(p for p in Path(folder).rglob("*") if p.is_file()))
    raw = evaluate(model, tok, opts.lm_eval_tasks, opts.lm_eval_include, opts.lm_eval_shots, opts.lm_eval_limit,
                   opts.lm_eval_batch_size, opts.lm_eval_max_new_tokens)
    from importlib import metadata

    res = {"task": "lm-eval", "model": name, "tasks": opts.lm_eval_tasks,
           "lm_eval_version": metadata.version("lm_eval"), **raw}
    (out / "lm_eval.json").write_text(json.dumps(res, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "lm_eval.md").write_text(_markdown(res), encoding="utf-8")
    summary = {t: {k: v for k, v in m.items() if isinstance(v, (int, float)) and "_stderr" not in k}
               for t, m in res.get("results", {}).items()}
    for t, m in summary.items():
        print(f"lm-eval {t}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return summary
