"""Tell each notebook's kernel which notebook it executes: ``BNBOOK_NOTEBOOK``.

The book executes a notebook while Sphinx reads it, in a kernel that inherits this
process's environment. ``bnutils`` names the notebook in what it records and in the
message of a run that the results store lacks (``make results CHAPTER=NN``).
"""

import os
from pathlib import PurePosixPath


def _name_the_notebook(app, docname, source):
    os.environ["BNBOOK_NOTEBOOK"] = PurePosixPath(docname).name


def setup(app):
    app.connect("source-read", _name_the_notebook)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
