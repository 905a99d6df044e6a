"""`motif-video serve` through an HTTP client, on the shipped small model: jobs run to playable mp4s with their
settings, Range requests, paging, delete, Idempotency-Key, the API key, and 50 concurrent submissions."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import PIL.Image
import pytest

from motif_video.core.video_io import read_video
from motif_video.serving.store import JobStore
from serve_helpers import PROMPT, running_service, wait_done, wait_for


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_model_backend):
    data = tmp_path_factory.mktemp("serve") / "data"
    with running_service(data, small_model_backend) as (url, service):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, service


def _png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_job_runs_to_a_playable_mp4_with_its_settings_and_range_requests(served):
    client, service = served
    made = client.post("/v1/videos", json={"prompt": PROMPT, "steps": 4, "seed": 7})
    assert made.status_code == 200, made.text
    job = made.json()
    assert job["object"] == "video" and job["status"] in ("queued", "in_progress") and job["id"].startswith("video_")
    seen = []
    while job["status"] not in ("completed", "failed"):
        seen.append(job["progress"])
        time.sleep(0.02)
        job = client.get(f"/v1/videos/{job['id']}").json()
    assert job["status"] == "completed" and job["progress"] == 100 and job["error"] is None, job
    assert seen == sorted(seen)  # progress only goes up
    assert job["size"] == "64x64" and job["task"] == "t2v" and job["attempts"] == 1
    assert job["timings"]["run_s"] > 0 and job["completed_at"] >= job["created_at"]

    content = client.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    assert content.headers["accept-ranges"] == "bytes"
    folder = service.videos / job["id"]
    assert (folder / "video.mp4").read_bytes() == content.content
    frames, fps = read_video(folder / "video.mp4")
    assert frames.shape == (17, 64, 64, 3) and fps == 8 and frames.std() > 1
    record = json.loads((folder / "video.json").read_text())["settings"]  # written by `generate`, beside the video
    assert record["seed"] == 7 and record["steps"] == 4 and record["prompt"] == PROMPT

    part = client.get(f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == content.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(content.content)}"
    tail = client.get(f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == content.content[-50:]
    bad = client.get(f"/v1/videos/{job['id']}/content", headers={"Range": f"bytes={len(content.content) + 10}-"})
    assert bad.status_code == 416


def test_request_fields_override_the_release_defaults(served):
    client, service = served
    job = client.post("/v1/videos", json={"prompt": PROMPT, "size": "48x32", "num_frames": 5, "steps": 2}).json()
    settings = job["settings"]
    # from the request; from the small model's release (25 steps, shift 3, no negative prompt) where it says nothing
    assert (settings["width"], settings["height"], settings["num_frames"], settings["steps"]) == (48, 32, 5, 2)
    assert settings["shift"] == 3.0 and settings["negative_prompt"] == "" and settings["noise_correlation"] == 0.9
    assert job["size"] == "48x32" and job["seconds"] == "0.625"
    job = wait_done(client, job["id"])
    frames, _ = read_video(service.videos / job["id"] / "video.mp4")
    assert frames.shape == (5, 32, 48, 3)
    defaults = client.post("/v1/videos", json={"prompt": PROMPT}).json()
    assert (defaults["settings"]["num_frames"], defaults["settings"]["steps"], defaults["settings"]["seed"]) == (
        17,
        25,
        0,
    )
    client.delete(f"/v1/videos/{defaults['id']}")


def test_image_to_video_from_a_multipart_upload(served):
    client, service = served
    fields = {"prompt": PROMPT, "steps": "2", "num_frames": "5"}
    red = client.post("/v1/videos", data=fields, files={"image": ("any name.png", _png((220, 30, 30)), "image/png")})
    assert red.status_code == 200, red.text
    assert red.json()["task"] == "i2v"
    # OpenAI's field name for the reference image works too
    blue = client.post(
        "/v1/videos", data=fields, files={"input_reference": ("x.png", _png((30, 30, 220)), "image/png")}
    )
    red, blue = wait_done(client, red.json()["id"]), wait_done(client, blue.json()["id"])
    assert red["status"] == blue["status"] == "completed"
    assert sorted(p.name for p in (service.videos / red["id"]).iterdir()) == [
        "first_frame.png",
        "video.json",
        "video.mp4",
    ]
    frames = [read_video(service.videos / j["id"] / "video.mp4")[0].astype(float) for j in (red, blue)]
    assert frames[0][0, ..., 0].mean() > frames[0][0, ..., 2].mean()  # the first frame follows the upload
    assert frames[1][0, ..., 2].mean() > frames[1][0, ..., 0].mean()


def test_list_pages_through_every_job_newest_first(served):
    client, _ = served
    made = [
        client.post("/v1/videos", json={"prompt": PROMPT, "steps": 1, "num_frames": 1, "seed": k}).json()["id"]
        for k in range(5)
    ]
    ids, after = [], None
    while True:
        page = client.get("/v1/videos", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        ids += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert ids[:5] == made[::-1] and len(ids) == len(set(ids))
    oldest = client.get("/v1/videos", params={"limit": 100, "order": "asc"}).json()["data"]
    assert [job["id"] for job in oldest] == ids[::-1]
    for video_id in made:
        wait_done(client, video_id)


def test_delete_cancels_a_queued_and_a_running_job_and_removes_their_files(served):
    client, service = served
    slow = client.post("/v1/videos", json={"prompt": PROMPT, "steps": 200}).json()["id"]
    queued = client.post("/v1/videos", json={"prompt": PROMPT, "steps": 1}).json()["id"]
    wait_for(lambda: client.get(f"/v1/videos/{slow}").json()["progress"] > 0, what="the slow job running")
    assert client.get(f"/v1/videos/{queued}").json()["status"] == "queued"
    for video_id in (queued, slow):
        gone = client.delete(f"/v1/videos/{video_id}")
        assert gone.json() == {"id": video_id, "object": "video.deleted", "deleted": True}
        assert client.get(f"/v1/videos/{video_id}").status_code == 404
        assert client.delete(f"/v1/videos/{video_id}").status_code == 404
    wait_for(lambda: all(w.job_id is None for w in service.workers), 30, what="the worker let go of the job")
    assert not (service.videos / slow).exists() and not (service.videos / queued).exists()
    kinds = [kind for _, kind, _ in service.store.events(slow)]
    assert kinds == ["queued", "started", "deleted"]  # stopped at a step: never completed


def test_idempotency_key_replays_the_same_job_and_refuses_another_request(served):
    client, _ = served
    body = {"prompt": PROMPT, "steps": 1, "num_frames": 1, "seed": 11}
    key = {"Idempotency-Key": "order-11"}
    first = client.post("/v1/videos", json=body, headers=key)
    again = client.post("/v1/videos", json=body, headers=key)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/videos", json={**body, "seed": 12}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    # the same key sent by 8 clients at once still makes one job
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/videos", json=body, headers={"Idempotency-Key": "burst"}), range(8))
        )
    assert {a.status_code for a in answers} == {200} and len({a.json()["id"] for a in answers}) == 1
    wait_done(client, first.json()["id"])
    wait_done(client, answers[0].json()["id"])


def test_healthz_and_the_page(served):
    client, _ = served
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "motif-video-small"
    assert health["workers"][0]["device"] == "cpu" and set(health["jobs"]) >= {"queued", "completed"}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/videos" in page.text


def test_50_concurrent_submissions_are_all_kept_and_each_completes_once(served):
    client, service = served
    started = time.perf_counter()
    with ThreadPoolExecutor(50) as pool:
        answers = list(
            pool.map(
                lambda k: client.post("/v1/videos", json={"prompt": PROMPT, "steps": 1, "num_frames": 1, "seed": k}),
                range(50),
            )
        )
    accepted = time.perf_counter() - started
    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200]
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 50
    for video_id in ids:
        assert wait_done(client, video_id)["status"] == "completed"
    done = time.perf_counter() - started
    listed = {job["id"] for job in client.get("/v1/videos", params={"limit": 100}).json()["data"]}
    assert set(ids) <= listed
    events = [(job, kind) for job, kind, _ in service.store.events() if job in set(ids)]
    assert all(events.count((video_id, "completed")) == 1 for video_id in ids)
    assert all((service.videos / video_id / "video.mp4").is_file() for video_id in ids)
    print(f"50 concurrent submissions: accepted in {accepted:.2f} s, all completed in {done:.2f} s")


def test_an_api_key_is_asked_of_every_v1_route(tmp_path, small_model_backend):
    with running_service(tmp_path / "keyed", small_model_backend, api_key="s3cret") as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                refused = client.get("/v1/videos", headers=headers)
                assert refused.status_code == 401 and refused.json()["error"]["param"] == "Authorization"
                assert refused.headers["www-authenticate"] == "Bearer"
            assert client.post("/v1/videos", json={"prompt": PROMPT}).status_code == 401
            assert client.get("/v1/videos", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert client.get("/healthz").status_code == 200  # open: no job data in it


def test_a_job_the_model_cannot_run_fails_with_its_error(tmp_path):
    class Broken:
        name, device, fps = "broken", "cpu", 8

        def __init__(self):
            from motif_video.core.release import GenerationDefaults

            self.defaults = GenerationDefaults(height=16, width=16, num_frames=1, num_inference_steps=1)

        def check(self, *args):
            pass

        def load(self):
            pass

        def run(self, *args):
            raise RuntimeError("out of memory")

    with running_service(tmp_path / "data", Broken()) as (url, _), httpx.Client(base_url=url) as client:
        job = client.post("/v1/videos", json={"prompt": "a"}).json()
        failed = wait_done(client, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "generation_failed", "message": "RuntimeError: out of memory"}
    assert JobStore(tmp_path / "data").events(job["id"])[-1][1] == "failed"
