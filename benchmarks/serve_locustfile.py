"""Locust users for benchmarks/serve_throughput.py (run by locust, headless). Environment:
CVZOO_MODEL (served name), CVZOO_MODE (tensor | jpeg | soak), CVZOO_SIZE (input size), CVZOO_FILES (a JSON list of
[jpeg path, expected top-1 id]: jpeg and soak modes), CVZOO_BAD_SHARE (soak: share of bad requests)."""
import json
import os
import random

from locust import FastHttpUser, constant, events, task
from serve_bodies import jpeg_body, tensor_body  # serve_throughput.py puts benchmarks/ on PYTHONPATH

MODEL = os.environ["CVZOO_MODEL"]
MODE = os.environ.get("CVZOO_MODE", "tensor")
SIZE = int(os.environ.get("CVZOO_SIZE", "224"))
FILES = [(open(p, "rb").read(), want) for p, want in json.loads(os.environ.get("CVZOO_FILES", "[]"))]
BAD_SHARE = float(os.environ.get("CVZOO_BAD_SHARE", "0.05"))
URL = f"/v2/models/{MODEL}/infer"
COUNTS = {"good": 0, "good_wrong": 0, "good_failed": 0, "bad": 0, "bad_not_4xx": 0}


TENSOR_BODY = tensor_body(SIZE)


class Client(FastHttpUser):
    wait_time = constant(0)

    @task
    def one(self):
        if MODE == "tensor":
            body, headers = TENSOR_BODY
            self.client.post(URL, data=body, headers=headers, name="tensor")
            return
        data, want = random.choice(FILES)
        bad = MODE == "soak" and random.random() < BAD_SHARE
        if bad:
            data = data[: len(data) // 4] if random.random() < 0.5 else b"not an image"
        body, headers = jpeg_body(data)
        with self.client.post(URL, data=body, headers=headers, name="bad" if bad else "jpeg",
                              catch_response=True) as r:
            if bad:
                COUNTS["bad"] += 1
                if 400 <= r.status_code < 500:
                    r.success()  # the answer a bad request should get
                else:
                    COUNTS["bad_not_4xx"] += 1
                    r.failure(f"bad request answered {r.status_code}")
                return
            COUNTS["good"] += 1
            if r.status_code != 200:
                COUNTS["good_failed"] += 1
                r.failure(f"{r.status_code}")
                return
            got = json.loads(r.content)["outputs"][0]["data"][0]
            if got != want:
                COUNTS["good_wrong"] += 1
                r.failure(f"top-1 {got}, predict says {want}")


@events.quitting.add_listener
def _write_counts(environment, **kw):
    out = os.environ.get("CVZOO_COUNTS")
    if out:
        with open(out, "w") as f:
            json.dump(COUNTS, f)
