"""A blog backend with no leak at all (a control).

``uvicorn apps.blog:app``. Recent comments live in a bounded deque; the feed
is rebuilt in memory on every request (4-6 MB, freed).
"""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from ._profiling import attach


class Post(BaseModel):
    slug: str
    title: str
    body: str


class CommentIn(BaseModel):
    post: str
    author: str = Field(max_length=40)
    text: str = Field(max_length=2000)


POSTS = {f"post-{i}": Post(slug=f"post-{i}", title=f"Post {i}", body="lorem ipsum " * 200) for i in range(30)}
_recent_comments: deque[CommentIn] = deque(maxlen=200)


def get_post(slug: str) -> Post:
    post = POSTS.get(slug)
    if post is None:
        raise HTTPException(status_code=404, detail="no such post")
    return post


posts = APIRouter(prefix="/posts")


@posts.get("")
async def list_posts() -> list[str]:
    return list(POSTS)


@posts.get("/{slug}")
async def read_post(post: Annotated[Post, Depends(get_post)]) -> Post:
    return post


@posts.post("/{slug}/comments", status_code=201)
def comment(comment: CommentIn, post: Annotated[Post, Depends(get_post)]) -> dict[str, int]:
    _recent_comments.append(comment)
    return {"comments": len(_recent_comments)}


app = FastAPI(title="blog")
app.include_router(posts)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"now": datetime.now(timezone.utc).isoformat()}


@app.get("/feed.xml", response_class=PlainTextResponse)
def feed() -> str:
    items = [f"<item><title>{p.title}</title><description>{p.body}</description></item>"
             for _ in range(random.randint(3, 4)) for p in POSTS.values()]
    parts = [item.encode() for item in items for _copy in range(20)]  # one per syndication format
    return f"<rss>{len(parts)} items, {sum(map(len, parts)) >> 20} MB rendered</rss>"


attach(app)
