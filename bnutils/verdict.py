"""Sentences whose truth depends on a run: computed words, or guarded typed claims.

The book's text follows its numbers. A sentence that interprets a result either takes
its deciding words from the notebook (``verdict``: glued, so the page says what the run
found) or, when it is typed, the notebook states the fact it rests on (``guard``), which
fails the full build when a rerun contradicts the text. Quick mode (CI) runs tiny
experiments whose results are not the book's, so there a false guard only warns.
"""

import warnings

import numpy as np

from .config import is_quick


class VerdictError(AssertionError):
    """A typed sentence of the book is contradicted by the numbers of this run."""


def verdict(key, holds, if_true, if_false, glue=True):
    """Return (and glue under ``key``) ``if_true`` when ``holds``, else ``if_false``.

    ``holds`` is the computed fact (a bool), the two texts are the words the page shows
    in either case: ``verdict("ch08_ics_word", rel_bn < rel_base, "smaller", "larger")``
    and, in the markdown, ``{glue:text}`ch08_ics_word```.
    """
    if not isinstance(holds, bool):
        holds = bool(holds)  # NumPy and torch booleans
    text = if_true if holds else if_false
    if glue:
        _glue(key, text, display=False)
    return text


def guard(holds, claim):
    """Check the fact behind a typed sentence of the text (``claim``, quoted from it).

    In full mode a false ``holds`` raises ``VerdictError`` and the book build fails, so
    the text is mended instead of silently wrong; in quick mode it only warns, since
    quick runs are too short to decide the book's claims. Returns ``holds``.
    """
    holds = bool(holds)
    if not holds:
        message = f"the text says {claim!r}, but this run's numbers disagree"
        if not is_quick():
            raise VerdictError(message)
        warnings.warn(message + " (quick mode: not an error)", stacklevel=2)
    return holds


def glue(name, variable, display=True):
    """Store ``variable`` under ``name`` for the book's ``{glue:text}`` roles: myst_nb's
    ``glue`` where myst_nb is installed (the book build, ``make lab``).

    Without it (Colab) nothing is stored: the learner notebooks carry the text with the
    book's numbers already written in. ``display=True`` still shows the value, as
    myst_nb's ``glue`` does.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(variable)
        return
    myst_glue(name, variable, display=display)


_glue = glue  # verdict's argument ``glue`` hides the function's name there


def mean_sd(values, axis=0):
    """Mean and sample standard deviation (``ddof=1``) over ``axis``: the seeds."""
    values = np.asarray(values, dtype=float)
    return values.mean(axis), values.std(axis, ddof=1)


def clearly_less(a, b):
    """True when the runs ``a`` are below the runs ``b`` by more than their spread.

    ``a, b``: one value per seed. "Clearly" means that the ranges mean ± sd of the two
    do not overlap: ``mean(a) + sd(a) < mean(b) - sd(b)``. Chapters 8 and 9 use it so
    that a difference smaller than the seed-to-seed variation is not called one.
    """
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    return bool(ma + sa < mb - sb)
