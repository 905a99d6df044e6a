"""`motif-video serve`: a video-generation service with OpenAI's Videos API, a job queue that survives restarts,
and a web page.

* API (`app.py`): create a job, poll it (`queued` / `in_progress` / `completed` / `failed`, with a progress
  figure), download its mp4 (Range requests), list, delete; an `Idempotency-Key` header makes a retried create
  safe. Errors are JSON naming the field (`errors.py`).
* Requests (`schemas.py`): their fields are `GenerationSettings`' fields; the model's release defaults fill the
  rest; `submit.py` runs the same validation as `generate` before a job is queued.
* Jobs (`store.py`): SQLite in the data folder, committed before the answer; a job a killed process was running
  is requeued at the next start, and only the attempt that claimed a job can finish it, so each completes once.
* Workers (`worker.py`): one per device, loading the pipeline once; the model comes in through a `Backend`, which
  the command line makes from its `generate` path (`cli/serve.py`).
* Safety (`config.py`, `security.py`): localhost by default, an API key required anywhere else; limits on the body,
  the upload and the pixels; random job ids; no path from a request.
* The page (`page.html`): plain HTML and JavaScript, served at /.
"""

from motif_video.serving.config import ServeSettings
from motif_video.serving.server import Service
from motif_video.serving.worker import Backend

__all__ = ["Backend", "ServeSettings", "Service"]
