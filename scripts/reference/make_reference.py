"""Reference outputs of the Python InsightFace pipeline (insightface 0.7.3 on the same ONNX files).

Writes one JSON file that tests/pipeline_parity.rs checks facevault against:
  images.<name>.det640 / det320   faces found at det_size 640 (the reference default) and 320:
                                  bbox, score, 5 keypoints; det640 also has the L2-normalised
                                  embedding of every face (insightface norm_crop + w600k_mbf)
  crops.<name>#<i>                tight square crops around each det640 face of the portrait
                                  photos (faces of at least 40 px; side 1.1x the longer box side,
                                  resized to 150x150 and 112x112 with cv2.INTER_AREA): the best
                                  detector score at 640 and 320, to show which scale finds faces
                                  that fill the frame

Usage (run by scripts/reference/run.sh, which makes the venv):
  python make_reference.py MODELS_DIR IMAGES_DIR OUT.json
The pipeline is built exactly as ../shared/bench/peer/insightface_pipeline.py builds it.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import cv2
import numpy as np
import onnxruntime as ort

import insightface
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

warnings.filterwarnings("ignore", category=FutureWarning)

IMAGES = ["Tom_Hanks_54745.png", "gdp.jpg", "players.jpg", "t1.jpg", "yaoming.jpg"]
CROP_SOURCES = ["gdp.jpg", "t1.jpg", "yaoming.jpg"]
CROP_SIDES = [150, 112]
# Only faces that could be enrolled (the 24-28 px blurred spectators of gdp.jpg are not).
MIN_CROP_FACE = 40


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def f(v) -> float:
    return float(np.float32(v))


class Reference:
    def __init__(self, models: str):
        det = os.path.join(models, "scrfd_500m_bnkps.onnx")
        rec = os.path.join(models, "w600k_mbf.onnx")
        self.det = SCRFD(model_file=det, session=session(det))
        self.det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
        self.rec = ArcFaceONNX(model_file=rec, session=session(rec))
        self.rec.prepare(-1)

    def detect(self, img: np.ndarray, size: int):
        return self.det.detect(img, input_size=(size, size), max_num=0, metric="default")

    def faces(self, img: np.ndarray, size: int, embed: bool) -> list[dict]:
        bboxes, kpss = self.detect(img, size)
        out = []
        for i in range(bboxes.shape[0]):
            face = {
                "bbox": [f(v) for v in bboxes[i, :4]],
                "score": f(bboxes[i, 4]),
                "kps": [[f(x), f(y)] for x, y in kpss[i]],
            }
            if embed:
                crop = face_align.norm_crop(img, landmark=kpss[i], image_size=112)
                feat = self.rec.get_feat(crop).flatten()
                face["embedding"] = [round(f(v), 7) for v in feat / np.linalg.norm(feat)]
            out.append(face)
        return out

    def best_score(self, img: np.ndarray, size: int) -> float:
        # the detector's threshold hides sub-threshold scores; ask for everything above 0.01
        saved = self.det.det_thresh
        self.det.det_thresh = 0.01
        try:
            bboxes, _ = self.detect(img, size)
        finally:
            self.det.det_thresh = saved
        return f(bboxes[:, 4].max()) if bboxes.shape[0] else 0.0


def tight_crop(img: np.ndarray, bbox: list[float], side: int) -> np.ndarray:
    """Square of 1.1x the longer box side centred on the box, clamped to the image, resized."""
    x1, y1, x2, y2 = bbox
    half = 0.55 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = img.shape[:2]
    left, top = int(round(max(0, cx - half))), int(round(max(0, cy - half)))
    right, bottom = int(round(min(w, cx + half))), int(round(min(h, cy + half)))
    return cv2.resize(img[top:bottom, left:right], (side, side), interpolation=cv2.INTER_AREA)


def main() -> None:
    models, images, out_path = sys.argv[1:4]
    ref = Reference(models)
    result = {
        "generator": "scripts/reference/make_reference.py",
        "insightface": insightface.__version__,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "det_thresh": 0.5,
        "nms_thresh": ref.det.nms_thresh,
        "images": {},
        "crops": {},
    }
    for name in IMAGES:
        img = cv2.imread(os.path.join(images, name), cv2.IMREAD_COLOR)
        assert img is not None, name
        result["images"][name] = {
            "width": img.shape[1], "height": img.shape[0],
            "det640": ref.faces(img, 640, embed=True),
            "det320": ref.faces(img, 320, embed=False),
        }
        print(name, "faces at 640:", len(result["images"][name]["det640"]),
              "at 320:", len(result["images"][name]["det320"]), file=sys.stderr)
    for name in CROP_SOURCES:
        img = cv2.imread(os.path.join(images, name), cv2.IMREAD_COLOR)
        for i, face in enumerate(result["images"][name]["det640"]):
            x1, y1, x2, y2 = face["bbox"]
            if min(x2 - x1, y2 - y1) < MIN_CROP_FACE:
                continue  # blurred background faces: a tight crop of them is no selfie
            for side in CROP_SIDES:
                crop = tight_crop(img, face["bbox"], side)
                key = f"{name}#{i}@{side}"
                result["crops"][key] = {
                    "source": name, "face": i, "side": side, "bbox": face["bbox"],
                    "best_score640": ref.best_score(crop, 640),
                    "best_score320": ref.best_score(crop, 320),
                    "faces640": len(ref.faces(crop, 640, embed=False)),
                    "faces320": len(ref.faces(crop, 320, embed=False)),
                }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    misses = sum(1 for c in result["crops"].values() if c["faces640"] == 0)
    print(f"tight crops: {len(result['crops'])}, missed at 640: {misses}", file=sys.stderr)


if __name__ == "__main__":
    main()
