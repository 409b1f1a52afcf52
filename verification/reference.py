"""Reference panels a dispute can be judged against: built-in recipes and operator-installed folders.

A built-in panel is trained from public data, with this deployment's secret seed, the first time it is
needed and cached under the data folder; an operator installs another by saving a panel (``ReferencePanel.save``) into
``<data>/panels/installed/<name>/``. Every load checks each member file against the manifest.
What a panel serves (:func:`panel_info`) is read without training or loading it: the built-in ones
declare it here, an installed one in its manifest (the native input shape only, unless it lists more).
"""

import json
import logging
import os
import secrets
import time
from pathlib import Path

from django.conf import settings

from verification.methods.panel_shapes import PanelInterface, interface_from_manifest

BUILTIN = {"digits": "scikit-learn digits (8x8, 10 classes, 64 features in [0, 1]): 20 mixed models"}
BUILTIN_SIZE = 20
# the digits panel's members take 64 flat features; an 8x8 image (one channel or none) is the same row-major data
BUILTIN_INTERFACES = {
    "digits": PanelInterface(
        name="digits",
        task="digits",
        num_classes=10,
        input_shape=(64,),
        accepted_shapes=((64,), (8, 8), (1, 8, 8)),
        size=BUILTIN_SIZE,
    ),
}
# an installed manifest lists every member: far below this, yet a bound on what the web process parses
MAX_MANIFEST_BYTES = 1 << 20

logger = logging.getLogger(__name__)


class PanelUnavailable(Exception):  # noqa: N818 (a condition the caller reports, like DoesNotExist)
    """No panel of that name."""


def _root() -> Path:
    return Path(settings.DATA_DIR) / "panels"


def panel_list() -> dict[str, str]:
    """Panel name -> description, built-in first."""
    found = dict(BUILTIN)
    installed = _root() / "installed"
    if installed.is_dir():
        for manifest in sorted(installed.glob("*/manifest.json")):
            found.setdefault(manifest.parent.name, f"installed panel {manifest.parent.name}")
    return found


def _installed_info(name: str) -> PanelInterface | None:
    """What installed panel ``name`` serves, from its manifest; None when the manifest does not say it plainly."""
    path = _root() / "installed" / name / "manifest.json"
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("the manifest is too large")
        return interface_from_manifest(name, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError) as exc:
        # the operator's file, not a caller's: logged for them, never shown to callers
        logger.warning("installed reference panel %s has no readable interface: %s", name, type(exc).__name__)
        return None


def panel_info(name: str) -> PanelInterface:
    """What panel ``name`` serves (task, classes, native and accepted input shapes, size), without loading it."""
    if name in BUILTIN_INTERFACES:
        return BUILTIN_INTERFACES[name]
    if name not in panel_list():
        raise PanelUnavailable(f"no reference panel named {name!r}; available: {', '.join(panel_list())}")
    info = _installed_info(name)
    if info is None:
        raise PanelUnavailable(f"the reference panel {name!r} is installed without a readable manifest")
    return info


def panel_infos() -> list[PanelInterface]:
    """Every usable panel's interface, built-in first (an installed panel with an unreadable manifest is left out)."""
    found = []
    for name in panel_list():
        try:
            found.append(panel_info(name))
        except PanelUnavailable:
            continue
    return found


def builtin_seed() -> int:
    """This deployment's secret seed for its built-in panels, drawn on first use and kept with the keys.

    A panel anyone can rebuild is a panel a false claimant can aim at: evidence chosen so that no member of
    a known panel matches it, while fresh models of the same recipe often do, passes a null built on those
    members. With a seed nobody outside the deployment knows, the members are as unknown to the claimant
    as the suspect is. Operators may reveal it after a dispute for an audit; the panel's hash is in every verdict.
    """
    path = Path(settings.MODELCOURT_KEY_DIR) / "panel-seed"
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # written once, never overwritten
        except FileExistsError:  # another process drew it first: wait for its write
            for _ in range(50):
                text = path.read_text(encoding="ascii", errors="replace").strip()
                if text:
                    break
                time.sleep(0.1)
        else:
            text = str(secrets.randbits(62))
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(text + "\n")
    if not (text.isascii() and text.isdigit()):
        raise PanelUnavailable("the built-in panel's seed file is damaged; an operator must restore it")
    return int(text)


def panel_directory(name: str) -> Path:
    """The folder of panel ``name``, training a built-in one on first use (tens of seconds)."""
    if name in BUILTIN:
        from verification.methods.datasets import digits_task
        from verification.methods.panels import load_or_train_panel
        from verification.methods.panels import panel_directory as cached

        task = digits_task(0)
        accepted = BUILTIN_INTERFACES[name].accepted_shapes
        seed = builtin_seed()
        load_or_train_panel(task, _root() / "builtin", size=BUILTIN_SIZE, seed=seed, accepted_shapes=accepted)
        return cached(task, _root() / "builtin", size=BUILTIN_SIZE, seed=seed)
    directory = _root() / "installed" / name
    if "/" in name or name.startswith(".") or not (directory / "manifest.json").is_file():
        raise PanelUnavailable(f"no reference panel named {name!r}; available: {', '.join(panel_list())}")
    return directory
