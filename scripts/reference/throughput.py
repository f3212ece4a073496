"""Images/second of the Python InsightFace reference with N worker processes (each its own
onnxruntime sessions, one intra-op thread), the same pipeline as make_reference.py: decode from
bytes, detect at 640, align and embed every face. Prints one JSON line.

  python throughput.py MODELS_DIR IMAGES_DIR --workers 2 --duration 20
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time


def worker(models: str, images: list[bytes], start_at: float, end_at: float, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cv2
    import numpy as np
    from make_reference import Reference

    cv2.setNumThreads(1)
    ref = Reference(models)
    for data in images:  # warm-up
        ref.faces(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 640, embed=True)
    while time.time() < start_at:
        time.sleep(0.001)
    done = faces = 0
    latencies = []
    i = 0
    while True:
        t = time.time()
        if t >= end_at:
            break
        img = cv2.imdecode(np.frombuffer(images[i % len(images)], np.uint8), cv2.IMREAD_COLOR)
        faces += len(ref.faces(img, 640, embed=True))
        latencies.append(time.time() - t)
        done += 1
        i += 1
    out.put((done, faces, latencies))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    names = sorted(os.listdir(args.images))
    images = [open(os.path.join(args.images, n), "rb").read() for n in names]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 15.0  # time to load models and warm up
    end_at = start_at + args.duration
    procs = [ctx.Process(target=worker, args=(args.models, images[w:] + images[:w], start_at, end_at, out))
             for w in range(args.workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    done = sum(r[0] for r in results)
    faces = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    pct = lambda p: lat[round((len(lat) - 1) * p)] * 1e3 if lat else 0.0
    print(json.dumps({"rpc": "python-reference", "workers": args.workers, "ok": done, "wall_s": args.duration,
                      "req_per_s": done / args.duration, "faces_per_s": faces / args.duration,
                      "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}))


if __name__ == "__main__":
    main()
