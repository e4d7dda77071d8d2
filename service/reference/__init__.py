"""The references in docs/, generated from the code so that they cannot drift from it.

``configuration`` renders ``Settings`` (docs/configuration.md, ``orders-api config``); ``http``
renders the served OpenAPI document and ``PROBLEMS`` into the marked sections of docs/http.md,
around hand-written prose. tests/test_docs.py regenerates both and compares;
``python -m service.reference`` rewrites them.
"""
