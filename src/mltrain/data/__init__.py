"""Food-11 data: layout, download/prepare, synthetic sets, decoded cache and loaders."""

from mltrain.data.layout import CLASS_NAMES, SPLITS, check_layout, class_dir_name, count_per_class
from mltrain.data.prepare import FOOD11_URL, prepare
from mltrain.data.synth import synthesize

__all__ = [
    "CLASS_NAMES",
    "FOOD11_URL",
    "SPLITS",
    "Food11Data",
    "check_layout",
    "class_dir_name",
    "count_per_class",
    "prepare",
    "synthesize",
]


def __getattr__(name: str):  # the loaders need torch; import it only when asked for
    if name == "Food11Data":
        from mltrain.data.module import Food11Data

        return Food11Data
    raise AttributeError(name)
