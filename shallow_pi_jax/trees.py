"""Nested mappings as flat {joined key: leaf} dicts (config diffs, robot observations)."""
from __future__ import annotations

from collections.abc import Mapping


def flatten(tree: Mapping, sep: str, *, keep_empty: bool = False) -> dict:
    """{"a": {"b": 1}} → {f"a{sep}b": 1}, in depth-first order. An empty nested mapping leaves no key,
    or stays a leaf with keep_empty (so a config diff still sees a section that became empty)."""
    flat = {}

    def walk(node: Mapping, prefix: str):
        for k, v in node.items():
            if isinstance(v, Mapping) and (v or not keep_empty):
                walk(v, f"{prefix}{k}{sep}")
            else:
                flat[f"{prefix}{k}"] = v

    walk(tree, "")
    return flat
