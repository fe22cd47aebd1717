"""The on-disk contracts between stages, one module per folder (see docs/formats.md).

* `prep_dir`: ``PREP_DIR`` (``kidneyseg preprocess``): arrays, slice index, split, statistics.
* `run_dir`: ``RUN_DIR`` (``kidneyseg train``): checkpoints, metrics, curves, config per phase.
* `pred_dir`: prediction outputs (``kidneyseg predict``): label maps, probability maps and the
  statistics file.
* `eval_dir`: ``EVAL_DIR`` (``kidneyseg evaluate``): per-case table and summary.

Each module owns its folder's file names, format version, readers and writers; no other module
spells those names out.
"""
