"""``detlab config``: every config key with its default and the comment beside it in config.py, the
model's recipe values and its knobs."""

from __future__ import annotations

import dataclasses
import inspect
import re

from detlab.cli import main
from detlab.config import TrainConfig, family_recipe
from detlab.config_list import config_keys, config_lines
from detlab.models.catalogue import knobs


def comments_by_regex() -> dict[str, str]:
    """An independent reading of config.py: each field's first ``#`` comment up to the next field."""
    lines = inspect.getsource(TrainConfig).splitlines()
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    found, current = {}, None
    for line in lines:
        m = re.match(r"    (\w+): ", line)
        if m and m.group(1) in names:
            current = m.group(1)
        if current and current not in found and "#" in line and not line.strip().startswith("# ---"):
            found[current] = line.split("#", 1)[1].strip()
    return found


def test_every_key_is_listed_in_order_with_its_own_comment_and_default():
    rows = config_keys()
    assert [r.name for r in rows] == [f.name for f in dataclasses.fields(TrainConfig)]
    reference = comments_by_regex()
    assert {r.name: r.comment for r in rows} == reference
    assert all(r.comment for r in rows)
    by_name = {r.name: r for r in rows}
    assert by_name["accumulate"].comment.startswith(
        "batches summed into one optimizer step"
    )  # a wrapped field
    assert by_name["milestones"].default == [0.67, 0.89] and by_name["epochs"].default == 12
    assert (
        by_name["lr"].section == "optimizer"
        and by_name["time_budget"].section == "schedule length and batches"
    )


def test_model_listing_shows_recipe_values_and_every_knob(capsys):
    lines = config_lines("fcos_effl0_fpn")
    recipe = family_recipe("fcos", "fcos_effl0_fpn")
    clip = next(line for line in lines if line.strip().startswith("clip_grad_norm"))
    assert f"{recipe['clip_grad_norm']:g} (base 0)" in clip
    text = "\n".join(lines)
    for k in knobs("fcos_effl0_fpn"):
        assert re.search(rf"^  {k.name} +.*{re.escape(k.comment)}$", text, re.M), k.name
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "time_budget" in out and "detlab config --model NAME" in out
    assert main(["config", "--model", "fcos_nope"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fcos_nope" in err
