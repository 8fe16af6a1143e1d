"""Small fixes to the HTML that Jupyter Book 1.x writes, so pages load without console errors.

sphinx-thebe 0.3.1 adds its inline configuration script twice on every notebook page;
the second copy (file name ``''`` instead of ``None``) redeclares ``const THEBE_JS_URL``
and throws. Keep each script once.
"""


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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
