"""Multiple choice in the C-Eval / CMMLU / MMLU CSV layouts, scored by the log-likelihood of the answer letter.

Layouts read from local folders (the benchmarks as released):
  C-Eval  ROOT/{dev,val,test}/SUBJECT_SPLIT.csv, header id,question,A,B,C,D,answer[,explanation];
          test has no answers (not released); categories from ROOT/subject_mapping.json.
  CMMLU   ROOT/data/{dev,test}/SUBJECT.csv, header ",Question,A,B,C,D,Answer" (leading index column);
          categories from ROOT/src/categories.py, read as data (never imported).
  MMLU    ROOT/data/{dev,val,test}/SUBJECT_SPLIT.csv without a header: question,A,B,C,D,answer.
Prompts follow the authors' (as in lm-eval's ceval-valid / cmmlu / mmlu tasks): a one-line instruction
naming the subject, k solved dev examples, the question, and `答案：` (English `Answer:`); the
prediction is the letter A-D with the highest log-likelihood after it.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from zhdata.errors import ErrorPolicy, InputError
from zhdata.manifest import Counts

from .evaluate import MC_SPLITS as SPLITS
from .evaluate import EvalOptions
from .scoring import conditioning_prefix, encode_text, model_window

LETTERS = ("A", "B", "C", "D")
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str | None


@dataclass
class Subject:
    name: str
    title: str  # the subject's name as written in the prompt
    categories: list[str]
    dev: list[Question] = field(default_factory=list)
    eval: list[Question] = field(default_factory=list)


@dataclass
class Benchmark:
    name: str
    kind: str  # ceval | cmmlu | mmlu
    lang: str  # zh | en
    split: str
    subjects: list[Subject]
    files: list[Path] = field(default_factory=list)  # every file read: CSVs, subject mapping / categories


# ---------------------------------------------------------------- reading the CSVs

def read_csv(path: Path, policy: ErrorPolicy, counts: Counts) -> list[Question]:
    """Questions of one CSV, whatever its header (C-Eval, CMMLU with index column, MMLU without header)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError(path, None, "empty CSV file")
    head = [c.strip().lower() for c in rows[0]]
    if "question" in head:
        col = {name: head.index(name) for name in ("question", "a", "b", "c", "d") if name in head}
        if len(col) < 5:
            raise InputError(path, 1, f"header {rows[0]} lacks some of question, A, B, C, D")
        answer_col = head.index("answer") if "answer" in head else None
        body, first_line = rows[1:], 2
    elif len(head) == 6:  # MMLU: no header
        col = dict(zip(("question", "a", "b", "c", "d"), range(5)))
        answer_col, body, first_line = 5, rows, 1
    else:
        raise InputError(path, 1, f"cannot read the layout: header {rows[0][:8]}",
                         "expected a C-Eval/CMMLU header with question,A,B,C,D[,answer] or MMLU's six columns")
    need = max(list(col.values()) + [answer_col or 0]) + 1
    out = []
    for n, row in enumerate(body, first_line):  # `n`: the CSV row, header = row 1 (a quoted field may span several lines)
        counts.records_in += 1
        if len(row) < need:
            counts.dropped["short_row"] += 1
            policy.bad(path, f"row {n}", f"{len(row)} columns, expected at least {need}", "short_row")
            continue
        answer = row[answer_col].strip().upper() if answer_col is not None else None
        if answer is not None and answer not in LETTERS:
            counts.dropped["bad_answer"] += 1
            policy.bad(path, f"row {n}", f"answer {row[answer_col]!r} is not one of A, B, C, D", "bad_answer")
            continue
        counts.records_out += 1
        out.append(Question(row[col["question"]].strip(), tuple(row[col[c]].strip() for c in "abcd"), answer))
    return out


def read_categories_py(path: Path) -> dict[str, Any]:
    """Top-level `NAME = {literal}` assignments of a categories.py (CMMLU/MMLU), parsed, not executed."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def _subject_files(folder: Path, split: str) -> dict[str, Path]:
    files = {}
    for f in sorted(folder.glob("*.csv")):
        stem = f.stem[: -len(split) - 1] if f.stem.endswith(f"_{split}") else f.stem
        files[stem] = f
    return files


def _has_answers(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = [c.strip().lower() for c in next(csv.reader(f), [])]
    return "answer" in head or ("question" not in head and len(head) == 6)


def load_benchmark(root: str | Path, name: str | None = None, split: str = "auto", subjects: list[str] | None = None,
                   lang: str = "auto", policy: ErrorPolicy | None = None, counts: Counts | None = None) -> Benchmark:
    """Read a benchmark folder; `split` auto picks test when it has answers, else val."""
    root = Path(root)
    policy, counts = policy or ErrorPolicy("stop"), counts if counts is not None else Counts()
    base = root / "data" if (root / "data" / "dev").is_dir() else root
    if not (base / "dev").is_dir():
        raise InputError(root, None, "not a C-Eval/CMMLU/MMLU folder: no dev/ or data/dev/ inside")
    present = [s for s in SPLITS if (base / s).is_dir() and any((base / s).glob("*.csv"))]
    if split == "auto":
        split = next((s for s in ("test", "val") if s in present
                      and _has_answers(next(iter(_subject_files(base / s, s).values())))), "")
        if not split:
            raise InputError(root, None, "neither test/ nor val/ has an answer column", "pass --split explicitly")
    if split not in present:
        raise InputError(root, None, f"no {split}/ split with CSV files here (found: {', '.join(present)})")
    mapping_file, cats_file = root / "subject_mapping.json", next(iter(sorted(root.glob("**/categories.py"))), None)
    if mapping_file.is_file():
        kind, mapping = "ceval", json.loads(mapping_file.read_text(encoding="utf-8"))
        meta = {s: (v[1], [v[2]]) for s, v in mapping.items()}
    elif cats_file is not None:
        data = read_categories_py(cats_file)
        kind = "cmmlu" if "name_en2zh" in data else "mmlu"
        sub, cats, names = data.get("subcategories", {}), data.get("categories", {}), data.get("name_en2zh", {})
        meta = {s: (names.get(s, s.replace("_", " ")), [c for c, subs in cats.items() if set(subs) & set(sc)] or ["other"])
                for s, sc in sub.items()}
    else:
        kind, meta = "mmlu", {}
    eval_files, dev_files = _subject_files(base / split, split), _subject_files(base / "dev", "dev")
    wanted = [s for s in subjects if s in eval_files] if subjects else sorted(eval_files)
    if not wanted:
        raise InputError(base / split, None, f"no CSV for any of the subjects {', '.join(subjects or [])}")
    out, files = [], [f for f in (mapping_file, cats_file) if f is not None and f.is_file()]
    for s in wanted:
        title, categories = meta.get(s, (s.replace("_", " "), ["other"]))
        subj = Subject(s, title, categories, eval=read_csv(eval_files[s], policy, counts))
        if subj.eval and subj.eval[0].answer is None:
            raise InputError(eval_files[s], None, f"the {split} split has no answer column (C-Eval's test labels are not released)",
                             "evaluate on --split val (C-Eval) or a split with answers")
        files.append(eval_files[s])
        if s in dev_files:
            subj.dev = read_csv(dev_files[s], policy, Counts())
            files.append(dev_files[s])
        out.append(subj)
    if lang == "auto":
        sample = " ".join(q.question for subj in out[:3] for q in subj.eval[:5])
        lang = "zh" if kind in ("ceval", "cmmlu") or len(_CJK.findall(sample)) > 0.2 * max(1, len(sample)) else "en"
    return Benchmark(name or root.name, kind, lang, split, out, files)


# ---------------------------------------------------------------- prompts and scoring

def instruction(bench: Benchmark, subj: Subject) -> str:
    if bench.kind == "ceval":
        return f"以下是中国关于{subj.title}考试的单项选择题，请选出其中的正确答案。\n\n"
    if bench.lang == "zh":
        return f"以下是关于{subj.title}的单项选择题，请直接给出正确答案的选项。\n\n"
    return f"The following are multiple choice questions (with answers) about {subj.title}.\n\n"


def format_question(q: Question, lang: str, with_answer: bool) -> str:
    text = q.question + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, q.choices))
    text += "\n答案：" if lang == "zh" else "\nAnswer:"
    return text + (f"{answer_text(q.answer, lang)}\n\n" if with_answer else "")


def answer_text(letter: str, lang: str) -> str:
    return letter if lang == "zh" else f" {letter}"


def build_prompt(bench: Benchmark, subj: Subject, q: Question, shots: int) -> str:
    return instruction(bench, subj) + "".join(format_question(d, bench.lang, True) for d in subj.dev[:shots]) \
        + format_question(q, bench.lang, False)


@torch.no_grad()
def letter_logprobs(model: Any, tok: Any, context: str, continuations: list[str]) -> list[float]:
    """Log-likelihood of each continuation after `context`: one forward pass when every continuation is one token."""
    prefix = conditioning_prefix(tok)
    ctx = prefix + encode_text(tok, context)
    fulls = [prefix + encode_text(tok, context + c) for c in continuations]
    from .model import run_autocast

    device = next(model.parameters()).device
    if all(len(f) == len(ctx) + 1 and f[: len(ctx)] == ctx for f in fulls):
        with run_autocast(device):
            logits = model(input_ids=torch.tensor([ctx], device=device), use_cache=False, logits_to_keep=1).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        return [float(lp[f[-1]]) for f in fulls]
    scores = []
    for f in fulls:  # the letter merged with the context's last piece: score the differing tail
        common = next((i for i, (a, b) in enumerate(zip(f, ctx)) if a != b), min(len(f), len(ctx)))
        common = max(1, min(common, len(f) - 1))
        with run_autocast(device):
            logits = model(input_ids=torch.tensor([f], device=device), use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits[common - 1: len(f) - 1], -1)
        scores.append(float(lp.gather(1, torch.tensor(f[common:], device=device)[:, None]).sum()))
    return scores


def evaluate_subject(model: Any, tok: Any, bench: Benchmark, subj: Subject, shots: int, window: int,
                     max_questions: int | None = None) -> dict[str, Any]:
    """Accuracy on one subject; shots are dropped from the end when the prompt exceeds the window."""
    conts = [answer_text(L, bench.lang) for L in LETTERS]
    shortened = 0
    right: list[int] = []  # per question, 1 when the prediction is the answer (paired comparisons of two models)
    questions = subj.eval[:max_questions] if max_questions else subj.eval
    for q in questions:
        k = min(shots, len(subj.dev))
        prompt = build_prompt(bench, subj, q, k)
        while k > 0 and len(encode_text(tok, prompt)) + 3 > window:
            k -= 1
            prompt = build_prompt(bench, subj, q, k)
        shortened += k < min(shots, len(subj.dev))
        scores = letter_logprobs(model, tok, prompt, conts)
        right.append(int(LETTERS[max(range(4), key=scores.__getitem__)] == q.answer))
    n, correct = len(questions), sum(right)
    return {"title": subj.title, "categories": subj.categories, "n": n, "correct": correct,
            "acc": correct / n if n else float("nan"), "shots_available": len(subj.dev), "prompts_shortened": shortened,
            "right": right}


def summarise(subjects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per category and overall: question-weighted accuracy and the mean of subject accuracies."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in subjects.values():
        for c in r["categories"]:
            groups.setdefault(c, []).append(r)
    groups = dict(sorted(groups.items()))
    groups["overall"] = list(subjects.values())

    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n, c = sum(r["n"] for r in rs), sum(r["correct"] for r in rs)
        return {"subjects": len(rs), "n": n, "correct": c, "acc": c / n if n else float("nan"),
                "subject_mean": sum(r["acc"] for r in rs) / len(rs) if rs else float("nan")}
    return {g: agg(rs) for g, rs in groups.items()}


def markdown(results: dict[str, Any]) -> str:
    out = [f"# Multiple choice: `{results['model']}`", "",
           "Accuracy = questions right / questions (log-likelihood of the answer letter); "
           "subject mean = mean of the subjects' accuracies.", ""]
    for bname, b in results["benchmarks"].items():
        for shots, r in b["shots"].items():
            out += [f"## {bname} ({b['kind']}, split {b['split']}, {shots}-shot)", "",
                    "| category | subjects | questions | accuracy | subject mean |", "|---|---:|---:|---:|---:|"]
            out += [f"| {g} | {s['subjects']} | {s['n']} | {s['acc']:.4f} | {s['subject_mean']:.4f} |"
                    for g, s in r["categories"].items()]
            out += ["", "| subject | questions | accuracy |", "|---|---:|---:|"]
            out += [f"| {name} ({s['title']}) | {s['n']} | {s['acc']:.4f} |" for name, s in r["subjects"].items()]
            out.append("")
    return "\n".join(out)


def evaluate_benchmark(model: Any, tok: Any, bench: Benchmark, shots_list: list[int], window: int,
                       max_questions: int | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"kind": bench.kind, "lang": bench.lang, "split": bench.split, "shots": {}}
    for shots in shots_list:
        subs = {s.name: evaluate_subject(model, tok, bench, s, shots, window, max_questions)
                for s in tqdm(bench.subjects, desc=f"{bench.name} {shots}-shot", unit="subject")}
        res["shots"][str(shots)] = {"subjects": subs, "categories": summarise(subs)}
    return res


def run_mc(model: Any, tok: Any, model_name: str, opts: EvalOptions, man: Any, out: Path) -> dict[str, Any]:
    """`train eval --task mc`: every --bench folder at every --shots; writes mc.json and mc.md."""
    if not opts.bench:
        raise InputError("--bench", None, "--task mc needs a benchmark folder", "pass --bench ../shared/eval/ceval")
    window = model_window(model, opts.window)
    policy = ErrorPolicy(opts.on_error)
    results: dict[str, Any] = {"task": "mc", "model": model_name, "benchmarks": {}}
    seen: set[str] = set()
    for spec in opts.bench:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec).name, spec)
        bench = load_benchmark(path, name, opts.split, opts.subjects, opts.mc_lang, policy, man.source(f"mc:{name}"))
        man.add_inputs(bench.files)
        results["benchmarks"][name] = evaluate_benchmark(model, tok, bench, opts.shots, window, opts.max_questions)
        seen.update(s.name for s in bench.subjects)
    missing = sorted(set(opts.subjects or []) - seen)
    if missing:
        man.warnings.append(f"--subjects not found in any benchmark: {', '.join(missing)}")
    (out / "mc.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "mc.md").write_text(markdown(results), encoding="utf-8")
    summary = {b: {s: r["categories"]["overall"]["acc"] for s, r in v["shots"].items()}
               for b, v in results["benchmarks"].items()}
    for b, accs in summary.items():
        print(f"{b}: " + "  ".join(f"{s}-shot acc {a:.4f}" for s, a in accs.items()))
    return summary
