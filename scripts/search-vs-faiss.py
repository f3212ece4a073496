"""FAISS IndexFlatIP (exact inner product, the usual baseline) on the vectors and queries that
`cargo bench --bench search` wrote to target/search-bench/, one query at a time like
FaceIndex::search, k = 1 and 10, one thread. Also recall@10 of facevault's index format.

  python scripts/search-vs-faiss.py          # after cargo bench --bench search
"""
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
import faiss  # noqa: E402

faiss.omp_set_num_threads(1)
DIR = os.path.join(os.path.dirname(__file__), "..", "target", "search-bench")
queries = np.fromfile(os.path.join(DIR, "queries.f32"), dtype="<f4").reshape(-1, 512)
print("| data | k | FAISS IndexFlatIP median ms |")
print("|---|---|---|")
for label in ["10k", "100k", "1M"]:
    path = os.path.join(DIR, f"vectors-{label}.f32")
    if not os.path.isfile(path):
        sys.exit(f"{path} missing: run `cargo bench --bench search` first")
    data = np.fromfile(path, dtype="<f4").reshape(-1, 512)
    index = faiss.IndexFlatIP(512)
    index.add(data)
    for k in (1, 10):
        index.search(queries[:1], k)
        samples = []
        for rep in range(3):
            for q in queries:
                t = time.perf_counter()
                index.search(q[None, :], k)
                samples.append((time.perf_counter() - t) * 1e3)
        print(f"| {label} | {k} | {statistics.median(samples):.3f} |")
    del index, data
