"""Text that people typed for others to read: the one rule every such field follows (no Django)."""

import unicodedata

__all__ = ["has_hidden_characters"]


def has_hidden_characters(text: str) -> bool:
    """Whether ``text`` holds a control character or an invisible formatting one (bidi overrides, zero widths).

    Names, titles, notes and sources are shown in pages, logs and terminals to people other than their
    author: such characters could reorder or hide what those people read, so every such field refuses them.
    """
    return any(unicodedata.category(char) in ("Cc", "Cf") for char in text)
