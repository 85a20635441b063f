"""seiko_core.toy.step_fidelity: paired fidelity of the shapes model at several sampler step counts."""

from __future__ import annotations

from seiko_core.toy.step_fidelity import step_fidelity


def test_every_step_count_gets_the_same_prompts_and_seeds(shapes_parts):
    # the same step count twice must read back identically (same prompts, same seeds: a paired comparison)
    got = step_fidelity(shapes_parts, [4, 4], 6, batch_size=6)
    assert list(got) == [4] and set(got[4]) == {"color_fidelity", "background_fidelity", "shape_fidelity"}
    again = step_fidelity(shapes_parts, [4], 6, batch_size=6)
    assert again == got
    assert all(0.0 <= v <= 1.0 and (v * 6) == round(v * 6) for v in got[4].values())  # fractions of 6 images
