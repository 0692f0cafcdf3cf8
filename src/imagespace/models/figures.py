"""What ``imagespace models`` shows about each pretrained network: figures measured with
``python -m benchmarks.bench_networks`` (the README has the whole table and the machine).

Kept apart from the network code so that updating a figure does not change the digest of
the exported graphs (which would export them again on every machine).

- ``flowers12_p1`` / ``flowers12_map``: each flowers12 test photo queries the train photos.
- ``cifar10_knn``: 10-NN accuracy on a cifar10 subset (3,000 train / 1,000 test) that no
  setting was tuned on.
- ``index_12mp_x_baseline``: ``imagespace index`` on 12 MP JPEGs (whole process) against the
  usual pipeline run with the same network (full decode, PyTorch eager, one image at a time).
- ``small_jpeg_rate_x_lite0``: indexing rate on flowers12's small JPEGs, relative to Lite0
  in the same run (the cost of the network where decoding is cheap).
"""

from __future__ import annotations

MEASURED: dict[str, dict] = {
    "efficientnet-lite0": {"flowers12_p1": 0.971, "flowers12_map": 0.722, "cifar10_knn": 0.750,
                           "index_12mp_x_baseline": 19.7, "small_jpeg_rate_x_lite0": 1.0},
    "efficientnet-lite1": {"flowers12_p1": 0.963, "flowers12_map": 0.716, "cifar10_knn": 0.731,
                           "index_12mp_x_baseline": 22.5, "small_jpeg_rate_x_lite0": 0.62},
    "efficientnet-lite2": {"flowers12_p1": 0.954, "flowers12_map": 0.709, "cifar10_knn": 0.755,
                           "index_12mp_x_baseline": 18.7, "small_jpeg_rate_x_lite0": 0.48},
}
