"""What every job store does the same way: a submission checked, planned and decoded before
it is acknowledged, and a stored job planned again to run. The embedded spool
(`app.background.jobs`) and the shared Redis store (`app.background.shared`) both build on it.
"""

from __future__ import annotations

import asyncio
import json
import logging

from app.background.entry import STATE_SLACK, SUBMIT_DECODES
from app.background.estimates import Estimates
from app.background.spool import JobState, new_id, result_bound
from app.images import imaging
from app.images.pipeline import Pipeline, Planned
from app.images.sizing import Size
from app.runtime import tiling
from app.runtime.metrics import Metrics
from app.runtime.upscaler import AUTO, UnknownModel

log = logging.getLogger("app.background.intake")


class JobIntake(Estimates):
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__()
        s = pipeline.up.settings
        self.pipeline, self.up = pipeline, pipeline.up
        self.ttl_s, self.max_bytes = s.job_ttl_s, s.spool_max_bytes
        # Jobs have pixel limits of their own, larger than a request's.
        self.limits = (s.job_max_input_pixels, s.job_max_output_pixels or s.max_output_pixels)
        self._decodes = asyncio.Semaphore(SUBMIT_DECODES)
        self.finished = metrics.jobs_finished

    def plan(self, data: bytes, size: Size, fmt: str | None, quality: int, model: str | None,
             kind: str, strip: bool) -> tuple[Planned, int, int]:
        """Check a submission from its header (400/413/415/422) and choose its model; the
        plan, its result's bound in bytes, and all it needs in the cap: the input, the
        result at its largest, and the state (with slack for its growth)."""
        planned = self.pipeline.plan(data, size, model, kind, fmt, quality, self.limits, strip)
        bound = result_bound(planned.probed, planned.scale, planned.out_fmt)
        need = len(data) + bound + len(json.dumps(tiling.plan_to_dict(planned.plan))) \
            + STATE_SLACK
        return planned, bound, need

    async def checked_state(self, planned: Planned, bound: int, data: bytes, fmt: str | None,
                            quality: int, strip: bool, filename: str | None) -> JobState:
        """Decode the image now, as /upscale would before its model work, so that a corrupt
        or truncated body is a 400 here rather than a job that fails later (a few at a
        time: each may be as large as the job pixel limit); the new job's state."""
        async with self._decodes:
            await self.pipeline.decode_image(planned)
        plan = planned.plan  # as decoded (an orientation the header did not tell)
        return JobState(new_id(), planned.scale, fmt, quality, planned.out_fmt,
                        plan.count, plan.tile_h, plan.tile_w, len(data),
                        model=planned.name, result_bound=bound + STATE_SLACK,
                        plan=tiling.plan_to_dict(plan), strip=strip,
                        target=list(planned.target) if planned.target else None,
                        filename=filename)

    def _planned(self, st: JobState, data: bytes) -> Planned:
        """A stored job as its submission planned it: its model and plan, not made again.
        (State files of older versions lack them: their model and plan are made now.)"""
        name = self._model_of(st)
        if name is None or not self.up.model_ready(name):
            raise UnknownModel(f"model {name} is not served any more")
        if st.plan is None:
            return self.pipeline.plan(data, Size(st.scale), name, AUTO, st.format,
                                      st.quality, self.limits, st.strip)
        return Planned(imaging.reopen(data), name, st.scale, tiling.plan_from_dict(st.plan),
                       st.out_format, st.quality, st.strip,
                       tuple(st.target) if st.target else None)  # type: ignore[arg-type]

    def _runnable(self, st: JobState) -> bool:
        """A job runs once its model serves; or, once the service is ready, to fail if its
        model is not there (a model removed since the job was stored)."""
        name = self._model_of(st)
        return self.up.ready or (name is not None and self.up.model_ready(name))

    def view_of(self, st: JobState, done: int, total: int, eta_s: float) -> dict:
        """A job as the API shows it, whichever store holds it."""
        body: dict = {
            "id": st.id, "status": st.status,
            "progress": round(done / total, 4) if total else float(st.status == "done"),
            "tiles_done": done, "tiles_total": total, "eta_s": round(eta_s, 1),
            "scale": st.scale, "model": self._model_of(st), "format": st.out_format}
        if st.target:
            body["size"] = st.target
        if st.filename:
            body["filename"] = st.filename
        if st.error:
            body["error"] = st.error
        if st.status == "done":
            body["result_url"] = f"/v1/jobs/{st.id}/result"
        return body
