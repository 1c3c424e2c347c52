"""Keeping Lightning quiet: no banners or per-run INFO lines, and none of its warnings that do not apply here."""
from __future__ import annotations

import logging
import warnings

LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")

# messages Lightning prints for set-ups this project makes on purpose (single-process loaders, step-wise logging...)
_IGNORED = (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*GPU available but not used.*",
            ".*is not using a ddp.*", ".*Checkpoint directory .* exists and is not empty.*", ".*on_step.*", ".*The `srun` command is available.*",
            ".*Trying to infer the `batch_size`.*", ".*barebones.*", ".*torch.backends.cudnn.*")


def quiet_lightning(verbose: bool = False) -> None:
    """Lightning's loggers at INFO when `verbose`, else WARNING (no banner per run: benchmarks run hundreds)."""
    level = logging.INFO if verbose else logging.WARNING
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def filter_lightning_warnings() -> None:
    """Ignore Lightning's warnings listed above (call inside ``warnings.catch_warnings()``)."""
    for msg in _IGNORED:
        warnings.filterwarnings("ignore", message=msg)
    try:
        from pytorch_lightning.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
    except ImportError:
        pass
