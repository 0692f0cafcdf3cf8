"""REST API and web page over a collection: ``create_app(db_path, token=None)``."""

from .app import create_app

__all__ = ["create_app"]
