"""The simplest metric plugin: a function of the descending singular values."""


def top2_ratio(s):
    """sigma_1 / sigma_2 (None for a single singular value)"""
    return float(s[0] / s[1]) if len(s) > 1 and s[1] > 0 else None
