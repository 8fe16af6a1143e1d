"""Small fixes to the HTML that Jupyter Book 1.x writes, so pages load without console errors.

sphinx-thebe 0.3.1 adds its inline configuration script twice on every notebook page;
the second copy (file name ``''`` instead of ``None``) redeclares ``const THEBE_JS_URL``
and throws. Keep each script once.

Three extensions that Jupyter Book loads do not declare whether Sphinx may read pages
in parallel (``book/build.py``), so Sphinx reads serially and warns. They may:
sphinx-multitoc-numbering 0.1.3 only replaces the section numbering, which runs once
after every page is read; sphinx-mathjax-offline 0.0.2 copies MathJax when the build
ends; sphinx-jupyterbook-latex's transforms change each page's own tree and keep no
state across pages (the rest of it acts for the LaTeX builder only). And the cache of
executed notebooks (jupyter-cache's SQLite database) is created before the pages are
read: two workers that both find it missing would both create its tables, and one fails.
"""

PARALLEL_SAFE = ("sphinx_multitoc_numbering", "sphinx-mathjax-offline", "sphinx_jupyterbook_latex")


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        attributes = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", None) or "", attributes.get("body"))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def _declare_parallel_safe(app, config):
    for name in PARALLEL_SAFE:
        if name in app.extensions and app.extensions[name].parallel_read_safe is None:
            app.extensions[name].parallel_read_safe = True


def _create_notebook_cache(app, env, docnames):
    from jupyter_cache import get_cache

    path = getattr(env, "mystnb_config", None) and env.mystnb_config.execution_cache_path
    if path:
        get_cache(path).list_cache_records()  # opening the database creates it


def setup(app):
    app.connect("config-inited", _declare_parallel_safe)
    app.connect("env-before-read-docs", _create_notebook_cache)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
