"""How ``make test`` spreads the suite over two pytest-xdist processes.

The suite mostly waits on real servers, so two processes halve its wall time on two cores.
Tests that run several SR worker processes under load (the kill matrix, fault injection,
pause fencing, ...) measure recovery against time bounds; two of them at once would compete
for the same two cores. They carry :data:`HEAVY` (an ``xdist_group``), so ``--dist
loadgroup`` runs all of them in one process, one after another, while the other process
takes the rest. Without xdist the mark does nothing.
"""

from __future__ import annotations

from typing import Final

import pytest

__all__ = ["HEAVY"]

#: The mark of a test that must not run beside another heavy test.
HEAVY: Final = pytest.mark.xdist_group("heavy")
