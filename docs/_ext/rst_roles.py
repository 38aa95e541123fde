"""A griffe extension: the docstrings' Sphinx roles as links in the mkdocs site.

The package's docstrings are Google style with Sphinx cross-reference roles
(``:class:`~artifex_rl.trainer.Trainer```, ``:meth:`compute_loss```), which
Markdown would show literally. Once the whole package is loaded, every
docstring's roles become optional autorefs: a link when the target is
rendered somewhere on the site, plain code otherwise (so a reference to an
object the site does not render never fails ``mkdocs build --strict``).
RST literal-block markers (a paragraph ending in ``::``) become a colon;
the indented block after it is already a Markdown code block. A grouped
entry of an ``Args:``/``Attributes:`` section (``model, optimizer: as for
Trainer``, as Napoleon allows) becomes one entry per name, which griffe's
Google parser needs to match them with the signature.

Loaded by ``mkdocs.yml`` (``extensions: [docs/_ext/rst_roles.py]``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|data|attr|exc|obj):`(~?)([^`<>]+?)`")
_LITERAL_MARKER = re.compile(r"(?m)(\S)::[ \t]*$")
_LONE_MARKER = re.compile(r"(?m)^([ \t]*)::[ \t]*$")
_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Attributes|Other Parameters|Keyword Args|Keyword Arguments):\s*$"
)
_GROUPED = re.compile(r"^(\s+)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+):(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped_entries(text: str) -> str:
    """``a, b: text`` in a parameter/attribute section -> ``a: text`` and ``b: text``."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        header = _SECTION.match(line)
        if not header:
            continue
        section_indent, item_indent = len(header.group(1)), None
        while i < len(lines):
            line = lines[i]
            if line.strip() and _indent(line) <= section_indent:
                break
            if line.strip() and item_indent is None:
                item_indent = _indent(line)
            grouped = _GROUPED.match(line) if line.strip() and _indent(line) == item_indent else None
            if not grouped:
                out.append(line)
                i += 1
                continue
            body = [grouped.group(3)]
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > item_indent):
                if not lines[i].strip() and (i + 1 >= len(lines) or _indent(lines[i + 1]) <= item_indent):
                    break
                body.append("\n" + lines[i])
                i += 1
            for name in grouped.group(2).split(","):
                out.append(f"{grouped.group(1)}{name.strip()}:{''.join(body)}")
    return "\n".join(out)


def _target(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` refers to from ``obj``'s scope (best effort)."""
    if name.startswith("artifex_rl."):
        return name
    if name.startswith("."):
        package = obj.module.path if obj.module.is_init_module else obj.module.parent.path
        return f"{package}{name}"
    head, _, rest = name.partition(".")
    try:
        resolved = obj.resolve(head)
    except Exception:  # noqa: BLE001 - unknown names simply stay unlinked
        return name
    full = f"{resolved}.{rest}" if rest else resolved
    # A re-export (``artifex_rl.Trainer``) is rendered under its home module's path.
    root = obj.package
    if full.startswith(root.path + "."):
        try:
            member = root[full[len(root.path) + 1 :]]
            if member.is_alias:
                return member.final_target.path
        except Exception:  # noqa: BLE001 - keep the path as written
            pass
    return full


def _convert(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match) -> str:
        role, short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name
        if role in ("meth", "func"):
            shown += "()"
        identifier = html.escape(_target(obj, name), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    text = _split_grouped_entries(text)
    text = _ROLE.sub(link, text)
    text = _LONE_MARKER.sub(r"\1", text)
    return _LITERAL_MARKER.sub(r"\1:", text)


def _walk(obj: Any, seen: set[int]) -> None:
    if id(obj) in seen or obj.is_alias:
        return
    seen.add(id(obj))
    if obj.docstring is not None:
        obj.docstring.value = _convert(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
