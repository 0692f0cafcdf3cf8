"""Training new model versions on the user's own images (``imagespace train``).

One module per idea: ``data`` (labelled/unlabelled folders, zips), ``augment`` (Pillow +
NumPy views), ``losses`` (metric learning), ``features`` (frozen features cached on disk),
``adapter`` (the default: a head on frozen features), ``finetune`` (the whole CNN),
``selfsup`` (SimCLR-style, no labels), ``scratch`` (a compact CNN from nothing),
``trainer`` (the pixel training loop), ``workdir`` (checkpoints and --resume), ``export``
(MODEL_DIR), ``metrics`` (precision@1, mAP, kNN), and ``pipeline`` (one run, end to end).
Imports go one way: train uses models, images and nothing of the CLI or the server.
"""
