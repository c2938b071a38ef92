"""Tree ensembles as SQL: per tree a nested CASE whose tests read the raw
columns (:mod:`.thresholds`), missing values sent where the evaluator sends them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pgscore_server.compiled import ir

from .columns import NumFeature, OrdinalFeature
from .text import SqlUnsupported, case, f4, f8, logistic, logistic_float4
from .thresholds import Cut, cut, largest_true

if TYPE_CHECKING:
    from .generator import Generator

_LEFT, _RIGHT, _ANY = "L", "R", "X"


#: Category codes the IN lists of categorical splits may hold, all splits together: the SQL grows
#: with them, and a crafted archive's sets can be a thousand times its size once inflated.
MAX_CATEGORY_CODES = 100_000


def expression(g: Generator) -> str:
    """P(class 1) of a tree ensemble (:class:`ir.TreeEnsemble`) as SQL: one
    nested CASE per tree, combined by ir.COMBINE_RULES in the estimator's order."""
    ensemble: ir.TreeEnsemble = g.classifier
    feature = np.asarray(ensemble.feature, dtype=np.int64)
    threshold = np.asarray(ensemble.threshold, dtype=np.float64)
    left = np.asarray(ensemble.left, dtype=np.int64)
    right = np.asarray(ensemble.right, dtype=np.int64)
    missing_left = np.asarray(ensemble.missing_left, dtype=bool)
    value = np.asarray(ensemble.value, dtype=np.float64)
    roots = np.asarray(ensemble.roots, dtype=np.int64).tolist()
    n_nodes = feature.shape[0]
    if (feature >= g.n_outputs).any():
        raise SqlUnsupported("tree arrays refer to a model column that does not exist")

    # Per inner node: SQL condition pieces and where missing values go.
    cuts: dict[int, Cut] = {}
    missing_dir: dict[int, str] = {}
    is_category = np.zeros(n_nodes, dtype=bool)
    if ensemble.categorical:
        # Each categorical node's set is its own (ir.TreeEnsemble._check_categories): the 1 flags are the codes written.
        n_codes = int(np.count_nonzero(np.asarray(ensemble.category_left)))
        if n_codes > MAX_CATEGORY_CODES:
            raise SqlUnsupported(f"the categorical splits list {n_codes:,} categories in all (more than "
                                 f"{MAX_CATEGORY_CODES:,}), too many to write as SQL")
        is_category = np.asarray(ensemble.category_set, dtype=np.int64) >= 0
        for node in np.flatnonzero(is_category).tolist():
            cuts[node] = _category_cut(g, ensemble, node)
            missing_dir[node] = _RIGHT  # NULL, NaN and every value outside the set go right
    zero_band = (np.asarray(ensemble.zero_missing, dtype=bool) if ensemble.zero_band
                 else np.zeros(n_nodes, dtype=bool))
    for j in sorted(set(feature[(feature >= 0) & ~is_category].tolist())):
        nodes = np.flatnonzero((feature == j) & ~is_category)
        out = g.outputs[j]
        if isinstance(out, OrdinalFeature):
            raise SqlUnsupported(f"feature {out.column.name!r}: a numeric split of a category column")
        t = threshold[nodes]
        if isinstance(out, NumFeature):
            status, w = g.missing(out)
            xs = largest_true(lambda x, t=t, out=out: g.seen(out.transform(x)) <= t, len(nodes))
            for k, node in enumerate(nodes.tolist()):
                cuts[node] = cut(out.column, float(xs[k]))
                if zero_band[node]:
                    cuts[node] = _zero_band_cut(g, out, cuts[node], bool(missing_left[node]))
                if status == "value" and zero_band[node] and abs(w) <= ir.ZERO_BAND:
                    missing_dir[node] = _LEFT if missing_left[node] else _RIGHT
                elif status == "value":
                    missing_dir[node] = _LEFT if w <= t[k] else _RIGHT
                elif status == "route":
                    missing_dir[node] = _LEFT if missing_left[node] else _RIGHT
                else:
                    missing_dir[node] = _ANY
        else:
            hot, category = out
            if zero_band[nodes].any():
                raise SqlUnsupported(f"feature {hot.column.name!r}: a one-hot column whose zero counts as missing")
            one = g.seen(np.array([1.0]))[0]
            zero = g.seen(np.array([0.0]))[0]
            for k, node in enumerate(nodes.tolist()):
                left1, left0 = bool(one <= t[k]), bool(zero <= t[k])
                if left1 == left0:
                    cuts[node] = Cut(left1)
                elif left0:  # the category goes right
                    cuts[node] = Cut(None, le=f"NOT ({hot.is_sql(category)})", gt=hot.is_sql(category))
                else:
                    raise SqlUnsupported("a split sends 1 left and 0 right (thresholds are not monotone)")
                # A NULL (or unknown) category is a 0: it goes with the others.
                missing_dir[node] = _LEFT if left0 else _RIGHT

    scale = ensemble.leaf_scale
    # XGBoost adds in float32: float4 leaves and float4 + float4 (IEEE single) in SQL.
    constant = f4 if ensemble.float32 else f8

    def leaf(node: int) -> str:
        return constant(float(value[node]) if scale is None else scale * float(value[node]))

    def emit(node: int, depth: int) -> str:
        if depth > 200:
            raise SqlUnsupported("a tree deeper than 200 levels")
        if not 0 <= node < n_nodes:
            raise SqlUnsupported("tree arrays are inconsistent")
        if feature[node] < 0:
            return leaf(node)
        node_cut = cuts[node]
        md = missing_dir[node]
        if node_cut.const is not None:
            direction = _LEFT if node_cut.const else _RIGHT
            chosen = emit(int(left[node] if node_cut.const else right[node]), depth + 1)
            if md in (_ANY, direction):
                return chosen
            other = emit(int(left[node] if md == _LEFT else right[node]), depth + 1)
            column = g.outputs[int(feature[node])].column
            return case(column.missing_sql, other, chosen, depth)
        lsql = emit(int(left[node]), depth + 1)
        rsql = emit(int(right[node]), depth + 1)
        if lsql == rsql:
            return lsql
        if md == _LEFT:
            return case(node_cut.gt, rsql, lsql, depth)
        return case(node_cut.le, lsql, rsql, depth)

    trees = [emit(int(r), 1) for r in roots]
    if not trees:
        raise SqlUnsupported("an ensemble without trees")
    joined = "\n  + ".join(trees)
    if ensemble.averages:
        return f"(\n  {joined}\n  ) / {f8(float(len(trees)))}"
    if ensemble.float32:
        # Left to right, ((start + tree 1) + tree 2) + ..., as XGBoost adds.
        return logistic_float4(f"(\n  {f4(ensemble.start)}\n  + {joined}\n  )")
    return logistic(f"(\n  {f8(ensemble.start)}\n  + {joined}\n  )")


def _category_cut(g: Generator, ensemble: ir.TreeEnsemble, node: int) -> Cut:
    """A categorical split (ir.TreeEnsemble.goes_left_category) as SQL: ``le``
    is TRUE exactly for the values that go left, FALSE or NULL for the others."""
    s = ensemble.category_set[node]
    start, end = ensemble.category_bounds[s], ensemble.category_bounds[s + 1]
    codes = [c for c in range(end - start) if ensemble.category_left[start + c]]
    if not codes:
        return Cut(False)
    out = g.outputs[int(ensemble.feature[node])]
    listed = ", ".join(str(c) for c in codes)
    if isinstance(out, OrdinalFeature):
        condition = out.in_sql(codes)
    elif isinstance(out, NumFeature) and not out.ops:
        column = out.column
        if column.kind == "int":
            condition = f"{column.ref} IN ({listed})"
        elif column.kind == "bool":
            condition = f"{column.ref}::int IN ({listed})"
        else:  # truncated toward zero as C's cast; NaN and infinities are in no set
            condition = f"trunc({column.ref}::float8) IN ({listed})"
    else:
        raise SqlUnsupported("a categorical split of a transformed or one-hot column")
    return Cut(None, le=condition, gt=f"NOT ({condition})") if condition != "false" else Cut(False)


def _zero_band_cut(g: Generator, out: NumFeature, node_cut: Cut, band_left: bool) -> Cut:
    """``node_cut`` of a node that sends the zero band (``|x| <= ir.ZERO_BAND``,
    x the transformed value; ir.TreeEnsemble.zero_missing) left when
    ``band_left``, else right. The band is an interval of the raw column
    (the transform is monotone): above ``below`` and up to ``top``."""
    column = out.column
    band = ir.ZERO_BAND
    top = largest_true(lambda x: g.seen(out.transform(x)) <= band, 1)[0]
    below = largest_true(lambda x: g.seen(out.transform(x)) < -band, 1)[0]

    def sql(c: Cut, side: str) -> str:
        """The Cut's ``le``/``gt`` as SQL, constants included (FALSE, never TRUE, for a missing value)."""
        if c.const is None:
            return c.le if side == "le" else c.gt
        return f"NOT {column.missing_sql}" if c.const == (side == "le") else "false"

    in_band = f"({sql(cut(column, float(top)), 'le')} AND {sql(cut(column, float(below)), 'gt')})"
    le, gt = sql(node_cut, "le"), sql(node_cut, "gt")
    if band_left:
        return Cut(None, le=f"({le} OR {in_band})", gt=f"({gt} AND NOT {in_band})")
    return Cut(None, le=f"({le} AND NOT {in_band})", gt=f"({gt} OR {in_band})")
