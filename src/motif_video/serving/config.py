"""`ServeSettings`: where the service listens, where it keeps its jobs, and its limits (the `serve` flags).

Bound to 127.0.0.1 by default. Any other address serves other machines, so the service refuses to start there
without an API key (`--api-key`, or `MOTIF_VIDEO_API_KEY` read by `motif_video.env`), which clients then send as
`Authorization: Bearer KEY`. The limits bound what one request may cost: its body, an uploaded first frame (bytes
and pixels, checked from the image header before it is decoded), the video's pixels and the steps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from motif_video.pipeline.settings import option

MB = 1 << 20
LOCAL_NAMES = ("localhost",)


@dataclass
class ServeSettings:
    """One `motif-video serve`: address, data folder, API key and per-request limits."""

    host: str = option("127.0.0.1", "address to bind (default 127.0.0.1: this machine only; others need an API key)")
    port: int = option(8000, "port (default 8000)")
    data: str = option("motif-video-data", "folder of the job store and the videos (default ./motif-video-data)")
    api_key: str | None = option(None, "bearer token clients must send (default: $MOTIF_VIDEO_API_KEY, else none)")
    max_request_mb: float = option(16.0, "largest request body in MB (default 16)")
    max_upload_mb: float = option(10.0, "largest first-frame image upload in MB (default 10)")
    max_image_pixels: int = option(4096 * 4096, "largest first-frame image in pixels (default 4096x4096)")
    max_video_pixels: int = option(1280 * 736 * 121, "largest width x height x frames (default the official size)")
    max_steps: int = option(200, "most denoising steps per video (default 200)")
    max_queued: int = option(1000, "most queued jobs; more are refused with 429 (default 1000)")

    def validate(self) -> None:
        """Raises ValueError: off localhost without an API key, or a limit that is not positive."""
        if not is_local(self.host) and not self.api_key:
            raise ValueError(
                f"--host {self.host} serves other machines: pass --api-key KEY or set MOTIF_VIDEO_API_KEY "
                "(clients send it as 'Authorization: Bearer KEY'), or bind 127.0.0.1"
            )
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_request_mb", "max_upload_mb", "max_image_pixels", "max_video_pixels", "max_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_queued < 1:
            raise ValueError(f"--max-queued must be at least 1, got {self.max_queued}")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


def is_local(host: str) -> bool:
    """True for a loopback address or `localhost`: only this machine can connect."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
