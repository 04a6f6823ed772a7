"""``vosrr annotate``: a local web page to mark objects with brush strokes, watch them propagate, fix and export.

``frames`` (the video, random access, bounded memory) -> ``strokes`` (what the page paints) -> ``session`` (the
segmenter, the masks on disk, the jobs) -> ``server`` (the HTTP side: token, routes, events) -> ``static/`` (the
page: plain HTML, CSS and JS).
"""
