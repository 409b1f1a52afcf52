"""The sandboxed side of an endpoint dispute: the methods run with the worker's relay as their only way out.

A verification run's child has no network. When the suspect is an endpoint, the worker calls
:func:`run_methods_relayed` in the child with a relay (``verification.methods.egress.relay_for``) that
POSTs to the dispute's URL alone and checks its address at every connection; this installs the
child's end of it before the methods start, so every query the suspect adapter makes goes through it.
Kept free of Django: it is imported in the sandbox child.
"""

from collections.abc import Mapping
from typing import Any


def run_methods_relayed(spec: Mapping[str, Any], *, claimant_path: str | None = None) -> dict[str, Any]:
    """:func:`verification.methods.runner.run_methods`, with endpoint queries sent through the worker's relay."""
    from verification.methods import egress
    from verification.methods.runner import run_methods
    from workers.sandbox import relay_call

    egress.install_relay(relay_call)
    return run_methods(spec, claimant_path=claimant_path)
