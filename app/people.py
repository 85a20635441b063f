"""Simulated people for the product benchmark (``python -m app bench-taste --person SPEC``).

A person is a function ``(images, prompts) -> ratings``: ``images`` a float tensor (B, 3, H, W) in [0, 1],
``prompts`` the B prompts, ``ratings`` B whole numbers from 1 to 10 (a list, a tuple, a 1-d numpy array or
torch tensor). ``SPEC`` is a built-in person's name (:data:`BUILT_IN`) or ``path/to/file.py:function``.

Built-in people are the project's shapes oracles (``seiko_core.oracles``), whose reward r lies in [0, 10],
turned into a rating by one rule fixed before any benchmark run and never tuned:

    rating = min(10, max(1, floor(1 + 0.9 * r + 0.5)))

so r = 0 is 1, r = 10 is 10, and a rating >= 6 means r >= 5 (half of the oracle's maximum). No noise: the
same image always gets the same rating, so two runs of the benchmark differ only by what the model makes.

- ``gold_on_black``: likes a yellow or orange shape on a dark background; rare under the pretrained shapes
  model (about 3% of round 0's images rated >= 6 in issue 12's measurement);
- ``purple``: likes purple; a colour the pretrained model draws more often.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import numbers
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seiko_core import oracles

RATING_MIN, RATING_MAX = 1, 10


class PersonError(ValueError):
    """A person spec that cannot be loaded or a person that answered wrongly; the message is one sentence."""


def as_images(pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) arrays in [0, 1] as the (B, 3, H, W) float batch a person rates: contiguous, so a person may
    ``view`` or ``reshape`` it as any freshly made tensor (a permuted view failed ``images.view(B, -1)`` in round 0
    after passing the check on a tensor made contiguous: found by review)."""
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().contiguous()


def _why(exc: BaseException, where: Path | None = None) -> str:
    """``Type: message (at file.py:line)``, on one line: the innermost frame in the person's file ``where`` (else the
    innermost frame), so a person's bug can be found; a multi-line message joined, an empty one left out. A module
    that sits beside the person's file but cannot be imported gets a hint: the file's folder is not on the import
    path (the project edits no import path; found by review)."""
    message = " ".join(str(exc).split()).rstrip(".")
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing and where is not None:
        top = missing.split(".")[0]
        if (where.parent / f"{top}.py").is_file() or (where.parent / top).is_dir():
            message += (f"; {top!r} sits beside the person's file, but that folder is not on Python's import path: "
                        "put the helper into the person's file, install it, or start the command with that folder "
                        "on the import path")
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if where is not None and Path(f.filename).resolve() == where]
    frames = mine or frames
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    if isinstance(exc, SyntaxError) and not mine:
        # a file that does not compile has no frame of its own: the innermost one was importlib's ("at <frozen
        # importlib._bootstrap>:241"), and the message already names the file and line (found by the nineteenth review)
        at = ""
    return f"{type(exc).__name__}{': ' + message if message else ''}{at}"


def oracle_rating(reward: torch.Tensor) -> list[int]:
    """The fixed rule: rating = min(10, max(1, floor(1 + 0.9 * r + 0.5))) for an oracle reward r in [0, 10]."""
    r = reward.detach().to("cpu", torch.float64)
    return [int(min(RATING_MAX, max(RATING_MIN, math.floor(1.0 + 0.9 * float(v) + 0.5)))) for v in r]


def _built_in(name: str) -> Callable[[torch.Tensor, list[str]], list[int]]:
    oracle = oracles.ORACLES[name]

    def person(images: torch.Tensor, prompts: list[str]) -> list[int]:
        with torch.no_grad():
            return oracle_rating(oracle(images, prompts))

    person.__name__ = name
    return person


BUILT_IN: dict[str, str] = {
    "gold_on_black": "a yellow or orange shape on a dark background (rare under the pretrained shapes model)",
    "purple": "purple shapes (a colour the pretrained shapes model draws more often)",
}


@dataclass(frozen=True)
class Person:
    name: str
    fn: Callable[..., Any]
    path: Path | None = None  # the file a person spec named (its frames locate an error); None: built in

    def rate(self, images: torch.Tensor, prompts: Sequence[str]) -> list[int]:
        """The person's ratings of ``images``, checked: B whole numbers from 1 to 10, else PersonError."""
        prompts = list(prompts)
        try:
            answer = self.fn(images, prompts)
        except (Exception, SystemExit) as exc:  # a person that calls sys.exit() is refused, not obeyed
            raise PersonError(f"person {self.name!r} raised {_why(exc, self.path)}.") from exc
        return check_ratings(self.name, answer, len(prompts))


def check_ratings(name: str, answer: Any, n: int) -> list[int]:
    """``answer`` as a list of ``n`` ints from 1 to 10, else PersonError with one sentence."""
    if isinstance(answer, torch.Tensor):
        if answer.is_complex():
            raise PersonError(f"person {name!r} returned a complex tensor; ratings must be whole numbers from 1 to 10.")
        try:  # a sparse or meta tensor (no values here) was a TypeError or NotImplementedError traceback (nineteenth review)
            tensor = answer.detach().cpu()
            # numpy has no bfloat16: such a tensor was a TypeError traceback (found by review); float64 holds its values
            answer = (tensor.double() if tensor.is_floating_point() else tensor).numpy()
        except (TypeError, RuntimeError, NotImplementedError) as exc:
            raise PersonError(f"person {name!r} returned a {answer.layout} tensor on {answer.device} whose values cannot "
                              f"be read ({type(exc).__name__}: {' '.join(str(exc).split()).rstrip('.')}); it must "
                              f"return {n} whole-number ratings from 1 to 10.") from exc
    if isinstance(answer, np.ndarray):
        if answer.ndim == 2 and answer.shape[1] == 1:
            answer = answer[:, 0]  # a column (B, 1): one rating per row
        if answer.ndim != 1:
            raise PersonError(f"person {name!r} returned an array of shape {tuple(answer.shape)}; it must return {n} ratings, one per image.")
        answer = answer.tolist()
    if not isinstance(answer, list | tuple):
        raise PersonError(f"person {name!r} returned {type(answer).__name__}; it must return a list of {n} whole-number ratings from 1 to 10.")
    if len(answer) != n:
        raise PersonError(f"person {name!r} returned {len(answer)} ratings for {n} images; it must return one rating per image.")
    out = []
    for i, value in enumerate(answer):
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and _whole(value):
            value = int(value)  # 7.0, numpy.float32(7)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy.int64(7) is a whole number
            raise PersonError(f"person {name!r} rated image {i} {_shown(value)}; ratings must be whole numbers from 1 to 10.")
        if not RATING_MIN <= value <= RATING_MAX:
            raise PersonError(f"person {name!r} rated image {i} {_shown(value)}; ratings must be whole numbers from 1 to 10.")
        out.append(int(value))
    return out


def _whole(value: numbers.Real) -> bool:
    """Whether ``value`` (a number that is not an int) is a whole number; False past float's range, where
    ``float(Fraction(10**400))`` raised OverflowError, a traceback (found by the nineteenth review)."""
    try:
        return float(value).is_integer()
    except OverflowError:
        return False


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` as a rating is said in a sentence: its repr, cut at ``limit`` characters. An int of more digits than
    Python turns into text (``sys.get_int_max_str_digits()``, 4300) raised ValueError in the refusal's f-string, a
    traceback (found by the nineteenth review), and one of 4,000 digits made a sentence of 4,000 characters."""
    try:
        text = repr(value)
    except ValueError:
        return f"a number of more than {sys.get_int_max_str_digits():,} digits"
    return text if len(text) <= limit else text[:limit] + "..."


def _choices() -> str:
    return f"give a built-in person ({', '.join(sorted(BUILT_IN))}) or path/to/file.py:function"


def load_person(spec: str) -> Person:
    """The person ``spec`` names; PersonError (one sentence) when it cannot be loaded."""
    if not isinstance(spec, str) or not spec.strip():
        raise PersonError(f"no person given; {_choices()}.")
    spec = spec.strip()
    if spec in BUILT_IN:
        return Person(spec, _built_in(spec))
    if ":" not in spec:
        raise PersonError(f"unknown person {spec!r}; {_choices()}.")
    where, attr = spec.rsplit(":", 1)
    if not where.endswith(".py") or not attr:
        raise PersonError(f"person spec {spec!r} must be path/to/file.py:function; {_choices()}.")
    path = Path(where).expanduser()
    if path.is_dir():  # said "does not exist" of a folder that does (found by the nineteenth review)
        raise PersonError(f"person file {where!r} is a folder; give the Python file that defines the person.")
    if not path.is_file():
        raise PersonError(f"person file {where!r} does not exist.")
    module_name = "seiko_person_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise PersonError(f"person file {where!r} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a file that calls sys.exit() on import is refused, not obeyed
        del sys.modules[module_name]
        raise PersonError(f"person file {where!r} failed to import: {_why(exc, path.resolve())}.") from exc
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise PersonError(f"person file {where!r} has no function {attr!r}.") from None
    except Exception as exc:  # a module __getattr__ that raises (found by review)
        raise PersonError(f"person file {where!r} has no usable {attr!r}: {_why(exc, path.resolve())}.") from exc
    if not callable(fn):
        raise PersonError(f"{attr!r} in {where!r} is a {type(fn).__name__}, not a function (images, prompts) -> ratings.")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise PersonError(f"{attr!r} in {where!r} is an async function; a person must be a plain function "
                          "(images, prompts) -> ratings.")
    return Person(spec, fn, path.resolve())


def model_image_size(model_spec: str, default: int = 32) -> int:
    """The side of the images ``model_spec`` makes (the UNet's latent side x the VAE's downscale, as diffusers
    computes it), read from its config files; ``default`` (the shapes model's 32) when they cannot be read (a hub id
    not in the cache: the run refuses that model itself)."""
    import json

    from seiko_core.models import is_local_spec

    def config(part: str) -> dict:
        if is_local_spec(model_spec):
            return json.loads((Path(model_spec).expanduser() / part / "config.json").read_text())
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_spec, f"{part}/config.json")
        if not isinstance(found, str):
            raise FileNotFoundError(f"{part}/config.json")
        return json.loads(Path(found).read_text())

    try:
        latent = int(config("unet")["sample_size"])
        return latent * 2 ** (len(config("vae")["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # Recursion: nested too deeply for json
        return default


def check_person(person: Person, size: int = 32) -> None:
    """Call the person once on two grey test images of ``size`` x ``size`` (the model's image size; made as the
    benchmark makes its batches, ``as_images``), so a wrong answer is found before any model runs."""
    images = as_images([np.full((size, size, 3), 0.5)] * 2)
    try:
        person.rate(images, ["a shape", "a shape"])
    except PersonError as exc:
        raise PersonError(f"on two grey {size}x{size} test images, {exc}") from exc
