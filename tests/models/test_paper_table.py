"""`lifevit profile --paper-table`: the paper's cost table, reproduced where it can be (docs/backbones.md)."""

import json

import pytest

from lifevit.cli import main
from lifevit.profile import PAPER_COST_TABLE, paper_cost_table

ROWS = {row.label: row for row in PAPER_COST_TABLE}
# rows whose numbers cannot be matched, explained in docs/backbones.md
PARAM_MISMATCH = {"T2T-ViT-12-LIFE", "SwinV2-T", "SwinV2-T-LIFE"}


def test_table_lists_every_backbone_of_the_paper():
    assert list(ROWS) == [
        "DeiT-T", "DeiT-T-LIFE", "T2T-ViT-12", "T2T-ViT-12-LIFE", "DeiT-S", "DeiT-S-LIFE",
        "SwinV2-T", "SwinV2-T-LIFE", "ResNet-18", "ResNet-50",
    ]  # fmt: skip


def test_resnet18_row_matches_at_256_px_with_the_imagenet_stem():
    (row,) = paper_cost_table(rows=(ROWS["ResNet-18"],))
    assert row["img_size"] == 256
    assert round(row["params_m"], 2) == 11.23 and round(row["gmacs"], 2) == 2.37


def test_paper_table_refuses_a_model_name(capsys):
    assert main(["profile", "deit_tiny_patch4_32", "--paper-table"]) == 2
    assert "--paper-table takes no model name, got 'deit_tiny_patch4_32'" in capsys.readouterr().err


@pytest.mark.slow
def test_whole_table_matches_except_the_documented_rows(capsys):
    assert main(["profile", "--paper-table", "--json"]) == 0
    rows = {r["label"]: r for r in json.loads(capsys.readouterr().out)}
    for label, r in rows.items():
        # MACs: within 0.015 G (ours are ~0.01 G lower throughout), except T2T-ViT-12 (+0.022 G: the stem
        # Performers' random-feature products) and the unmatched T2T-ViT-12-LIFE row
        tol = {"T2T-ViT-12": 0.025, "T2T-ViT-12-LIFE": 0.1}.get(label, 0.015)
        assert r["gmacs"] == pytest.approx(r["paper_gmacs"], abs=tol), label
        if label not in PARAM_MISMATCH:
            assert r["params_m"] == pytest.approx(r["paper_params_m"], abs=0.011), label
    # SwinV2-T: a constant offset, but LIFE's increment matches the paper's
    swin_increment = rows["SwinV2-T-LIFE"]["params_m"] - rows["SwinV2-T"]["params_m"]
    assert swin_increment == pytest.approx(27.88 - 27.72, abs=0.01)
