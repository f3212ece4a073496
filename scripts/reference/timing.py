"""Per-stage timings of the Python InsightFace reference (insightface 0.7.3, onnxruntime with one
intra-op thread), on the same models and photos as benches/inference.rs, for a side-by-side
table. Medians over --passes after one warm-up pass.

  python timing.py MODELS_DIR IMAGES_DIR [--passes 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from insightface.utils import face_align  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import Reference  # noqa: E402


def median_ms(fn, passes: int) -> float:
    fn()
    samples = []
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("images")
    ap.add_argument("--passes", type=int, default=20)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    ref = Reference(args.models)
    rows = []
    for name in ["t1.jpg", "yaoming.jpg"]:
        img = cv2.imread(os.path.join(args.images, name), cv2.IMREAD_COLOR)
        for size in (320, 640):
            rows.append((f"detect/{size}/{name}", median_ms(lambda: ref.detect(img, size), args.passes)))
    img = cv2.imread(os.path.join(args.images, "t1.jpg"), cv2.IMREAD_COLOR)
    _, kpss = ref.detect(img, 640)
    crops = [face_align.norm_crop(img, landmark=k, image_size=112) for k in kpss[:4]]
    rows.append(("embed/1 face/t1.jpg", median_ms(lambda: ref.rec.get_feat(crops[:1]), args.passes)))
    rows.append(("embed/4 faces/t1.jpg (one batch)", median_ms(lambda: ref.rec.get_feat(crops), args.passes)))
    rows.append(("align/112x112/t1.jpg", median_ms(lambda: face_align.norm_crop(img, landmark=kpss[0], image_size=112), args.passes)))
    for name in sorted(os.listdir(args.images)):
        path = os.path.join(args.images, name)

        def whole(path=path):
            im = cv2.imread(path, cv2.IMREAD_COLOR)
            faces = ref.faces(im, 640, embed=True)
            return np.array([f["embedding"] for f in faces])

        rows.append((f"analyze/all faces/{name}", median_ms(whole, max(5, args.passes // 2))))
    print("| python reference (ms, median) | |")
    print("|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} |")


if __name__ == "__main__":
    main()
