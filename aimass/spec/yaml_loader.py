"""Safe YAML loading that remembers where every value came from.

Only plain YAML (mappings, sequences, scalars) is accepted: no language-specific tags, no duplicate
keys, a cap on size, depth and alias expansion (so "billion laughs" documents fail fast). Every value's
``file:line`` is kept in a :class:`LineMap` so validation errors can point at the line to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aimass.exceptions import SpecError

__all__ = ["LineMap", "load_yaml", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES"]

MAX_BYTES = 1 << 20  # 1 MiB: a pipeline spec is a page, not a data set
MAX_DEPTH = 32
MAX_NODES = 50_000

_STD_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:timestamp",
}


@dataclass
class LineMap:
    """Maps a path in the loaded document (a tuple of keys and indices) to ``(line, column)``, 1-based."""

    source: str = "<string>"
    lines: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: tuple | list) -> str:
        """``file:line`` for the deepest known prefix of ``path``."""
        p = tuple(path)
        while p and p not in self.lines:
            p = p[:-1]
        line, _ = self.lines.get(p, (1, 1))
        return f"{self.source}:{line}"


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.lines = LineMap(source)
        self._loader = yaml.SafeLoader("")

    def err(self, node: Node, message: str, fix: str) -> SpecError:
        return SpecError(message, fix=fix, location=f"{self.source}:{node.start_mark.line + 1}")

    def build(self, node: Node, path: tuple, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.err(node, f"document expands to more than {MAX_NODES} values (alias bomb?)",
                           "Write the spec without deeply repeated anchors/aliases.")
        if depth > MAX_DEPTH:
            raise self.err(node, f"document is nested deeper than {MAX_DEPTH} levels", "Flatten the spec.")
        if node.tag not in _STD_TAGS:
            raise self.err(node, f"YAML tag {node.tag!r} is not allowed",
                           "Pipeline specs are plain YAML: remove the tag (only mappings, lists, strings, numbers, booleans, null).")
        self.lines.lines[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.err(key_node, "YAML merge keys (<<) are not supported",
                                   "Repeat the keys explicitly, or use step defaults.")
                key = self.build(key_node, path + ("<key>",), depth + 1)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise self.err(key_node, "mapping keys must be plain scalars", "Use a string key.")
                if key in out:
                    raise self.err(key_node, f"duplicate key {key!r}",
                                   "Each key may appear once in a mapping: remove or rename one.")
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, SequenceNode):
            return [self.build(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            # e.g. a 5,000-digit integer or the date 2020-13-45: YAML resolves them, Python refuses them
            raise self.err(node, f"bad value {_clip(node.value)!r}: {exc}",
                           "Quote the value to keep it a string, or write a valid number/date.") from None


def _clip(text: Any, limit: int = 40) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _decode(data: bytes, source: str) -> str:
    """UTF-8 (a leading BOM allowed); anything else is a SpecError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"the file is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})",
                        location=f"{source}:{line}", fix="Save the file as UTF-8.") from None


def _check_depth(text: str, source: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH before composing them.

    PyYAML's parser is iterative but its composer recurses once per level, so ``[[[[...]]]]`` a few
    thousand deep would raise RecursionError; counting collection events first keeps that out.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(f"document is nested deeper than {MAX_DEPTH} levels", location=f"{source}:{event.start_mark.line + 1}",
                                fix="Flatten the spec.")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_yaml(text: str | bytes, source: str = "<string>") -> tuple[Any, LineMap]:
    """Load one YAML document safely; returns the data and where each value came from.

    Raises:
        SpecError: on syntax errors (with file:line), unsafe tags, duplicate keys, oversized or too deeply
            nested input, bytes that are not UTF-8, and scalars Python cannot represent. Never anything else.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SpecError(f"spec is larger than {MAX_BYTES} bytes", got=len(text), location=source,
                            fix="A pipeline spec should be small; keep data out of it.")
        text = _decode(text, source)
    if len(text) > MAX_BYTES:
        raise SpecError(f"spec is larger than {MAX_BYTES} bytes", got=len(text), location=source,
                        fix="A pipeline spec should be small; keep data out of it.")
    try:
        _check_depth(text, source)
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"YAML syntax error: {exc.problem or exc}", location=f"{source}:{line}",
                        fix="Check indentation and quoting on that line.") from None
    except yaml.reader.ReaderError as exc:  # a control character, e.g. NUL: it has a position, not a mark
        line = text[: exc.position].count("\n") + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        raise SpecError(f"YAML error: control character {code:#04x} is not allowed in YAML", location=f"{source}:{line}",
                        fix="Remove the control character (is this a binary file?).") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", location=source, fix="Check the YAML syntax.") from None
    if not nodes or nodes[0] is None:
        raise SpecError("the spec is empty", location=source, fix="Write a Pipeline document (see `aimass pipeline schema`).")
    if len(nodes) > 1:
        raise SpecError("expected one YAML document, found several", got=len(nodes), location=source,
                        fix="Put one pipeline per file (remove the extra '---').")
    builder = _Builder(source)
    data = builder.build(nodes[0], (), 0)
    return data, builder.lines
