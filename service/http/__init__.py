"""The HTTP front door (FastAPI): decode the request, call the core, encode the result.

``create_app`` lives in :mod:`service.http.app`; one module of routes per feature next to it.
"""
