"""app.tools.kl_bf16: the KL term near the previous adapter in fp32 and under bf16 autocast, on the tiny random
model. Checked against closed forms: identical adapters give a KL of exactly 0 (the same computation twice), and for
small moves the KL between the two Gaussian steps is quadratic in the move (the means differ linearly in it)."""

from __future__ import annotations

import re

import pytest


def _rows(text: str) -> dict[float, list[str]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| ([0-9.e+-]+) \|(.*)\|$", line)
        if m:
            rows[float(m.group(1))] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_kl_is_zero_for_identical_adapters_and_quadratic_in_the_move(capsys):
    from app.tools.kl_bf16 import main

    main(["--steps", "3", "--batch", "2", "--deltas", "0", "0.01", "0.02", "--per-value"])
    out = capsys.readouterr().out
    assert "tiny random model on cpu" in out and "3 DDIM steps, last 3 attached, 2 trajectories" in out
    rows = _rows(out)
    assert set(rows) == {0.0, 0.01, 0.02}
    kl32, kl16, cos = rows[0.0]
    assert float(kl32) == 0.0 and float(kl16) == 0.0 and cos == "-"  # no gradient either: the cosine is undefined
    ratio = float(rows[0.02][0]) / float(rows[0.01][0])
    assert ratio == pytest.approx(4.0, rel=0.1)  # quadratic: twice the move, four times the KL
    assert -1.0 <= float(rows[0.01][2]) <= 1.0
    timing = re.findall(r"^\| (fp32|bf16) \| ([0-9.]+) \(", out, flags=re.M)
    assert [p for p, _ in timing] == ["fp32", "bf16"] and all(float(s) > 0 for _, s in timing)


def test_fp16_and_sizes_are_refused_where_they_do_not_apply():
    from app.tools.kl_bf16 import main

    with pytest.raises(SystemExit, match="fp16 autocast needs a GPU"):
        main(["--precisions", "fp32", "fp16"])
    with pytest.raises(SystemExit, match="--size applies to --model sd15-arch only"):
        main(["--size", "8", "--steps", "2", "--deltas", "0"])


@pytest.mark.parametrize("scale", ["0", "-1", "inf", "nan", "x"])
def test_an_fp16_scale_that_is_not_a_positive_finite_number_is_refused(scale, capsys):
    from app.tools.kl_bf16 import main

    with pytest.raises(SystemExit):
        main(["--fp16-scale", scale])
    assert f"must be a positive finite number, got {scale!r}" in capsys.readouterr().err
