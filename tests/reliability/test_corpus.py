"""The malformed corpus against the in-process app, at `/upscale` and at `/v1/jobs` (which
takes the same bodies): no 5xx, each case its documented 4xx as JSON, no model work and no
job spooled for any of them, and a good request served after each family."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.helpers import make_app, running
from tests.reliability.corpus import Case, cases, decode_ok, good_png, model_params
from tests.server import metric

MAX_BODY = 2_000_000


def _run_corpus(corpus: list[Case], path: str = "/upscale"
                ) -> tuple[Counter, list[str], list[str]]:
    histogram: Counter = Counter()
    wrong: list[str] = []
    unserved: list[str] = []

    async def main() -> None:
        async with running(make_app(max_body_bytes=MAX_BODY)) as c:
            family, tiles_before = None, 0.0
            for case in [*corpus, None]:
                if case is None or case.family != family:
                    if family is not None:  # the family is done: is the service still fine?
                        text = (await c.get("/metrics")).text
                        if metric(text, "lsrcnn_tiles_total") != tiles_before or \
                                metric(text, "lsrcnn_jobs") != 0:
                            wrong.append(f"{family}: model work or a job for a bad request")
                        r = await c.post("/upscale?scale=2", content=good_png(),
                                         headers={"content-type": "image/png"})
                        if r.status_code != 200 or decode_ok(r.content) != (48, 32):
                            unserved.append(family)
                    family = case.family if case else None
                    if case is not None:
                        tiles_before = metric((await c.get("/metrics")).text,
                                                  "lsrcnn_tiles_total")
                if case is None:
                    break
                r = await c.post(f"{path}?{case.query}", content=case.body,
                                 headers=case.headers)
                histogram[r.status_code] += 1
                body = r.json() if r.headers.get("content-type") == "application/json" else {}
                if r.status_code != case.status or set(body) != {"error", "request_id"}:
                    wrong.append(f"{case.family}/{case.name}: {r.status_code} {r.text[:120]}")

    asyncio.run(main())
    return histogram, wrong, unserved


@pytest.mark.parametrize("path", ["/upscale", "/v1/jobs"])
def test_malformed_corpus_gets_documented_4xx_and_never_5xx(path: str) -> None:
    corpus = cases(MAX_BODY)
    assert len(corpus) >= 80
    assert len({c.family for c in corpus}) >= 10
    if path == "/upscale":  # the parameter only /upscale has
        corpus += model_params()
    histogram, wrong, unserved = _run_corpus(corpus, path)
    print(f"{path} corpus: {len(corpus)} cases, statuses {dict(sorted(histogram.items()))}")
    assert not [s for s in histogram if s >= 500], histogram
    assert not wrong, "\n".join(wrong)
    assert not unserved, unserved
