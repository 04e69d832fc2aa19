"""How numbers and sizes read: the unit and notation are chosen after rounding, so a
value a hair under a boundary reads the same on every machine."""

from __future__ import annotations

import pytest

from trainlens._format import human_bytes, num

KIB, MIB, GIB = 2**10, 2**20, 2**30


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1023.4, "1023 B"),
        (1023.6, "1.0 KB"),  # rounds to 1024 B: shown as 1.0 KB, never "1024 B"
        (KIB, "1.0 KB"),
        (1023.94 * KIB, "1023.9 KB"),
        (1023.96 * KIB, "1.0 MB"),  # never "1024.0 KB"
        (MIB - 1, "1.0 MB"),
        (MIB, "1.0 MB"),
        (MIB + 1, "1.0 MB"),
        (1.5 * MIB, "1.5 MB"),
        (GIB - 1, "1.0 GB"),
        (7.81 * GIB, "7.8 GB"),
        (2**50 - 1, "1.0 PB"),
        (3 * 2**60, "3072.0 PB"),  # the last unit takes everything above it
        (-(MIB - 1), "-1.0 MB"),  # a shrinking curve's slope
    ],
)
def test_human_bytes_picks_the_unit_after_rounding(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("ulps", [-3, -1, 0, 1, 3])
def test_a_slope_of_one_mib_reads_the_same_whatever_its_last_bits(ulps):
    import math

    x = float(MIB)
    for _ in range(abs(ulps)):
        x = math.nextafter(x, 0 if ulps < 0 else math.inf)
    assert human_bytes(x) == "1.0 MB"


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (1.23456, "1.23"),
        (99949.0, "9.99e+04"),
        (99999.7, "1.00e+05"),  # rounds to 1e5: scientific, not "1e+05"
        (0.00099951, "0.001"),  # rounds to 1e-3: plain, not "1.00e-03"
        (0.000999, "9.99e-04"),
        (float("nan"), "-"),
        (float("inf"), "inf"),
    ],
)
def test_num_picks_the_notation_after_rounding(x, text):
    assert num(x) == text
