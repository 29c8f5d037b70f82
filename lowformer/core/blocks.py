"""ONNX nodes -> model blocks (`stem.N`, `stages.S.B`, `head`) and --exclude module globs -> nodes."""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence

from lowformer.core.errors import LowformerError
from lowformer.core.naming import module_path_of_node


BLOCK_CONTAINERS = ("stem", "stages")  # LowFormer's: numbered children are blocks even when alone


def block_of_path(path: str) -> Optional[str]:
    """`stages.2.1.attn.main.1` -> `stages.2.1`; `stem.0.conv` -> `stem.0`; `in_conv.conv` -> None."""
    parts = path.split(".") if path else []
    if len(parts) >= 2 and parts[1].isdigit():
        digits = [parts[0]]
        for p in parts[1:3]:
            if not p.isdigit():
                break
            digits.append(p)
        return ".".join(digits)
    return None


def _numbered_containers(paths: Sequence[str]) -> set:
    """Containers holding several numbered children (`blocks`, `layer1`), not `bn1.1`-style wrappers."""
    children: Dict[str, set] = {}
    for path in paths:
        block = block_of_path(path)
        if block:
            head, _, rest = block.partition(".")
            children.setdefault(head, set()).add(rest.split(".")[0])
    return {c for c, kids in children.items() if len(kids) > 1 or c in BLOCK_CONTAINERS}


def node_blocks(node_names: Sequence[str]) -> Dict[str, str]:
    """Block of every node that belongs to a module. Modules outside numbered blocks join `stem`
    before the first block; from the first such module after them on (LowFormer's in_conv,
    EfficientNet's conv_head) everything is `head`."""
    paths = {n: module_path_of_node(n) for n in node_names
             if not n.rsplit("/", 1)[-1].startswith("Constant")}  # exporters hoist Constants to the top
    return _assign_blocks(paths)


def module_blocks(module_paths: Sequence[str]) -> Dict[str, str]:
    """The same assignment for PyTorch module paths in execution order (leaf modules, as a forward
    calls them): the torch side of a model and its ONNX export agree on block names."""
    return _assign_blocks({p: p for p in module_paths})


def _assign_blocks(paths: Dict[str, str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    containers = _numbered_containers(list(paths.values()))
    seen_block = in_head = False
    for name, path in paths.items():
        if not path:
            continue  # shape arithmetic outside any module
        block = block_of_path(path)
        if block is not None and block.split(".")[0] not in containers:
            block = None
        if block is not None and not block.startswith("stem") and not in_head:
            seen_block = True
        elif block is None and seen_block:
            in_head = True  # the first plain module after the blocks starts the head (its Sequentials too)
        out[name] = "head" if in_head else (block if block is not None else "stem")
    return out


def blocks_in_order(node_names: Sequence[str]) -> List[str]:
    return list(OrderedDict.fromkeys(node_blocks(node_names).values()))


def nodes_of_blocks(node_names: Sequence[str], blocks: Iterable[str]) -> List[str]:
    wanted = set(blocks)
    return [n for n, b in node_blocks(node_names).items() if b in wanted]


def match_module(path: str, pattern: str) -> bool:
    """A glob matches a module and everything inside it (`stages.3.*.attn` covers `...attn.main.1`)."""
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern + ".*")


def nodes_matching(node_names: Sequence[str], patterns: Iterable[str], strict: bool = True,
                   option: str = "--exclude") -> List[str]:
    """Nodes whose module path matches any glob, or whose block is named (e.g. `head`); with `strict`,
    a pattern matching nothing is an error naming `option`."""
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        return []
    blocks = node_blocks(node_names)
    out, used = [], set()
    for name in node_names:
        path = module_path_of_node(name)
        for pat in patterns:
            if (path and match_module(path, pat)) or blocks.get(name) == pat:
                out.append(name)
                used.add(pat)
                break
    unused = [p for p in patterns if p not in used]
    if strict and unused:
        raise LowformerError(f"{option} {unused[0]!r} matches no module of the model "
                             f"(module paths look like {_example(blocks)})")
    return out


def _example(blocks: Dict[str, str]) -> str:
    names = list(OrderedDict.fromkeys(blocks.values()))
    return ", ".join(names[1:3] or names[:2]) + ", ..."
