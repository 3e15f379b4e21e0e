"""Datasets: built-in text sets read from installed packages, and the user's own files.

`load_dataset(name_or_path)` returns a `Dataset` with fixed train/validation/test
splits of `Example(text, label)`; `builtin_datasets()` says which built-ins exist and
how to install each; `split_summary(dataset)` is the table `train` prints first.
Every data problem raises `softprompt.errors.DataError`.
"""

from softprompt.data._paths import softprompt_home
from softprompt.data.load import builtin_datasets, load_dataset
from softprompt.data.records import Dataset, DatasetInfo, Example
from softprompt.data.summary import split_summary

__all__ = [
    "Dataset",
    "DatasetInfo",
    "Example",
    "builtin_datasets",
    "load_dataset",
    "softprompt_home",
    "split_summary",
]
