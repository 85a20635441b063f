"""A rater's copy of the page's config: Gradio's without the Admin tab's components and events.

Gradio builds one config for the whole app (``Blocks.config``) and gives it to everyone signed in: ``GET /config``
answers it as JSON and the page (``GET /``) carries it as ``window.gradio_config``. It listed the Admin tab's layout
(its forms, buttons, labels) and every event's function name (``api_name``: ``on_user_delete``, ``on_create``, ...) to
any rater (fourteenth review, 6 Dec 2026). No admin data was in it, and the events themselves are refused to a rater
(``gradio_routes.admin_only``), but a rater's page has no use for them. The guard (``app.web_guard``) now hands a
signed-in rater these two answers trimmed here:

- the components under a block marked ``admin_only_layout`` (the Admin tab, itself included) leave ``components``,
  ``layout`` and each page's ``components`` and ``layout``;
- the events that touch one of them (as a trigger, an input or an output), whose handler is marked ``admin_only``, or
  that run after one of those (``trigger_after``), leave ``dependencies`` and each page's ``dependencies``; and the
  others' ``cancels`` forget them.

The result is a config of the shape Gradio itself serves for one page of a multipage app (``gradio.routes``'
``get_page_config``: a subset of the components and events, each keeping its id), which its page loads as it is. An
event the page still needs must therefore touch nothing of the Admin tab: the page load and the experiment selector
do not (the tab is shown by its layout, to admins only; the round status follows ``exp_state`` on the tab's own event).
The server keeps every event: one a rater sends by hand is refused (403) before its handler runs, as each event this
leaves out that runs a handler is marked ``admin_only`` (the Admin tab's quiet events, its timer and the experiment's
change, ran for a rater and answered a skip until the fifteenth review)."""

from __future__ import annotations

import json
from typing import Any

from app import gradio_routes

ADMIN_LAYOUT_MARK = "_seiko_admin_only_layout"
PAGE_CONFIG_START = b"<script>window.gradio_config = "
PAGE_CONFIG_END = b";</script>"
# Gradio's ``toorjson`` (gradio.routes), which writes the config into the page: these characters as JSON escapes, so
# that no text of the config can end its <script>
PAGE_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027"))


class PageConfigError(RuntimeError):
    """Gradio's answer held no config this module could trim (its shape changed); the rater gets no page."""


def admin_only_layout(block: Any) -> Any:
    """Mark ``block`` (a gr.Tab) as an admin's: a rater's config has none of it nor of its events. Returns it."""
    setattr(block, ADMIN_LAYOUT_MARK, True)
    return block


# what reading a config of another shape than Gradio's raises here (a key missing, a list where a dict was): said as
# PageConfigError, the guard's one sentence, not a traceback (found by a read-only review of the fourteenth review's
# fixes)
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def admin_parts(blocks: Any) -> tuple[frozenset[int], frozenset[int]]:
    """(component ids, event ids) that a rater's config leaves out, for ``blocks`` (the app's gr.Blocks);
    PageConfigError where its config is not shaped as Gradio's."""
    try:
        return _admin_parts(blocks)
    except _SHAPE_ERRORS as exc:
        raise PageConfigError(f"Gradio's config was not shaped as this app reads it ({exc!r})") from exc


def _admin_parts(blocks: Any) -> tuple[frozenset[int], frozenset[int]]:
    config = blocks.config or {}
    roots = {i for i, block in blocks.blocks.items() if getattr(block, ADMIN_LAYOUT_MARK, False) is True}
    components: set[int] = set()

    def walk(node: dict[str, Any], inside: bool) -> None:
        inside = inside or node.get("id") in roots
        if inside:
            components.add(node["id"])
        for child in node.get("children", []):
            walk(child, inside)

    walk(config.get("layout") or {}, False)
    events: set[int] = set()
    for dep in config.get("dependencies", []):
        touched = {t[0] for t in dep.get("targets", [])} | set(dep.get("inputs", [])) | set(dep.get("outputs", []))
        block_fn = blocks.fns.get(dep["id"])
        if touched & components or (block_fn is not None and gradio_routes.is_admin_only(block_fn.fn)) \
                or dep.get("trigger_after") in events:  # an event is after the one it follows
            events.add(dep["id"])
    return frozenset(components), frozenset(events)


def _layout_without(node: dict[str, Any], components: frozenset[int]) -> dict[str, Any]:
    kept = {**node}
    if "children" in node:
        kept["children"] = [_layout_without(c, components) for c in node["children"] if c.get("id") not in components]
    return kept


def _events_without(deps: list[dict[str, Any]], events: frozenset[int]) -> list[dict[str, Any]]:
    return [{**dep, "cancels": [c for c in dep.get("cancels", []) if c not in events]}
            for dep in deps if dep.get("id") not in events]


def rater_config(config: dict[str, Any], components: frozenset[int], events: frozenset[int]) -> dict[str, Any]:
    """``config`` (as ``GET /config`` or the page carries it) without ``components`` and ``events``
    (``admin_parts``); PageConfigError where it is not shaped as Gradio's."""
    if not isinstance(config, dict) or not isinstance(config.get("components"), list) \
            or not isinstance(config.get("dependencies"), list) or not isinstance(config.get("layout"), dict):
        raise PageConfigError("Gradio's answer held no page config of the shape this app trims")
    try:
        return _trimmed(config, components, events)
    except _SHAPE_ERRORS as exc:
        raise PageConfigError(f"Gradio's answer held a page config of another shape ({exc!r})") from exc


def _trimmed(config: dict[str, Any], components: frozenset[int], events: frozenset[int]) -> dict[str, Any]:
    out = {**config, "components": [c for c in config["components"] if c.get("id") not in components],
           "dependencies": _events_without(config["dependencies"], events),
           "layout": _layout_without(config["layout"], components)}
    if isinstance(config.get("page"), dict):
        out["page"] = {name: {**page, "components": [i for i in page.get("components", []) if i not in components],
                              "dependencies": [i for i in page.get("dependencies", []) if i not in events],
                              "layout": _layout_without(page.get("layout") or {}, components)}
                       for name, page in config["page"].items()}
    return out


def rater_config_json(body: bytes, components: frozenset[int], events: frozenset[int]) -> bytes:
    """``GET /config``'s JSON answer, trimmed (``rater_config``)."""
    try:
        config = json.loads(body)
    except ValueError as exc:
        raise PageConfigError("Gradio's /config answer was not JSON") from exc
    return json.dumps(rater_config(config, components, events), separators=(",", ":")).encode()


def rater_page(body: bytes, components: frozenset[int], events: frozenset[int]) -> bytes:
    """The page's HTML with its ``window.gradio_config`` trimmed (``rater_config``), written back as Gradio's
    template writes it (``PAGE_ESCAPES``)."""
    start = body.find(PAGE_CONFIG_START)
    end = body.find(PAGE_CONFIG_END, start) if start >= 0 else -1
    if start < 0 or end < 0 or body.find(PAGE_CONFIG_START, end) >= 0:
        raise PageConfigError("the page did not carry its config once, as Gradio's template writes it")
    begin = start + len(PAGE_CONFIG_START)
    try:
        config = json.loads(body[begin:end])
    except ValueError as exc:
        raise PageConfigError("the page's config was not JSON") from exc
    text = json.dumps(rater_config(config, components, events), separators=(",", ":"))
    for char, escape in PAGE_ESCAPES:
        text = text.replace(char, escape)
    return body[:begin] + text.encode() + body[end:]
