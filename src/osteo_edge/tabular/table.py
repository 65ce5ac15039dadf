"""Reading tables and the input schema that travels with a fitted tabular model.

A schema records, for every feature column, its name (exactly as in the training CSV), its kind
(``numeric`` or ``categorical``), the pandas dtype it was read as and, for categorical columns,
the categories seen in training. :meth:`TableSchema.check` turns a new table into exactly the
frame the model was trained on, or raises one :class:`~osteo_edge.errors.DataError` line naming
the missing/unexpected columns or the first value of the wrong type.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..errors import ConfigError, DataError, require

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)
SCHEMA_VERSION = 1


def _pd() -> Any:
    return require("pandas", "tabular")


def read_table(path: str | os.PathLike) -> "pd.DataFrame":
    """Read a CSV: surrounding whitespace is stripped from text cells and empty cells become missing."""
    pd = _pd()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    try:
        df = pd.read_csv(path, skipinitialspace=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the CSV is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    if df.shape[0] == 0:
        raise DataError(f"{path}: the CSV has a header but no rows")
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    for col in df.columns:
        if not _is_numeric(df[col]):
            s = df[col].astype("object")
            s = s.map(lambda v: v.strip() if isinstance(v, str) else v)
            s = s.mask(s == "")
            df[col] = s
    return df


def _is_numeric(s: "pd.Series") -> bool:
    pd = _pd()
    return bool(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def _norm(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def resolve_column(name: str, columns: Sequence[str], what: str = "column") -> str:
    """The column called ``name``: exact match first, then ignoring case and surrounding/repeated spaces."""
    cols = [str(c) for c in columns]
    if name in cols:
        return name
    hits = [c for c in cols if _norm(c) == _norm(name)]
    if len(hits) == 1:
        return hits[0]
    valid = ", ".join(repr(c) for c in cols)
    if len(hits) > 1:
        raise ConfigError(f"{what} {name!r} is ambiguous ({hits}); valid: {valid}")
    raise ConfigError(f"unknown {what} {name!r}; valid: {valid}")


def resolve_columns(names: Iterable[str], columns: Sequence[str], what: str = "column") -> list[str]:
    out: list[str] = []
    for n in names:
        c = resolve_column(n, columns, what)
        if c not in out:
            out.append(c)
    return out


def split_names(text: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (column names may contain spaces, not commas)."""
    if not text:
        return []
    return [t.strip() for t in str(text).split(",") if t.strip()]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str
    dtype: str
    categories: tuple[str, ...] = ()
    missing_in_training: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype,
            "categories": list(self.categories),
            "missing_in_training": self.missing_in_training,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColumnSpec":
        if not isinstance(d, dict) or d.get("kind") not in KINDS or not isinstance(d.get("name"), str):
            raise DataError(f"invalid column record in schema: {d!r}")
        return cls(
            name=d["name"],
            kind=d["kind"],
            dtype=str(d.get("dtype", "")),
            categories=tuple(str(c) for c in d.get("categories", [])),
            missing_in_training=int(d.get("missing_in_training", 0)),
        )


@dataclass(frozen=True)
class TableSchema:
    """What a fitted model expects: feature columns (in order), the target and its labels."""

    features: tuple[ColumnSpec, ...]
    target: str
    labels: tuple[str, ...]
    id_column: str | None = None
    ignored: tuple[str, ...] = field(default=())  # columns present in training and deliberately not used

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.features if c.kind == NUMERIC]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.features if c.kind == CATEGORICAL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "features": [c.to_dict() for c in self.features],
            "target": self.target,
            "labels": list(self.labels),
            "id_column": self.id_column,
            "ignored": list(self.ignored),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TableSchema":
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"unsupported tabular schema (expected schema_version {SCHEMA_VERSION})")
        feats = tuple(ColumnSpec.from_dict(c) for c in d.get("features", []))
        labels = tuple(str(x) for x in d.get("labels", []))
        if not feats or len(labels) < 2:
            raise DataError("tabular schema needs at least one feature and two labels")
        return cls(
            features=feats,
            target=str(d["target"]),
            labels=labels,
            id_column=d.get("id_column"),
            ignored=tuple(d.get("ignored", [])),
        )

    # --------------------------------------------------------------------------------------------

    def check(self, df: "pd.DataFrame", source: str = "table") -> "pd.DataFrame":
        """The feature frame this model was trained on, from ``df``; one DataError line on any mismatch.

        Allowed extra columns: the target, the id column and the columns ignored in training.
        Numeric features must hold numbers (or be empty); categorical ones are read as text.
        Categories never seen in training are allowed (encoded as 'infrequent/unknown') and logged.
        """
        pd = _pd()
        cols = [str(c) for c in df.columns]
        missing = [c for c in self.feature_names if c not in cols]
        allowed = set(self.feature_names) | {self.target} | set(self.ignored) | ({self.id_column} if self.id_column else set())
        extra = [c for c in cols if c not in allowed]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing columns {missing}")
            if extra:
                parts.append(f"unexpected columns {extra}")
            raise DataError(
                f"{source}: does not match the model's input schema: {'; '.join(parts)}; "
                f"expected feature columns: {self.feature_names}"
            )
        out = pd.DataFrame(index=df.index)
        for spec in self.features:
            s = df[spec.name]
            if spec.kind == NUMERIC:
                num = pd.to_numeric(s, errors="coerce")
                bad = s[num.isna() & s.notna()]
                if len(bad):
                    row = bad.index[0]
                    raise DataError(
                        f"{source}: column {spec.name!r} must be numeric (the model was trained on {spec.dtype}); "
                        f"found {bad.iloc[0]!r} in data row {row + 1} ({len(bad)} non-numeric values)"
                    )
                out[spec.name] = num.astype("float64")
            else:
                txt = s.astype("object").map(_as_text)
                unseen = sorted({v for v in txt.dropna() if v not in set(spec.categories)})
                if unseen:
                    log.warning(
                        "%s: column %r has %d value(s) never seen in training (%s); they are encoded as unknown",
                        source, spec.name, len(unseen), ", ".join(repr(u) for u in unseen[:5]),
                    )
                out[spec.name] = txt
        return out


def _as_text(v: Any) -> Any:
    if v is None:
        return None
    try:
        import math

        if isinstance(v, float) and math.isnan(v):
            return None
    except TypeError:  # pragma: no cover
        pass
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def infer_schema(
    df: "pd.DataFrame",
    features: Sequence[str],
    target: str,
    labels: Sequence[str],
    id_column: str | None = None,
    ignored: Sequence[str] = (),
) -> TableSchema:
    """Schema of ``features`` as found in ``df`` (numbers -> numeric, anything else -> categorical)."""
    specs = []
    for name in features:
        s = df[name]
        if _is_numeric(s):
            specs.append(ColumnSpec(name, NUMERIC, str(s.dtype), (), int(s.isna().sum())))
        else:
            txt = s.astype("object").map(_as_text)
            cats = tuple(sorted({str(v) for v in txt.dropna()}))
            specs.append(ColumnSpec(name, CATEGORICAL, str(s.dtype), cats, int(txt.isna().sum())))
    return TableSchema(tuple(specs), target, tuple(str(x) for x in labels), id_column, tuple(ignored))


def target_labels(y: "pd.Series") -> list[str]:
    """Label names of a target column, in a stable order (numeric targets sort numerically)."""
    vals = y.dropna().unique().tolist()
    if _is_numeric(y):
        return [_as_text(v) for v in sorted(vals)]
    return sorted(str(v) for v in vals)
