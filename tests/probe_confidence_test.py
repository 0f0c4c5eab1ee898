"""The probe-confidence diagnostic: shares, exits and histograms by difficulty and first attempt."""

import fixtures
import pytest


@pytest.fixture(scope="module")
def tool():
    return fixtures.load_tool("probe_confidence")


def _row(d, right, weight, confidence):
    return {"difficulty": d, "right": right, "weight": weight, "confidence": confidence}


def test_summary_weights_rows_by_the_chance_of_their_first_attempt(tool):
    rows = [_row(1, True, 0.6, 0.992), _row(1, True, 0.2, 0.5), _row(1, False, 0.2, 1.0),
            _row(3, True, 0.3, 0.9), _row(3, False, 0.7, 0.0)]
    s = tool.summarize(rows, threshold=0.95, bins=(0.0, 0.5, 0.95, 1.0))
    assert list(s) == ["d=1 right", "d=1 wrong", "d=3 right", "d=3 wrong"]
    assert s["d=1 right"]["share"] == pytest.approx(0.8)
    assert s["d=1 right"]["exits"] == pytest.approx(0.75)
    assert s["d=1 right"]["confidence_mean"] == pytest.approx(0.869)
    # 0.5 falls in the second bin, 1.0 in the last (which includes 1), 0.0 in the first.
    assert s["d=1 right"]["histogram"] == pytest.approx([0.0, 0.25, 0.75])
    assert s["d=1 wrong"]["histogram"] == pytest.approx([0.0, 0.0, 1.0])
    assert s["d=3 wrong"] == pytest.approx({"share": 0.7, "exits": 0.0, "confidence_mean": 0.0,
                                            "histogram": [1.0, 0.0, 0.0]})
    assert s["d=3 right"]["exits"] == 0.0  # The threshold is strict, as in DTR.
    table = tool.format_table(s, 0.95, bins=(0.0, 0.5, 0.95, 1.0))
    assert "| d=1 right | 80% | 75% | 0.869 | 0% | 25% | 75% |" in table
