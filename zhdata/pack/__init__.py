"""`zhdata pack`: tokenise and pack pre-training text and SFT conversations into training blocks.

`from zhdata.pack import PackedDataset, collate_packed` gives the training reader (torch is imported
only then, so the command line starts fast).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PackedDataset", "collate_packed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
