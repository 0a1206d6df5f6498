"""Figures for a page's prose: a notebook computes them in a hidden cell, the built page quotes them in its text.

    from minilora.lab import pages
    pages.glue_text({"speedup": f"{speedup:.0f}"})   # the markdown then writes {glue:text}`speedup`

Jupyter Book's myst_nb reads glued values from the executed notebook's outputs when it builds the site.
"""


def glue_text(figures):
    """Glue each ``name: text`` of ``figures`` for the page's ``{glue:text}`` roles, displaying nothing in the cell.

    Without myst_nb (on Colab, in a plain Jupyter) this does nothing: only the built page's prose needs the values,
    and a reader running the notebook sees the tables they come from.
    """
    try:
        from myst_nb import glue
    except ImportError:
        return
    for name, text in figures.items():
        glue(name, text, display=False)
