"""`train arena`: the web app on a free loopback port driven by a real headless Chromium (vote, reveal, next battle,
several tabs at once), concurrent HTTP clients, refused and repeated votes; the report's ratings against a
reference Bradley-Terry fit on planted votes."""

from __future__ import annotations

import http.cookiejar
import json
import shutil
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tiny_lm import write_jsonl
from train.arena import ratings as R
from train.arena.report import compute
from train.cli import main

MODELS = {"orig": "原始词表", "ext": "扩展词表", "base": "基座"}
N_PROMPTS = 6
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _answers(root: Path) -> list[Path]:
    """One answer file per model, `train generate`'s schema; each answer names its model and prompt (for checks)."""
    files = []
    for m, label in MODELS.items():
        recs = [{"model": m, "id": f"p{i}", "messages": [{"role": "user", "content": f"问题 {i}：长城有多长？"}],
                 "answer": f"{label}的回答 {i}", "finish": "eos", "prompt_tokens": 9, "answer_tokens": 5}
                for i in range(N_PROMPTS) if not (m == "base" and i == 0)]  # base did not answer p0
        files.append(write_jsonl(root / f"{m}.jsonl", recs))
    return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    """The arena app under uvicorn on 127.0.0.1, in a thread of this test process."""
    uvicorn = pytest.importorskip("uvicorn")
    from train.arena.app import create_app
    from train.arena.battles import Deck, load_answers
    from train.arena.store import VoteStore

    db = tmp_path / "votes.sqlite"
    app = create_app(Deck(load_answers(_answers(tmp_path))), VoteStore(db), seed=0)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    yield {"url": f"http://127.0.0.1:{port}/", "db": db}
    srv.should_exit = True
    th.join(10)


def _stored(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM votes ORDER BY id")]
    finally:
        con.close()


class Client:
    """A browser-less voter: its own cookie jar, JSON over HTTP."""

    def __init__(self, url: str):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.opener.open(url).read()  # the page sets the voter cookie

    def get(self, path: str) -> dict:
        return json.loads(self.opener.open(self.url + path).read())

    def vote(self, token: str, choice: str) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "api/vote", json.dumps({"token": token, "choice": choice}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with self.opener.open(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def _browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("no Chromium / chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(DRIVER))  # an explicit driver: nothing is downloaded


def _wait(driver, cond, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def test_browser_votes_reveals_and_moves_on_and_tabs_vote_at_once(server, tmp_path):
    driver = _browser(tmp_path)
    try:
        from selenium.webdriver.common.by import By

        driver.get(server["url"])
        token = _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-token"))
        pid = driver.find_element(By.ID, "prompt").get_attribute("data-prompt-id")
        a, b = driver.find_element(By.ID, "answer-a").text, driver.find_element(By.ID, "answer-b").text
        i = int(pid[1:])
        shown = {m for m, label in MODELS.items() for t in (a, b) if t == f"{label}的回答 {i}"}
        assert len(shown) == 2 and f"问题 {i}" in driver.find_element(By.ID, "prompt").text
        assert not any(m in driver.find_element(By.ID, "name-a").text + driver.find_element(By.ID, "name-b").text
                       for m in MODELS)  # anonymous before the vote
        assert driver.find_element(By.ID, "next").get_attribute("disabled")
        driver.find_element(By.ID, "vote-a").click()
        _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-voted") == token)
        name_a, name_b = driver.find_element(By.ID, "name-a").text, driver.find_element(By.ID, "name-b").text
        assert f"{MODELS[name_a]}的回答 {i}" == a and f"{MODELS[name_b]}的回答 {i}" == b  # the names revealed are right
        (v,) = _stored(server["db"])
        assert (v["token"], v["prompt_id"], v["model_a"], v["model_b"], v["choice"]) == (token, pid, name_a, name_b, "a")
        assert v["voter"] == driver.get_cookie("arena_voter")["value"] and v["time"].endswith("Z")
        assert driver.find_element(By.ID, "vote-b").get_attribute("disabled")  # one vote per battle
        driver.find_element(By.ID, "next").click()
        token2 = _wait(driver, lambda d: (t := d.find_element(By.TAG_NAME, "body").get_attribute("data-token")) != token and t)
        assert driver.find_element(By.ID, "name-a").text == ""
        driver.find_element(By.ID, "vote-tie").click()
        _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-voted") == token2)

        # several tabs, each with its own battle, vote at the same moment
        tabs = []
        for _ in range(4):
            driver.switch_to.new_window("tab")
            driver.get(server["url"])
            tabs.append((driver.current_window_handle,
                         _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-token"))))
        at = time.time() * 1000 + 1500
        for handle, _ in tabs:
            driver.switch_to.window(handle)
            driver.execute_script("setTimeout(() => document.getElementById('vote-both_bad').click(), arguments[0] - Date.now());", at)
        for handle, tok in tabs:
            driver.switch_to.window(handle)
            _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-voted") == tok)
        votes = _stored(server["db"])
        assert [v["choice"] for v in votes] == ["a", "tie"] + ["both_bad"] * 4
        assert {v["token"] for v in votes[2:]} == {t for _, t in tabs}
        driver.switch_to.window(tabs[0][0])
        driver.set_window_size(1100, 720)
        driver.execute_script("document.getElementById('next').click()")
        _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-token") != tabs[0][1])
        driver.save_screenshot(str(tmp_path / "arena.png"))  # the README's screenshot is made the same way
        assert (tmp_path / "arena.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_concurrent_clients_all_stored_and_refused_votes_change_nothing(server):
    clients = [Client(server["url"]) for _ in range(6)]

    def session(c: Client) -> list[tuple[str, dict]]:
        out = []
        for k in range(8):
            battle = c.get("api/battle")
            status, body = c.vote(battle["token"], ("a", "b", "tie", "both_bad")[k % 4])
            assert status == 200, body
            out.append((battle["token"], body))
        return out

    with ThreadPoolExecutor(6) as pool:
        done = [x for part in pool.map(session, clients) for x in part]
    votes = _stored(server["db"])
    assert len(votes) == 48 and {v["token"] for v in votes} == {t for t, _ in done}
    assert len({v["voter"] for v in votes}) == 6
    assert all(v["model_a"] != v["model_b"] and v["prompt_id"] != "p0" or "base" not in (v["model_a"], v["model_b"])
               for v in votes)  # base never meets a prompt it did not answer
    before = _stored(server["db"])
    c = clients[0]
    token = done[0][0]
    assert c.vote(token, "b")[0] == 409  # the same battle voted twice
    assert clients[1].vote(token, "b")[0] == 403  # someone else's battle
    assert c.vote("no-such-token", "a")[0] == 404
    fresh = c.get("api/battle")["token"]
    assert c.vote(fresh, "a-better")[0] == 400  # not a choice
    req = urllib.request.Request(server["url"] + "api/vote", b"{not json", {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        c.opener.open(req)
    assert e.value.code == 422
    assert _stored(server["db"]) == before
    assert c.vote(fresh, "tie")[0] == 200 and len(_stored(server["db"])) == 49  # the refused battle can still be voted


def _planted(theta: dict[str, float], n: int, seed: int, ties: float = 0.0) -> list[dict]:
    """Votes drawn from a Bradley-Terry model with known strengths (natural-log scale), plus a share of ties."""
    rng = np.random.default_rng(seed)
    names = list(theta)
    votes = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + np.exp(-(theta[names[i]] - theta[names[j]])))
        u = rng.random()
        choice = "tie" if u < ties else ("a" if rng.random() < p else "b")
        votes.append({"model_a": names[i], "model_b": names[j], "choice": choice})
    return votes


def _reference_bt(votes: list[dict], names: list[str]) -> np.ndarray:
    """The same likelihood written out and maximised by scipy (BFGS), independent of the Newton code under test."""
    from scipy.optimize import minimize

    idx = {m: k for k, m in enumerate(names)}
    score = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
    a = np.array([idx[v["model_a"]] for v in votes])
    b = np.array([idx[v["model_b"]] for v in votes])
    y = np.array([score[v["choice"]] for v in votes])

    def nll(t):
        d = t[a] - t[b]
        return float(np.sum(y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d))) + R.RIDGE / 2 * float(t @ t)

    res = minimize(nll, np.zeros(len(names)), method="BFGS", options={"gtol": 1e-8})
    return res.x - res.x.mean()


def test_bradley_terry_matches_a_reference_fit_and_bootstrap_covers_the_truth(tmp_path):
    truth = {"strong": 1.2, "good": 0.5, "fair": -0.3, "weak": -1.4}
    names = sorted(truth)
    with_ties = _planted(truth, 600, seed=5, ties=0.15) + [{"model_a": "weak", "model_b": "fair", "choice": "both_bad"}] * 20
    ref = R.to_rating(_reference_bt(with_ties, names))
    fit = {r["model"]: r["bt_rating"] for r in compute(with_ties, rounds=10)["ratings"]}
    assert [fit[m] for m in names] == pytest.approx(ref, abs=0.05)  # same optimum, to 0.05 rating points

    votes = _planted(truth, 1500, seed=7)  # Bradley-Terry exactly: the intervals must cover the truth
    res = compute(votes, rounds=300, seed=1)
    assert res["models"] == ["strong", "good", "fair", "weak"]  # the planted ranking is recovered
    ref = R.to_rating(_reference_bt(votes, names))
    got = {r["model"]: r for r in res["ratings"]}
    for k, m in enumerate(names):
        assert got[m]["bt_rating"] == pytest.approx(ref[k], abs=0.05)
    mean = np.mean(list(truth.values()))
    for m, t in truth.items():
        lo, hi = got[m]["bt_ci"]
        assert lo < R.to_rating(np.array(t - mean)) < hi, (m, lo, hi)
        assert hi - lo < 120
    # win rates and counts straight from the votes
    i, j = res["models"].index("strong"), res["models"].index("weak")
    sw = [v for v in votes if {v["model_a"], v["model_b"]} == {"strong", "weak"}]
    wins = sum((v["choice"] == "a") == (v["model_a"] == "strong") for v in sw if v["choice"] in ("a", "b"))
    decided = sum(v["choice"] in ("a", "b") for v in sw)
    assert res["battles"][i][j] == len(sw) and res["win_rate"][i][j] == pytest.approx(wins / decided)
    assert res["win_rate"][i][j] + res["win_rate"][j][i] == pytest.approx(1.0)


def test_elo_in_vote_order_by_hand():
    votes = [{"model_a": "x", "model_b": "y", "choice": "a"}, {"model_a": "y", "model_b": "x", "choice": "tie"}]
    r = R.elo(votes, ["x", "y"], k=32)
    x, y = 1000 + 32 * 0.5, 1000 - 32 * 0.5
    e_y = 1 / (1 + 10 ** ((x - y) / 400))
    assert r == pytest.approx([x - 32 * (0.5 - e_y), y + 32 * (0.5 - e_y)])


def test_report_command_writes_json_markdown_and_plots(tmp_path):
    from train.arena.store import VoteStore

    store = VoteStore(tmp_path / "v.sqlite")
    for v in _planted({"ext": 0.8, "orig": 0.0, "base": -0.8}, 300, seed=3):
        store.vote(store.new_battle("me", "p1", v["model_a"], v["model_b"]), "me", v["choice"])
    out = tmp_path / "report"
    assert main(["arena", "--report", "--db", str(tmp_path / "v.sqlite"), "-o", str(out), "--bootstrap", "100"]) == 0
    res = json.loads((out / "arena_report.json").read_text(encoding="utf-8"))
    assert res["votes"] == 300 and res["models"][0] == "ext" and res["models"][-1] == "base"
    md = (out / "arena_report.md").read_text(encoding="utf-8")
    assert "| 1 | ext |" in md and "Win rate of the row model" in md
    for png in ("win_rate.png", "battle_count.png", "ratings.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "manifest.json").read_text())["counts"]["records_in"] == 300
    assert main(["arena", "--report", "--db", str(tmp_path / "none.sqlite"), "-o", str(out)]) == 2
