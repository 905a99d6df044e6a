"""Jobs survive `kill -9`: the server is killed while jobs are queued and running; after a restart every job
completes exactly once. Plus the store's own invariants, without a model."""

from __future__ import annotations

import time

import httpx
import pytest

from motif_video.core.video_io import read_video
from motif_video.serving import ServeSettings, Service
from motif_video.serving.store import COMPLETED, IN_PROGRESS, QUEUED, JobStore
from serve_helpers import PROMPT, ServeProcess, wait_for

JOBS = 4
STEPS = 50  # about 2 s of denoising per job on a CPU: a wide window to kill one part-way


def test_jobs_survive_sigkill_and_each_completes_exactly_once(tmp_path):
    data = tmp_path / "data"
    server = ServeProcess(data)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ids = [
                client.post("/v1/videos", json={"prompt": PROMPT, "steps": STEPS, "seed": k}).json()["id"]
                for k in range(JOBS)
            ]
            # kill while one job is part-way through and the later ones wait
            running = wait_for(lambda: _part_way(client), every=0.02, what="a job part-way through")
        server.kill()
    finally:
        server.stop()
    store = JobStore(data)
    before = {job_id: store.get(job_id).status for job_id in ids}  # every accepted job was committed
    store.close()
    assert before[running] == IN_PROGRESS and QUEUED in before.values(), before

    restarted = ServeProcess(data)
    try:
        started = time.perf_counter()
        restarted.wait_ready()
        with httpx.Client(base_url=restarted.url, timeout=30) as client:
            finished = [wait_for(lambda j=j: _done(client, j), 120, every=0.1, what=f"{j} completed") for j in ids]
        took = time.perf_counter() - started
    finally:
        restarted.stop()
    assert [job["status"] for job in finished] == [COMPLETED] * JOBS

    store = JobStore(data)
    events = store.events()
    store.close()
    for job_id in ids:
        kinds = [kind for job, kind, _ in events if job == job_id]
        assert kinds.count("completed") == 1 and "failed" not in kinds, (job_id, kinds)
        folder = data / "videos" / job_id
        assert sorted(p.name for p in folder.iterdir()) == ["video.json", "video.mp4"]  # no half-written leftovers
        assert read_video(folder / "video.mp4")[0].shape == (17, 64, 64, 3)
    killed = [(kind, attempt) for job, kind, attempt in events if job == running]
    assert killed == [("queued", 0), ("started", 1), ("requeued", 1), ("started", 2), ("completed", 2)]
    print(
        f"restart: {JOBS} jobs, killed with {sum(s != COMPLETED for s in before.values())} unfinished; "
        f"after the restart all completed in {took:.1f} s, each exactly once"
    )


def _part_way(client: httpx.Client) -> str | None:
    jobs = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    return next((j["id"] for j in jobs if j["status"] == IN_PROGRESS and 0 < j["progress"] <= 50), None)


def _done(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/v1/videos/{job_id}").json()
    return job if job["status"] in (COMPLETED, "failed") else None


def test_only_the_attempt_that_claimed_a_job_can_finish_it_and_only_once(tmp_path):
    store = JobStore(tmp_path)
    for k in range(3):
        store.create(f"video_{k:032x}", "p", {"steps": 1}, False, None, "f")
    first = store.claim()
    assert first.id == f"video_{0:032x}" and first.attempts == 1
    assert store.requeue_running() == [first.id]  # as a restart does
    again = store.claim()
    assert again.id == first.id and again.attempts == 2  # back in its place at the head of the queue
    assert not store.complete(first) and not store.set_progress(first, 50)  # the stale attempt cannot
    assert store.complete(again) and not store.complete(again)  # the live one can, once
    assert store.get(first.id).status == COMPLETED and store.get(first.id).progress == 100
    kinds = [(kind, attempt) for _, kind, attempt in store.events(first.id)]
    assert kinds == [("queued", 0), ("started", 1), ("requeued", 1), ("started", 2), ("completed", 2)]
    assert store.delete(f"video_{1:032x}").status == QUEUED and store.get(f"video_{1:032x}") is None
    assert store.claim().id == f"video_{2:032x}" and store.claim() is None
    store.close()


def test_a_second_server_on_the_same_data_folder_refuses_to_start(tmp_path):
    class Backend:
        name, device, fps = "none", "cpu", 8
        defaults = None

        def load(self):
            pass

    first = Service(ServeSettings(data=str(tmp_path)), [Backend()])
    first.start()
    try:
        with pytest.raises(ValueError, match="another motif-video serve"):
            Service(ServeSettings(data=str(tmp_path)), [Backend()]).start()
    finally:
        first.stop()
    second = Service(ServeSettings(data=str(tmp_path)), [Backend()])
    second.start()  # free again once the first stopped
    second.stop()
