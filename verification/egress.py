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


def probe_relayed(spec: Mapping[str, Any]) -> dict[str, list[int]]:
    """The labels an endpoint gives each probe set of ``spec["probes"]`` (``[{id, seed}]``), through the relay.

    ``spec`` also carries the endpoint (``suspect``: kind http, url, protocol, model_name, output_kind),
    ``num_classes``, ``input_shape`` and ``count``. A set the endpoint did not answer is left out.
    """
    from verification.methods import egress
    from verification.methods.probes import probe_inputs
    from verification.methods.runner import load_suspect
    from verification.methods.suspects import QueryBudgetExceeded, SuspectError
    from workers.sandbox import relay_call

    egress.install_relay(relay_call)
    shape = tuple(int(d) for d in spec["input_shape"])
    suspect = load_suspect(spec["suspect"], num_classes=int(spec["num_classes"]), input_shape=shape)
    answers: dict[str, list[int]] = {}
    for probe in spec["probes"]:
        inputs = probe_inputs(seed=bytes.fromhex(probe["seed"]), count=int(spec["count"]), input_shape=shape)
        try:
            answers[str(probe["id"])] = [int(v) for v in suspect.labels(inputs)]
        except (SuspectError, QueryBudgetExceeded, ValueError):
            continue
    return answers
