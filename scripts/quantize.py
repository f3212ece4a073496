"""Builds int8 (QDQ) variants of facevault's two ONNX models with ONNX Runtime's static quantization.

  third_party/refvenv/bin/python scripts/quantize.py             # writes models/*_int8.onnx
  third_party/refvenv/bin/python scripts/quantize.py --variants  # also compares other settings
  third_party/refvenv/bin/python scripts/quantize-timing.py      # times fp32 vs int8 (see there)

Outputs (ignored by git, like the fp32 models):
  models/w600k_mbf_int8.onnx         embedder
  models/scrfd_500m_bnkps_int8.onnx  detector

Calibration data comes only from the five test photos in tests/fixtures/images, never from
../shared/data/devfaces (the evaluation set):
  * embedder: every face SCRFD finds at a 640 canvas (320 for the 112x112 Tom_Hanks crop, where
    640 finds nothing), aligned to 112x112 with insightface's norm_crop, plus a horizontally
    flipped copy of each crop: 70 faces;
  * detector: each photo letterboxed to 640x640 and to 320x320 (facevault's fine and coarse
    canvases), plus flipped copies: 20 inputs.

Pipeline per model: convert opset 11 -> 13 (per-channel Q/DQ needs 13), quant_pre_process (ONNX
shape inference and ORT's basic optimisations, which fold the embedder's BatchNorms), then
quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration). The build
runs twice and the script stops unless both runs give the same bytes; it prints the sha256 of
each file.

What is quantized, and why (measured on an AMD EPYC with AVX2 and no VNNI, 1 thread;
`--variants` reproduces the comparison): only the dense convolutions (group 1) after the first
one, plus the other ops ONNX Runtime's quantizer handles (Add, Gemm, Sigmoid, ...). These stay fp32:
  * the first convolution (3 input channels): it holds much of the error on the worst faces,
    and its int8 kernel is slower than fp32 (2x on the detector's 640 canvas);
  * grouped convolutions that are not depthwise (the embedder's Conv_2: 64 groups of 2
    channels): ONNX Runtime's int8 kernel for them is ~9x slower than fp32;
  * depthwise convolutions: keeping them fp32 makes both models faster (int8 depthwise is no
    faster, and it costs Q/DQ pairs) and raises the embedder's worst cosine to fp32 from 0.93
    to 0.97.
The embedder's 34 PRelu stay fp32 in any case (ONNX Runtime has no quantized PRelu); they are
~40% of its fp32 time already, which caps what int8 can gain. Activations are uint8: int8
activations give the same accuracy and run slower on x86. reduce_range (7-bit weights, against
saturation in the AVX2 u8 x s8 kernel) is off: it was needed when every convolution was
quantized (embedder median cosine 0.80 without, 0.97 with); with the convolutions above kept fp32
it loses a little accuracy and gains no speed.
"""
import argparse
import contextlib
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from insightface.model_zoo import SCRFD
from insightface.utils import face_align
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

# insightface's norm_crop calls a scikit-image method that is deprecated (not yet changed).
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODELS = os.path.join(ROOT, "models")
EMBEDDER = os.path.join(MODELS, "w600k_mbf.onnx")
DETECTOR = os.path.join(MODELS, "scrfd_500m_bnkps.onnx")
EMBEDDER_INT8 = os.path.join(MODELS, "w600k_mbf_int8.onnx")
DETECTOR_INT8 = os.path.join(MODELS, "scrfd_500m_bnkps_int8.onnx")
IMAGE_DIR = os.path.join(ROOT, "tests", "fixtures", "images")
# Fixed order, so the calibration data (and hence the ranges) never depend on a directory listing.
PHOTOS = ["Tom_Hanks_54745.png", "gdp.jpg", "players.jpg", "t1.jpg", "yaoming.jpg"]

DET_SIZE = 640  # canvas for finding calibration faces
DET_FALLBACK = 320  # for a photo with no face at 640 (the 112x112 crop; see models/README.md)
DET_CALIB_SIZES = (640, 320)  # canvases the detector is calibrated on
OPSET = 13  # lowest opset with per-channel QuantizeLinear/DequantizeLinear

# quantize_static arguments of the produced models (see the module docstring for the reasons).
SETTINGS = dict(
    quant_format=QuantFormat.QDQ,
    per_channel=True,
    reduce_range=False,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    calibrate_method=CalibrationMethod.MinMax,
)


# ---------------------------------------------------------------------------------------------
# Which convolutions stay fp32


def conv_kinds(model):
    """{Conv node name: 'first' | 'grouped' | 'depthwise' | 'dense'} from the weight shapes.
    'first' reads a graph input; 'grouped' has 1 < group < input channels."""
    weights = {t.name: t.dims for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    kinds = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        per_group = weights[node.input[1]][1]  # weight shape (M, C/group, kH, kW)
        if node.input[0] in inputs:
            kinds[node.name] = "first"
        elif group > 1 and per_group > 1:
            kinds[node.name] = "grouped"
        elif group > 1:
            kinds[node.name] = "depthwise"
        else:
            kinds[node.name] = "dense"
    return kinds


def keep_fp32(*kinds):
    """A nodes_to_exclude function that keeps the convolutions of the given kinds in fp32."""
    def exclude(model):
        return [name for name, kind in conv_kinds(model).items() if kind in kinds]
    return exclude


EXCLUDE = keep_fp32("first", "grouped", "depthwise")  # i.e. quantize dense convolutions only


# ---------------------------------------------------------------------------------------------
# Data


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_photo(name):
    img = cv2.imread(os.path.join(IMAGE_DIR, name), cv2.IMREAD_COLOR)  # BGR uint8
    if img is None:
        sys.exit(f"cannot read {name} in {IMAGE_DIR}: run scripts/setup.sh")
    return img


def session(path, threads=1, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """A CPU session, `threads` intra-op threads, default graph optimisations (ORT_ENABLE_ALL,
    which is also what facevault uses), log level error (the embedder warns on every N > 1 run
    because its graph declares a (1, 512) output)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def new_detector(sess):
    """insightface's SCRFD wrapper (its decoding and NMS) on an existing session."""
    det = SCRFD(session=sess)
    det.prepare(-1, det_thresh=0.5, nms_thresh=0.4)  # facevault's thresholds
    return det


def calibration_faces(verbose=True):
    """Aligned 112x112 BGR uint8 faces from the test photos, followed by their horizontal flips.
    Returns (faces (N,112,112,3), labels, face widths in image pixels)."""
    detector = new_detector(session(DETECTOR))
    faces, labels, widths = [], [], []
    for name in PHOTOS:
        img = load_photo(name)
        size = DET_SIZE
        boxes, kpss = detector.detect(img, input_size=(size, size))
        if len(boxes) == 0:
            size = DET_FALLBACK
            boxes, kpss = detector.detect(img, input_size=(size, size))
        if verbose:
            print(f"  {name}: {len(boxes)} faces at {size}")
        for i, (box, kps) in enumerate(zip(boxes, kpss)):
            faces.append(face_align.norm_crop(img, landmark=kps, image_size=112))
            labels.append(f"{name}#{i}")
            widths.append(float(box[2] - box[0]))
    faces += [np.ascontiguousarray(f[:, ::-1]) for f in faces]
    labels += [label + "/flip" for label in labels]
    return np.stack(faces), labels, np.array(widths + widths)


def embedder_blob(faces):
    """(N,112,112,3) BGR uint8 -> (N,3,112,112) float32 RGB, (x - 127.5) / 127.5."""
    rgb = faces[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - 127.5) / 127.5).transpose(0, 3, 1, 2))


def detector_blob(img, size):
    """Letterbox to the top-left of a size x size canvas exactly as insightface's SCRFD.detect
    (and facevault) do, then (x - 127.5) / 128 as a (1,3,size,size) RGB float32 blob."""
    h, w = img.shape[:2]
    if h / w > 1.0:
        nh, nw = size, int(size / (h / w))
    else:
        nw, nh = size, int(size * (h / w))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh))
    return cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (size, size), (127.5, 127.5, 127.5), swapRB=True)


def detector_calibration_inputs():
    blobs = []
    for flip in (False, True):
        for name in PHOTOS:
            img = load_photo(name)
            if flip:
                img = np.ascontiguousarray(img[:, ::-1])
            blobs += [detector_blob(img, s) for s in DET_CALIB_SIZES]
    return blobs


class ListReader(CalibrationDataReader):
    """Feeds a fixed list of arrays, one per calibration run, in order."""

    def __init__(self, input_name, arrays):
        self.input_name = input_name
        self.arrays = arrays
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.arrays):
            return None
        self.pos += 1
        return {self.input_name: self.arrays[self.pos - 1]}

    def rewind(self):
        self.pos = 0


# ---------------------------------------------------------------------------------------------
# Quantization


def quantize(src, dst, calib_arrays, settings=SETTINGS, exclude=EXCLUDE, preprocess=True, dynamic=False):
    """Quantizes src into dst.

    calib_arrays: calibration inputs, one array per run (unused when dynamic).
    settings:     quantize_static keyword arguments.
    exclude:      function(model) -> names of nodes to keep fp32, or None.
    preprocess:   run quant_pre_process first.
    dynamic:      quantize_dynamic instead (int8 weights, activations quantized at run time)."""
    with tempfile.TemporaryDirectory(prefix="facevault-quant-") as tmp:
        # Both models are opset 11. Per-channel Q/DQ (the `axis` attribute) needs opset 13, and
        # quantize_static (ORT 1.32) does not raise the opset by itself: it would write a model
        # ORT refuses to load ("Unrecognized attribute: axis for operator DequantizeLinear").
        model = os.path.join(tmp, "opset13.onnx")
        onnx.save(version_converter.convert_version(onnx.load(src), OPSET), model)
        if preprocess:
            pre = os.path.join(tmp, "pre.onnx")
            # skip_symbolic_shape: symbolic shape inference needs sympy, which the venv lacks;
            # plain ONNX shape inference is enough for these CNNs.
            quant_pre_process(model, pre, skip_symbolic_shape=True)
            model = pre
        excluded = exclude(onnx.load(model)) if exclude else []
        if dynamic:
            quantize_dynamic(model, dst, per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                             weight_type=settings["weight_type"], nodes_to_exclude=excluded)
        else:
            input_name = onnx.load(model).graph.input[0].name
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(model, dst, ListReader(input_name, calib_arrays), nodes_to_exclude=excluded,
                                **settings)
        return excluded


def build(faces_blob, det_inputs, out_embedder, out_detector):
    """Builds both int8 models with the chosen settings; returns the excluded node names."""
    e = quantize(EMBEDDER, out_embedder, [faces_blob[i:i + 1] for i in range(len(faces_blob))])
    d = quantize(DETECTOR, out_detector, det_inputs)
    return e, d


# ---------------------------------------------------------------------------------------------
# Accuracy and speed helpers (also used by quantize-timing.py)


def embed(sess, blob):
    out = sess.run(None, {sess.get_inputs()[0].name: blob})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def cosine_vs_fp32(fp32_sess, int8_sess, blob):
    """Per-face cosine between the L2-normalised fp32 and int8 embeddings (one face per run)."""
    return np.array([float((embed(fp32_sess, blob[i:i + 1]) * embed(int8_sess, blob[i:i + 1])).sum())
                     for i in range(len(blob))])


def interleaved_runs(sessions, feed, runs):
    """Per-run times (ms) of each session in {label: session}, timed in turn (A, B, A, B, ...)
    so that load from elsewhere on the machine hits them alike. One warm-up run each."""
    samples = {label: [] for label in sessions}
    for sess in sessions.values():
        sess.run(None, feed)
    for _ in range(runs):
        for label, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feed)
            samples[label].append((time.perf_counter() - t) * 1e3)
    return {label: np.array(v) for label, v in samples.items()}


def interleaved_ms(sessions, feed, runs):
    """Median ms per run of each session, timed as in interleaved_runs."""
    return {label: float(np.median(v)) for label, v in interleaved_runs(sessions, feed, runs).items()}


def match_detections(ref, test, iou_min=0.5):
    """Greedy one-to-one matching of two SCRFD results ((boxes+score (n,5), kps (n,5,2))) in
    reference score order. Returns (matched, missed scores, extra scores, min IoU, max keypoint
    error as a fraction of the face width, max |score difference|) over matched faces."""
    (rb, rk), (tb, tk) = ref, test
    free = list(range(len(tb)))
    ious, kps_err, score_diff, missed = [], [], [], []
    for i in range(len(rb)):
        best, best_iou = None, iou_min
        for j in free:
            x1, y1 = max(rb[i, 0], tb[j, 0]), max(rb[i, 1], tb[j, 1])
            x2, y2 = min(rb[i, 2], tb[j, 2]), min(rb[i, 3], tb[j, 3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area_r = (rb[i, 2] - rb[i, 0]) * (rb[i, 3] - rb[i, 1])
            area_t = (tb[j, 2] - tb[j, 0]) * (tb[j, 3] - tb[j, 1])
            union = area_r + area_t - inter
            if inter / union >= best_iou:
                best, best_iou = j, inter / union
        if best is None:
            missed.append(float(rb[i, 4]))
            continue
        free.remove(best)
        ious.append(best_iou)
        kps_err.append(np.linalg.norm(rk[i] - tk[best], axis=1).max() / (rb[i, 2] - rb[i, 0]))
        score_diff.append(abs(rb[i, 4] - tb[best, 4]))
    extra = [float(tb[j, 4]) for j in free]
    agg = lambda f, xs: float(f(xs)) if xs else float("nan")  # noqa: E731
    return len(ious), missed, extra, agg(min, ious), agg(max, kps_err), agg(max, score_diff)


def detector_agreement(fp32_sess, int8_sess, sizes=(640, 320)):
    """Compares int8 with fp32 detections on the five photos at each canvas size."""
    ref, test = new_detector(fp32_sess), new_detector(int8_sess)
    rows = {}
    for size in sizes:
        res = [match_detections(ref.detect(load_photo(p), input_size=(size, size)),
                                test.detect(load_photo(p), input_size=(size, size))) for p in PHOTOS]
        rows[size] = dict(
            matched=sum(r[0] for r in res),
            missed=[round(s, 2) for r in res for s in r[1]],
            extra=[round(s, 2) for r in res for s in r[2]],
            min_iou=np.nanmin([r[3] for r in res]),
            max_kps=np.nanmax([r[4] for r in res]),
            max_score=np.nanmax([r[5] for r in res]),
        )
    return rows


def fmt_agreement(row):
    return (f"{row['matched']} matched, missed {row['missed'] or '-'}, extra {row['extra'] or '-'}, "
            f"min IoU {row['min_iou']:.3f}, max kps err {100 * row['max_kps']:.1f}% of face width, "
            f"max score diff {row['max_score']:.3f}")


# ---------------------------------------------------------------------------------------------
# --variants


def run_variants(faces_blob, det_inputs):
    """Rebuilds alternative settings in a temporary directory and prints their agreement with
    fp32 and their speed relative to fp32 (fewer runs than quantize-timing.py)."""
    calib = [faces_blob[i:i + 1] for i in range(len(faces_blob))]
    rr = dict(SETTINGS, reduce_range=True)
    embedder_variants = [
        ("U8/S8, all convs", dict(exclude=None)),
        ("U8/S8 reduce_range, all convs", dict(settings=rr, exclude=None)),
        ("U8/S8, grouped conv fp32", dict(exclude=keep_fp32("grouped"))),
        ("U8/S8, first + grouped conv fp32", dict(exclude=keep_fp32("first", "grouped"))),
        ("**chosen**: U8/S8, dense convs only (first, grouped, depthwise fp32)", dict()),
        ("chosen with reduce_range", dict(settings=rr)),
        ("chosen with S8/S8 (int8 activations)", dict(settings=dict(SETTINGS, activation_type=QuantType.QInt8))),
        ("chosen with U8/U8 (uint8 weights)", dict(settings=dict(SETTINGS, weight_type=QuantType.QUInt8))),
        ("chosen with per-tensor weights", dict(settings=dict(SETTINGS, per_channel=False))),
        ("chosen without quant_pre_process", dict(preprocess=False)),
        ("chosen with Percentile calibration",
         dict(settings=dict(SETTINGS, calibrate_method=CalibrationMethod.Percentile))),
        ("chosen in QOperator format", dict(settings=dict(SETTINGS, quant_format=QuantFormat.QOperator))),
        ("dynamic, per-channel S8 weights, all convs (ConvInteger)", dict(dynamic=True, exclude=None)),
        ("dynamic, per-tensor U8 weights, all convs (ConvInteger)",
         dict(dynamic=True, exclude=None, settings=dict(SETTINGS, per_channel=False, weight_type=QuantType.QUInt8))),
    ]
    fp32 = session(EMBEDDER)
    name = fp32.get_inputs()[0].name
    feed1, feed4 = {name: faces_blob[:1]}, {name: faces_blob[:4]}
    print("\nembedder: cosine int8 vs fp32 over the 70 calibration faces; median ms, 1 thread, each variant")
    print("timed alternating with fp32 (ratio = int8 / fp32, below 1 is faster)")
    print("| variant | cos min | cos median | ms N=1 (fp32) | ratio N=1 | ms N=4 (fp32) | ratio N=4 | size |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="facevault-variants-") as tmp:
        for i, (label, kw) in enumerate(embedder_variants):
            path = os.path.join(tmp, f"e{i}.onnx")
            try:
                quantize(EMBEDDER, path, calib, **kw)
                s = session(path)
                cos = cosine_vs_fp32(fp32, s, faces_blob)
                t1 = interleaved_ms({"fp32": fp32, "int8": s}, feed1, 30)
                t4 = interleaved_ms({"fp32": fp32, "int8": s}, feed4, 10)
                print(f"| {label} | {cos.min():.4f} | {np.median(cos):.4f} | {t1['int8']:.2f} ({t1['fp32']:.2f}) "
                      f"| {t1['int8'] / t1['fp32']:.2f} | {t4['int8']:.2f} ({t4['fp32']:.2f}) "
                      f"| {t4['int8'] / t4['fp32']:.2f} | {os.path.getsize(path) / 1e6:.1f} MB |", flush=True)
            except Exception as e:  # report and go on
                print(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | | | | |",
                      flush=True)

        detector_variants = [
            ("U8/S8, all convs", dict(exclude=None)),
            ("U8/S8 reduce_range, all convs", dict(settings=rr, exclude=None)),
            ("U8/S8, first conv fp32", dict(exclude=keep_fp32("first", "grouped"))),
            ("**chosen**: U8/S8, dense convs only (first, depthwise fp32)", dict()),
            ("chosen with reduce_range", dict(settings=rr)),
            ("chosen with S8/S8 (int8 activations)", dict(settings=dict(SETTINGS, activation_type=QuantType.QInt8))),
            ("dynamic, per-channel S8 weights, all convs (ConvInteger)", dict(dynamic=True, exclude=None)),
        ]
        det32 = session(DETECTOR)
        name = det32.get_inputs()[0].name
        feeds = {size: {name: detector_blob(load_photo("players.jpg"), size)} for size in (640, 320)}
        print("\ndetector: int8 detections vs fp32 on the five photos; median ms on players.jpg, 1 thread,")
        print("alternating with fp32")
        print("| variant | agreement at 640 | agreement at 320 | ms 640 (fp32) | ratio | ms 320 (fp32) | ratio |")
        print("|---|---|---|---|---|---|---|")
        for i, (label, kw) in enumerate(detector_variants):
            path = os.path.join(tmp, f"d{i}.onnx")
            try:
                quantize(DETECTOR, path, det_inputs, **kw)
                s = session(path)
                agree = detector_agreement(det32, s)
                t640 = interleaved_ms({"fp32": det32, "int8": s}, feeds[640], 10)
                t320 = interleaved_ms({"fp32": det32, "int8": s}, feeds[320], 30)
                print(f"| {label} | {fmt_agreement(agree[640])} | {fmt_agreement(agree[320])} "
                      f"| {t640['int8']:.2f} ({t640['fp32']:.2f}) | {t640['int8'] / t640['fp32']:.2f} "
                      f"| {t320['int8']:.2f} ({t320['fp32']:.2f}) | {t320['int8'] / t320['fp32']:.2f} |", flush=True)
            except Exception as e:
                print(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | | | |",
                      flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", action="store_true", help="also build and compare alternative settings")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs a lot at INFO/WARNING
    ort.set_default_logger_severity(3)

    print("calibration faces (SCRFD, norm_crop 112, + flips):")
    faces, _, _ = calibration_faces()
    blob = embedder_blob(faces)
    det_inputs = detector_calibration_inputs()
    print(f"  {len(faces)} embedder inputs, {len(det_inputs)} detector inputs")

    # Build twice into a temporary directory, check that the bytes agree, then install.
    with tempfile.TemporaryDirectory(prefix="facevault-int8-") as tmp:
        hashes = []
        for r in range(2):
            e, d = os.path.join(tmp, f"e{r}.onnx"), os.path.join(tmp, f"d{r}.onnx")
            excluded = build(blob, det_inputs, e, d)
            hashes.append((sha256(e), sha256(d)))
        if hashes[0] != hashes[1]:
            sys.exit(f"NOT deterministic: build 1 {hashes[0]}, build 2 {hashes[1]}")
        shutil.copyfile(os.path.join(tmp, "e0.onnx"), EMBEDDER_INT8)
        shutil.copyfile(os.path.join(tmp, "d0.onnx"), DETECTOR_INT8)
    print(f"convolutions kept fp32: embedder {len(excluded[0])} ({', '.join(excluded[0])}), "
          f"detector {len(excluded[1])} ({', '.join(excluded[1])})")
    print("deterministic: two builds gave identical bytes")
    for path in (EMBEDDER, EMBEDDER_INT8, DETECTOR, DETECTOR_INT8):
        print(f"  {sha256(path)}  {os.path.relpath(path, ROOT)}  ({os.path.getsize(path):,} bytes)")

    if args.variants:
        run_variants(blob, det_inputs)


if __name__ == "__main__":
    main()
