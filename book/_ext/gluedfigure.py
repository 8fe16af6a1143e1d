"""``{glued-figure}``: a figure glued in another notebook, pasted with a caption.

myst-nb's ``{glue:figure}`` captions a figure glued in the same document only, and its
``{glue}`` directive, which pastes from another (``:doc:``), has no caption. The results
page shows every chapter's key figures, each with a caption, so it needs both::

    ```{glued-figure} ch05_figure1
    :doc: ../notebooks/05_mnist.ipynb
    :name: fig-results-figure1

    The caption, one paragraph.
    ```
"""

from docutils import nodes
from docutils.parsers.rst import directives
from myst_nb.ext.glue.utils import PendingGlueReferenceError, create_pending_glue_ref
from sphinx.util.docutils import SphinxDirective


class GluedFigure(SphinxDirective):
    required_arguments = 1  # the glue key
    has_content = True
    option_spec = {"doc": directives.unchanged_required, "name": directives.unchanged}

    def run(self):
        key = self.arguments[0]
        try:
            ref = create_pending_glue_ref(self.state.document, self.get_source_info()[0],
                                          self.lineno, self.options["doc"], key)
        except (KeyError, PendingGlueReferenceError) as err:
            raise self.error(f"glued-figure {key!r}: {err} (needs :doc:)") from err
        figure = nodes.figure("", ref)
        self.set_source_info(figure)
        self.add_name(figure)
        if not self.content:
            raise self.error(f"glued-figure {key!r} needs a caption")
        parsed = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, parsed)
        first = parsed[0]
        if not isinstance(first, nodes.paragraph):
            raise self.error(f"glued-figure {key!r}: the caption must be a paragraph")
        caption = nodes.caption(first.rawsource, "", *first.children)
        caption.source, caption.line = first.source, first.line
        figure += caption
        return [figure]


def setup(app):
    app.add_directive("glued-figure", GluedFigure)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
