"""Make the README's arena images: a screenshot of the page and the report plots.

The page shows the first questions of the shared ruozhiba set answered by GPT-4o and GPT-4-turbo (two real
answer sets to the same prompts, in `train generate`'s schema); the report is computed from SIMULATED votes
(planted Bradley-Terry strengths), to show its form. Run from the repository root:
  python docs/arena_images.py /work/shared/instruct
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def answer_files(shared: Path, tmp: Path, n: int = 3) -> list[Path]:
    files = []
    for name, f in (("gpt-4o", "ruozhiba_qa2449_gpt4o.json"), ("gpt-4-turbo", "ruozhiba_qa2449_gpt4t.json")):
        recs = json.loads((shared / f).read_text(encoding="utf-8"))[:n]
        out = tmp / f"{name}.jsonl"
        out.write_text("".join(json.dumps({"model": name, "id": f"ruozhiba-{i}", "messages": [{"role": "user", "content": r["instruction"]}],
                                           "answer": r["output"]}, ensure_ascii=False) + "\n" for i, r in enumerate(recs)), encoding="utf-8")
        files.append(out)
    return files


def screenshot(files: list[Path], db: Path, png: Path) -> None:
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from train.arena.app import create_app
    from train.arena.battles import Deck, load_answers
    from train.arena.store import VoteStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(Deck(load_answers(files)), VoteStore(db), seed=1),
                                        host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1000,640",
                 f"--user-data-dir={db.parent / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        time.sleep(1.5)
        driver.find_element("id", "vote-a").click()
        time.sleep(1.0)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
        srv.should_exit = True


def simulated_report(out: Path) -> None:
    from train.arena.report import write_report

    truth = {"ext-sft": 0.9, "orig-sft": 0.5, "ext-pt": -0.2, "orig-pt": -0.4, "mixtral-base": -0.8}
    rng = np.random.default_rng(0)
    names, votes = list(truth), []
    for _ in range(800):
        i, j = rng.choice(len(names), 2, replace=False, p=[0.3, 0.3, 0.15, 0.15, 0.1])
        p = 1 / (1 + np.exp(-(truth[names[i]] - truth[names[j]])))
        u = rng.random()
        choice = "tie" if u < 0.1 else "both_bad" if u < 0.15 else ("a" if rng.random() < p else "b")
        votes.append({"model_a": names[i], "model_b": names[j], "choice": choice})
    write_report(votes, out)


if __name__ == "__main__":
    shared, docs = Path(sys.argv[1]), Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        screenshot(answer_files(shared, Path(tmp)), Path(tmp) / "votes.sqlite", docs / "arena.png")
    simulated_report(docs / "arena-report")
