"""The model card every model export carries: ``MODEL_CARD.md`` for people, ``model_card.json`` for programs.

The card is assembled by the caller (the app knows the experiment: rounds, labels, raters, KL, win rates) and
written here; for the single-file kohya LoRA it also goes into the safetensors header (``seiko_model_card``), so
the one file A1111 users download carries it. JSON only, no pickles.
"""

from __future__ import annotations

import html
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_write

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
SCHEMA = "seiko-model-card/1"
HEADER_KEY = "seiko_model_card"
NOT_MEASURED = "not measured"


def to_json(card: Mapping[str, Any]) -> str:
    return json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def rater_reading(stats: Mapping[str, Any]) -> str:
    """Whose preference a win rate's interval is about, in the words the dashboard's A/B table and the card both use
    (fourteenth review): "about these N raters" ("about this rater") when it is clustered by pair only (fewer than
    ``db.comparisons.RATERS_TO_GENERALISE`` raters), "over raters like these N" when it is clustered by pair and
    rater (that many or more; ``over_raters``); "" where the raters are not known (an older card, or no votes)."""
    raters = stats.get("raters")
    if raters is None:
        return ""
    if stats.get("over_raters"):
        return f"over raters like these {raters}"
    return "about this rater" if raters == 1 else f"about these {raters} raters"


def _win_line(index: Any, opponent: str, stats: Any) -> str | None:
    """One measured win rate as a sentence of the card: rate, interval, votes, pairs and, where the card has them,
    whose preference the interval is about (``rater_reading``); None where it has no votes or is not a win rate."""
    if not isinstance(stats, Mapping) or not stats.get("n") or not isinstance(stats.get("ci95"), (list, tuple)) \
            or len(stats["ci95"]) != 2 or stats.get("rate") is None:
        return None
    lo, hi = stats["ci95"]
    reading = rater_reading(stats)
    n, pairs = stats["n"], stats.get("pairs")
    return (f"- round {index} vs {opponent}: {stats['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({n} vote{'' if n == 1 else 's'}, "
            f"{pairs} pair{'' if pairs == 1 else 's'}{'; ' + reading if reading else ''})")


def _win_lines(rates: Mapping[str, Any]) -> list[str]:
    lines = []
    for index, entry in rates.items():
        if not isinstance(entry, Mapping):
            continue
        parent = entry.get("parent_index")
        for key, opponent in (("vs_previous", f"round {parent} (the round it was trained from)"),
                              ("vs_base", "round 0 (the base model)")):
            line = _win_line(index, opponent, entry.get(key))
            if line is not None:
                lines.append(line)
    return lines


def _indices(indices: list[Any]) -> str:
    return ("round " if len(indices) == 1 else "rounds ") + ", ".join(str(i) for i in indices)


def _chosen(sel: Mapping[str, Any] | None) -> str:
    """A round's selection (``app.export_card``) in words: which of how many generated candidates were shown."""
    if not sel:
        return "every image generated (before selection existed)"
    mode, cands, shown = sel.get("mode"), sel.get("candidates"), sel.get("shown")
    if mode == "random" and cands == shown:
        return f"{shown} of {cands}: every image generated"
    honest = sel.get("honest_share")
    part = f", a random {honest:.0%} first" if isinstance(honest, int | float) and mode != "random" else ""
    return f"{shown} of {cands} candidates by {mode}{part}"


_MARKDOWN_PUNCTUATION = frozenset("\\`*_[]#|~")


def _plain(text: Any) -> str:
    r"""An admin-given name as plain text in the card's Markdown: a name with ``<b>`` or a backtick was read as markup
    by a host that renders the card (found by review). ``<``, ``>`` and ``&`` become entities, Markdown's own marks a
    backslash escape (so ``shapes_ucb_1`` reads ``shapes\_ucb\_1`` in a plain-text viewer, not entities)."""
    return "".join("\\" + c if c in _MARKDOWN_PUNCTUATION else c for c in html.escape(str(text), quote=False))


def markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown (every figure is also in ``model_card.json``)."""
    exp = card.get("experiment", {})
    v = card.get("verification") or {}
    k = card.get("round")
    lineage = card.get("lineage") or [r["index"] for r in card.get("rounds", [])]
    outside = card.get("labels_outside_lineage") or {}
    votes = card.get("comparisons") or {}
    compared = f" and {votes['count']} comparisons of {votes['pairs']} pairs" if votes.get("count") else ""
    labels = (f"- **Labels**: {card['labels']['count']} ratings of {card['labels']['images']} images{compared} trained "
              f"this adapter (every {'rating and comparison' if compared else 'rating'} on the rounds before round {k}")
    if outside.get("count"):
        labels += (f", including {outside['count']} ratings of {outside['images']} images on "
                   f"{_indices(outside['rounds'])}, outside the lineage: the reward model is fitted on all of them")
    lines = [
        f"# SEIKO model card: {_plain(exp.get('name', '?'))}, round {k}",
        "",
        f"- **Format**: {card.get('format')} ({', '.join(card.get('files', [])) or 'see manifest.json'})",
        f"- **Base model**: `{card.get('base_model')}`",
        f"- **Method**: {card.get('method')}",
        f"- **Rounds**: round {k} of the experiment, lineage {' → '.join(str(i) for i in lineage)} (the rounds its "
        f"model descends from, base model first; {card.get('rounds_total')} rounds exist)",
    ]
    opts = card.get("experiment_options")
    if opts:
        lines.append("- **Round options at export** (which images a round shows): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(opts.items())))
    others = card.get("rounds_not_in_lineage") or []
    if others:
        earlier, later = [i for i in others if i < k], [i for i in others if i > k]
        why = ([f"{_indices(earlier)} (abandoned by a rollback)"] if earlier else []) + (
            [f"{_indices(later)} (trained after round {k})"] if later else [])
        lines.append(f"- **Not in the lineage**: {len(others)} of the experiment's {card.get('rounds_total')} rounds: "
                     + ", ".join(why))
    lines += [
        labels + ")",
        f"- **Raters**: {card['raters']['count']}",
        f"- **KL spent** (sum over the lineage of each round's KL to the round it was trained from): "
        f"{_fmt(card.get('kl_total'))}",
        f"- **Exported**: {card.get('created_at')} (source adapter manifest sha256 `{card.get('source_adapter_manifest_sha256')}`)",
        "",
        "## Rounds",
        "",
        "| round | trained from | ratings of its images | raters | ratings it was trained on "
        "| KL to the round it was trained from (eval grid, mean) | max | training KL (last step) | images shown, chosen by |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in card.get("rounds", []):
        base = r["index"] == 0  # round 0 is the base model: no previous round, no training
        kl = ("–", "–", "–") if base else (
            _fmt(r.get("kl_to_prev")), _fmt(r.get("kl_to_prev_max")), _fmt(r.get("train_kl_last")))
        parent = "–" if base else r.get("parent", r["index"] - 1)
        trained_on = "–" if base else _fmt(r.get("trained_on_labels"))
        lines.append(f"| {r['index']} | {parent} | {r['labels']} | {r['raters']} | {trained_on} | {kl[0]} | {kl[1]} | {kl[2]} "
                     f"| {_chosen(r.get('selection'))} |")
    lines += ["", "## Win rates", ""]
    rates = card.get("win_rates")
    if rates:
        win = _win_lines(rates) if isinstance(rates, Mapping) else []
        lines += (["Ties count half; 95% intervals, with the votes and pairs each rests on:", ""] + win + [""] if win else [])
        lines += ["```json", json.dumps(rates, indent=2, sort_keys=True, default=str), "```"]
    else:
        lines.append(f"{NOT_MEASURED.capitalize()}: {card.get('win_rates_note') or 'no A/B comparisons recorded'}.")
    lines += ["", "## Verification", ""]
    if v:
        s = v.get("settings", {})
        lines += [
            f"Stock diffusers {v.get('diffusers_version')} re-loaded this export in a fresh process "
            f"(`{v.get('loader')}`) and rendered prompt {_plain(repr(s.get('prompt')))}, seed {s.get('seed')}, {s.get('steps')} DDIM "
            f"steps, guidance {s.get('guidance')}, eta {s.get('eta')}, on {s.get('device')}.",
            "",
            "| check | mean abs. difference (0-255) | largest | rule | result |",
            "|---|---:|---:|---|---|",
            f"| (a) export vs base model | {v['vs_base']['mean_abs']} | {v['vs_base']['max_abs']} | mean > "
            f"{v['thresholds']['min_base_mean_abs']} | {'pass' if v['vs_base']['mean_abs'] > v['thresholds']['min_base_mean_abs'] else 'FAIL'} |",
            f"| (b) export vs the app's image | {v['vs_app']['mean_abs']} | {v['vs_app']['max_abs']} | mean <= "
            f"{v['thresholds']['max_app_mean_abs']}, largest <= {v['thresholds']['max_app_max_abs']} | "
            f"{'pass' if v['passed'] else 'FAIL'} |",
        ]
    else:
        lines.append(NOT_MEASURED.capitalize() + ".")
    lines += ["", "## SEIKO config", "", "```json", json.dumps(card.get("seiko_config", {}), indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write(directory: str | Path, card: Mapping[str, Any]) -> None:
    """``model_card.json`` and ``MODEL_CARD.md`` in ``directory``."""
    directory = Path(directory)
    (directory / CARD_JSON).write_text(to_json(card) + "\n", encoding="utf-8")
    (directory / CARD_MD).write_text(markdown(card), encoding="utf-8")


def _loads(text: str | bytes, what: str) -> Any:
    """``json.loads`` of a card or a header: ValueError with one sentence naming ``what`` when it is not UTF-8 JSON.
    JSON nested too deeply (200,000 '[') raised json's RecursionError out of the readers here, where the other JSON
    readers say it in one sentence since the fifth review (found by the sixth review)."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError(f"{what} is not one this code reads (its JSON is nested too deeply)") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not one this code reads (not UTF-8 text)") from exc
    except ValueError as exc:  # JSONDecodeError
        raise ValueError(f"{what} is not one this code reads (not JSON: {exc})") from exc


def read(directory: str | Path) -> dict:
    """``directory``'s ``model_card.json``; FileNotFoundError when there is none, ValueError (one sentence naming the
    file) when it is not a JSON object."""
    path = Path(directory) / CARD_JSON
    card = _loads(path.read_bytes(), f"the model card {str(path)!r}")
    if not isinstance(card, dict):
        raise ValueError(f"the model card {str(path)!r} is not one this code reads (a {type(card).__name__}, not a "
                         "JSON object)")
    return card


# --------------------------------------------------------------------------- the card in a safetensors header
def _split(raw: bytes, name: str = "the file") -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    header = _loads(raw[8:8 + n], f"the safetensors header of {name!r}")
    if not isinstance(header, dict):
        raise ValueError(f"the safetensors header of {name!r} is not one this code reads (a {type(header).__name__}, "
                         "not a JSON object)")
    return header, raw[8 + n:]


def stamp_safetensors(path: str | Path, metadata: Mapping[str, str]) -> None:
    """Add ``metadata`` to a safetensors file's header, keeping every tensor byte as it was (rewritten atomically).

    The tensor data section is copied unchanged (its offsets are relative to the header's end), so the weights a
    check verified are the weights published; a reader that loads the result and compares proves it."""
    path = Path(path)
    raw = path.read_bytes()
    header, data = _split(raw, path.name)
    meta = dict(header.get("__metadata__") or {})
    meta.update({str(k): str(v) for k, v in metadata.items()})
    header["__metadata__"] = meta
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # safetensors pads its header to 8 bytes

    def write(tmp: Path) -> None:
        tmp.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
        if _split(tmp.read_bytes())[1] != data:
            raise RuntimeError(f"Re-writing the header of {path.name!r} changed its tensor data; refusing to publish it.")

    atomic_write(path, write)
