"""The arena web app (FastAPI): a page, a battle API and a vote API; the page is plain HTML and JavaScript served here."""

from __future__ import annotations

import random
import secrets
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from .battles import Deck
from .store import VoteRefused, VoteStore

COOKIE = "arena_voter"
STATIC = resources.files("train.arena") / "static"


class Vote(BaseModel):
    token: str
    choice: str


def create_app(deck: Deck, store: VoteStore, title: str = "zh-adapt arena", seed: int | None = None) -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    rng = random.Random(seed)

    def voter_of(request: Request) -> tuple[str, bool]:
        v = request.cookies.get(COOKIE)
        return (v, False) if v and len(v) <= 64 else (secrets.token_hex(16), True)

    def with_cookie(resp: Response, voter: str, new: bool) -> Response:
        if new:
            resp.set_cookie(COOKIE, voter, max_age=365 * 86400, httponly=True, samesite="strict")
        return resp

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        voter, new = voter_of(request)
        html = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{title}}", title)
        return with_cookie(HTMLResponse(html), voter, new)

    @app.get("/arena.js")
    def script() -> Response:
        return Response((STATIC / "arena.js").read_text(encoding="utf-8"), media_type="text/javascript")

    @app.get("/api/battle")
    def battle(request: Request) -> Response:
        voter, new = voter_of(request)
        pid, a, b = deck.draw(rng)
        token = store.new_battle(voter, pid, a, b)
        body = {"token": token, "prompt_id": pid, "prompt": deck.prompt(pid, a),
                "answers": [deck.answers[a][pid]["answer"], deck.answers[b][pid]["answer"]]}
        return with_cookie(JSONResponse(body, headers={"Cache-Control": "no-store"}), voter, new)

    @app.post("/api/vote")
    def vote(body: Vote, request: Request) -> Response:  # sync: runs in the thread pool, SQLite never blocks the loop
        voter = request.cookies.get(COOKIE)
        if not voter:
            return JSONResponse({"error": "no voter cookie: reload the page"}, status_code=403)
        try:
            return JSONResponse(store.vote(body.token, voter, body.choice))
        except VoteRefused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)

    return app
