"""Library chatter off for every command: transformers' advisories and warnings, bitsandbytes'
kernel-hub probe, and the tqdm bars of transformers / huggingface_hub / datasets ("Loading
weights", "Writing model shards", "Fetching files"). Our own progress (rich, on stderr) is not tqdm
and stays."""

from __future__ import annotations

import os
import sys

# Read by each library when it is imported; a value the user set is kept (setdefault).
_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def quiet_libraries() -> None:
    """Call first thing in a command, before torch/transformers are imported."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    # bitsandbytes' CPU backend looks for an optional hub kernel on import and logs a warning that
    # tells users to `pip install kernels` (a download we never need: the bundled kernels run)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"].strip().lower() not in ("1", "true", "yes", "on"):
        return  # the user asked for the bars
    # Already imported (in-process callers, tests): the variables above came too late for them.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
