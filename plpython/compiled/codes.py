"""Text columns of a batch as one code byte per row instead of strings.

A one-hot encoded text feature may reach a batch as one code character per
row instead of its strings (pgscore_server.catalog.batch_list writes the
CASE that codes it): decoding 1M profiles' strings and looking each up
cost ~0.4 s per feature, the codes ~1 ms. Category i is CODE_FIRST + i.
"""

from __future__ import annotations

from .lazy import Numpy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    import numpy as np

CODE_NULL = 33  # '!': NULL
CODE_OTHER = 34  # '"': a string that is no category
CODE_FIRST = 35  # '#' .. '~'
MAX_CODED_CATEGORIES = 127 - CODE_FIRST

if not TYPE_CHECKING:
    np = Numpy(globals())


class CategoryCodes:
    """A text column of a batch as codes (see CODE_FIRST), one byte per row.

    Only :meth:`.evaluator.Evaluator.codes_usable` codes reach the evaluator: the batch
    is read again as strings where a code stands for a string the codes
    cannot name (one that is no category of a model that names it in its
    error).
    """

    __slots__ = ("codes",)

    def __init__(self, codes: np.ndarray):
        self.codes = codes

    @classmethod
    def from_text(cls, text: str | None) -> CategoryCodes:
        return cls(np.frombuffer((text or "").encode("ascii"), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, part: slice) -> CategoryCodes:
        return CategoryCodes(self.codes[part])

    def only_null(self) -> bool:
        """NULLs only (or no rows): pandas makes that an object column, where None is no NaN."""
        return not (self.codes != CODE_NULL).any()

