"""Is a node table a set of trees? The one walk that checks it, for the
compiled model's node table (``pgscore_server.compiled.ir``) and
scikit-learn's own trees in a model blob (``pgscore_server.formats``).

Standard library only (a backend scoring one row of a tree model imports
no numpy); each caller words its own errors from :class:`TreeShapeError`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Sequence


class TreeShapeError(ValueError):
    """Why a node table is not trees: ``kind`` is 'empty' (no node or no
    root), 'root' (a root outside the table or inside another tree),
    'index' (an inner node's feature or a child outside its range), 'shared'
    (a child already reached from a root: shared, cyclic or twice the same)
    or 'unreached' (a node no root reaches); ``tree`` and ``node`` say where,
    ``children`` the node's (left, right)."""

    def __init__(self, kind: str, tree: int = -1, node: int = -1, children: tuple[int, int] = (-1, -1)):
        super().__init__(f"{kind}: tree {tree} node {node} children {children}")
        self.kind = kind
        self.tree = tree
        self.node = node
        self.children = children


def walk_forest(feature: Sequence[int], left: Sequence[int], right: Sequence[int], roots: Sequence[int],
                n_features: int) -> tuple[int, float]:
    """(depth of the deepest leaf, sum over trees of the mean leaf depth) of
    the trees starting at ``roots``; node k is a leaf when ``feature[k] < 0``,
    else it tests feature ``feature[k]`` (< ``n_features``) and has children
    ``left[k]`` and ``right[k]``.

    Raises TreeShapeError unless every node belongs to exactly one tree, is
    reached once and only from its own root: one pass over the nodes, so a
    crafted table (node i with both children i + 1, 2**depth paths) costs
    no more than a real one.
    """
    n_nodes = len(feature)
    if n_nodes == 0 or len(roots) == 0:
        raise TreeShapeError("empty")
    seen = bytearray(n_nodes)
    total = 0.0
    deepest = 0
    for tree, root in enumerate(roots):
        if not 0 <= root < n_nodes or seen[root]:
            raise TreeShapeError("root", tree, root)
        seen[root] = 1
        depths = leaves = 0
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            f = feature[node]
            if f < 0:
                depths += depth
                leaves += 1
                if depth > deepest:
                    deepest = depth
                continue
            lo, hi = left[node], right[node]
            if f >= n_features or not (0 <= lo < n_nodes and 0 <= hi < n_nodes):
                raise TreeShapeError("index", tree, node, (lo, hi))
            if seen[lo] or seen[hi] or lo == hi:
                raise TreeShapeError("shared", tree, node, (lo, hi))
            seen[lo] = seen[hi] = 1
            stack.append((lo, depth + 1))
            stack.append((hi, depth + 1))
        total += depths / max(leaves, 1)
    if 0 in seen:
        raise TreeShapeError("unreached", node=seen.index(0))
    return deepest, total

