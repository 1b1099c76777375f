"""Locust users for the service's HTTP API, for teams that drive load with Locust rather than the harness.

    pip install locust          # not a project dependency; the harness (python -m loadtests) needs none of it
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s \\
        --csv runs/locust/medclm

Each user segments images (``POST /v1/segment``) three times as often as it asks a question
(``POST /v1/ask/stream``, streamed, so Locust's response time is the full answer and the time to the first
delta is reported as its own request name ``ask:first-delta``). Images and questions come from the data
engine's phantoms (``MEDCLM_LOCUST_INPUTS`` of them, default 8), or from a folder of PNG/JPEG/DICOM files
named by ``MEDCLM_LOCUST_IMAGES``. A refused request is a failure named by its HTTP status.
"""

from __future__ import annotations

import base64
import json
import os
import time

from locust import HttpUser, between, events, task

from loadtests.inputs import folder_inputs, phantom_inputs

_INPUTS = []


@events.init.add_listener
def load_inputs(environment, **_kwargs) -> None:
    """Build the images once per Locust process, before any user starts."""
    count = int(os.environ.get("MEDCLM_LOCUST_INPUTS", "8"))
    folder = os.environ.get("MEDCLM_LOCUST_IMAGES")
    _INPUTS.extend(folder_inputs(folder, count) if folder else phantom_inputs(count))


def image_body(image) -> dict:
    """The JSON ``image`` object of a request."""
    return {"data_base64": base64.b64encode(image.data).decode(), "media_type": image.media_type,
            "modality": image.modality}


class RadiologyUser(HttpUser):
    """A reading-room client: mostly segmentations, sometimes a grounded question."""

    wait_time = between(0.0, 0.5)

    def on_start(self) -> None:
        """Each user walks the inputs from its own offset."""
        self.index = id(self) % max(len(_INPUTS), 1)

    def _next_image(self):
        self.index += 1
        return _INPUTS[self.index % len(_INPUTS)]

    @task(3)
    def segment(self) -> None:
        """``POST /v1/segment`` with run-length masks."""
        body = {"image": image_body(self._next_image()), "mask_format": "rle"}
        with self.client.post("/v1/segment", json=body, name="segment", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")

    @task(1)
    def ask_stream(self) -> None:
        """``POST /v1/ask/stream``: the whole stream, and the time to its first delta as its own entry."""
        image = self._next_image()
        question = image.questions[self.index % len(image.questions)]
        body = {"image": image_body(image), "question": question, "max_tokens": 64}
        started = time.perf_counter()
        first_delta_reported = False
        with self.client.post("/v1/ask/stream", json=body, name="ask", stream=True,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            event = None
            for raw in response.iter_lines():
                line = raw.decode() if isinstance(raw, bytes) else raw
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "delta" and not first_delta_reported:
                    first_delta_reported = True
                    events.request.fire(request_type="SSE", name="ask:first-delta",
                                        response_time=(time.perf_counter() - started) * 1000,
                                        response_length=0, exception=None, context={})
                elif line.startswith("data:") and event == "error":
                    response.failure(json.loads(line[5:]).get("error", {}).get("code", "stream error"))
                    return
            response.success()
