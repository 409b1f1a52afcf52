"""What dataset inference costs a label-only suspect, in queries (no torch: the filing computes it).

Blind Walk walks each held-out sample along ``WALK_DIRECTIONS`` random directions for at most
``WALK_MAX_STEPS`` steps: one query for the starting label, then one per step of every direction still
walking. Half of the members and half of the non-members are held out (the other halves train the
scorer on the claimant's own model), so a set of ``m`` members and ``n`` non-members costs at most
``(m // 2 + n // 2 + rounding) * (1 + WALK_DIRECTIONS * WALK_MAX_STEPS)``; on digits the walks cost
about 92 % of that bound.
"""

WALK_DIRECTIONS = 30
WALK_MAX_STEPS = 60
QUERIES_PER_SAMPLE = 1 + WALK_DIRECTIONS * WALK_MAX_STEPS


def blind_walk_queries_estimate(*, members: int, nonmembers: int) -> int:
    """The most queries a Blind Walk spends on a set of this size (held-out halves rounded up)."""
    tested = (members + 1) // 2 + (nonmembers + 1) // 2
    return tested * QUERIES_PER_SAMPLE
