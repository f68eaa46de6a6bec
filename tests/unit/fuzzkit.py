"""Strategies both fuzz modules draw from: numbers that overflow a parser, and durations in
every spelling (``test_fuzz_commands.py`` puts them in payloads, ``test_fuzz_config.py`` in
config files).
"""

from __future__ import annotations

from typing import Final

from hypothesis import strategies as st

#: Numbers past every float and int64 limit, and the float edge cases.
HUGE: Final = st.sampled_from([10**400, -(10**400), 2**63, 1e308, -0.0, 5e-324])
#: What a duration field may be given: valid, nearly valid, absurd, and not text at all.
DURATIONISH: Final = st.one_of(
    st.sampled_from(["10m", "15m", "15m1s", "900", "901", "1h30m", "0", "0s", "-1", " 10 m "]),
    st.sampled_from(["1e9", "nan", "inf", "10M", "1.5m", "9" * 400, "1" + "0" * 30, True]),
    st.text(alphabet="0123456789.hms -+e", max_size=10),
    st.floats(),
    st.integers(),
    HUGE,
)
