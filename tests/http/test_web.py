"""The web page's files, in-process: served at / and /static, nothing from elsewhere."""

from __future__ import annotations

import asyncio
import re

from tests.conftest import ROOT
from tests.helpers import make_app, running


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    async def main() -> None:
        async with running(make_app(), wait_ready=False) as c:
            r = await c.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
            for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
                f = await c.get(src)
                assert f.status_code == 200 and f.content, src
            assert {"/static/app.js", "/static/style.css"} <= set(
                re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text))
            assert (await c.get("/static/../settings.py")).status_code == 404

    asyncio.run(main())


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for path in (ROOT / "app" / "http" / "static").iterdir():
        # An SVG's namespace is a name, not something loaded.
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9-]+(\.[a-z0-9-]+)+", text, re.I), path
        assert "@import" not in text, path
