"""Times the fp32 models against the int8 ones that scripts/quantize.py wrote, and checks how far
the int8 outputs are from fp32.

  third_party/refvenv/bin/python scripts/quantize.py          # first: writes models/*_int8.onnx
  third_party/refvenv/bin/python scripts/quantize-timing.py   # ~30 s
  third_party/refvenv/bin/python scripts/quantize-timing.py --opt-level extended --runs 2

Timing: Python ONNX Runtime, CPU, intra_op_num_threads 1 (--threads), default graph
optimisations (ORT_ENABLE_ALL, as facevault; --opt-level to change), one warm-up run, then fp32
and int8 alternately (fp32, int8, fp32, int8, ...) so that other load on the machine hits both
alike; the table gives the median (and the 10th-90th percentile range) per run.
  * embedder: a batch of 1 and of 4 aligned faces from the calibration set;
  * detector (if models/scrfd_500m_bnkps_int8.onnx exists): players.jpg letterboxed to 640x640
    and to 320x320.

Agreement (a first accuracy indicator, not an evaluation: these are the calibration faces):
  * embedder: cosine between the L2-normalised fp32 and int8 embeddings of each of the 70
    calibration faces (35 faces + flips), min and median, overall and split by face width;
  * detector: int8 detections matched to fp32 ones (IoU >= 0.5) on the five photos at 640 and
    320, with the faces either side misses, the worst IoU, keypoint error and score difference.
"""
import argparse
import logging
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize as q  # noqa: E402  (scripts/quantize.py: paths, data and helpers)

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def row(label, runs, t):
    f, i = t["fp32"], t["int8"]
    spread = lambda x: f"{np.percentile(x, 10):.2f}-{np.percentile(x, 90):.2f}"  # noqa: E731
    return (f"| {label} | {runs} | {np.median(f):.2f} ({spread(f)}) | {np.median(i):.2f} ({spread(i)}) "
            f"| {np.median(i) / np.median(f):.2f} | {np.median(f) / np.median(i):.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (default 1)")
    ap.add_argument("--opt-level", choices=sorted(LEVELS), default="all", help="graph optimisation level")
    ap.add_argument("--runs", type=float, default=1.0, help="scale the number of timed runs")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)

    if not os.path.isfile(q.EMBEDDER_INT8):
        sys.exit(f"{q.EMBEDDER_INT8} missing: run scripts/quantize.py first")
    have_det = os.path.isfile(q.DETECTOR_INT8)
    paths = [q.EMBEDDER, q.EMBEDDER_INT8] + ([q.DETECTOR, q.DETECTOR_INT8] if have_det else [])
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), graph optimisation "
          f"level {args.opt_level}")
    for path in paths:
        print(f"  {q.sha256(path)}  {os.path.relpath(path, q.ROOT)}")

    def open_model(path):
        return q.session(path, threads=args.threads, level=LEVELS[args.opt_level])

    emb = {"fp32": open_model(q.EMBEDDER), "int8": open_model(q.EMBEDDER_INT8)}
    faces, _, widths = q.calibration_faces(verbose=False)
    blob = q.embedder_blob(faces)
    name = emb["fp32"].get_inputs()[0].name
    n = lambda k: max(3, int(k * args.runs))  # noqa: E731

    print("\n| model, input | runs | fp32 ms median (p10-p90) | int8 ms median (p10-p90) | int8/fp32 | speed-up |")
    print("|---|---|---|---|---|---|")
    print(row("embedder, N=1", n(200), q.interleaved_runs(emb, {name: blob[:1]}, n(200))), flush=True)
    print(row("embedder, N=4", n(60), q.interleaved_runs(emb, {name: blob[:4]}, n(60))), flush=True)
    if have_det:
        det = {"fp32": open_model(q.DETECTOR), "int8": open_model(q.DETECTOR_INT8)}
        dname = det["fp32"].get_inputs()[0].name
        img = q.load_photo("players.jpg")
        for size, runs in ((640, n(60)), (320, n(200))):
            feed = {dname: q.detector_blob(img, size)}
            print(row(f"detector, {size}x{size}", runs, q.interleaved_runs(det, feed, runs)), flush=True)

    cos = q.cosine_vs_fp32(emb["fp32"], emb["int8"], blob)
    print("\nembedder agreement: cosine(fp32, int8) per face")
    print("| faces | count | min | median |")
    print("|---|---|---|---|")
    for label, mask in [("all calibration faces", np.ones(len(cos), bool)),
                        ("face width >= 32 px", widths >= 32), ("face width < 32 px", widths < 32)]:
        print(f"| {label} | {mask.sum()} | {cos[mask].min():.4f} | {np.median(cos[mask]):.4f} |")
    # A batch of 4 must give the same embeddings as 4 single runs (to float rounding).
    batch = q.embed(emb["int8"], blob[:4])
    single = np.concatenate([q.embed(emb["int8"], blob[i:i + 1]) for i in range(4)])
    print(f"int8 batch of 4 vs 4 single runs: min cosine {np.min((batch * single).sum(axis=1)):.6f}")

    if have_det:
        print("\ndetector agreement (int8 vs fp32, five photos, score threshold 0.5, NMS 0.4):")
        for size, agreement in q.detector_agreement(det["fp32"], det["int8"]).items():
            print(f"  {size}: {q.fmt_agreement(agreement)}")


if __name__ == "__main__":
    main()
