"""Reference panels a dispute can be judged against: built-in recipes and operator-installed folders.

A built-in panel is trained from public data the first time it is needed and cached under the data
folder; an operator installs another by saving a panel (``ReferencePanel.save``) into
``<data>/panels/installed/<name>/``. Every load checks each member file against the manifest.
"""

from pathlib import Path

from django.conf import settings

BUILTIN = {"digits": "scikit-learn digits (8x8, 10 classes, 64 features in [0, 1]): 20 mixed models"}
BUILTIN_SIZE = 20


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


def panel_directory(name: str) -> Path:
    """The folder of panel ``name``, training a built-in one on first use (tens of seconds)."""
    if name in BUILTIN:
        from verification.methods.datasets import digits_task
        from verification.methods.panels import load_or_train_panel
        from verification.methods.panels import panel_directory as cached

        task = digits_task(0)
        load_or_train_panel(task, _root() / "builtin", size=BUILTIN_SIZE, seed=0)
        return cached(task, _root() / "builtin", size=BUILTIN_SIZE, seed=0)
    directory = _root() / "installed" / name
    if "/" in name or name.startswith(".") or not (directory / "manifest.json").is_file():
        raise PanelUnavailable(f"no reference panel named {name!r}; available: {', '.join(panel_list())}")
    return directory
