"""Named config presets: partial overrides applied over the defaults (the paper's settings).

``--preset`` takes one name or several joined by commas, applied left to right
(`preset_names`); `kidneyseg.config.resolve_config` applies them before a config file and
``--set``.

* ``paper``: the defaults, the published settings.
* ``fast``: minutes on 2 CPU cores on the phantom cohort (128-px slices, no ImageNet download,
  4 short epochs with BCE + Dice and a cosine schedule, phase 1 drawing half its foreground
  slices from slices with masses (``data.rare_fraction``), both phases trained on 64-px patches
  (``data.kidney_patch``, ``data.tumor_patch``), flip TTA, the two largest kidney components;
  README "Why the fast preset...").
* ``kits``: the paper's settings with phase 2 predicting tumor *and* cyst
  (``data.tumor_classes = "tumor,cyst"``), so predictions hold the three KiTS labels and the
  KiTS "masses" class (tumor + cyst) is scored on both. ``fast,kits`` = both.

Example:
    >>> preset_names("fast,kits")
    ['fast', 'kits']
"""

from __future__ import annotations

from typing import Any

from kidneyseg.errors import KidneysegError

#: Named presets: partial overrides applied on top of the defaults ("paper" = the defaults).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    # Minutes on 2 CPU cores on the phantom cohort: small slices, no ImageNet download.
    "fast": {
        "data": {
            "image_size": 128,
            "num_workers": 0,
            "samples_per_epoch": 512,
            "foreground_fraction": 0.8,
            "tumor_foreground_fraction": 0.5,
            "rare_fraction": 0.5,
            # Both phases on 64-px patches (around the kidney; phase 1's around it too, or
            # anywhere without one): 4x the samples for the same pixels (README "Ablation":
            # demo tumor Dice 0.41 -> 0.51 -> 0.55, kidney 0.934 -> 0.951).
            "tumor_patch": 64,
            "kidney_patch": 64,
        },
        "model": {"encoder_weights": "none"},
        "train": {
            "batch_size": 16,
            # 4 x 512 slices per phase: the demo in ~8 min on 2 cores without native bf16
            # (README "What make demo prints"; 8 epochs took 16 min there).
            "epochs": 4,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "loss": "bce_dice",
            "limit_val_batches": 8,
        },
        # Flip TTA and the two largest kidney components: measured gains on the phantom
        # ablation (README "Ablation"), for 2x the (small) prediction time.
        "inference": {"batch_size": 32, "tta": True},
        "postprocess": {"min_component_ml": 0.1, "kidney_components": 2},
    },
    # The paper's settings, but phase 2 predicts tumor *and* cyst, so predictions hold all three
    # KiTS21/23 labels and the "masses" class (tumor + cyst) is scored on both. Combine with
    # fast as "fast,kits".
    "kits": {"data": {"tumor_classes": "tumor,cyst"}},
}


def preset_names(preset: str) -> list[str]:
    """The presets a ``--preset`` value names: one, or several joined by commas, applied left
    to right (a later preset wins where two set the same key).

    Example:
        >>> preset_names("fast,kits")
        ['fast', 'kits']
    """
    names = [name.strip() for name in preset.split(",")]
    for name in names:
        if name not in PRESETS:
            raise KidneysegError(
                f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}, or several "
                "joined by commas (e.g. fast,kits)"
            )
    return names
