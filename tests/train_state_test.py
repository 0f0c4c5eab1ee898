"""The optimiser's learning-rate schedules."""

import numpy as np
import pytest

from stepgrpo_jax import train_state


def test_schedules():
    lr = train_state.make_schedule(1.0, "cosine", warmup_steps=2, total_steps=6)
    np.testing.assert_allclose([lr(s) for s in range(7)],
                               [0, 0.5, 1, 0.5 + 0.5 * np.cos(np.pi / 4), 0.5,
                                0.5 - 0.5 * np.cos(np.pi / 4), 0], atol=1e-6)
    lin = train_state.make_schedule(1.0, "linear", total_steps=4)
    np.testing.assert_allclose([lin(s) for s in range(5)], [1, 0.75, 0.5, 0.25, 0], atol=1e-6)
    assert float(train_state.make_schedule(2.0)(1000)) == 2.0
    with pytest.raises(ValueError, match="total_steps"):
        train_state.make_schedule(1.0, "cosine")
