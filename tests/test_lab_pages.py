"""minilora.lab.pages: figures glued for the built page, and nothing at all where myst_nb is missing."""

import sys
import types

from minilora.lab import pages


def test_every_figure_is_glued_without_display(monkeypatch):
    calls = []
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda name, value, display=True: calls.append((name, value, display))
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    pages.glue_text({"speedup": "21", "ratio": "0.28"})
    assert calls == [("speedup", "21", False), ("ratio", "0.28", False)]


def test_without_myst_nb_nothing_happens(monkeypatch):
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # `import myst_nb` now raises ImportError
    assert pages.glue_text({"speedup": "21"}) is None
