"""`facegender serve`: a small read-only results browser (Flask, served by waitress).

Jobs with progress, a gallery of face thumbnails cut from the originals on
demand (lowest confidence first, keyset pages), an image view with every box,
and CSV/JSON export of the current filter. Only ids come from the user; a
file is served only when it lies inside its job's root.
"""

from worker.web.app import create_app

__all__ = ["create_app"]
