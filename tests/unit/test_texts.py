"""Rendering texts: what a render's time limit reports, wherever it fires."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from segtool.compile.jinja import RenderTimeout
from segtool.errors import ProjectError
from segtool.execute import texts


def test_a_time_limit_that_fires_after_a_render_returned_names_the_user(monkeypatch):
    """The clock for a user runs until the next user's rearm: when it ran out
    just after render() returned (here: while the text was cut), a raw
    RenderTimeout left the loop, an 'internal error' with no user."""
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=100)
    real = texts.truncate

    def truncate(text, max_chars):
        if text == "user 2":
            raise RenderTimeout("took longer than 2s")
        return real(text, max_chars)

    monkeypatch.setattr(texts, "truncate", truncate)
    rows = [{"user_id": i} for i in (1, 2, 3)]
    with pytest.raises(ProjectError) as info:
        texts.render_texts(proj, spec, rows, lambda ctx: f"user {ctx['key']}")
    assert str(info.value).startswith("text 'story', user_id 2: rendering took longer than 2s")


def test_texts_render_in_order_with_their_cut_flags():
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=8)
    rows = [{"user_id": 1, "__row_hash": 5}, {"user_id": 2, "__row_hash": 6}]
    out = texts.render_texts(proj, spec, rows, lambda ctx: f"user\n {ctx['key']} " * ctx["key"])
    assert [cut for _, cut in out] == [False, True]
    assert out[0][0] == "user 1"
