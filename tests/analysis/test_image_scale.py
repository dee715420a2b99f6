"""The two intensity maps are different on purpose: [0, 1] for the image metrics, [-1, 1] for the generator."""

from __future__ import annotations

import numpy as np

from analysis.metrics.image import percentile_to_unit
from flowlet.data.preprocessing import robust_normalize


def test_percentile_to_unit_uses_the_foreground_percentiles_and_maps_to_unit():
    volume = np.zeros((4, 5, 6))
    volume[1:3, 1:4, 1:5] = np.linspace(10.0, 110.0, 24).reshape(2, 3, 4)
    scaled = percentile_to_unit(volume, percentiles=(0, 100))
    inside = volume != 0
    # The zero background is below the foreground's minimum, so it clips to 0 rather than defining the range.
    np.testing.assert_allclose(scaled[inside], (volume[inside] - 10.0) / 100.0)
    assert scaled.dtype == np.float64 and scaled[~inside].max() == 0.0


def test_the_generator_normalisation_is_the_other_range():
    volume = np.arange(27.0).reshape(3, 3, 3) + 1.0
    unit = percentile_to_unit(volume, percentiles=(0, 100))
    signed = robust_normalize(volume, 0, 100)
    np.testing.assert_allclose(signed, 2.0 * unit - 1.0, atol=1e-6)
    assert (unit.min(), unit.max()) == (0.0, 1.0) and (signed.min(), signed.max()) == (-1.0, 1.0)
