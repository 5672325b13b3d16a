"""`train arena`: a local chatbot arena over answer files, and `train arena --report` over its votes.

Serve: `train arena --answers answers/*.jsonl --db arena.sqlite` starts a web app on 127.0.0.1 (FastAPI +
uvicorn; plain HTML and JavaScript, nothing fetched from elsewhere). Each battle shows a prompt and the answers
of two models to it (files of `train generate`, matched by prompt id; the models drawn uniformly among the
pairs that share prompts, sides at random), anonymously; the voter picks A better, B better, tie or both bad,
then sees the names. Votes go to SQLite with the voter's id (a browser cookie), time, prompt id and both model
names. Each battle has a one-time token: a repeated or refused vote is answered with an error and changes
nothing stored.

Report: `train arena --report --db arena.sqlite -o report/` writes arena_report.json / .md and PNG plots:
the pair-wise win-rate matrix and battle counts (as the Chinese-Mixtral paper's Figure 3), Elo in vote order
and Bradley-Terry ratings by maximum likelihood with bootstrap confidence intervals.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zhdata.errors import InputError
from zhdata.manifest import Manifest, cli_params


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise InputError("train arena", None, "the arena needs FastAPI and uvicorn", "pip install 'zh-adapt[arena]'") from None
    from zhdata.readers import expand_inputs

    from .app import create_app
    from .battles import Deck, load_answers
    from .store import VoteStore

    deck = Deck(load_answers(expand_inputs(args.answers)))
    store = VoteStore(args.db)
    print(f"train arena: {len(deck.answers)} models, {len(deck.pairs)} pairs, "
          f"{sum(len(v) for v in deck.pairs.values())} battles to draw from; votes -> {args.db}")
    print(f"open http://{args.host}:{args.port}/  (Ctrl-C stops)")
    uvicorn.run(create_app(deck, store, args.title), host=args.host, port=args.port, log_level="warning")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .store import VoteStore

    if not args.out:
        raise InputError("--report", None, "needs -o FOLDER for the report")
    if not Path(args.db).is_file():
        raise InputError(args.db, None, "no such vote database")
    votes = VoteStore(args.db).votes()
    if not votes:
        raise InputError(args.db, None, "no votes stored yet")
    out = Path(args.out)
    man = Manifest("train arena --report", cli_params(args))
    man.add_inputs([args.db])
    man.counts.records_in = man.counts.records_out = len(votes)
    res = write_report(votes, out, rounds=args.bootstrap, seed=args.seed)
    man.extra["report"] = {"models": res["models"], "votes": res["votes"], "method": res["method"]}
    man.write(out)
    for k, r in enumerate(res["ratings"]):
        print(f"{k + 1}. {r['model']}: Bradley-Terry {r['bt_rating']:.0f} ({r['bt_ci'][0]:.0f}–{r['bt_ci'][1]:.0f}), "
              f"Elo {r['elo']:.0f}, {r['battles']} battles")
    print(f"report in {out}/")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report:
        return _report(args)
    if not args.answers:
        raise InputError("--answers", None, "the arena needs answer files (`train generate` output), one per model")
    return _serve(args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arena", help="local chatbot arena: anonymous pair-wise votes on answers, and its report",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train generate runs/orig --prompts prompts.jsonl -o answers/orig.jsonl
  train generate runs/ext --prompts prompts.jsonl -o answers/ext.jsonl
  train arena --answers answers/orig.jsonl answers/ext.jsonl --db arena.sqlite --port 8080
  train arena --report --db arena.sqlite -o arena-report/""")
    p.add_argument("--answers", nargs="+", default=[], help="answer files (.jsonl of `train generate`), one per model")
    p.add_argument("--db", default="arena.sqlite", help="SQLite file of the votes (created; default arena.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--title", default="zh-adapt arena", help="page title")
    p.add_argument("--report", action="store_true", help="write the report of the votes in --db instead of serving")
    p.add_argument("-o", "--out", default=None, help="--report: folder for arena_report.json/.md and the plots")
    p.add_argument("--bootstrap", type=int, default=1000, help="--report: bootstrap rounds (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="--report: bootstrap seed")
    p.set_defaults(func=run)
