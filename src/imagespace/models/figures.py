"""What ``imagespace models`` shows about each pretrained network: figures measured with
``python -m benchmarks.bench_networks`` (the README has the whole table and the machine).

12 MP indexing against the usual pipeline is not kept here: it moves with the machine and its
load by more than the networks differ (``python -m benchmarks.bench_indexing`` measures it,
with ``BENCH_MODEL`` for a network other than the default).

Kept apart from the network code so that updating a figure does not change the digest of
the exported graphs (which would export them again on every machine).

- ``clothing10_p1`` / ``clothing10_map``: each clothing10 test photo (phone photos, mostly
  400x533) queries the train photos, with the default pipeline (centred, query expansion):
  ``python -m benchmarks.bench_pipelines``. The figures the default was chosen on.
- ``flowers12_p1`` / ``flowers12_map``: each flowers12 test photo queries the train photos
  (raw vectors, ``bench_networks``).
- ``cifar10_knn``: 10-NN accuracy on a cifar10 subset (3,000 train / 1,000 test) that no
  setting was tuned on.
- ``small_jpeg_rate_x_lite0``: indexing rate on flowers12's small JPEGs, relative to Lite0
  in the same run (the cost of the network where decoding is cheap).
"""

from __future__ import annotations

MEASURED: dict[str, dict] = {
    "efficientnet-lite0": {"clothing10_p1": 0.793, "clothing10_map": 0.554,
                           "flowers12_p1": 0.971, "flowers12_map": 0.722, "cifar10_knn": 0.750, "small_jpeg_rate_x_lite0": 1.0},
    "efficientnet-lite1": {"clothing10_p1": 0.785, "clothing10_map": 0.572,
                           "flowers12_p1": 0.963, "flowers12_map": 0.716, "cifar10_knn": 0.731, "small_jpeg_rate_x_lite0": 0.62},
    "efficientnet-lite2": {"clothing10_p1": 0.793, "clothing10_map": 0.580,
                           "flowers12_p1": 0.954, "flowers12_map": 0.709, "cifar10_knn": 0.755, "small_jpeg_rate_x_lite0": 0.54},
}
