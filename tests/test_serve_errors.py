"""Bad requests to `motif-video serve`: each gets a 4xx JSON error naming the field, and queues nothing."""

from __future__ import annotations

import io

import httpx
import numpy as np
import PIL.Image
import pytest

from motif_video.serving.config import ServeSettings
from serve_helpers import PROMPT, running_service

LIMITS = dict(max_request_mb=1.0, max_upload_mb=0.2, max_image_pixels=300 * 300, max_steps=50)


@pytest.fixture(scope="module")
def client(tmp_path_factory, small_model_backend):
    data = tmp_path_factory.mktemp("serve-errors") / "data"
    with running_service(data, small_model_backend, **LIMITS) as (url, service):
        with httpx.Client(base_url=url, timeout=30) as http:
            yield http
        assert service.store.counts()["queued"] == 0 and not service.store.ids()  # nothing bad got in


def _png(size: tuple[int, int], noise: bool = False) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8) if noise else None
    image = PIL.Image.fromarray(pixels) if noise else PIL.Image.new("RGB", size, (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# (JSON body, status, the field the error names)
BAD_JSON = [
    ({}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "   "}, 400, "prompt"),
    ({"prompt": "a" * 5000}, 400, "prompt"),
    ({"prompt": 42}, 400, "prompt"),
    ({"prompt": PROMPT, "bogus": 1}, 400, "bogus"),
    ({"prompt": PROMPT, "num_videos_per_prompt": 2}, 400, "num_videos_per_prompt"),
    ({"prompt": PROMPT, "steps": "abc"}, 400, "steps"),
    ({"prompt": PROMPT, "steps": 2.5}, 400, "steps"),
    ({"prompt": PROMPT, "steps": 0}, 400, "steps"),
    ({"prompt": PROMPT, "steps": 51}, 400, "steps"),
    ({"prompt": PROMPT, "height": 30}, 400, "height"),
    ({"prompt": PROMPT, "width": -16}, 400, "width"),
    ({"prompt": PROMPT, "num_frames": 6}, 400, "num_frames"),
    ({"prompt": PROMPT, "num_frames": 400001}, 400, "num_frames"),
    ({"prompt": PROMPT, "size": "64by64"}, 400, "size"),
    ({"prompt": PROMPT, "size": "64x64", "height": 64}, 400, "size"),
    ({"prompt": PROMPT, "size": "99999x99999"}, 400, "size"),
    ({"prompt": PROMPT, "seed": -1}, 400, "seed"),
    ({"prompt": PROMPT, "seed": 2**64}, 400, "seed"),
    ({"prompt": PROMPT, "guidance": "magic"}, 400, "guidance"),
    ({"prompt": PROMPT, "guidance_scale": "lots"}, 400, "guidance_scale"),
    ({"prompt": PROMPT, "noise_correlation": 2.0}, 400, "noise_correlation"),
    ({"prompt": PROMPT, "negative_prompt": ["a", "b"]}, 400, "negative_prompt"),
    ([PROMPT], 400, "body"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_JSON, ids=[p for _, _, p in BAD_JSON])
def test_a_bad_field_is_named(client, body, status, param):
    answer = client.post("/v1/videos", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def _post(client, **kwargs):
    return client.post("/v1/videos", **kwargs)


BAD_OTHER = [
    ("not JSON", lambda c: _post(c, content=b"{prompt", headers={"content-type": "application/json"}), 400, "body"),
    (
        "NaN",
        lambda c: _post(
            c, content=b'{"prompt": "a", "guidance_scale": NaN}', headers={"content-type": "application/json"}
        ),
        400,
        "guidance_scale",
    ),
    ("text/plain", lambda c: _post(c, content=PROMPT, headers={"content-type": "text/plain"}), 415, "Content-Type"),
    ("no type", lambda c: _post(c, content=b"x"), 415, "Content-Type"),
    (
        "not an image",
        lambda c: _post(c, data={"prompt": PROMPT}, files={"image": ("a.png", b"GIF89a-no", "image/png")}),
        400,
        "image",
    ),
    ("image as text", lambda c: _post(c, data={"prompt": PROMPT, "image": "/etc/passwd"}), 400, "image"),
    (
        "other file",
        lambda c: _post(c, data={"prompt": PROMPT}, files={"steps": ("s.txt", b"4", "text/plain")}),
        400,
        "steps",
    ),
    (
        "two images",
        lambda c: _post(
            c,
            data={"prompt": PROMPT},
            files=[
                ("image", ("a.png", _png((8, 8)), "image/png")),
                ("input_reference", ("b.png", _png((8, 8)), "image/png")),
            ],
        ),
        400,
        "input_reference",
    ),
    (
        "image pixels",
        lambda c: _post(c, data={"prompt": PROMPT}, files={"image": ("a.png", _png((400, 400)), "image/png")}),
        413,
        "image",
    ),
    (
        "upload bytes",
        lambda c: _post(
            c, data={"prompt": PROMPT}, files={"image": ("a.png", _png((290, 290), noise=True), "image/png")}
        ),
        413,
        "image",
    ),
    (
        "form field",
        lambda c: _post(
            c, data={"prompt": PROMPT, "steps": "many"}, files={"image": ("", b"", "application/octet-stream")}
        ),
        400,
        "steps",
    ),
    (
        "body bytes",
        lambda c: _post(c, content=b"{" + b" " * (2 << 20) + b"}", headers={"content-type": "application/json"}),
        413,
        "body",
    ),
    (
        "key length",
        lambda c: _post(c, json={"prompt": PROMPT}, headers={"Idempotency-Key": "k" * 300}),
        400,
        "Idempotency-Key",
    ),
    ("limit 0", lambda c: c.get("/v1/videos", params={"limit": 0}), 400, "limit"),
    ("limit text", lambda c: c.get("/v1/videos", params={"limit": "ten"}), 400, "limit"),
    ("order", lambda c: c.get("/v1/videos", params={"order": "sideways"}), 400, "order"),
    ("after", lambda c: c.get("/v1/videos", params={"after": "video_" + "0" * 32}), 400, "after"),
    ("unknown id", lambda c: c.get("/v1/videos/video_" + "0" * 32), 404, "video_id"),
    ("odd id", lambda c: c.get("/v1/videos/video_%2E%2E/content"), 404, "video_id"),
    ("delete unknown", lambda c: c.delete("/v1/videos/video_" + "f" * 32), 404, "video_id"),
    ("method", lambda c: c.put("/v1/videos"), 405, None),
    ("route", lambda c: c.get("/v2/videos"), 404, None),
]


@pytest.mark.parametrize(("request_of", "status", "param"), [b[1:] for b in BAD_OTHER], ids=[b[0] for b in BAD_OTHER])
def test_a_bad_request_gets_a_json_error(client, request_of, status, param):
    answer = request_of(client)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param


def test_off_localhost_the_server_refuses_to_start_without_a_key(monkeypatch, capsys):
    from motif_video.cli import main

    monkeypatch.delenv("MOTIF_VIDEO_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--data", "unused"]) == 2
    assert "--api-key" in capsys.readouterr().err
    ServeSettings(host="::1").validate()  # loopback is fine without a key
    ServeSettings(host="localhost").validate()
    ServeSettings(host="0.0.0.0", api_key="k").validate()
    with pytest.raises(ValueError, match="api-key"):
        ServeSettings(host="example.org").validate()
